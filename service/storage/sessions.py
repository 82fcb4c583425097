"""Session store: the one owner of the session folder layout, its writer and its readers.

Layout (the daemon writes it, one folder per session)::

    STORE/<session_dirname(session)>/session.json    {"session": name, "created": unix s}
    STORE/<session_dirname(session)>/frames.rsrec    accepted instrument messages (start/frame/end)
    STORE/<session_dirname(session)>/results.rsrec   published result messages
    STORE/<session_dirname(session)>/regions.rsrec   published regions and scan messages, and
                                                     the gate's decisions (``decision`` records)
    STORE/<session_dirname(session)>/checkpoint.json optimizer state (not read here)

Why the folder name is not the session name: a session id is whatever the instrument sends
(``"sample-7/area-3"``, ``".."``, unicode, 10 kB), so the folder is a sanitised ASCII prefix
for people plus a hash of the exact string for uniqueness; the exact name is read back from
``session.json`` (or from the first record of a log when that file is missing).

Reading is tolerant: logs are read up to their last complete record (a crash or a live writer
leaves a partial tail) and undecodable records are counted, not fatal.

Writing side (:class:`SessionStore`, used by the daemon): what was received and what was
decided, per session. ``frames.rsrec`` holds every instrument message of the session (exact wire
parts, record-log format, readable by ``rewardscope replay``), ``results.rsrec`` every result
published for it, and ``checkpoint.json`` the engine's optimizer state, written atomically
(temporary file, fsync, rename) so a SIGKILLed service restarts warm. Messages that could not be
attributed to a session (garbage) go to ``STORE/_rejected.rsrec``. Each record is flushed before
the daemon acts on it: a crash loses at most the message in flight.

Bounded: at most ``max_open`` sessions keep open files (least recently used closed first), and a
session stops storing frames once it holds ``max_session_bytes`` (results and checkpoints are
still written; the refusal is logged and counted).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rewardscope import protocol
from rewardscope.protocol import FrameHeader, ProtocolError, Result, SessionMarker
from rewardscope.storage.recordlog import (
    FILE_HEADER,
    FILE_HEADER_SIZE,
    Record,
    RecordReader,
    RecordWriter,
)

log = logging.getLogger("rewardscope.store")

SESSION_INFO = "session.json"
FRAMES_LOG = "frames.rsrec"
RESULTS_LOG = "results.rsrec"
REGIONS_LOG = "regions.rsrec"
TOPIC_DECISION = b"decision"  # a store-only record: what the gate decided about a suggestion
DECISIONS = ("pending", "released", "approved", "rejected", "expired", "outside_sample")
CHECKPOINT = "checkpoint.json"

_PREFIX_MAX = 48  # readable part of a folder name; the whole name stays far below 255 bytes
_HASH_HEX = 16  # 64 bits of SHA-256: collisions are not a practical concern
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# ----------------------------------------------------------------------------- naming

def session_dirname(session: str) -> str:
    """Folder name for ``session``: safe on every filesystem, readable, and collision-free.

    ASCII letters, digits, ``._-`` only (accents are folded, everything else becomes ``_``), never
    starting with ``.`` or ``-``, at most 65 characters, ending in a hash of the exact string so
    names that sanitise alike (``a/b`` and ``a_b``, ``A`` and ``a`` on a case-insensitive disk)
    still get distinct folders.
    """
    digest = hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    folded = unicodedata.normalize("NFKD", session).encode("ascii", "ignore").decode("ascii")
    prefix = _UNSAFE.sub("_", folded).lstrip("._-")[:_PREFIX_MAX].rstrip("._-")
    return f"{prefix or 'session'}-{digest}"


def session_path(root: str | os.PathLike[str], session: str) -> Path:
    """Where ``session`` lives (or will live) under the store ``root``."""
    return Path(root) / session_dirname(session)


def init_session_dir(root: str | os.PathLike[str], session: str, *,
                     created: float | None = None) -> Path:
    """Create the session folder and write ``session.json`` once (atomically); return the folder.

    Offered to the writing side so that the file the readers rely on has one format.
    """
    path = session_path(root, session)
    path.mkdir(parents=True, exist_ok=True)
    info = path / SESSION_INFO
    if not info.exists():
        tmp = path / f".{SESSION_INFO}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"session": session,
                                   "created": time.time() if created is None else created}),
                       encoding="utf-8")
        os.replace(tmp, info)
    return path


def read_session_info(path: str | os.PathLike[str]) -> tuple[str, float | None] | None:
    """(session, created) of a session folder, or None if it does not look like one.

    ``session.json`` first; otherwise the ``session`` key of the first readable record of
    ``frames.rsrec`` (then ``results.rsrec``), with that record's time as ``created``.
    """
    path = Path(path)
    info = _read_json_info(path / SESSION_INFO)
    if info is not None:
        return info
    for log in (FRAMES_LOG, RESULTS_LOG):
        found = _first_session_in_log(path / log)
        if found is not None:
            return found
    return None


def _read_json_info(file: Path) -> tuple[str, float | None] | None:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("session"), str):
        return None
    created = data.get("created")
    ok = isinstance(created, (int, float)) and not isinstance(created, bool)
    return data["session"], float(created) if ok else None


def _first_session_in_log(file: Path) -> tuple[str, float] | None:
    stats = LogStats()
    for rec in _records(file, stats):
        if len(rec.parts) < 2:
            continue
        try:
            name = protocol.unpack_map(rec.parts[1], protocol.RESULT_LIMITS).get("session")
        except ProtocolError:
            continue
        if isinstance(name, str):
            return name, rec.t
    return None


def list_sessions(root: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(session, folder) for every session folder under ``root``, sorted by session name.

    Folders without a readable name (no ``session.json``, no decodable record) are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.is_dir() and not child.name.startswith("."):
            info = read_session_info(child)
            if info is not None:
                found.append((info[0], child))
    return sorted(found, key=lambda sp: (sp[0], sp[1].name))


# ----------------------------------------------------------------------------- reading

@dataclass
class LogStats:
    """What reading one log found: good records, undecodable ones, and any damaged tail."""

    records: int = 0
    skipped: int = 0
    missing: bool = False
    tail: str | None = None  # RecordReader.tail_reason, or "partial_file_header"
    bytes_skipped: int = 0


@dataclass
class StoredFrame:
    """One accepted frame. ``received_t`` is when the service got it (the record time)."""

    index: int  # position among the session's frames, in arrival order
    seq: int
    t: float  # acquisition time from the frame header
    received_t: float
    header: FrameHeader
    pixels: np.ndarray | None  # None when loaded with pixels=False
    result: Result | None = None


@dataclass
class StoredResult:
    """One published result, when it was published (the record time) and its frame's index.

    ``specs`` keeps the dtype and shape of each extra array even when the arrays were dropped.
    """

    received_t: float
    result: Result
    specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = field(default_factory=dict)
    frame: int | None = None


@dataclass
class StoredSuggestion:
    """One suggestion published for a frame and what became of it.

    ``decision``: the gate's last word (``pending``, ``released`` by auto mode, ``approved``,
    ``rejected``, ``expired``, ``outside_sample``), else ``released`` when a scan was published
    for it and ``published`` when it was only published (auto mode, not the top one).
    ``scanned``: a scan message with this id was published.
    """

    seq: int
    t: float  # when the regions message was made (unix s)
    suggestion: dict
    decision: str | None = None
    scanned: bool = False

    @property
    def id(self) -> str:
        return self.suggestion["id"]


@dataclass
class StoredSession:
    """A session read back from the store; ``frames[i].result`` pairs each frame with its result."""

    session: str
    path: Path
    created: float | None
    frames: list[StoredFrame]
    results: dict[int, Result]  # by seq; after an instrument restart the latest wins
    markers: list[SessionMarker]
    published: list[StoredResult] = field(default_factory=list)  # every result, in order
    frames_log: LogStats = field(default_factory=LogStats)
    results_log: LogStats = field(default_factory=LogStats)
    suggestions: list[StoredSuggestion] = field(default_factory=list)  # in publication order
    regions_log: LogStats = field(default_factory=LogStats)

    @property
    def orphan_results(self) -> int:
        """Results whose frame is not in frames.rsrec (e.g. a frames log cut short)."""
        return sum(r.frame is None for r in self.published)


def _records(file: Path, stats: LogStats) -> Iterator:
    """Good records of a log; a missing or header-truncated file reads as empty (noted)."""
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        stats.missing = True
        return
    if size < FILE_HEADER_SIZE:
        with open(file, "rb") as f:
            head = f.read()
        if FILE_HEADER.startswith(head):  # created, then crashed before the header was out
            stats.tail = "partial_file_header" if head else None
            return
    reader = RecordReader(file)
    for rec in reader:
        stats.records += 1
        yield rec
    stats.tail, stats.bytes_skipped = reader.tail_reason, reader.bytes_skipped


def _decoded(file: str | os.PathLike[str], stats: LogStats,
             decode: Callable[[list[bytes]], Any]) -> Iterator[tuple[Record, Any]]:
    """(record, decoded message) of every record ``decode`` accepts; the others are counted
    in ``stats.skipped``: a damaged message costs itself, not the session."""
    for rec in _records(Path(file), stats):
        try:
            msg = decode(rec.parts)
        except ProtocolError:
            stats.skipped += 1
            continue
        yield rec, msg


def iter_frames(file: str | os.PathLike[str], stats: LogStats | None = None, *,
                markers: list[SessionMarker] | None = None) -> Iterator[StoredFrame]:
    """Frames of a ``frames.rsrec`` in arrival order; start/end markers go to ``markers``."""
    stats = LogStats() if stats is None else stats
    index = 0
    for rec, msg in _decoded(file, stats, protocol.decode_instrument):
        if isinstance(msg, SessionMarker):
            if markers is not None:
                markers.append(msg)
            continue
        yield StoredFrame(index=index, seq=msg.seq, t=msg.header.t, received_t=rec.t,
                          header=msg.header, pixels=msg.pixels)
        index += 1


def iter_results(file: str | os.PathLike[str],
                 stats: LogStats | None = None) -> Iterator[StoredResult]:
    """Results of a ``results.rsrec`` in publication order (undecodable ones counted)."""
    stats = LogStats() if stats is None else stats
    for rec, res in _decoded(file, stats, protocol.decode_result):
        specs = {k: (v.dtype, v.shape) for k, v in res.arrays.items()}
        yield StoredResult(rec.t, res, specs)


def read_regions(file: str | os.PathLike[str],
                 stats: LogStats | None = None) -> list[StoredSuggestion]:
    """Suggestions of a ``regions.rsrec`` with their final decision, in publication order.

    Tolerant: an undecodable record, an unknown topic or a decision about an id never published
    is counted in ``stats.skipped`` and ignored.
    """
    stats = LogStats() if stats is None else stats
    out: list[StoredSuggestion] = []
    by_id: dict[str, StoredSuggestion] = {}
    for rec in _records(Path(file), stats):
        topic = bytes(rec.parts[0]) if rec.parts else b""
        try:
            if topic == protocol.TOPIC_REGIONS:
                msg = protocol.decode_regions(rec.parts)
                for sug in msg.regions:
                    item = StoredSuggestion(seq=msg.seq, t=msg.t, suggestion=sug,
                                            decision=None)
                    out.append(item)
                    by_id.setdefault(item.id, item)
                continue
            if topic == protocol.TOPIC_SCAN:
                scan = protocol.decode_scan(rec.parts)
                if scan.id in by_id:
                    by_id[scan.id].scanned = True
                    continue
            elif topic == TOPIC_DECISION and len(rec.parts) == 2:
                h = protocol.unpack_map(rec.parts[1], protocol.RESULT_LIMITS)
                item = by_id.get(h.get("id"))  # type: ignore[arg-type]
                if item is not None and h.get("decision") in DECISIONS:
                    item.decision = h["decision"]
                    continue
        except ProtocolError:
            pass
        stats.skipped += 1
    for item in out:
        if item.decision is None:
            item.decision = "released" if item.scanned else "published"
    return out


def match_results(frames: list[StoredFrame], results: list[StoredResult]) -> list[int | None]:
    """For each result, the index of its frame (or None).

    Results carry only a seq, and seq restarts at 0 when the instrument restarts a session, so a
    result belongs to the latest frame with its seq received no later than the result was
    published (the earliest such frame if the clocks disagree).
    """
    by_seq: dict[int, tuple[list[float], list[int]]] = {}
    for f in frames:
        times, idx = by_seq.setdefault(f.seq, ([], []))
        times.append(f.received_t)
        idx.append(f.index)
    out: list[int | None] = []
    for r in results:
        cand = by_seq.get(r.result.seq)
        if cand is None:
            out.append(None)
            continue
        k = bisect.bisect_right(cand[0], r.received_t) - 1
        out.append(cand[1][max(k, 0)])
    return out


def load_session(path: str | os.PathLike[str], *, arrays: bool = True) -> StoredSession:
    """Read a session folder: frames with their results attached, results by seq, markers.

    ``arrays=False`` drops frame pixels and extra result arrays (``StoredResult.specs`` keeps
    their dtype and shape) but keeps atoms and labels: an index of a session too big for memory.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such session folder")
    fstats, rstats = LogStats(), LogStats()
    markers: list[SessionMarker] = []
    frames = []
    for f in iter_frames(path / FRAMES_LOG, fstats, markers=markers):
        if not arrays:
            f.pixels = None
        frames.append(f)
    published = []
    for r in iter_results(path / RESULTS_LOG, rstats):
        if not arrays:
            r.result.arrays = {}
        published.append(r)
    for r, owner in zip(published, match_results(frames, published), strict=True):
        r.frame = owner
        if owner is not None:
            frames[owner].result = r.result
    name, created = read_session_info(path) or (path.name, None)
    gstats = LogStats()
    suggestions = read_regions(path / REGIONS_LOG, gstats)
    return StoredSession(session=name, path=path, created=created, frames=frames,
                         results={r.result.seq: r.result for r in published}, markers=markers,
                         published=published, frames_log=fstats, results_log=rstats,
                         suggestions=suggestions, regions_log=gstats)


