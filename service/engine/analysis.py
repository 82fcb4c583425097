"""The engine's output for one frame: what the publisher turns into a result message."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Analysis:
    """The chosen analysis of one frame.

    ``atoms`` float32 (N, 2), x = column, y = row (pixels); ``labels`` int16 (N,), -1 = not a
    key point; ``walls`` line segments [x0, y0, x1, y1]; ``arrays`` extra named arrays such as
    ``amorphous_mask`` (H, W) bool; ``timings`` seconds per stage (decode, atoms, descriptors,
    cluster, walls, optimizer, vae) for metrics; ``optimizer_s`` the optimizer's own overhead.
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
    timings: dict = field(default_factory=dict)
    optimizer_s: float = 0.0
    hypervolume: float | None = None
    model: str | None = None  # learned model in use (latent workflow), for model-swap metrics
