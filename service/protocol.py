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
TOPIC_REGIONS = b"regions"
TOPIC_SCAN = b"scan"
INSTRUMENT_TOPICS = (TOPIC_START, TOPIC_FRAME, TOPIC_END)
RESULT_TOPICS = (TOPIC_RESULT, TOPIC_STATUS, TOPIC_ERROR)
# Recommended regions (suggestions) and released scans; subscribe to them explicitly.
REGION_TOPICS = (TOPIC_REGIONS, TOPIC_SCAN)

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

# Codes of control replies about suggestions (``{"ok": false, "code": ..., "error": ...}``);
# they never appear on the error topic.
CONTROL_ERROR_CODES = (
    "unknown_suggestion",  # no pending suggestion has this id (never seen, or already decided)
    "expired_suggestion",  # the suggestion was pending but expired (regions_expiry_s)
    "outside_sample",  # its box lies outside the frame it came from / the sample extent
    "bad_command",  # a malformed suggestions/approve/reject request (id missing, wrong type)
)


class ProtocolError(ValueError):
    """A message that cannot be accepted; ``code`` is one of :data:`ERROR_CODES` (or, for a
    control request about suggestions, :data:`CONTROL_ERROR_CODES`)."""

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


# ----------------------------------------------------------------------------- regions + scans

REGION_REASONS = ("wall", "junction", "domain", "amorphous", "instability", "uncertainty",
                  "novelty")
"""Why a region is suggested (a suggestion's ``reason``; the keys of ``regions_weights``)."""
MAX_ID_LEN = 64
# Suggestion keys that are numbers / optional numbers / 4-boxes / 2-points.
_SUGGESTION_FLOATS = ("score", "significance", "rotation_rad", "magnification")


@dataclass(frozen=True)
class Regions:
    """``[b"regions", header]``: the ranked suggestions made from one frame (``seq``).

    ``frame_shape`` (rows, cols) is the frame the pixel boxes refer to, when the service sent it.
    """

    session: str
    seq: int
    t: float
    regions: list[dict]
    frame_shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class Scan:
    """``[b"scan", header]``: a released suggestion, i.e. where the instrument should image next.

    ``box_px`` [x0, y0, x1, y1] frame px; ``center_m`` [x, y] m and ``fov_m`` m are None
    without a pixel size; ``rotation_rad`` rad; ``magnification`` frame fov / region fov.
    ``decision`` is ``"auto"`` (mode auto) or ``"approved"`` (an operator approved it).
    """

    session: str
    seq: int
    t: float
    id: str
    box_px: list[float]
    center_m: list[float] | None
    fov_m: float | None
    rotation_rad: float
    magnification: float
    reason: str | None = None
    decision: str | None = None

    def to_map(self) -> dict:
        """The header map (also the ``scan`` field of an ``approve`` reply)."""
        m: dict[str, Any] = {"v": VERSION, "type": "scan", "session": self.session,
                             "seq": int(self.seq), "t": float(self.t), "id": self.id,
                             "center_m": self.center_m, "fov_m": self.fov_m,
                             "rotation_rad": float(self.rotation_rad),
                             "box_px": list(self.box_px),
                             "magnification": float(self.magnification)}
        if self.reason is not None:
            m["reason"] = self.reason
        if self.decision is not None:
            m["decision"] = self.decision
        return m


def _bad(code: str, message: str, h: dict | None = None) -> ProtocolError:
    h = h or {}
    return ProtocolError(code, message, session=_sess(h), seq=_seq(h))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_id(v: Any, code: str = "wrong_type") -> str:
    """A suggestion id: a non-empty string of at most :data:`MAX_ID_LEN` characters."""
    if not isinstance(v, str) or not v or len(v) > MAX_ID_LEN:
        shown = v[:16] + "..." if isinstance(v, str) and len(v) > 16 else v
        raise ProtocolError(code, f"suggestion id must be a non-empty string of at most "
                            f"{MAX_ID_LEN} characters, got {shown!r}")
    return v


def _box(v: Any, key: str) -> list[float]:
    if not isinstance(v, (list, tuple)) or len(v) != 4 or not all(_number(c) for c in v):
        raise ProtocolError("wrong_type", f"'{key}' must be 4 finite numbers, got {v!r}")
    x0, y0, x1, y1 = (float(c) for c in v)
    if not (x0 < x1 and y0 < y1):
        raise ProtocolError("wrong_type", f"'{key}' must have x0 < x1 and y0 < y1, got {v!r}")
    return [x0, y0, x1, y1]


def _point(v: Any, key: str) -> list[float]:
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_number(c) for c in v):
        raise ProtocolError("wrong_type", f"'{key}' must be [x, y] finite numbers, got {v!r}")
    return [float(v[0]), float(v[1])]


