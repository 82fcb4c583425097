"""The durable side of the service: what was received and what was decided, per session.

``STORE/<session_dir>/frames.rsrec`` holds every instrument message of the session (exact wire
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

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from .recordlog import RecordWriter
from .store import init_session_dir, session_path

log = logging.getLogger("rewardscope.store")

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

    def checkpoint(self, session: str, state: dict) -> None:
        """Atomically replace the session's checkpoint (write, fsync, rename)."""
        path = self._dir(session) / "checkpoint.json"
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        with open(tmp, "w") as fh:
            json.dump({"saved": time.time(), "state": state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, session: str) -> dict | None:
        path = session_path(self.root, session) / "checkpoint.json"
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
            for kind in ("frames", "results"):
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
