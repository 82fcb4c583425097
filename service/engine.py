"""Engine: one per session; turns a ``Frame`` into an ``Analysis``. Knows nothing about sockets.

The daemon asks :func:`make_engine` for a session's engine and calls ``process(frame)`` on each
frame. ``AtomsEngine`` is the fixed-parameter LoG baseline; the reward-driven engine (workflows
x multi-objective optimizer, warm-started per session) plugs in behind the same two methods.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from . import atomfind
from .analysis import Analysis
from .config import ServiceConfig
from .protocol import Frame


class SessionEngine(Protocol):
    """What the daemon needs from an engine."""

    session: str

    def process(self, frame: Frame, settings: ServiceConfig) -> Analysis: ...

    def state_dict(self) -> dict: ...


def default_log_params(lattice_px: float) -> dict:
    """LoG parameters that suit HAADF columns of width ~0.1 lattice spacings.

    A Gaussian column of width s gives its strongest scale-normalised LoG response at sigma = s,
    so the sigma range brackets 0.06 .. 0.2 lattice spacings; the threshold is on the
    percentile-normalised frame (see ``atomfind.normalize_frame``).
    """
    return {"min_sigma": max(0.5, 0.06 * lattice_px), "max_sigma": max(1.0, 0.2 * lattice_px),
            "num_sigma": 5, "threshold": 0.05, "overlap": 0.5}


class AtomsEngine:
    """Fixed-parameter LoG atom finding: the foundation's per-frame analysis."""

    def __init__(self, session: str) -> None:
        self.session = session
        self.frames_processed = 0

    def process(self, frame: Frame, settings: ServiceConfig) -> Analysis:
        lattice = frame.header.lattice_px or settings.lattice_px
        t0 = time.perf_counter()
        image = atomfind.normalize_frame(frame.pixels)
        params = default_log_params(lattice)
        blobs = atomfind.find_atoms(image, **params)
        atoms = atomfind.atoms_xy(blobs)
        elapsed = time.perf_counter() - t0
        self.frames_processed += 1
        return Analysis(atoms=atoms, labels=np.full(len(atoms), -1, dtype=np.int16),
                        params=params, rewards={}, n_evaluations=1, warm_started=False,
                        timings={"atoms": elapsed})

    def state_dict(self) -> dict:
        return {"session": self.session, "frames_processed": self.frames_processed}


def make_engine(session: str, settings: ServiceConfig) -> SessionEngine:
    """The engine for a new session: reward-driven, warm-started per session."""
    from .reward_engine import RewardEngine

    return RewardEngine(session, settings)


def warmup() -> None:
    """Compile numba kernels at service start so the first frame is not slow."""
    from . import kernels

    atomfind.warmup()
    kernels.warmup()
