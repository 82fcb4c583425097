"""Ingest: wire messages in, validated ``Frame`` objects out, with exact sequence accounting.

Knows nothing about analysis. The daemon feeds it every message from the frames socket; it
decodes (via :mod:`rewardscope.protocol`), tracks each session's sequence numbers and returns
what the daemon should do. A frame whose header has no ``lattice_px`` gets its session start
marker's (frame header > session start > config ``lattice_px``, the engine's fallback).
Rejections raise :class:`~rewardscope.protocol.ProtocolError`, whose code the daemon counts and
publishes.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace

from rewardscope import protocol
from rewardscope.protocol import Frame, ProtocolError, SessionMarker


@dataclass
class SessionSequence:
    """Per-session accounting. ``gaps`` counts frames the instrument sent that never arrived."""

    session: str
    started: bool = False  # a start marker was seen, so seq 0 is the expected first frame
    last_seq: int | None = None
    frames: int = 0
    gaps: int = 0
    duplicates: int = 0
    restarts: int = 0
    last_seen_monotonic: float = field(default_factory=time.monotonic)
    ended: bool = False
    lattice_px: float | None = None  # from the start marker; for frames whose header has none


@dataclass
class Accepted:
    """A frame that passed validation; ``gap`` frames were skipped just before it."""

    frame: Frame
    gap: int
    received_monotonic: float


@dataclass
class Marker:
    """A start/end marker; for an end, ``tail_gap`` frames at the end never arrived."""

    marker: SessionMarker
    tail_gap: int = 0


class Ingest:
    """Decode + sequence checks for every session on one frames socket."""

    def __init__(self, limits: protocol.Limits = protocol.DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.sessions: dict[str, SessionSequence] = {}
        self.errors: Counter[str] = Counter()
        self.gaps_total = 0

    def accept(self, parts: list[bytes]) -> Accepted | Marker:
        """Decode one message; raise ProtocolError (already counted) when it is refused."""
        now = time.monotonic()
        try:
            msg = protocol.decode_instrument(parts, self.limits)
            if isinstance(msg, SessionMarker):
                return self._marker(msg, now)
            return self._frame(msg, now)
        except ProtocolError as exc:
            self.errors[exc.code] += 1
            raise

    def _marker(self, m: SessionMarker, now: float) -> Marker:
        seq = self.sessions.get(m.session)
        if m.kind == "start":
            if seq is not None and not seq.ended:
                # A start inside a live session: the instrument restarted; seq starts afresh.
                seq.restarts += 1
                seq.started, seq.last_seq, seq.last_seen_monotonic = True, None, now
                seq.lattice_px = m.lattice_px
            else:
                self.sessions[m.session] = SessionSequence(m.session, started=True,
                                                           last_seen_monotonic=now,
                                                           lattice_px=m.lattice_px)
            return Marker(m)
        if seq is None:
            seq = self.sessions[m.session] = SessionSequence(m.session, last_seen_monotonic=now)
        tail = 0
        if m.n_frames is not None:
            expected_last = m.n_frames - 1
            last = -1 if seq.last_seq is None else seq.last_seq
            tail = max(0, expected_last - last)
            seq.gaps += tail
            self.gaps_total += tail
        seq.ended = True
        seq.last_seen_monotonic = now
        return Marker(m, tail_gap=tail)

    def _frame(self, f: Frame, now: float) -> Accepted:
        seq = self.sessions.get(f.session)
        if seq is None or seq.ended:
            seq = self.sessions[f.session] = SessionSequence(f.session, last_seen_monotonic=now)
        gap = 0
        if seq.last_seq is None:
            if seq.started:
                gap = f.seq  # frames 0 .. seq-1 of a started session never arrived
        elif f.seq == seq.last_seq:
            seq.duplicates += 1
            raise ProtocolError("duplicate", f"seq {f.seq} already received",
                                session=f.session, seq=f.seq)
        elif f.seq < seq.last_seq:
            raise ProtocolError("non_monotonic_seq", f"seq {f.seq} after {seq.last_seq}",
                                session=f.session, seq=f.seq)
        else:
            gap = f.seq - seq.last_seq - 1
        seq.last_seq = f.seq
        seq.frames += 1
        seq.gaps += gap
        seq.last_seen_monotonic = now
        self.gaps_total += gap
        if f.header.lattice_px is None and seq.lattice_px is not None:
            # precedence: frame header > session start > config (the engine's fallback)
            f = replace(f, header=replace(f.header, lattice_px=seq.lattice_px))
        return Accepted(f, gap=gap, received_monotonic=now)

    def silent_sessions(self, timeout_s: float) -> list[str]:
        """Sessions with no message for ``timeout_s`` that never sent an end."""
        now = time.monotonic()
        return [s.session for s in self.sessions.values()
                if not s.ended and now - s.last_seen_monotonic > timeout_s]

    def close(self, session: str) -> SessionSequence | None:
        s = self.sessions.pop(session, None)
        if s is not None:
            s.ended = True
        return s
