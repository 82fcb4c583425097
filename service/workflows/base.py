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

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rewardscope.science import rewards as rewards_mod
from rewardscope.science.lattice import Lattice
from rewardscope.science.threadlimits import single_thread  # noqa: F401 - the workflows' import

# Kinds of workflow output: how the engine merges an output into the frame's result.
ATOMS = "atoms"  # (N, 2) float x, y px: the frame's key points -> result ``atoms`` (first wins)
LABELS = "labels"  # (N,) int per atom, -1 = none -> result ``labels`` (first producer wins)
PER_ATOM = "per_atom"  # (N, ...) arrays aligned with the atoms -> result array ``name``
MASK = "mask"  # (H, W) per-pixel array -> result array ``name``
SEGMENTS = "segments"  # list of [x0, y0, x1, y1] px -> result ``walls`` (concatenated)
POLYLINES = "polylines"  # list of (M_i, 2) ordered points px -> rewards only (``walls``)
FIELD = "field"  # (M, ...) per-unit-cell arrays (centres, vectors) -> result array ``name``
SCALAR = "scalar"  # plain data (number, string, small map) -> result header field ``name``
PER_WALL = "per_wall"  # (S, ...) arrays row-aligned with the segments output -> array ``name``
PER_REGION = "per_region"  # (R, ...) arrays, one row per region of a mask -> array ``name``
KINDS = (ATOMS, LABELS, PER_ATOM, MASK, SEGMENTS, POLYLINES, FIELD, SCALAR, PER_WALL, PER_REGION)


@dataclass(frozen=True)
class Output:
    """One declared output of a workflow: ``key`` in :attr:`Evaluation.output`, its ``kind``
    (one of :data:`KINDS`) and ``name``, the name it is published under ('' = ``key``; a
    ``labels`` output is also published as an array when ``name`` is given).

    ``clears_labels`` (masks only): where the mask is set there is no lattice to label (an
    amorphous region), so the result's ``labels`` of atoms inside it become -1 when another
    workflow produced them: a domain map must not claim a domain where the frame's own
    analysis says the order is gone.
    """

    key: str
    kind: str
    name: str = ""
    clears_labels: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"output {self.key!r}: kind must be one of {KINDS}, got "
                             f"{self.kind!r}")
        if self.clears_labels and self.kind != MASK:
            raise ValueError(f"output {self.key!r}: clears_labels needs kind {MASK!r}, got "
                             f"{self.kind!r}")

    @property
    def published(self) -> str:
        return self.name or self.key


@dataclass
class FrameContext:
    """One frame as every workflow sees it.

    ``image`` float32 normalised to ~[0, 1], columns bright (a dark-column frame is inverted
    by the engine); ``lattice_px`` the characteristic spacing |a| of the cell, px;
    ``lattice`` the cell found in the frame (:class:`~rewardscope.science.lattice.Lattice`,
    vectors a and b; None when not looked for, e.g. a context built by hand: then the cell is
    lattice_px x lattice_px); ``no_lattice`` True when the engine looked and the frame shows
    no lattice (blank, noise, amorphous: claim no columns); ``columns_per_cell`` the visible
    columns per cell (config ``motif``); ``atoms`` (N, 2) x, y of the atoms chosen upstream
    (the chosen output of kind ``atoms``, set by the engine); ``upstream`` every chosen output
    of the workflows that ran before, by key; ``cache`` holds per-frame work shared between
    candidates (keys are the owning workflow's business).
    """

    image: np.ndarray
    lattice_px: float
    pixel_size_m: float | None = None  # from the frame header, when the instrument sends it
    lattice: Lattice | None = None
    no_lattice: bool = False
    columns_per_cell: float = 2.0
    atoms: np.ndarray | None = None
    sites: np.ndarray | None = None  # (N,) int8 0 = A (bright), 1 = B, when classified
    upstream: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]

    @property
    def cell_area_px(self) -> float:
        """Area of the unit cell, px^2: |a x b| of ``lattice``, else ``lattice_px``^2."""
        if self.lattice is not None:
            return float(self.lattice.cell_area)
        return float(self.lattice_px) ** 2


