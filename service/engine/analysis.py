"""The engine's output for one frame: what the publisher turns into a result message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Analysis:
    """The chosen analysis of one frame, merged from the workflows' declared outputs.

    ``atoms`` float32 (N, 2), x = column, y = row (pixels); ``labels`` int16 (N,), -1 = not a
    key point; ``walls`` line segments [x0, y0, x1, y1] px; ``arrays`` named arrays (per-atom,
    per-pixel, per-cell) such as ``amorphous_mask`` (H, W) bool; ``scalars`` named numbers or
    short strings (e.g. ``model``, the learned model in use); ``timings`` seconds per metric
    stage; ``optimizer_s`` the optimizer's own overhead; ``hypervolume`` per workflow, of its
    own Pareto front in its own objectives' units (hypervolumes of different workflows are
    not comparable, so they are never summed).
    """

    atoms: np.ndarray
    labels: np.ndarray
    walls: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    rewards: dict = field(default_factory=dict)
    pareto: list = field(default_factory=list)
    n_evaluations: int = 1
    warm_started: bool = False
    arrays: dict = field(default_factory=dict)
    scalars: dict[str, Any] = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    optimizer_s: float = 0.0
    hypervolume: dict[str, float] = field(default_factory=dict)
    regions: list[dict] = field(default_factory=list)
    """The frame's suggested regions of interest, best first (plain dicts of the shared
    contract: id, score, reason, significance, box_px, box_m, center_m, fov_m, rotation_rad,
    magnification; see :mod:`rewardscope.engine.regions`)."""

    @property
    def model(self) -> str | None:
        """The learned model in use, when a workflow publishes a ``model`` scalar."""
        m = self.scalars.get("model")
        return str(m) if m else None
