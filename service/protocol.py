"""The rewardscope wire protocol: the only module that knows bytes.

ZeroMQ multipart messages whose first part is a topic, second a msgpack map header, and the
rest raw C-order array buffers. Modelled on the DECTRIS stream (start / image / end with
series ids and frame numbers), but msgpack, multipart and never pickle. The service, the
acquisition client and the simulators all import this module, so the format lives in one place.
See ``docs/PROTOCOL.md`` for the human description and a complete example client.

Every ``decode_*`` validates up front and raises :class:`ProtocolError` whose ``code`` names
what was wrong; callers count that code and publish it on the error topic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from rewardscope.plaindata import plain

VERSION = 1

# Topics (first multipart frame). Bytes so that SUB sockets can filter on them.
TOPIC_START = b"start"
TOPIC_FRAME = b"frame"
TOPIC_END = b"end"
TOPIC_RESULT = b"result"
TOPIC_STATUS = b"status"
TOPIC_ERROR = b"error"
INSTRUMENT_TOPICS = (TOPIC_START, TOPIC_FRAME, TOPIC_END)
RESULT_TOPICS = (TOPIC_RESULT, TOPIC_STATUS, TOPIC_ERROR)

DEFAULT_FRAMES_URL = "tcp://127.0.0.1:5555"
DEFAULT_RESULTS_URL = "tcp://127.0.0.1:5556"
DEFAULT_CONTROL_URL = "tcp://127.0.0.1:5557"
DEFAULT_METRICS_PORT = 9108

# Pixel dtypes a frame may carry (numpy ``dtype.str`` spelling, either byte order).
FRAME_DTYPES = frozenset(
    p + k for p in "<>" for k in ("u1", "u2", "u4", "i1", "i2", "i4", "f4", "f8")
) | {"|u1", "|i1"}
# Dtypes allowed for result arrays (labels, masks, coordinates).
RESULT_DTYPES = FRAME_DTYPES | {"|b1", "<i8", "<u8"}

# Error codes published on the error topic; the metrics module pre-initialises one series each.
ERROR_CODES = (
    "bad_topic",  # first part is not a known topic
    "bad_parts",  # wrong number of multipart parts
    "bad_header",  # header is not a msgpack map (garbage bytes)
    "oversized",  # message, header or frame dimensions over the configured caps
    "unknown_version",  # header ``v`` is not VERSION
    "missing_key",  # a required header key is absent
    "wrong_type",  # a header value has the wrong type or an impossible value
    "bad_dtype",  # dtype string not in FRAME_DTYPES
    "buffer_size",  # len(pixels) != prod(shape) * itemsize (truncated or padded)
    "non_finite",  # NaN or Inf pixels
    "non_monotonic_seq",  # seq went backwards within a session
    "duplicate",  # the same seq twice in a session
    "analysis_failed",  # a workflow raised on this frame
)


class ProtocolError(ValueError):
    """A message that cannot be accepted; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, *, session: str | None = None,
                 seq: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.session = session
        self.seq = seq


@dataclass(frozen=True)
class Limits:
    """Size caps applied before anything is allocated (oversized input is refused, not parsed)."""

    max_message_bytes: int = 256 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_dim: int = 8192
    max_pixels: int = 8192 * 8192
    max_str_len: int = 16 * 1024
    max_bin_len: int = 16 * 1024
    max_array_len: int = 100_000
    max_map_len: int = 1024


DEFAULT_LIMITS = Limits()


# ----------------------------------------------------------------------------- msgpack helpers

def pack(obj: Any) -> bytes:
    """msgpack-encode plain data (dicts, lists, str, numbers, bytes). Never pickle."""
    return msgpack.packb(obj, use_bin_type=True, default=_to_plain)


