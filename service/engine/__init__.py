"""The session engine: one per session, turns a frame into an :class:`Analysis`.

Knows nothing about sockets or files. The live runtime asks :func:`make_engine` for a session's
engine and calls ``process(frame, settings)``; ``analyse(pixels, lattice_px, settings)`` is the
same analysis for offline use (``lattice_px`` a hint or None: the cell is found in the frame).
"""

from __future__ import annotations

from rewardscope.config import ServiceConfig
from rewardscope.engine.analysis import Analysis
from rewardscope.engine.session import SessionEngine, check_settings, resolve_chain


def make_engine(session: str, settings: ServiceConfig) -> SessionEngine:
    """The engine for a new session: reward-driven, warm-started per session."""
    return SessionEngine(session, settings)


def warmup() -> None:
    """Compile numba kernels at service start so the first frame is not slow."""
    from rewardscope.science import atomfind, kernels, mixtures, refine

    atomfind.warmup()
    kernels.warmup()
    mixtures.warmup()
    refine.warmup()


__all__ = ["Analysis", "SessionEngine", "check_settings", "make_engine", "resolve_chain", "warmup"]
