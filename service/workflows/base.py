"""What a workflow is: parameters + search space + steps + rewards, declared in one place.

The LiberTEM UDF idea: a unit of analysis says *what* it computes; the engine decides *when*
(per frame, warm-started) and *how often* (the optimizer's budget). A workflow never touches
sockets, files or the optimizer.

A workflow evaluates one parameter set on one frame and returns its rewards (named, with a
direction) plus the analysis output. Work shared by every candidate on a frame (normalising the
image, the LoG scale space, patch extraction at fixed atoms) is done once in ``prepare`` and
kept in the :class:`FrameContext` cache.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

_THREADPOOLS: list[ThreadpoolController] = []
_LIMIT_LOCK = threading.Lock()
_LIMIT_STATE: dict[str, Any] = {"depth": 0, "limiter": None}


@contextmanager
def single_thread() -> Iterator[None]:
    """Context limiting BLAS and OpenMP to one thread (controller built once: it costs ~5 ms).

    Workflow matrices are ~1000 x 16: threads only add start-up and, on a busy host,
    contention (measured 20 ms -> 300+ ms per GMM fit with 2 cores shared by other work);
    the cores are better used evaluating candidates side by side (``eval_workers``).
    Safe to use from several threads at once: the BLAS limit is process-wide, so it is set
    by the first thread to enter and lifted when the last one leaves (nested per-thread
    limiters would restore each other's state in the wrong order); OpenMP's limit belongs to
    the calling thread, so each thread sets and restores its own (without it, scikit-learn's
    OpenMP k-means inside two evaluation threads ran 2 x 2 threads on 2 cores).
    """
    with _LIMIT_LOCK:
        if not _THREADPOOLS:
            _THREADPOOLS.append(ThreadpoolController())
        if _LIMIT_STATE["depth"] == 0:
            _LIMIT_STATE["limiter"] = _THREADPOOLS[0].limit(limits=1, user_api="blas")
        _LIMIT_STATE["depth"] += 1
    omp = _THREADPOOLS[0].limit(limits=1, user_api="openmp")
    try:
        yield
    finally:
        omp.restore_original_limits()
        with _LIMIT_LOCK:
            _LIMIT_STATE["depth"] -= 1
            if _LIMIT_STATE["depth"] == 0:
                _LIMIT_STATE["limiter"].restore_original_limits()
                _LIMIT_STATE["limiter"] = None


@dataclass(frozen=True)
class RewardSpec:
    """An objective a workflow reports: ``direction`` 'min' or 'max', one line of meaning, and
    ``scale``: a fixed physical unit for the knee's normalisation where one exists (see
    optimize.knee; 0 = min-max over the front)."""

    name: str
    direction: str
    meaning: str
    scale: float = 0.0


@dataclass
class FrameContext:
    """One frame as every workflow sees it.

    ``image`` float32 normalised to ~[0, 1]; ``atoms`` (N, 2) x, y of the atoms chosen upstream
    (set by the atoms workflow for the domain and amorphous workflows); ``cache`` holds per-frame
    work shared between candidates (keys are the owning workflow's business).
    """

    image: np.ndarray
    lattice_px: float
    atoms: np.ndarray | None = None
    sites: np.ndarray | None = None  # (N,) int8 0 = A (bright), 1 = B, when classified
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]


@dataclass
class Evaluation:
    """One candidate's outcome: rewards by name, and the analysis it produced."""

    rewards: dict[str, float]
    output: dict[str, Any]  # keys among: atoms, labels, walls, wall_points, amorphous_mask


class Workflow(ABC):
    """Base class. Subclasses set ``name``, ``space`` (skopt dimensions with names) and
    ``rewards`` and implement ``evaluate``; ``prepare`` is optional per-frame shared work."""

    name: str = ""
    space: list = []
    rewards: tuple[RewardSpec, ...] = ()
    thread_safe: bool = False
    """True when ``evaluate`` may run for several candidates of one frame at once."""

    def prepare(self, ctx: FrameContext) -> None:  # noqa: B027 - optional hook
        """Per-frame work shared by every candidate (called once per frame)."""

    @abstractmethod
    def evaluate(self, ctx: FrameContext, params: dict[str, Any]) -> Evaluation:
        """Run the analysis with ``params`` on ``ctx`` and score it."""

    def default_params(self, lattice_px: float) -> dict[str, Any]:
        """A sensible starting point (the first candidate on a cold frame)."""
        return {}

    def initial_points(self, ctx: FrameContext) -> list[dict[str, Any]]:
        """Candidates a cold search evaluates first (domain knowledge before BO's random start);
        by default just :meth:`default_params`."""
        p = self.default_params(ctx.lattice_px)
        return [p] if p else []

    def objective_vector(self, ev: Evaluation) -> np.ndarray:
        """Rewards as a vector to minimise (max-rewards negated; NaN -> +inf = worst)."""
        vals = []
        for spec in self.rewards:
            v = float(ev.rewards.get(spec.name, np.nan))
            v = -v if spec.direction == "max" else v
            vals.append(v if np.isfinite(v) else np.inf)
        return np.asarray(vals, dtype=float)

    def param_names(self) -> list[str]:
        return [d.name for d in self.space]