def unpack_map(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict:
    """Decode a msgpack map with explicit size limits; raise ProtocolError otherwise."""
    if len(data) > limits.max_header_bytes:
        raise ProtocolError("oversized", f"header of {len(data)} bytes exceeds "
                            f"{limits.max_header_bytes}")
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len, max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len, max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            TypeError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_header", f"header is not valid msgpack ({exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_header", f"header is a {type(obj).__name__}, not a map")
    return obj


def _to_plain(obj: Any) -> Any:
    """msgpack fallback for numpy scalars/arrays that slip into headers."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return plain(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} in a rewardscope message")


def _require(h: dict, key: str, types: type | tuple[type, ...], what: str = "") -> Any:
    if key not in h:
        raise ProtocolError("missing_key", f"header lacks '{key}'", session=_sess(h), seq=_seq(h))
    val = h[key]
    if isinstance(val, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ProtocolError("wrong_type", f"'{key}' must be {what or types}, got bool",
                            session=_sess(h), seq=_seq(h))
    if not isinstance(val, types):
        raise ProtocolError("wrong_type", f"'{key}' must be {what or types}, "
                            f"got {type(val).__name__}", session=_sess(h), seq=_seq(h))
    return val


def _sess(h: dict) -> str | None:
    s = h.get("session")
    return s if isinstance(s, str) else None


def _seq(h: dict) -> int | None:
    s = h.get("seq")
    return s if isinstance(s, int) and not isinstance(s, bool) else None


def _check_version(h: dict) -> None:
    v = _require(h, "v", int, "an integer")
    if v != VERSION:
        raise ProtocolError("unknown_version", f"protocol version {v} is not {VERSION}",
                            session=_sess(h), seq=_seq(h))


def _check_type(h: dict, expected: str) -> None:
    t = _require(h, "type", str, "a string")
    if t != expected:
        raise ProtocolError("wrong_type", f"'type' is '{t}' but the topic says '{expected}'",
                            session=_sess(h), seq=_seq(h))


# ----------------------------------------------------------------------------- instrument side

@dataclass(frozen=True)
class FrameHeader:
    """Typed frame header. ``lattice_px`` is the expected lattice spacing in pixels."""

    session: str
    seq: int
    t: float
    shape: tuple[int, int]
    dtype: str
    pixel_size_m: float | None = None
    origin_m: tuple[float, float] | None = None
    lattice_px: float | None = None
    meta: dict = field(default_factory=dict)

    def to_map(self) -> dict:
        m: dict[str, Any] = {"v": VERSION, "type": "frame", "session": self.session,
                             "seq": int(self.seq), "t": float(self.t),
                             "shape": [int(self.shape[0]), int(self.shape[1])],
                             "dtype": self.dtype}
        if self.pixel_size_m is not None:
            m["pixel_size_m"] = float(self.pixel_size_m)
        if self.origin_m is not None:
            m["origin_m"] = [float(self.origin_m[0]), float(self.origin_m[1])]
        if self.lattice_px is not None:
            m["lattice_px"] = float(self.lattice_px)
        if self.meta:
            m["meta"] = self.meta
        return m


@dataclass(frozen=True)
class Frame:
    """A decoded frame: header plus a read-only (rows, cols) pixel view of the message buffer."""

    header: FrameHeader
    pixels: np.ndarray

    @property
    def session(self) -> str:
        return self.header.session

    @property
    def seq(self) -> int:
        return self.header.seq


@dataclass(frozen=True)
class SessionMarker:
    """``start`` or ``end`` of a session (a DECTRIS series)."""

    kind: str  # "start" | "end"
    session: str
    t: float
    meta: dict = field(default_factory=dict)
    lattice_px: float | None = None
    n_frames: int | None = None  # on ``end``: how many frames the instrument sent


def encode_frame(pixels: np.ndarray, *, session: str, seq: int, t: float | None = None,
                 pixel_size_m: float | None = None, origin_m: tuple[float, float] | None = None,
                 lattice_px: float | None = None, meta: dict | None = None) -> list[bytes]:
    """Encode a 2-D array as ``[b"frame", header, pixels]`` (pixels are C-order raw bytes)."""
    arr = np.ascontiguousarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"pixels must be 2-D, got shape {arr.shape}")
    hdr = FrameHeader(session=session, seq=int(seq), t=time.time() if t is None else float(t),
                      shape=(int(arr.shape[0]), int(arr.shape[1])), dtype=arr.dtype.str,
                      pixel_size_m=pixel_size_m, origin_m=origin_m, lattice_px=lattice_px,
                      meta=meta or {})
    return [TOPIC_FRAME, pack(hdr.to_map()), arr.tobytes()]


def encode_start(session: str, *, t: float | None = None, lattice_px: float | None = None,
                 meta: dict | None = None) -> list[bytes]:
    return _encode_marker(TOPIC_START, "start", session, t, meta,
                          lattice_px=None if lattice_px is None else float(lattice_px))


def encode_end(session: str, *, t: float | None = None, n_frames: int | None = None,
               meta: dict | None = None) -> list[bytes]:
    return _encode_marker(TOPIC_END, "end", session, t, meta,
                          n_frames=None if n_frames is None else int(n_frames))


def _encode_marker(topic: bytes, kind: str, session: str, t: float | None, meta: dict | None,
                   **fields: Any) -> list[bytes]:
    """A start/end marker; ``fields`` that are None are left out, as is an empty ``meta``."""
    m: dict[str, Any] = {"v": VERSION, "type": kind, "session": session,
                         "t": time.time() if t is None else float(t)}
    m.update({k: v for k, v in fields.items() if v is not None})
    if meta:
        m["meta"] = meta
    return [topic, pack(m)]


def decode_instrument(parts: list[bytes], limits: Limits = DEFAULT_LIMITS
                      ) -> Frame | SessionMarker:
    """Decode and validate one message from the instrument (start, frame or end)."""
    if not parts:
        raise ProtocolError("bad_parts", "empty message")
    total = sum(len(p) for p in parts)
    if total > limits.max_message_bytes:
        raise ProtocolError("oversized", f"message of {total} bytes exceeds "
                            f"{limits.max_message_bytes}")
    topic = bytes(parts[0])
    if topic not in INSTRUMENT_TOPICS:
        raise ProtocolError("bad_topic", f"unknown topic {topic[:32]!r}")
    if topic == TOPIC_FRAME:
        if len(parts) != 3:
            raise ProtocolError("bad_parts", f"frame needs 3 parts, got {len(parts)}")
        return _decode_frame(parts[1], parts[2], limits)
    if len(parts) != 2:
        raise ProtocolError("bad_parts", f"{topic.decode()} needs 2 parts, got {len(parts)}")
    h = unpack_map(parts[1], limits)
    _check_version(h)
    kind = topic.decode()
    _check_type(h, kind)
    session = _require(h, "session", str, "a string")
    t = _require(h, "t", (int, float), "a number")
    meta = h.get("meta", {})
    if not isinstance(meta, dict):
        raise ProtocolError("wrong_type", "'meta' must be a map", session=session)
    lat = h.get("lattice_px")
    if lat is not None and (not isinstance(lat, (int, float)) or isinstance(lat, bool)
                            or not math.isfinite(lat) or lat <= 0):
        raise ProtocolError("wrong_type", "'lattice_px' must be a positive number",
                            session=session)
    n = h.get("n_frames")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ProtocolError("wrong_type", "'n_frames' must be a non-negative integer",
                            session=session)
    return SessionMarker(kind=kind, session=session, t=float(t), meta=meta,
                         lattice_px=None if lat is None else float(lat), n_frames=n)


def _decode_frame(header: bytes, buf: bytes, limits: Limits) -> Frame:
    h = unpack_map(header, limits)
    _check_version(h)
    _check_type(h, "frame")
    session = _require(h, "session", str, "a string")
    seq = _require(h, "seq", int, "an integer")
    if seq < 0:
        raise ProtocolError("wrong_type", f"'seq' must be >= 0, got {seq}", session=session)
    t = _require(h, "t", (int, float), "a number")
    shape = _require(h, "shape", list, "a [rows, cols] list")
    if (len(shape) != 2 or not all(isinstance(s, int) and not isinstance(s, bool)
                                   for s in shape)):
        raise ProtocolError("wrong_type", f"'shape' must be two integers, got {shape!r}",
                            session=session, seq=seq)
    rows, cols = shape
    if rows <= 0 or cols <= 0:
        raise ProtocolError("wrong_type", f"'shape' must be positive, got {shape}",
                            session=session, seq=seq)
    if rows > limits.max_dim or cols > limits.max_dim or rows * cols > limits.max_pixels:
        raise ProtocolError("oversized", f"frame {rows}x{cols} exceeds the cap of "
                            f"{limits.max_dim} per side / {limits.max_pixels} pixels",
                            session=session, seq=seq)
    dtype = _require(h, "dtype", str, "a numpy dtype string")
    if dtype not in FRAME_DTYPES:
        raise ProtocolError("bad_dtype", f"dtype '{dtype[:16]}' is not one of "
                            f"{sorted(FRAME_DTYPES)}", session=session, seq=seq)
    dt = np.dtype(dtype)
    expected = rows * cols * dt.itemsize
    if len(buf) != expected:
        raise ProtocolError("buffer_size", f"pixel buffer has {len(buf)} bytes, shape {shape} "
                            f"x {dtype} needs {expected}", session=session, seq=seq)
    meta = h.get("meta", {})
    if not isinstance(meta, dict):
        raise ProtocolError("wrong_type", "'meta' must be a map", session=session, seq=seq)
    psize = _optional_positive(h, "pixel_size_m", session, seq)
    lattice = _optional_positive(h, "lattice_px", session, seq)
    origin = h.get("origin_m")
    if origin is not None:
        if (not isinstance(origin, list) or len(origin) != 2
                or not all(isinstance(o, (int, float)) and not isinstance(o, bool)
                           for o in origin)):
            raise ProtocolError("wrong_type", "'origin_m' must be [x, y] numbers",
                                session=session, seq=seq)
        origin = (float(origin[0]), float(origin[1]))
    pixels = np.frombuffer(buf, dtype=dt).reshape(rows, cols)
    if dt.kind == "f" and not np.isfinite(pixels).all():
        bad = int((~np.isfinite(pixels)).sum())
        raise ProtocolError("non_finite", f"{bad} NaN/Inf pixels", session=session, seq=seq)
    hdr = FrameHeader(session=session, seq=seq, t=float(t), shape=(rows, cols), dtype=dtype,
                      pixel_size_m=psize, origin_m=origin, lattice_px=lattice, meta=meta)
    return Frame(header=hdr, pixels=pixels)


def _optional_positive(h: dict, key: str, session: str, seq: int) -> float | None:
    v = h.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
        raise ProtocolError("wrong_type", f"'{key}' must be a positive number, got {v!r}",
                            session=session, seq=seq)
    return float(v)


# ----------------------------------------------------------------------------- service side

@dataclass
class Result:
    """One analysed frame as published on the results socket.

    ``atoms`` is float32 (N, 2) with x = column, y = row in pixels; ``labels`` int16 (N,),
    -1 = not a key point. Extra arrays (e.g. ``amorphous_mask``) travel as further raw parts.
    """

    session: str
    seq: int
    latency_s: float
    n_evaluations: int
    params: dict
    rewards: dict
    pareto: list
    walls: list
    atoms: np.ndarray
    labels: np.ndarray
    extra: dict = field(default_factory=dict)  # free-form header fields (warm_started, ...)
    arrays: dict = field(default_factory=dict)  # extra named arrays beyond atoms/labels
    t: float = 0.0


def encode_result(r: Result) -> list[bytes]:
    """``[b"result", header, atoms, labels, *extra arrays]`` with an ``arrays`` manifest."""
    named = {"atoms": np.ascontiguousarray(r.atoms, dtype=np.float32).reshape(-1, 2),
             "labels": np.ascontiguousarray(r.labels, dtype=np.int16).reshape(-1)}
    for k, v in r.arrays.items():
        named[k] = np.ascontiguousarray(v)
    manifest = [{"name": k, "dtype": v.dtype.str, "shape": list(v.shape)}
                for k, v in named.items()]
    h = {"v": VERSION, "type": "result", "session": r.session, "seq": int(r.seq),
         "t": float(r.t or time.time()), "latency_s": float(r.latency_s),
         "n_evaluations": int(r.n_evaluations), "params": r.params, "rewards": r.rewards,
         "pareto": r.pareto, "walls": [[float(c) for c in w] for w in r.walls],
         "arrays": manifest}
    for k, v in r.extra.items():
        h.setdefault(k, v)
    return [TOPIC_RESULT, pack(h)] + [a.tobytes() for a in named.values()]


RESULT_LIMITS = Limits(max_header_bytes=16 * 1024 * 1024, max_array_len=10_000_000,
                       max_map_len=100_000)


def decode_result(parts: list[bytes], limits: Limits = RESULT_LIMITS) -> Result:
    """Decode a result message; arrays come back as numpy arrays (copies, writable)."""
    if len(parts) < 2 or bytes(parts[0]) != TOPIC_RESULT:
        raise ProtocolError("bad_topic", "not a result message")
    h = unpack_map(parts[1], limits)
    _check_version(h)
    _check_type(h, "result")
    manifest = _require(h, "arrays", list, "a list")
    if len(manifest) != len(parts) - 2:
        raise ProtocolError("bad_parts", f"manifest names {len(manifest)} arrays, "
                            f"message has {len(parts) - 2}")
    arrays: dict[str, np.ndarray] = {}
    for spec, buf in zip(manifest, parts[2:], strict=True):
        if not isinstance(spec, dict) or spec.get("dtype") not in RESULT_DTYPES:
            raise ProtocolError("bad_dtype", f"bad array spec {spec!r}")
        shape = tuple(int(s) for s in spec["shape"])
        dt = np.dtype(spec["dtype"])
        if len(buf) != int(np.prod(shape)) * dt.itemsize:
            raise ProtocolError("buffer_size", f"array '{spec['name']}' has {len(buf)} bytes")
        arrays[str(spec["name"])] = np.frombuffer(buf, dtype=dt).reshape(shape).copy()
    known = {"v", "type", "session", "seq", "t", "latency_s", "n_evaluations", "params",
             "rewards", "pareto", "walls", "arrays"}
    return Result(session=_require(h, "session", str), seq=_require(h, "seq", int),
                  latency_s=float(h.get("latency_s", 0.0)),
                  n_evaluations=int(h.get("n_evaluations", 0)), params=h.get("params", {}),
                  rewards=h.get("rewards", {}), pareto=h.get("pareto", []),
                  walls=h.get("walls", []), atoms=arrays.pop("atoms"),
                  labels=arrays.pop("labels"),
                  extra={k: v for k, v in h.items() if k not in known}, arrays=arrays,
                  t=float(h.get("t", 0.0)))


def encode_status(fields: dict) -> list[bytes]:
    """Heartbeat: state, frames seen/processed/dropped, last seq, uptime (free-form map)."""
    return [TOPIC_STATUS, pack({"v": VERSION, "type": "status", "t": time.time(), **fields})]


def encode_error(code: str, message: str, *, session: str | None = None,
                 seq: int | None = None) -> list[bytes]:
    """One rejected input, named by ``code`` (see ERROR_CODES)."""
    return [TOPIC_ERROR, pack({"v": VERSION, "type": "error", "t": time.time(), "code": code,
                               "message": message, "session": session, "seq": seq})]


def decode_event(parts: list[bytes]) -> tuple[str, dict]:
    """Decode a status or error message into (topic, header map)."""
    if len(parts) != 2:
        raise ProtocolError("bad_parts", f"expected 2 parts, got {len(parts)}")
    topic = bytes(parts[0]).decode(errors="replace")
    return topic, unpack_map(parts[1], RESULT_LIMITS)


# ----------------------------------------------------------------------------- control

CONTROL_COMMANDS = ("ping", "config", "set", "pause", "resume", "stats")


def encode_request(cmd: str, **args: Any) -> bytes:
    return pack({"cmd": cmd, **args})


def decode_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict:
    req = unpack_map(data, limits)
    cmd = req.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("missing_key", "control request lacks a string 'cmd'")
    return req


def encode_reply(ok: bool, **fields: Any) -> bytes:
    return pack({"ok": bool(ok), **fields})


def decode_reply(data: bytes) -> dict:
    return unpack_map(data, RESULT_LIMITS)
