"""Per-frame multi-objective hyperparameter search: Pareto tools, hypervolume, knee, ParEGO."""

from rewardscope.optimize.hypervolume import hypervolume
from rewardscope.optimize.knee import knee_index
from rewardscope.optimize.mobo import FrameSearch, MultiObjectiveOptimizer, run_frame
from rewardscope.optimize.pareto import non_dominated_mask, non_dominated_sort

__all__ = [
    "FrameSearch",
    "MultiObjectiveOptimizer",
    "hypervolume",
    "knee_index",
    "non_dominated_mask",
    "non_dominated_sort",
    "run_frame",
]