@dataclass
class Evaluation:
    """One candidate's outcome: rewards by name, the analysis it produced (keys: the
    workflow's declared outputs, plus anything rewards may read), and seconds spent per
    metric stage when the workflow splits its time (the engine books the rest under the
    workflow's ``stage``)."""

    rewards: dict[str, float]
    output: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


class Workflow(ABC):
    """Base class: a unit of analysis declared in one place (the LiberTEM UDF idea).

    A subclass sets, as class attributes:

    * ``name``: short name, used in results, metrics and configs;
    * ``space``: a tuple of named skopt dimensions, the hyperparameters the optimizer searches;
    * ``rewards``: the names of the rewards it optimises (registry names of
      :mod:`rewardscope.science.rewards`, or ``"pkg.mod:func"`` dotted paths);
    * ``needs``: output kinds it reads from upstream workflows (e.g. ``("atoms",)``: it reads
      ``ctx.atoms``); the engine runs a producer first, adding one from the registry if the
      configured chain has none;
    * ``produces``: its :class:`Output` declarations, merged into the result by kind;
    * ``stage``: the metric stage its time is booked under;
    * ``thread_safe``: True when ``evaluate`` may run for several candidates of one frame at
      once.

    and implements ``evaluate`` (one candidate); ``prepare`` (per-frame work shared by the
    candidates) and ``default_params`` are optional. A workflow never touches sockets, files,
    metrics or the optimizer.
    """

    name: str = ""
    space: tuple = ()
    rewards: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    produces: tuple[Output, ...] = ()
    stage: str = "cluster"
    thread_safe: bool = False

    def prepare(self, ctx: FrameContext) -> None:  # noqa: B027 - optional hook
        """Per-frame work shared by every candidate (called once per frame)."""

    @abstractmethod
    def evaluate(self, ctx: FrameContext, params: dict[str, Any]) -> Evaluation:
        """Run the analysis with ``params`` on ``ctx`` and score it."""

    def default_params(self, lattice_px: float) -> dict[str, Any]:
        """A sensible starting point (the first candidate on a cold frame)."""
        return {}

    def finalize(self, ctx: FrameContext, chosen: Evaluation) -> dict[str, Any]:
        """Work done once per frame on the chosen candidate only, never per evaluation (e.g.
        sub-pixel refinement, a polarization map): the outputs returned are merged into
        ``chosen.output`` before later workflows and the result see it. Default: nothing."""
        return {}

    def initial_points(self, ctx: FrameContext) -> list[dict[str, Any]]:
        """Candidates a cold search evaluates first (domain knowledge before BO's random start);
        by default just :meth:`default_params`."""
        p = self.default_params(ctx.lattice_px)
        return [p] if p else []

    def regime(self, ctx: FrameContext) -> str:
        """The kind of frame this is for the search, "" for the workflow's one search space.

        A workflow whose candidates differ by kind of frame (e.g. descriptor routes that need
        resolved atoms and routes that need none) names a regime per frame (read from ``ctx``
        and upstream outputs, before :meth:`prepare`); the engine keeps one search per regime
        (and magnification), each over :meth:`for_regime`'s space, so a frame's search never
        models or spends evaluations on candidates that cannot run on it. Default "".
        """
        return ""

    def for_regime(self, regime: str) -> Workflow:
        """The workflow as searched in ``regime`` (:meth:`regime`): same analysis, its
        ``space`` holding only what runs there. Default: ``self`` for "" (and any regime)."""
        return self

    def objective_vector(self, ev: Evaluation) -> np.ndarray:
        """The declared rewards of ``ev`` as objectives to minimise (the registry's one rule)."""
        return rewards_mod.objective_vector([rewards_mod.get_reward(n) for n in self.rewards],
                                            ev.rewards)

    def param_names(self) -> list[str]:
        return [d.name for d in self.space]
