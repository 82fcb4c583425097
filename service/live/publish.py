"""Publish: ``Analysis`` objects to result messages (the last step of the one-way data flow)."""

from __future__ import annotations

import time

from rewardscope import protocol
from rewardscope.engine.analysis import Analysis
from rewardscope.protocol import Frame


def result_message(frame: Frame, analysis: Analysis, received_monotonic: float) -> list[bytes]:
    """Encode the chosen analysis of ``frame``; latency runs from receipt to now."""
    latency = time.monotonic() - received_monotonic
    extra = {**analysis.scalars,
             "warm_started": bool(analysis.warm_started),
             "timings": {k: round(float(v), 6) for k, v in analysis.timings.items()},
             "optimizer_s": round(float(analysis.optimizer_s), 6),
             "frame_t": frame.header.t}
    if analysis.hypervolume:
        extra["hypervolume"] = {k: float(v) for k, v in analysis.hypervolume.items()}
    result = protocol.Result(
        session=frame.session, seq=frame.seq, latency_s=latency,
        n_evaluations=analysis.n_evaluations, params=analysis.params, rewards=analysis.rewards,
        pareto=analysis.pareto, walls=analysis.walls, atoms=analysis.atoms,
        labels=analysis.labels, extra=extra, arrays=analysis.arrays)
    return protocol.encode_result(result)


def regions_message(frame: Frame, analysis: Analysis, mode: str = "auto") -> list[bytes] | None:
    """``[b"regions", header]`` with the frame's suggestions, or None (none, or mode ``off``).

    Raises
    ------
    ProtocolError
        A suggestion the wire cannot carry (the result is published regardless).
    """
    regions = list(getattr(analysis, "regions", None) or [])
    if mode == "off" or not regions:
        return None
    return protocol.encode_regions(frame.session, frame.seq, regions,
                                   frame_shape=frame.header.shape)
