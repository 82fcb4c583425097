"""Session engines on a Dask cluster: ``serve --cluster`` and ``rewardscope batch --cluster``.

Why Dask (``dask.distributed``): a facility scales by adding machines, and Dask already does the
hard parts (a scheduler, worker processes a nanny restarts when they die, placement, actors
that keep state on one worker). Nothing here re-implements any of it.

What runs where (``serve --cluster``):

* the daemon keeps its sockets, the ingest checks, the session store, the checkpoint writer and
  publishing; only ``SessionEngine.process`` moves.
* each session's :class:`~rewardscope.engine.SessionEngine` lives in an :class:`EngineActor` on
  one worker (session affinity: the optimizers' state never leaves that worker between frames,
  so every frame is warm). The daemon holds a :class:`RemoteEngine`, a proxy with the engine's
  interface (``process``, ``state_dict``, ``load_state_dict``, ``visited``).
* a result comes back together with the engine's state as of that frame (plain data), which
  the daemon's checkpoint writer stores exactly as in the embedded mode; if the worker holding
  a session dies, the proxy places a new actor on a live worker, loads that state into it and
  retries the frame once, so the session continues warm.
* :class:`SessionSlots` replaces the daemon's one-frame mailbox: the newest frame per session,
  at most one frame of a session in analysis at a time (frames of a session stay in order),
  and as many analysis threads as workers, so several instruments are served at once.

Cluster specs: ``local:N`` starts a ``LocalCluster`` of N single-threaded worker processes in
this process; ``tcp://host:8786`` (or ``tls://``, ``ucx://``, ``inproc://``) connects to a
running scheduler.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rewardscope.config import ConfigError, ServiceConfig

log = logging.getLogger("rewardscope.live.cluster")

_LOCAL = re.compile(r"^local(?::(\d+))?$")
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://\S+$")
MAX_LOCAL_WORKERS = 256
CONNECT_TIMEOUT = "5s"


def parse_cluster(spec: str) -> tuple[str, int | str]:
    """``("local", n_workers)`` or ``("address", url)`` for a cluster spec.

    Parameters
    ----------
    spec : str
        ``local:N`` (N worker processes, 1 <= N <= 256; ``local`` alone: one per core) or a
        scheduler address such as ``tcp://host:8786``.

    Raises
    ------
    ConfigError
        Naming ``cluster`` when the spec is neither.
    """
    s = str(spec).strip()
    m = _LOCAL.match(s)
    if m:
        import os

        n = int(m.group(1)) if m.group(1) else (os.cpu_count() or 1)
        if not 1 <= n <= MAX_LOCAL_WORKERS:
            raise ConfigError(f"cluster: local:{n} needs 1 to {MAX_LOCAL_WORKERS} workers")
        return "local", n
    if _ADDRESS.match(s):
        return "address", s
    raise ConfigError(f"cluster: {spec!r} is neither local:N nor a scheduler address "
                      "(tcp://host:8786)")


WORKER_ENVIRON_UNSET = ("MALLOC_TRIM_THRESHOLD_",)
"""Dask's pre-spawn settings a ``local:N`` worker does not get. Dask sets
``MALLOC_TRIM_THRESHOLD_=65536`` so a worker hands freed memory back to the OS at once; the
analysis allocates and frees many mid-sized arrays per evaluation, and with that setting it
ran ~15 % slower (a cold ``analyze``: 1.54 s against 1.32 s, median of 5, same run). The
workers' peak RSS stays bounded by the streaming, not by trimming (``make bench``, batch)."""


def _restore_environ(environ: dict[str, str]) -> None:
    """Put this process's environment back as it was.

    Dask's nanny writes its workers' pre-spawn settings (``OMP_NUM_THREADS=1``,
    ``OPENBLAS_NUM_THREADS=1``, ``MALLOC_TRIM_THRESHOLD_``, ...) into the *parent's*
    ``os.environ`` before each worker it spawns, and leaves them there: every process this
    one starts afterwards (a picture process, a benchmark's shell command) would inherit a
    worker's single-threaded, trim-happy settings (a cold ``analyze`` with them ran ~15 %
    slower, :data:`WORKER_ENVIRON_UNSET`). A worker the nanny restarts later sets them again,
    here until :meth:`Cluster.close`.
    """
    for key in [k for k in os.environ if k not in environ]:
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


