"""Optimizer checkpoints, written off the latency path.

After each frame the analysis thread hands a snapshot of its session engine's state (plain data,
copied at the time of the frame) to :meth:`CheckpointWriter.submit` and goes on to publish the
result; one background thread writes the snapshots with the store (write, fsync, rename).

A checkpoint is a whole state, not a delta, so each session has a one-slot mailbox: a snapshot
not yet written when the next one arrives is replaced ("latest state wins"), and a slow disk
costs checkpoint frequency, never latency or memory. :meth:`flush` waits until everything handed
over so far is on disk; :meth:`close` flushes and stops the thread (the daemon calls it on
shutdown, so a stopped service restarts from its last frame). A failed write is logged and
counted, never raised: the result is out already, and the next frame's snapshot tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger("rewardscope.live.checkpoints")


class CheckpointWriter:
    """Background writer of per-session state snapshots; ``write(session, state)`` does the I/O.

    ``on_written(seconds)`` is called after each write, ``on_failed()`` after each failure
    (metrics hooks; their own errors are logged and ignored).
    """

    def __init__(self, write: Callable[[str, dict], None], *,
                 on_written: Callable[[float], None] | None = None,
                 on_failed: Callable[[], None] | None = None) -> None:
        self._write = write
        self._on_written = on_written
        self._on_failed = on_failed
        self._cond = threading.Condition()
        self._pending: OrderedDict[str, dict] = OrderedDict()  # session -> latest snapshot
        self._writing = False
        self._closed = False
        self.written = 0
        self.failed = 0
        self.replaced = 0  # snapshots superseded before they were written
        self._thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)
        self._thread.start()

    def submit(self, session: str, state: dict) -> None:
        """Queue ``state`` (which the caller no longer mutates) as ``session``'s checkpoint.

        Never blocks on I/O, except after :meth:`close`, when it writes in the caller's thread.
        """
        with self._cond:
            if not self._closed:
                if session in self._pending:
                    self.replaced += 1
                self._pending[session] = state  # keeps its place in line: no starvation
                self._cond.notify_all()
                return
        log.warning("checkpoint submitted after close; writing it synchronously",
                    extra={"session": session})
        self._write_one(session, state)

    def pending(self) -> int:
        """Snapshots handed over and not yet written (including one being written)."""
        with self._cond:
            return len(self._pending) + self._writing

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every snapshot submitted so far is written (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._writing, timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Write what is pending, then stop the thread; False if it did not finish in time."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("checkpoint writer did not finish", extra={"pending": self.pending(),
                                                                 "timeout_s": timeout})
            return False
        return True

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:  # closed and drained
                    return
                session, state = self._pending.popitem(last=False)
                self._writing = True
            try:
                self._write_one(session, state)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def _write_one(self, session: str, state: dict) -> None:
        t0 = time.perf_counter()
        try:
            self._write(session, state)
        except Exception as exc:  # a full disk or an unserialisable state: log, count, go on
            self.failed += 1
            log.error("checkpoint failed", extra={"session": session, "error": repr(exc)})
            self._hook(self._on_failed)
            return
        self.written += 1
        self._hook(self._on_written, time.perf_counter() - t0)

    @staticmethod
    def _hook(fn: Callable | None, *args: float) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("checkpoint metrics hook failed")