def check_suggestion(s: Any) -> dict:
    """Validate one suggestion and return a normalised copy (plain floats and lists).

    Parameters
    ----------
    s : dict
        ``id`` (str, <= 64 chars), ``score`` (higher = look first), ``reason`` (one of
        :data:`REGION_REASONS`), ``significance`` (-log10 p), ``box_px`` [x0, y0, x1, y1] (frame
        px, x0 < x1, y0 < y1), ``box_m`` (m, or None), ``center_m`` [x, y] (m, or None),
        ``fov_m`` (m, > 0, or None), ``rotation_rad`` (rad), ``magnification`` (>= 1).
        Further keys are kept as they are.

    Returns
    -------
    dict
        The suggestion with every contract field checked and converted to plain types.

    Raises
    ------
    ProtocolError
        ``missing_key`` or ``wrong_type`` naming the field.
    """
    if not isinstance(s, dict):
        raise ProtocolError("wrong_type", f"a suggestion must be a map, got {type(s).__name__}")
    for key in ("id", "score", "reason", "significance", "box_px"):
        if key not in s:
            raise ProtocolError("missing_key", f"suggestion lacks '{key}'")
    out = dict(s)
    out["id"] = check_id(s["id"])
    if s["reason"] not in REGION_REASONS:
        raise ProtocolError("wrong_type", f"suggestion reason {s['reason']!r} is not one of "
                            f"{REGION_REASONS}")
    for key in _SUGGESTION_FLOATS:
        v = s.get(key, 0.0 if key == "rotation_rad" else 1.0 if key == "magnification" else None)
        if not _number(v):
            raise ProtocolError("wrong_type", f"suggestion '{key}' must be a finite number, "
                                f"got {v!r}")
        out[key] = float(v)
    if out["magnification"] < 1.0:
        raise ProtocolError("wrong_type", f"suggestion magnification must be >= 1, got "
                            f"{out['magnification']}")
    out["box_px"] = _box(s["box_px"], "box_px")
    out["box_m"] = None if s.get("box_m") is None else _box(s["box_m"], "box_m")
    out["center_m"] = None if s.get("center_m") is None else _point(s["center_m"], "center_m")
    fov = s.get("fov_m")
    if fov is not None and (not _number(fov) or fov <= 0):
        raise ProtocolError("wrong_type", f"suggestion 'fov_m' must be a positive number or "
                            f"nil, got {fov!r}")
    out["fov_m"] = None if fov is None else float(fov)
    return out


def _frame_shape(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in v)):
        raise ProtocolError("wrong_type", f"'frame_shape' must be two positive integers, "
                            f"got {v!r}")
    return int(v[0]), int(v[1])


def encode_regions(session: str, seq: int, regions: list[dict], *, t: float | None = None,
                   frame_shape: tuple[int, int] | None = None) -> list[bytes]:
    """``[b"regions", header]`` with the validated suggestions of frame ``seq`` (>= 1 of them).

    Raises
    ------
    ProtocolError
        ``wrong_type``/``missing_key`` for a malformed suggestion or an empty list.
    """
    checked = [check_suggestion(s) for s in regions]
    if not checked:
        raise ProtocolError("wrong_type", "a regions message carries at least one suggestion",
                            session=session, seq=seq)
    if len({s["id"] for s in checked}) != len(checked):
        raise ProtocolError("wrong_type", "suggestion ids repeat within one message",
                            session=session, seq=seq)
    h: dict[str, Any] = {"v": VERSION, "type": "regions", "session": session, "seq": int(seq),
                         "t": time.time() if t is None else float(t), "regions": checked}
    if frame_shape is not None:
        h["frame_shape"] = [int(frame_shape[0]), int(frame_shape[1])]
    return [TOPIC_REGIONS, pack(h)]


def _region_header(parts: list[bytes], topic: bytes) -> dict:
    if len(parts) != 2:
        raise ProtocolError("bad_parts", f"{topic.decode()} needs 2 parts, got {len(parts)}")
    if bytes(parts[0]) != topic:
        raise ProtocolError("bad_topic", f"not a {topic.decode()} message")
    h = unpack_map(parts[1], RESULT_LIMITS)
    _check_version(h)
    _check_type(h, topic.decode())
    _require(h, "session", str, "a string")
    seq = _require(h, "seq", int, "an integer")
    if seq < 0:
        raise _bad("wrong_type", f"'seq' must be >= 0, got {seq}", h)
    t = _require(h, "t", (int, float), "a number")
    if not math.isfinite(t):
        raise _bad("wrong_type", "'t' must be finite", h)
    return h


