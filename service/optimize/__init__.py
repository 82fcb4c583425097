"""Per-frame multi-objective hyperparameter search: Pareto tools, hypervolume, knee, ParEGO."""

from .hypervolume import hypervolume
from .knee import knee_index
from .mobo import FrameSearch, MultiObjectiveOptimizer, run_frame
from .pareto import non_dominated_mask, non_dominated_sort

__all__ = [
    "FrameSearch",
    "MultiObjectiveOptimizer",
    "hypervolume",
    "knee_index",
    "non_dominated_mask",
    "non_dominated_sort",
    "run_frame",
]