def resolve_session(session_or_path: str | os.PathLike[str],
                    store_root: str | os.PathLike[str] | None = None) -> Path:
    """A session folder from a path to one, or from a session name looked up in the store."""
    candidate = Path(session_or_path)
    with contextlib.suppress(OSError):
        if candidate.is_dir() and read_session_info(candidate) is not None:
            return candidate
    root = Path("store") if store_root is None else Path(store_root)
    path = session_path(root, os.fspath(session_or_path))
    if path.is_dir():
        return path
    raise FileNotFoundError(f"no session {os.fspath(session_or_path)!r} in store {root} "
                            f"(and no session folder at that path)")


# ----------------------------------------------------------------------------- writing


REJECTED = "_rejected.rsrec"


class SessionStore:
    """Append-only per-session record logs plus atomic checkpoints; thread-safe."""

    def __init__(self, root: str | Path, *, fsync: bool = False, max_open: int = 16,
                 max_session_bytes: int = 8 * 2**30) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.max_open = max_open
        self.max_session_bytes = max_session_bytes
        self._writers: OrderedDict[tuple[str, str], RecordWriter] = OrderedDict()
        self._lock = threading.Lock()
        self._rejected: RecordWriter | None = None
        self.refused_frames = 0

    def _dir(self, session: str) -> Path:
        return init_session_dir(self.root, session)

    def _writer(self, session: str, kind: str) -> RecordWriter:
        key = (session, kind)
        w = self._writers.get(key)
        if w is None:
            w = RecordWriter(self._dir(session) / f"{kind}.rsrec", fsync=self.fsync,
                             append=True)
            self._writers[key] = w
            while len(self._writers) > self.max_open:
                _, old = self._writers.popitem(last=False)
                old.close()
        self._writers.move_to_end(key)
        return w

    def frame_message(self, session: str, parts: list[bytes], t: float | None = None) -> bool:
        """Store an accepted instrument message; False if the session is over its cap."""
        with self._lock:
            w = self._writer(session, "frames")
            if w.path.stat().st_size > self.max_session_bytes:
                self.refused_frames += 1
                if self.refused_frames == 1 or self.refused_frames % 100 == 0:
                    log.error("session store full, frames no longer stored",
                              extra={"session": session, "cap_bytes": self.max_session_bytes})
                return False
            w.write(parts, t)
            return True

    def rejected_message(self, parts: list[bytes], t: float | None = None) -> None:
        """Keep what was refused too (bounded by the same cap), for the post-mortem."""
        with self._lock:
            if self._rejected is None:
                self._rejected = RecordWriter(self.root / REJECTED, fsync=self.fsync,
                                              append=True)
            if self._rejected.bytes_written < self.max_session_bytes:
                self._rejected.write(parts, t)

    def result_message(self, session: str, parts: list[bytes]) -> None:
        with self._lock:
            self._writer(session, "results").write(parts)

    def region_message(self, session: str, parts: list[bytes]) -> None:
        """Store a published ``regions`` or ``scan`` message."""
        with self._lock:
            self._writer(session, "regions").write(parts)

    def decision(self, session: str, *, seq: int, sid: str, decision: str,
                 t: float | None = None) -> None:
        """Record what the gate decided about suggestion ``sid`` of frame ``seq``.

        ``decision`` is one of :data:`DECISIONS`; ``t`` unix seconds (default now).
        """
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}; known: {DECISIONS}")
        body = protocol.pack({"v": protocol.VERSION, "type": "decision", "session": session,
                              "seq": int(seq), "id": sid, "decision": decision,
                              "t": time.time() if t is None else float(t)})
        with self._lock:
            self._writer(session, "regions").write([TOPIC_DECISION, body])

    def checkpoint(self, session: str, state: dict) -> None:
        """Atomically replace the session's checkpoint (write, fsync, rename)."""
        path = self._dir(session) / CHECKPOINT
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        with open(tmp, "w") as fh:
            json.dump({"saved": time.time(), "state": state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, session: str) -> dict | None:
        path = session_path(self.root, session) / CHECKPOINT
        try:
            return json.loads(path.read_text())["state"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError) as exc:
            log.error("unreadable checkpoint ignored", extra={"path": str(path),
                                                              "error": repr(exc)})
            return None

    def close_session(self, session: str) -> None:
        with self._lock:
            for kind in ("frames", "results", "regions"):
                w = self._writers.pop((session, kind), None)
                if w is not None:
                    w.close()

    def close(self) -> None:
        with self._lock:
            for w in self._writers.values():
                w.close()
            self._writers.clear()
            if self._rejected is not None:
                self._rejected.close()
                self._rejected = None