def _with_context(h: dict, fn, *args):
    try:
        return fn(*args)
    except ProtocolError as exc:
        raise _bad(exc.code, exc.message, h) from None


def decode_regions(parts: list[bytes]) -> Regions:
    """Decode and validate a ``regions`` message (every suggestion checked)."""
    h = _region_header(parts, TOPIC_REGIONS)
    regions = _require(h, "regions", list, "a list of suggestions")
    checked = [_with_context(h, check_suggestion, s) for s in regions]
    if not checked:
        raise _bad("wrong_type", "a regions message carries at least one suggestion", h)
    return Regions(session=h["session"], seq=h["seq"], t=float(h["t"]), regions=checked,
                   frame_shape=_with_context(h, _frame_shape, h.get("frame_shape")))


def scan_from_suggestion(s: dict, *, session: str, seq: int, t: float | None = None,
                         decision: str | None = None) -> Scan:
    """The scan that releasing suggestion ``s`` (of frame ``seq``) sends to the instrument."""
    c = check_suggestion(s)
    return Scan(session=session, seq=int(seq), t=time.time() if t is None else float(t),
                id=c["id"], box_px=c["box_px"], center_m=c["center_m"], fov_m=c["fov_m"],
                rotation_rad=c["rotation_rad"], magnification=c["magnification"],
                reason=c["reason"], decision=decision)


def encode_scan(scan: Scan) -> list[bytes]:
    """``[b"scan", header]``."""
    return [TOPIC_SCAN, pack(scan.to_map())]


def decode_scan(parts: list[bytes]) -> Scan:
    """Decode and validate a ``scan`` message."""
    h = _region_header(parts, TOPIC_SCAN)
    return scan_from_map(h)


def scan_from_map(h: dict) -> Scan:
    """A :class:`Scan` from its header map (a ``scan`` message or an ``approve`` reply)."""
    if not isinstance(h, dict):
        raise ProtocolError("wrong_type", "a scan must be a map")
    for key in ("session", "seq", "t", "id", "box_px", "center_m", "fov_m", "rotation_rad",
                "magnification"):
        if key not in h:
            raise _bad("missing_key", f"scan lacks '{key}'", h)
    fields = {"id": h["id"], "score": 0.0, "reason": h.get("reason", "wall"),
              "significance": 0.0, "box_px": h["box_px"], "center_m": h["center_m"],
              "fov_m": h["fov_m"], "rotation_rad": h["rotation_rad"],
              "magnification": h["magnification"]}
    c = _with_context(h, check_suggestion, fields)
    if not isinstance(h["session"], str) or not isinstance(h["seq"], int) or not _number(h["t"]):
        raise _bad("wrong_type", "scan 'session', 'seq', 't' must be str, int, number", h)
    decision = h.get("decision")
    return Scan(session=h["session"], seq=h["seq"], t=float(h["t"]), id=c["id"],
                box_px=c["box_px"], center_m=c["center_m"], fov_m=c["fov_m"],
                rotation_rad=c["rotation_rad"], magnification=c["magnification"],
                reason=h.get("reason") if isinstance(h.get("reason"), str) else None,
                decision=decision if isinstance(decision, str) else None)


def box_inside(box: list[float], extent: list[float] | tuple[float, ...]) -> bool:
    """True when ``box`` [x0, y0, x1, y1] lies within ``extent`` [x0, y0, x1, y1] (same units)."""
    return (box[0] >= extent[0] and box[1] >= extent[1] and box[2] <= extent[2]
            and box[3] <= extent[3])


# ----------------------------------------------------------------------------- control

CONTROL_COMMANDS = ("ping", "config", "set", "pause", "resume", "stats", "suggestions",
                    "approve", "reject")
# Commands that name one suggestion by ``id``.
SUGGESTION_COMMANDS = ("approve", "reject")


def encode_request(cmd: str, **args: Any) -> bytes:
    return pack({"cmd": cmd, **args})


def decode_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict:
    req = unpack_map(data, limits)
    cmd = req.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("missing_key", "control request lacks a string 'cmd'")
    if cmd in SUGGESTION_COMMANDS:
        if "id" not in req:
            raise ProtocolError("bad_command", f"'{cmd}' needs the suggestion's 'id'")
        check_id(req["id"], code="bad_command")
    if cmd == "suggestions" and req.get("session") is not None \
            and not isinstance(req["session"], str):
        raise ProtocolError("bad_command", "'session' must be a string")
    return req


def encode_reply(ok: bool, **fields: Any) -> bytes:
    return pack({"ok": bool(ok), **fields})


def decode_reply(data: bytes) -> dict:
    return unpack_map(data, RESULT_LIMITS)