class Cluster:
    """A Dask client for a cluster spec, started on :meth:`start`, closed on :meth:`close`.

    ``local:N`` owns its ``LocalCluster`` (N worker processes under nannies, one thread each,
    so a worker that dies is restarted); an address only connects. Also a context manager.
    """

    def __init__(self, spec: str, *, processes: bool = True) -> None:
        self.spec = spec
        self.kind, self.target = parse_cluster(spec)
        self.processes = processes
        self.client: Any = None
        self._local: Any = None
        self._environ: dict[str, str] = {}

    def start(self) -> Cluster:
        import dask
        from distributed import Client, LocalCluster

        if self.client is not None:
            return self
        # a dead worker's actor call fails after this, not Dask's default 30 s; and workers
        # keep glibc's own malloc trimming (see WORKER_ENVIRON_UNSET)
        dask.config.set({"distributed.comm.timeouts.connect": CONNECT_TIMEOUT,
                         **{f"distributed.nanny.pre-spawn-environ.{k}": None
                            for k in WORKER_ENVIRON_UNSET}})
        if self.kind == "local":
            environ = self._environ = dict(os.environ)
            self._local = LocalCluster(n_workers=int(self.target), threads_per_worker=1,
                                       processes=self.processes, dashboard_address=None,
                                       silence_logs=logging.WARNING)
            _restore_environ(environ)
            self.client = Client(self._local, set_as_default=False)
        else:
            self.client = Client(str(self.target), set_as_default=False, timeout=30)
        log.info("dask cluster ready", extra={"cluster": self.spec,
                                              "workers": len(self.workers())})
        return self

    def workers(self) -> list[str]:
        """Addresses of the workers alive now."""
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._local is not None:
            environ = self._environ
            self._local.close()
            self._local = None
            _restore_environ(environ)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- worker side

_warm = threading.Lock()
_warmed = False


def warmup_once() -> None:
    """Compile the numba kernels once per worker process (cached on disk after the first)."""
    global _warmed
    from rewardscope import engine

    with _warm:
        if not _warmed:
            engine.warmup()
            _warmed = True


class EngineActor:
    """A session's :class:`~rewardscope.engine.SessionEngine`, kept on one Dask worker.

    Created with ``client.submit(EngineActor, session, settings, actor=True)``. Analysis errors
    come back as values (``("error", type, message, trace)``) so that an exception raised by
    the call itself always means the transport or the worker failed.
    """

    def __init__(self, session: str, settings: ServiceConfig) -> None:
        from rewardscope.engine import make_engine

        warmup_once()
        self.engine = make_engine(session, settings)

    def process(self, frame: Any, settings: ServiceConfig) -> tuple:
        """``("ok", analysis, state)`` for one frame, state as of after it, or an error."""
        try:
            analysis = self.engine.process(frame, settings)
            return "ok", analysis, self.engine.state_dict()
        except Exception as exc:
            return "error", type(exc).__name__, str(exc), traceback.format_exc(limit=5)

    def load_state_dict(self, state: dict) -> tuple:
        try:
            self.engine.load_state_dict(state)
            return ("ok",)
        except Exception as exc:
            return "error", type(exc).__name__, str(exc), traceback.format_exc(limit=5)

    def visited(self, place: Any) -> tuple:
        try:
            return "ok", self.engine.visited(place)
        except Exception as exc:
            return "error", type(exc).__name__, str(exc), traceback.format_exc(limit=5)

    def state_dict(self) -> dict:
        return self.engine.state_dict()


class RemoteAnalysisError(RuntimeError):
    """The session engine on a worker raised; the message is ``Type: message`` from there."""


class WorkerLostError(RuntimeError):
    """A session's worker could not be reached, even after moving the session once."""


def _unwrap(reply: tuple) -> tuple:
    if reply[0] == "ok":
        return reply[1:]
    _, name, message, trace = reply
    log.debug("remote traceback: %s", trace)
    raise RemoteAnalysisError(f"{name}: {message}")


# ----------------------------------------------------------------------------- daemon side

