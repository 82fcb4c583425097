"""Fault injection with exact bookkeeping: the stream the simulator sends, and what it owes.

Why: the service must count every rejection by code and every missing frame exactly, so each
injected fault is built to fail :func:`rewardscope.protocol.decode_instrument` (or the
per-session sequence checks) with one known code, and a :class:`Ledger` adds up what a correct
service must report. Decode-level faults are verified against the real decoder when built.

Fault names and what the service must report (``FAULT_CODES``):

=============  ===================  =====================================================
name           code                 message
=============  ===================  =====================================================
garbage        bad_header           ``[b"frame", random bytes, pixels]``
topic          bad_topic            ``[b"frame" + random suffix, header, pixels]`` (the
                                    prefix passes SUB filters on ``b"frame"``)
parts          bad_parts            ``[b"frame", header]`` (pixel part missing)
truncated      buffer_size          pixel buffer shortened by 1..len-1 bytes
dtype          bad_dtype            header dtype ``"<c16"``, ``"object"``, ``"|S4"`` ...
nan            non_finite           ``<f4`` frame with NaN/Inf pixels
huge           oversized            shape ``[100000, 100000]``, tiny buffer
version        unknown_version      header ``v`` != protocol.VERSION
missing        missing_key          one required header key removed
wrongtype      wrong_type           ``seq`` sent as a string
duplicate      duplicate            the previous good frame re-sent verbatim (same seq)
gap            (none: seq_gap)      the next good frame's seq jumps by k (1..3): the
                                    service counts exactly k missing frames
restart        (none)               a new ``start`` for the same session; seq restarts at 0
=============  ===================  =====================================================

Sequence rules the plan follows (and a service must apply): malformed messages carry the seq
of the next good frame but never advance the sequence; a duplicate repeats the *last* good seq
of the current run; faults are only placed between two good frames, so every gap is followed
by a frame that reveals it; ``end`` carries ``n_frames`` = last seq of the current run + 1, so
no tail gap is ever owed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from rewardscope import protocol
from rewardscope.simulators.perovskite import PerovskiteSimulator, Truth

FAULT_CODES: dict[str, str | None] = {
    "garbage": "bad_header",
    "topic": "bad_topic",
    "parts": "bad_parts",
    "truncated": "buffer_size",
    "dtype": "bad_dtype",
    "nan": "non_finite",
    "huge": "oversized",
    "version": "unknown_version",
    "missing": "missing_key",
    "wrongtype": "wrong_type",
    "duplicate": "duplicate",
    "gap": None,
    "restart": None,
}
DECODE_FAULTS = ("garbage", "topic", "parts", "truncated", "dtype", "nan", "huge", "version",
                 "missing", "wrongtype")
SEQUENCE_FAULTS = ("duplicate", "gap", "restart")
ALL_FAULTS = DECODE_FAULTS + SEQUENCE_FAULTS
# Accepted spellings on the command line: error codes and a few obvious aliases.
ALIASES = {"bad_header": "garbage", "bad_topic": "topic", "bad_parts": "parts",
           "buffer_size": "truncated", "truncate": "truncated", "bad_dtype": "dtype",
           "non_finite": "nan", "inf": "nan", "oversized": "huge", "unknown_version": "version",
           "missing_key": "missing", "wrong_type": "wrongtype", "dup": "duplicate",
           "duplicates": "duplicate", "seq_gap": "gap"}
BAD_DTYPES = ("<c16", "object", "|S4", "<U8", "<m8", "float32", "<f2", "|V2")
_MAX_TRIES = 1000

Parts = list[bytes]


# ---------------------------------------------------------------------- decode-level faults

def _frame_map(template: np.ndarray, session: str, seq: int) -> tuple[dict, bytes]:
    parts = protocol.encode_frame(template, session=session, seq=seq)
    return protocol.unpack_map(parts[1]), parts[2]


def garbage_header(rng: np.random.Generator, session: str, seq: int,
                   template: np.ndarray) -> Parts:
    """Frame topic, header of random bytes (never a msgpack map)."""
    return [protocol.TOPIC_FRAME, rng.bytes(int(rng.integers(1, 256))), template.tobytes()]


def bad_topic(rng: np.random.Generator, session: str, seq: int, template: np.ndarray) -> Parts:
    """An unknown topic that still starts with b"frame", so SUB prefix filters let it in."""
    parts = protocol.encode_frame(template, session=session, seq=seq)
    suffix = rng.bytes(int(rng.integers(1, 12)))
    return [protocol.TOPIC_FRAME + suffix, *parts[1:]]


def missing_part(rng: np.random.Generator, session: str, seq: int,
                 template: np.ndarray) -> Parts:
    """A frame without its pixel part."""
    return protocol.encode_frame(template, session=session, seq=seq)[:2]


def truncated_buffer(rng: np.random.Generator, session: str, seq: int,
                     template: np.ndarray) -> Parts:
    parts = protocol.encode_frame(template, session=session, seq=seq)
    cut = int(rng.integers(1, len(parts[2])))
    return [parts[0], parts[1], parts[2][:-cut]]


def wrong_dtype(rng: np.random.Generator, session: str, seq: int, template: np.ndarray) -> Parts:
    h, buf = _frame_map(template, session, seq)
    h["dtype"] = str(rng.choice(BAD_DTYPES))
    return [protocol.TOPIC_FRAME, protocol.pack(h), buf]


def nan_pixels(rng: np.random.Generator, session: str, seq: int, template: np.ndarray) -> Parts:
    px = template.astype("<f4")
    n = int(rng.integers(1, 16))
    flat = px.reshape(-1)
    flat[rng.integers(0, flat.size, n)] = rng.choice([np.nan, np.inf, -np.inf], n)
    return protocol.encode_frame(px, session=session, seq=seq)


def huge_dims(rng: np.random.Generator, session: str, seq: int, template: np.ndarray) -> Parts:
    h, _ = _frame_map(template[:2, :2], session, seq)
    h["shape"] = [100_000, 100_000]
    return [protocol.TOPIC_FRAME, protocol.pack(h), rng.bytes(8)]


def unknown_version(rng: np.random.Generator, session: str, seq: int,
                    template: np.ndarray) -> Parts:
    h, buf = _frame_map(template, session, seq)
    h["v"] = int(rng.choice([0, protocol.VERSION + 1, 99, 255]))
    return [protocol.TOPIC_FRAME, protocol.pack(h), buf]


def missing_key(rng: np.random.Generator, session: str, seq: int, template: np.ndarray) -> Parts:
    h, buf = _frame_map(template, session, seq)
    del h[str(rng.choice(["v", "type", "session", "seq", "t", "shape", "dtype"]))]
    return [protocol.TOPIC_FRAME, protocol.pack(h), buf]


def wrong_type(rng: np.random.Generator, session: str, seq: int, template: np.ndarray) -> Parts:
    h, buf = _frame_map(template, session, seq)
    h["seq"] = str(seq)
    return [protocol.TOPIC_FRAME, protocol.pack(h), buf]


BUILDERS: dict[str, Callable[[np.random.Generator, str, int, np.ndarray], Parts]] = {
    "garbage": garbage_header, "topic": bad_topic, "parts": missing_part,
    "truncated": truncated_buffer, "dtype": wrong_dtype, "nan": nan_pixels, "huge": huge_dims,
    "version": unknown_version, "missing": missing_key, "wrongtype": wrong_type,
}


def rejection_code(parts: Parts) -> str | None:
    """The code the real decoder rejects ``parts`` with, or None if it decodes."""
    try:
        protocol.decode_instrument(parts)
    except protocol.ProtocolError as exc:
        return exc.code
    return None


def make_fault(name: str, rng: np.random.Generator, *, session: str, seq: int,
               template: np.ndarray) -> tuple[Parts, str]:
    """Build one malformed message for decode-level fault ``name``: (parts, expected code).

    Random builders are re-drawn until the real decoder gives the expected code, so the code
    is a guarantee, not a likelihood (random bytes can, rarely, form a valid msgpack map).
    """
    name = canonical(name)
    if name not in BUILDERS:
        raise ValueError(f"{name!r} is not a message fault; use one of {DECODE_FAULTS}")
    code = FAULT_CODES[name]
    assert code is not None
    for _ in range(_MAX_TRIES):
        parts = BUILDERS[name](rng, session, seq, template)
        try:
            got = rejection_code(parts)
        except Exception:  # any non-protocol failure: draw again
            continue
        if got == code:
            return parts, code
    raise RuntimeError(f"could not build a '{name}' fault rejected as '{code}'")


def canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in FAULT_CODES:
        raise ValueError(f"unknown fault {name!r}; choose from {', '.join(ALL_FAULTS)}")
    return key


# ---------------------------------------------------------------------- plan and ledger

@dataclass(frozen=True)
class FaultPlan:
    """Insert one fault after every ``every``-th good frame, cycling through ``kinds`` in
    order (``order="cycle"``) or drawing them at random (``order="random"``)."""

    every: int = 5
    kinds: tuple[str, ...] = ()
    seed: int = 0
    order: str = "cycle"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(canonical(k) for k in self.kinds))
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.order not in ("cycle", "random"):
            raise ValueError(f"order must be 'cycle' or 'random', got {self.order!r}")

    @classmethod
    def parse(cls, text: str | None, *, every: int = 5, seed: int = 0,
              order: str = "cycle") -> FaultPlan:
        """``"garbage,truncated,gap"``; ``"all"`` = every fault; ``""``/``"none"`` = none."""
        text = (text or "").strip()
        if text.lower() in ("", "none", "off"):
            return cls(every=every, kinds=(), seed=seed, order=order)
        if text.lower() == "all":
            return cls(every=every, kinds=ALL_FAULTS, seed=seed, order=order)
        return cls(every=every, kinds=tuple(k for k in text.split(",") if k.strip()),
                   seed=seed, order=order)

    @property
    def enabled(self) -> bool:
        return bool(self.kinds)


@dataclass
class PlannedMessage:
    """One multipart message of the stream and what the service must do with it."""

    parts: Parts
    kind: str  # "start" | "frame" | "end" | a fault name ("restart" is a start marker)
    expected_error: str | None  # protocol error code the service must report, or None
    seq: int | None  # frame seq on the wire (faults: the seq they claim), None for markers
    session: str = ""
    truth: Truth | None = None  # good frames only
    index: int | None = None  # simulator frame index, good frames only
    gap_before: int = 0  # good frames: seqs skipped just before this one (the service's gap)


@dataclass
class Ledger:
    """What a correct service must report after receiving a planned stream.

    - ``good_frames``: frames that decode and are new; each must yield exactly one result.
    - ``errors``: rejected messages by protocol code (decode faults and ``duplicate``).
    - ``seq_gaps``: total frames skipped (sum of k over ``gap_events``); the service's
      ``seq_gap`` drop counter must equal it. ``end`` markers never add a tail gap.
    - ``duplicates`` = ``errors["duplicate"]``; ``restarts``: start markers inside a live
      session (``starts`` counts them too).
    - ``messages`` = starts + ends + good_frames + sum(errors.values()).
    """

    messages: int = 0
    starts: int = 0
    ends: int = 0
    restarts: int = 0
    good_frames: int = 0
    seq_gaps: int = 0
    gap_events: int = 0
    duplicates: int = 0
    errors: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)  # by fault name, gaps included
    sessions: set = field(default_factory=set)

    def add(self, msg: PlannedMessage) -> None:
        self.messages += 1
        if msg.session:
            self.sessions.add(msg.session)
        if msg.kind in ("start", "restart"):
            self.starts += 1
        if msg.kind == "end":
            self.ends += 1
        if msg.kind in FAULT_CODES:
            self.faults[msg.kind] += 1
        if msg.kind == "restart":
            self.restarts += 1
        if msg.expected_error is not None:
            self.errors[msg.expected_error] += 1
            if msg.expected_error == "duplicate":
                self.duplicates += 1
        if msg.kind == "frame":
            self.good_frames += 1
            if msg.gap_before:
                self.seq_gaps += msg.gap_before
                self.gap_events += 1
                self.faults["gap"] += 1

    @classmethod
    def of(cls, messages: Iterable[PlannedMessage]) -> Ledger:
        led = cls()
        for m in messages:
            led.add(m)
        return led

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict:
        return {"messages": self.messages, "starts": self.starts, "ends": self.ends,
                "restarts": self.restarts, "good_frames": self.good_frames,
                "seq_gaps": self.seq_gaps, "gap_events": self.gap_events,
                "duplicates": self.duplicates, "errors": dict(sorted(self.errors.items())),
                "faults": dict(sorted(self.faults.items())), "sessions": sorted(self.sessions)}


def plan_stream(sim: PerovskiteSimulator, n_frames: int, session: str,
                faults: FaultPlan | None = None, *, frame_meta: dict | None = None
                ) -> Iterator[PlannedMessage]:
    """Yield start, ``n_frames`` good frames with faults between them, then end.

    Lazy: each frame is rendered and stamped (``t`` = wall clock) when it is requested, so a
    paced publisher sends fresh timestamps. Simulator frame index = good-frame count, so
    drift advances per good frame, independently of the seq numbering.
    """
    faults = faults or FaultPlan()
    rng = np.random.default_rng([faults.seed, 0xFA17])
    lat = sim.config.lattice_px
    yield PlannedMessage(protocol.encode_start(session, lattice_px=lat), "start", None, None,
                         session)
    seq, pending_gap, n_faults = 0, 0, 0
    last_good: PlannedMessage | None = None
    template = np.zeros(sim.config.shape, np.dtype(sim.config.dtype))
    for i in range(n_frames):
        f = sim.frame(i)
        seq += pending_gap
        meta = {"sim_index": i, "sim_t": f.t, **(frame_meta or {})}
        parts = protocol.encode_frame(f.pixels, session=session, seq=seq, lattice_px=lat,
                                      pixel_size_m=sim.pixel_size_m, meta=meta)
        last_good = PlannedMessage(parts, "frame", None, seq, session, f.truth, i, pending_gap)
        yield last_good
        template, seq, pending_gap = f.pixels, seq + 1, 0
        if not faults.enabled or (i + 1) % faults.every or i == n_frames - 1:
            continue
        if faults.order == "cycle":
            kind = faults.kinds[n_faults % len(faults.kinds)]
        else:
            kind = faults.kinds[int(rng.integers(len(faults.kinds)))]
        n_faults += 1
        if kind == "gap":
            pending_gap = int(rng.integers(1, 4))
        elif kind == "duplicate":
            yield PlannedMessage(last_good.parts, "duplicate", "duplicate", last_good.seq,
                                 session)
        elif kind == "restart":
            yield PlannedMessage(protocol.encode_start(session, lattice_px=lat), "restart",
                                 None, None, session)
            seq = 0
        else:
            parts, code = make_fault(kind, rng, session=session, seq=seq, template=template)
            yield PlannedMessage(parts, kind, code, seq, session)
    yield PlannedMessage(protocol.encode_end(session, n_frames=seq), "end", None, None, session)

