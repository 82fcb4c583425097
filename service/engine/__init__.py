"""The session engine: one per session, turns a frame into an :class:`Analysis`.

Knows nothing about sockets or files. The live runtime asks :func:`make_engine` for a session's
engine and calls ``process(frame, settings)``; ``analyse(pixels, lattice_px, settings)`` is the
same analysis for offline use (``lattice_px`` a hint or None: the cell is found in the frame).

The package's names are imported on first use (PEP 562): ``rewardscope.engine.analysis``
(the result type) stays importable without the optimizer and the workflows behind them, so
a process that only reads or draws results (``analyze``'s picture process) does not pay
for the scientific stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rewardscope.config import ServiceConfig
    from rewardscope.engine.analysis import Analysis
    from rewardscope.engine.session import SessionEngine, check_settings, resolve_chain

_LAZY = {"Analysis": "rewardscope.engine.analysis",
         "SessionEngine": "rewardscope.engine.session",
         "check_settings": "rewardscope.engine.session",
         "resolve_chain": "rewardscope.engine.session"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_engine(session: str, settings: ServiceConfig) -> SessionEngine:
    """The engine for a new session: reward-driven, warm-started per session."""
    from rewardscope.engine.session import SessionEngine  # noqa: PLC0415

    return SessionEngine(session, settings)


def warmup() -> None:
    """Compile numba kernels at service start so the first frame is not slow."""
    from rewardscope.science import atomfind, kernels, mixtures, refine  # noqa: PLC0415

    atomfind.warmup()
    kernels.warmup()
    mixtures.warmup()
    refine.warmup()


__all__ = ["Analysis", "SessionEngine", "check_settings", "make_engine", "resolve_chain", "warmup"]