class EnginePool:
    """Places one :class:`EngineActor` per session on the cluster's workers (fewest first)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._lock = threading.Lock()
        self._placed: dict[str, str] = {}  # session -> worker address

    def place(self, session: str, settings: ServiceConfig) -> tuple[Any, str]:
        """A new actor for ``session`` on the least loaded live worker: (actor, address)."""
        with self._lock:
            alive = self.cluster.workers()
            if not alive:
                raise WorkerLostError("the cluster has no workers")
            load = {w: 0 for w in alive}
            for w in self._placed.values():
                if w in load:
                    load[w] += 1
            addr = min(alive, key=lambda w: (load[w], w))
            self._placed[session] = addr
        fut = self.cluster.client.submit(EngineActor, session, settings, actor=True,
                                         workers=[addr], allow_other_workers=False,
                                         pure=False)
        with self.cluster.client.as_current():  # the actor handle binds to this client
            actor = fut.result()
        log.info("session engine placed", extra={"session": session, "worker": addr})
        return actor, addr

    def release(self, session: str) -> None:
        with self._lock:
            self._placed.pop(session, None)

    def engine(self, session: str, settings: ServiceConfig) -> RemoteEngine:
        """The daemon-side proxy of a new remote engine for ``session``."""
        return RemoteEngine(self, session, settings)


class RemoteEngine:
    """The daemon's handle on a session engine that lives in an :class:`EngineActor`.

    Same interface as :class:`~rewardscope.engine.SessionEngine` for what the daemon calls.
    ``state_dict()`` answers the state that came back with the last result (no extra round
    trip for the checkpoint writer).
    """

    def __init__(self, pool: EnginePool, session: str, settings: ServiceConfig) -> None:
        self.pool = pool
        self.session = session
        self._settings = settings
        self._state: dict | None = None
        self.moves = 0  # times the session was moved to another worker
        self._actor, self.worker = pool.place(session, settings)

    def _call(self, method: str, *args: Any) -> tuple:
        """Call the actor; on a transport failure move the session (with its last state) to a
        live worker and call once more."""
        try:
            return _unwrap(getattr(self._actor, method)(*args).result())
        except RemoteAnalysisError:
            raise
        except Exception as exc:
            log.warning("session worker lost; moving the session", extra={
                "session": self.session, "worker": self.worker, "error": repr(exc)})
        self._actor, self.worker = self.pool.place(self.session, self._settings)
        self.moves += 1
        if self._state is not None:
            _unwrap(self._actor.load_state_dict(self._state).result())
        try:
            return _unwrap(getattr(self._actor, method)(*args).result())
        except RemoteAnalysisError:
            raise
        except Exception as exc:
            raise WorkerLostError(f"session {self.session!r}: worker lost twice ({exc!r})"
                                  ) from None

    def process(self, frame: Any, settings: ServiceConfig) -> Any:
        analysis, state = self._call("process", frame, settings)
        self._state = state
        return analysis

    def state_dict(self) -> dict:
        if self._state is None:
            self._state = self._actor.state_dict().result()
        return self._state

    def load_state_dict(self, state: dict) -> None:
        self._call("load_state_dict", state)
        self._state = state

    def visited(self, place: Any = None) -> dict:
        return self._call("visited", place)[0]

    def close(self) -> None:
        """Forget the actor (Dask frees it once no handle refers to it)."""
        self.pool.release(self.session)
        self._actor = None


class SessionSlots:
    """The daemon's mailbox in cluster mode: the newest frame per session, one frame of a
    session in analysis at a time, sessions served in the order their frames waited.

    Same interface as the daemon's ``LatestFrameSlot``. ``put`` returns the frame of the same
    session it replaced (counted ``stale`` by the daemon). A thread's next ``take`` hands its
    previous session back; ``close`` returns one waiting frame and reports the others through
    ``on_stale(n)``.
    """

    def __init__(self, on_depth: Callable[[int], None] | None = None,
                 on_stale: Callable[[int], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._items: OrderedDict[str, Any] = OrderedDict()  # session -> newest frame
        self._busy: dict[int, str] = {}  # thread id -> session in analysis
        self._closed = False
        self._on_depth = on_depth
        self._on_stale = on_stale
        self.paused = False

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._items))

    def put(self, item: Any) -> Any:
        session = item.frame.session
        with self._cond:
            replaced = self._items.get(session)
            self._items[session] = item  # a replaced frame keeps its session's place in line
            self._depth_changed()
            self._cond.notify_all()
            return replaced

    def _ready(self) -> str | None:
        busy = set(self._busy.values())
        return next((s for s in self._items if s not in busy), None)

    def take(self) -> Any:
        """Block until a frame of a session no other thread is analysing is waiting."""
        me = threading.get_ident()
        with self._cond:
            if self._busy.pop(me, None) is not None:
                self._cond.notify_all()
            while not self._closed and (self.paused or self._ready() is None):
                self._cond.wait(0.5)
            if self._closed:
                return None
            session = self._ready()
            item = self._items.pop(session)
            self._busy[me] = session
            self._depth_changed()
            return item

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self.paused = paused
            self._cond.notify_all()

    def close(self) -> Any:
        with self._cond:
            self._closed = True
            items = list(self._items.values())
            self._items.clear()
            self._depth_changed()
            self._cond.notify_all()
        if len(items) > 1 and self._on_stale is not None:
            self._on_stale(len(items) - 1)
        return items[0] if items else None

    def depth(self) -> int:
        return len(self._items)


def analysis_threads(cluster: Cluster) -> int:
    """Analysis threads for the daemon: one per worker thread (at least 1, at most 64)."""
    info = cluster.client.scheduler_info(n_workers=-1)["workers"]
    threads = sum(int(w.get("nthreads", 1)) for w in info.values())
    return max(1, min(64, threads))
