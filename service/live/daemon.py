"""The long-running service: frames socket in, results/status/errors out, control on the side.

Two threads, one direction of data:

* the I/O thread owns every ZeroMQ socket (they are not thread-safe). It polls the frames and
  control sockets, hands accepted frames to the analysis thread through a one-slot mailbox, and
  forwards what the analysis thread sends back over an ``inproc`` PUSH-PULL pair to the results PUB.
* the analysis thread takes the newest frame from the mailbox, runs the session's engine and
  sends the encoded result (or an ``analysis_failed`` error) back.

When analysis is slower than acquisition the mailbox keeps only the newest frame and counts each
replaced one as dropped ("stale"), so latency stays bounded instead of a queue growing without
limit. A malformed message is counted under its code, published on the error topic, and the
loop goes on with the next one: nothing the instrument sends can stop the daemon.

Operations tell the truth: ``connected`` follows the frames socket's ZeroMQ monitor events (polled
by the I/O thread), ``queue_depth`` and ``lag_seconds`` follow the mailbox and the frame in
analysis, and optimizer checkpoints are written by a background writer, off the latency path.
"""

from __future__ import annotations

import copy
import logging
import signal
import threading
import time
import traceback
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from rewardscope import __version__, protocol, security
from rewardscope.config import ConfigError, ServiceConfig
from rewardscope.engine import Analysis, SessionEngine, check_settings, make_engine
from rewardscope.engine import warmup as engine_warmup
from rewardscope.live.checkpoints import CheckpointWriter
from rewardscope.live.gate import Gate, GateError, Pending
from rewardscope.live.ingest import Accepted, Ingest, Marker
from rewardscope.live.metrics import Metrics
from rewardscope.live.publish import regions_message, result_message
from rewardscope.protocol import Frame, ProtocolError
from rewardscope.security import is_loopback_url

log = logging.getLogger("rewardscope.live.daemon")

DROP_REASONS = ("seq_gap", "stale", "invalid", "duplicate")
_INPROC = "inproc://rewardscope-results-{}"
# Frames-socket monitor events. A connecting socket is up once the ZMTP handshake succeeded
# (libzmq >= 4.3; TCP-connected is not enough: a CURVE refusal or a non-ZeroMQ peer fails there)
# and down on disconnect/close; a binding socket counts accepted peers minus disconnected ones.
_LINK_UP = (zmq.EVENT_HANDSHAKE_SUCCEEDED if zmq.zmq_version_info() >= (4, 3)
            else zmq.EVENT_CONNECTED)
_CONNECT_EVENTS = _LINK_UP | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
_BIND_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
CHECKPOINT_FLUSH_S = 10.0  # a new session's engine waits this long for pending checkpoints
CURVE_WIRED = True  # Daemon.start applies rewardscope.security to its sockets


class InsecureBindError(ConfigError):
    """Refusing to expose control/results on the network without authentication."""


def check_bind_policy(cfg: ServiceConfig) -> None:
    """Refuse to bind results/control beyond loopback without CURVE unless explicitly allowed."""
    if cfg.allow_insecure_bind or cfg.curve_secret:
        return
    urls = {"results": cfg.results, "control": cfg.control}
    if cfg.frames_bind:
        urls["frames"] = cfg.frames
    exposed = [f"{k}={v}" for k, v in urls.items() if not is_loopback_url(v)]
    if exposed:
        raise InsecureBindError(
            f"refusing to bind {', '.join(exposed)} beyond loopback without CURVE "
            "authentication; set curve_secret/curve_allow or allow_insecure_bind = true")


class LatestFrameSlot:
    """A one-frame mailbox: ``put`` replaces what the analysis thread has not taken yet.

    ``on_depth(depth)`` is called, under the mailbox's lock, whenever the depth may have changed
    (put, take, close), so a depth gauge never shows a stale value.
    """

    def __init__(self, on_depth: Callable[[int], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._item: Accepted | None = None
        self._closed = False
        self._on_depth = on_depth
        self.paused = False

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self.depth())

    def put(self, item: Accepted) -> Accepted | None:
        with self._cond:
            replaced, self._item = self._item, item
            self._depth_changed()
            self._cond.notify()
            return replaced

    def take(self) -> Accepted | None:
        """Block until a frame is available (and not paused) or the slot is closed."""
        with self._cond:
            while not self._closed and (self._item is None or self.paused):
                self._cond.wait(0.5)
            if self._closed:
                return None
            item, self._item = self._item, None
            self._depth_changed()
            return item

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self.paused = paused
            self._cond.notify()

    def close(self) -> Accepted | None:
        with self._cond:
            self._closed = True
            item, self._item = self._item, None
            self._depth_changed()
            self._cond.notify_all()
            return item

    def depth(self) -> int:
        return 0 if self._item is None else 1


@dataclass
class Stats:
    received: int = 0  # every message on the frames socket
    frames_accepted: int = 0
    frames_processed: int = 0
    results_published: int = 0
    last_seq: int | None = None
    last_session: str | None = None


class Daemon:
    """``rewardscope serve``. Construct, ``start()`` (binds, so endpoints are known), ``run()``.

    ``stop()`` is thread-safe and signal-safe: the frame in hand is finished and published,
    then sockets close and ``run`` returns.
    """

    def __init__(self, cfg: ServiceConfig, *, context: zmq.Context | None = None,
                 metrics: Metrics | None = None) -> None:
        cfg.validate()
        check_settings(cfg)
        check_bind_policy(cfg)
        self.cfg = cfg
        self.ctx = context or zmq.Context.instance()
        self.metrics = metrics or Metrics()
        self.ingest = Ingest(cfg.limits())
        self.cluster = None  # serve --cluster: engines on Dask workers (rewardscope.live.cluster)
        if cfg.cluster:
            from rewardscope.live import cluster as cluster_mod

            self.cluster = cluster_mod.Cluster(cfg.cluster)  # parsed now, started by start()
            self.slot = cluster_mod.SessionSlots(on_depth=self.metrics.set_queue,
                                                 on_stale=lambda n: self._drop("stale", n))
        else:
            self.slot = LatestFrameSlot(on_depth=self.metrics.set_queue)
        self.stats = Stats()
        self.dropped: Counter[str] = Counter({r: 0 for r in DROP_REASONS})
        self.errors: Counter[str] = Counter({c: 0 for c in protocol.ERROR_CODES})
        self.engines: OrderedDict[str, SessionEngine] = OrderedDict()
        self.store = None
        if cfg.store:
            from rewardscope.storage.sessions import SessionStore

            self.store = SessionStore(cfg.store)
        self.checkpoints: CheckpointWriter | None = None  # started with the service
        self.connected = False  # the frames socket's link to the instrument (monitor events)
        self._peers = 0
        self._engines_lock = threading.Lock()
        self._stop = threading.Event()
        self._started_monotonic = time.monotonic()
        self._inproc = _INPROC.format(id(self))
        self._worker: threading.Thread | None = None
        self.state = "starting"
        self.results_endpoint = ""
        self.control_endpoint = ""
        self.frames_endpoint = ""
        self.curve: security.CurveServer | None = None
        self._model: str | None = None
        self.trainer = None  # the latent slow loop (rewardscope.live.trainer), when latent runs
        # recommended regions: the gate lives in the I/O thread; released suggestions reach
        # their engine through this queue, applied by the analysis thread before its next frame
        self.gate = Gate()
        self._visits: deque[tuple[str, dict]] = deque()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind/connect sockets, start metrics and the analysis thread; compile kernels."""
        cfg = self.cfg
        # the ZAP handler must run before any bind and stop only after the sockets close
        self.curve = security.CurveServer.from_config(cfg, self.ctx)  # None: CURVE off
        try:
            self._open_sockets(cfg)
        except Exception:
            if self.curve is not None:
                self.curve.stop()
            raise
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port, cfg.metrics_addr)
        engine_warmup()
        self._start_latent(cfg)
        if self.store is not None:
            self.checkpoints = CheckpointWriter(
                self.store.checkpoint,
                on_written=lambda seconds: self.metrics.observe_stage("checkpoint", seconds),
                on_failed=self.metrics.checkpoint_failed)
        n_threads = 1
        if self.cluster is not None:  # one analysis thread per worker thread of the cluster
            from rewardscope.live import cluster as cluster_mod

            self.cluster.start()
            self._pool = cluster_mod.EnginePool(self.cluster)
            n_threads = cluster_mod.analysis_threads(self.cluster)
        self._workers = [threading.Thread(target=self._analysis_loop, name=f"analysis-{i}",
                                          daemon=True) for i in range(n_threads)]
        self._worker = self._workers[0]
        for t in self._workers:
            t.start()
        self.state = "running"
        self.metrics.set_state("running")
        log.info("service started", extra={"frames": self.frames_endpoint,
                                           "frames_mode": cfg.frames_mode,
                                           "results": self.results_endpoint,
                                           "control": self.control_endpoint,
                                           "metrics_port": cfg.metrics_port,
                                           "curve": self.curve is not None,
                                           "version": __version__})

    def _start_latent(self, cfg: ServiceConfig) -> None:
        """The latent slow loop, when the chain runs the latent workflow: reload the
        checkpoint (a bad one is logged, the service starts without it), start the trainer."""
        from rewardscope.engine.session import resolve_chain

        if "latent" not in resolve_chain(cfg.workflow):
            return
        from pathlib import Path

        from rewardscope.live import trainer as trainer_mod
        from rewardscope.science.vae import model_slot

        slot = model_slot()
        slot.max_frames, slot.max_keypoints = cfg.latent_buffer_frames, cfg.latent_buffer_patches
        path = cfg.latent_checkpoint or (str(Path(cfg.store) / "latent-model.pt")
                                         if cfg.store else "")
        if path:
            trainer_mod.load_into_slot(path, slot)
        self.trainer = trainer_mod.LatentTrainer(
            slot, trainer_mod.TrainSettings.from_config(cfg), checkpoint=path or None)
        if cfg.latent_train:
            self.trainer.start()

    def _open_sockets(self, cfg: ServiceConfig) -> None:
        self.frames = self.ctx.socket(zmq.SUB if cfg.frames_mode == "sub" else zmq.PULL)
        if cfg.frames_mode == "sub":
            for topic in protocol.INSTRUMENT_TOPICS:
                self.frames.setsockopt(zmq.SUBSCRIBE, topic)
        self.frames.setsockopt(zmq.RCVHWM, 64)
        self.frames.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes + 65536)
        self.frames.setsockopt(zmq.LINGER, 0)
        security.secure(self.curve, self.frames, bind=cfg.frames_bind, url=cfg.frames)
        # before bind/connect, so the first connection's events are not missed
        self._frames_bound = cfg.frames_bind
        self.frames_monitor = self.frames.get_monitor_socket(
            _BIND_EVENTS if cfg.frames_bind else _CONNECT_EVENTS)
        if cfg.frames_bind:
            self.frames.bind(cfg.frames)
            self.frames_endpoint = self.frames.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self.frames.connect(cfg.frames)
            self.frames_endpoint = cfg.frames
        self.results = self.ctx.socket(zmq.PUB)
        self.results.setsockopt(zmq.LINGER, 500)
        security.secure(self.curve, self.results, bind=True, url=cfg.results)
        self.results.bind(cfg.results)
        self.results_endpoint = self.results.getsockopt_string(zmq.LAST_ENDPOINT)
        self.control = self.ctx.socket(zmq.REP)
        self.control.setsockopt(zmq.LINGER, 0)
        security.secure(self.curve, self.control, bind=True, url=cfg.control)
        self.control.bind(cfg.control)
        self.control_endpoint = self.control.getsockopt_string(zmq.LAST_ENDPOINT)
        self.from_worker = self.ctx.socket(zmq.PULL)  # one PUSH per analysis thread
        self.from_worker.bind(self._inproc)

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _frame: self._on_signal(signum))

    def _on_signal(self, signum: int) -> None:
        log.info("signal received, draining", extra={"signal": signal.Signals(signum).name})
        self.stop()

    def run(self) -> int:
        """Serve until ``stop()``; returns the process exit status (0 on a clean drain)."""
        poller = zmq.Poller()
        poller.register(self.frames, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.from_worker, zmq.POLLIN)
        poller.register(self.frames_monitor, zmq.POLLIN)
        next_beat = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat()
                    self._close_silent_sessions()
                    next_beat = now + self.cfg.heartbeat_s
                timeout_ms = max(1, int(min(0.2, next_beat - now) * 1000))
                events = dict(poller.poll(timeout_ms))
                if self.from_worker in events:
                    self._forward_from_worker()
                if self.frames in events:
                    self._drain_frames()
                if self.control in events:
                    self._handle_control()
                if self.frames_monitor in events:
                    self._drain_link_events()
                if len(self.gate):
                    self._expire_suggestions()
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self.state = "stopping"
        self.metrics.set_state("stopping")
        pending = self.slot.close()  # the frame not yet started is dropped; the one in hand ends
        if pending is not None:
            self._drop("stale")
        for t in getattr(self, "_workers", []):
            t.join(timeout=max(5.0, 2 * self.cfg.cold_deadline_s + 5))
        if self.trainer is not None:
            self.trainer.stop()
        while self.from_worker.poll(0):
            self._forward_from_worker()
        if self.checkpoints is not None:  # the last frame's state, so a restart continues warm
            self.checkpoints.close(timeout=30.0)
        if self.cluster is not None:
            self.cluster.close()
        self._heartbeat()
        self.state = "stopped"
        self.connected = False
        self.metrics.set_connected(False)
        self.frames.disable_monitor()
        for s in (self.frames_monitor, self.frames, self.control, self.from_worker,
                  self.results):
            s.close()
        if self.curve is not None:  # only after the sockets: a CURVE socket without ZAP admits all
            self.curve.stop()
        self.metrics.stop()
        if self.store is not None:
            self.store.close()
        log.info("service stopped", extra=self.stats_dict())

    # ------------------------------------------------------------------ frames in
    def _drain_frames(self) -> None:
        """Take everything waiting on the frames socket (bounded per call to stay responsive)."""
        for _ in range(256):
            try:
                parts = self.frames.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            self._on_message(parts)

    def _drain_link_events(self) -> None:
        """Follow the frames socket's connection state from its monitor events."""
        for _ in range(256):
            try:
                event = recv_monitor_message(self.frames_monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            self._on_link_event(event)

    def _on_link_event(self, event: int) -> None:
        if self._frames_bound:  # any number of instruments may connect to a bound socket
            if event == zmq.EVENT_ACCEPTED:
                self._peers += 1
            elif event == zmq.EVENT_DISCONNECTED:
                self._peers = max(0, self._peers - 1)
        elif event == _LINK_UP:
            self._peers = 1
        elif event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
            self._peers = 0
        connected = self._peers > 0
        if connected != self.connected:
            self.connected = connected
            self.metrics.set_connected(connected)
            log.info("instrument connected" if connected else "instrument disconnected",
                     extra={"frames": self.frames_endpoint, "peers": self._peers})

    def _on_message(self, parts: list[bytes]) -> None:
        self.stats.received += 1
        self.metrics.frame_received()
        t0 = time.perf_counter()
        try:
            msg = self.ingest.accept(parts)
        except ProtocolError as exc:
            self._store("rejected", None, parts)
            self._reject(exc)
            return
        finally:
            self.metrics.observe_stage("decode", time.perf_counter() - t0)
        session = msg.marker.session if isinstance(msg, Marker) else msg.frame.session
        self._store("frames", session, parts)
        if isinstance(msg, Marker):
            self._on_marker(msg)
            return
        self.stats.frames_accepted += 1
        self.stats.last_seq, self.stats.last_session = msg.frame.seq, msg.frame.session
        self.metrics.set_last_frame_timestamp(msg.frame.header.t)
        if msg.gap:
            self._drop("seq_gap", msg.gap)
        if self.slot.put(msg) is not None:  # the slot reports its depth to the metrics
            self._drop("stale")

    def _on_marker(self, m: Marker) -> None:
        mk = m.marker
        log.info(f"session {mk.kind}", extra={"session": mk.session, "n_frames": mk.n_frames})
        if m.tail_gap:
            self._drop("seq_gap", m.tail_gap)
        if mk.kind == "end":
            self._close_session(mk.session, reason="end")

    def _reject(self, exc: ProtocolError) -> None:
        self.errors[exc.code] += 1
        self.metrics.error(exc.code)
        self._drop("duplicate" if exc.code == "duplicate" else "invalid")
        log.warning("rejected message", extra={"code": exc.code, "detail": exc.message,
                                                "session": exc.session, "seq": exc.seq})
        self.results.send_multipart(protocol.encode_error(exc.code, exc.message,
                                                          session=exc.session, seq=exc.seq))

    def _store(self, kind: str, session: str | None, parts: list[bytes]) -> None:
        """Record a message durably before acting on it; a full disk costs data, not uptime."""
        if self.store is None:
            return
        t0 = time.perf_counter()
        try:
            if kind == "frames":
                self.store.frame_message(session, parts)
            elif kind == "results":
                self.store.result_message(session, parts)
            elif kind == "regions":
                self.store.region_message(session, parts)
            else:
                self.store.rejected_message(parts)
        except OSError as exc:
            log.error("session store write failed", extra={"kind": kind, "session": session,
                                                           "error": repr(exc)})
        self.metrics.observe_stage("store", time.perf_counter() - t0)

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n
        self.metrics.frame_dropped(reason, n)

    # ------------------------------------------------------------------ sessions
    def _close_silent_sessions(self) -> None:
        for session in self.ingest.silent_sessions(self.cfg.session_gap_timeout_s):
            log.warning("session timed out without an end message",
                        extra={"session": session, "timeout_s": self.cfg.session_gap_timeout_s})
            self.ingest.close(session)
            self._close_session(session, reason="gap_timeout")

    def _close_session(self, session: str, reason: str) -> None:
        # The engine stays (LRU-bounded by max_sessions): a frame of this session may still be
        # waiting in the mailbox, and a session that resumes under the same name stays warm.
        if self.store is not None:
            self.store.close_session(session)
        log.info("session closed", extra={"session": session, "reason": reason})

    def _engine_for(self, session: str) -> SessionEngine:
        with self._engines_lock:
            eng = self.engines.get(session)
            if eng is None:
                eng = (self._pool.engine(session, self.cfg) if self.cluster is not None
                       else make_engine(session, self.cfg))
                self._restore(eng)
                self.engines[session] = eng
                while len(self.engines) > self.cfg.max_sessions:
                    old, old_eng = self.engines.popitem(last=False)
                    getattr(old_eng, "close", lambda: None)()  # a remote engine frees its actor
                    log.info("session engine evicted", extra={"session": old})
            self.engines.move_to_end(session)
            return eng

    def _restore(self, eng: SessionEngine) -> None:
        """Load the session's checkpoint (if any) so a restarted service continues warm."""
        if self.store is None or not hasattr(eng, "load_state_dict"):
            return
        # An evicted engine's last snapshot may still be on its way to disk: let it land.
        if self.checkpoints is not None and not self.checkpoints.flush(CHECKPOINT_FLUSH_S):
            log.warning("pending checkpoints not written yet; restoring an older one",
                        extra={"session": eng.session})
        state = self.store.load_checkpoint(eng.session)
        if state is None:
            return
        try:
            eng.load_state_dict(state)
            log.info("session restored from checkpoint", extra={"session": eng.session})
        except Exception as exc:  # a bad checkpoint must not block the session
            log.error("checkpoint could not be restored", extra={"session": eng.session,
                                                                 "error": repr(exc)})

    def _checkpoint(self, eng: SessionEngine) -> None:
        """Snapshot the engine's state as of this frame for the background writer (no I/O)."""
        if self.checkpoints is None:
            return
        try:  # a copy: the engine goes on mutating its optimizers with the next frame
            state = copy.deepcopy(eng.state_dict())
        except Exception as exc:  # never worth a frame
            log.error("checkpoint failed", extra={"session": eng.session, "error": repr(exc)})
            self.metrics.checkpoint_failed()
            return
        self.checkpoints.submit(eng.session, state)

    # ------------------------------------------------------------------ analysis thread
    def _analysis_loop(self) -> None:
        out = self.ctx.socket(zmq.PUSH)
        out.connect(self._inproc)
        try:
            while True:
                item = self.slot.take()  # the slot sets queue_depth back to 0
                if item is None:
                    return
                self.metrics.set_analysing(item.received_monotonic)  # lag: this frame's age
                try:
                    for message in self._analyse(item):  # the result, then its regions
                        out.send_multipart(message)
                finally:
                    self.metrics.set_analysing(None)  # result out: idle, lag 0
        finally:
            out.close(linger=1000)

    def _analyse(self, item: Accepted) -> list[list[bytes]]:
        """The frame's messages for the I/O thread: its result (or error), then its regions."""
        frame = item.frame
        cfg = self.cfg  # one setting for the whole frame, even if `ctl set` changes it now
        try:
            engine = self._engine_for(frame.session)
            self._apply_visits()
            analysis = engine.process(frame, cfg)
            self._checkpoint(engine)
        except Exception as exc:  # a workflow bug must cost one frame, not the service
            return [self._failed(frame, exc, "analysis failed")]
        try:
            self._analysis_metrics(analysis)
        except Exception:  # bookkeeping must never cost the result
            log.exception("metrics update failed", extra={"session": frame.session,
                                                          "seq": frame.seq})
        t0 = time.perf_counter()
        try:
            parts = result_message(frame, analysis, item.received_monotonic)
        except Exception as exc:  # e.g. a user workflow's output the wire cannot carry
            return [self._failed(frame, exc, "result could not be encoded")]
        self.metrics.observe_stage("publish", time.perf_counter() - t0)
        messages = [parts]
        try:
            regions = regions_message(frame, analysis, getattr(cfg, "regions_mode", "auto"))
        except Exception as exc:  # a bad suggestion costs the suggestions, not the result
            log.error("suggestions could not be encoded", extra={
                "session": frame.session, "seq": frame.seq, "error": repr(exc)})
            regions = None
        if regions is not None:
            messages.append(regions)
        return messages

    def _apply_visits(self) -> None:
        """Tell each session's engine which suggestions were released (analysis thread only)."""
        while self._visits:
            session, suggestion = self._visits.popleft()
            with self._engines_lock:
                eng = self.engines.get(session)
            visited = getattr(eng, "visited", None)
            if visited is None:
                continue
            try:
                visited(suggestion)
            except Exception as exc:  # history is advice; never worth a frame
                log.error("engine could not record a visit", extra={
                    "session": session, "id": suggestion.get("id"), "error": repr(exc)})

    def _failed(self, frame: Frame, exc: Exception, what: str) -> list[bytes]:
        log.error(what, extra={"session": frame.session, "seq": frame.seq, "error": repr(exc),
                               "trace": traceback.format_exc(limit=5)})
        return protocol.encode_error("analysis_failed", f"{type(exc).__name__}: {exc}",
                                     session=frame.session, seq=frame.seq)

    def _analysis_metrics(self, analysis: Analysis) -> None:
        self.metrics.observe_stages(analysis.timings)
        model = analysis.scalars.get("model")
        model_id = model.get("id") if isinstance(model, dict) else analysis.model
        if model_id and model_id != self._model:
            self._model = model_id
            info = model if isinstance(model, dict) else {}
            self.metrics.model_swap(model_id, train_s=info.get("train_s", ""),
                                    n_patches=info.get("n_patches", ""),
                                    rewards=info.get("rewards", ""))
        self.metrics.set_warm(analysis.warm_started)
        self.metrics.evaluations(analysis.n_evaluations)
        if analysis.rewards:
            self.metrics.set_rewards(analysis.rewards)
        self._pareto_metrics(analysis.pareto, analysis.hypervolume)

    def _pareto_metrics(self, pareto: list, hypervolume: Mapping[str, float] | float | None
                        ) -> None:
        """Per-workflow front sizes and hypervolumes (each workflow's own units, never summed).

        ``hypervolume`` is ``{workflow: hv}``; a bare number (an engine that sums them) is
        reported under the workflow label ``all``.
        """
        sizes = Counter(str(p.get("workflow", "all")) for p in pareto if isinstance(p, Mapping))
        if hypervolume is None:
            hv = None
        elif isinstance(hypervolume, Mapping):
            hv = {str(k): float(v) for k, v in hypervolume.items()}
        else:
            hv = {"all": float(hypervolume)}
        self.metrics.set_pareto(sizes, hv)

    def _forward_from_worker(self) -> None:
        parts = self.from_worker.recv_multipart()
        topic = bytes(parts[0])
        if topic == protocol.TOPIC_RESULT:
            self.stats.frames_processed += 1
            self.stats.results_published += 1
            self.metrics.frame_processed()
            try:
                header = protocol.unpack_map(parts[1], protocol.RESULT_LIMITS)
            except ProtocolError:
                header = {}
            self.metrics.observe_latency(float(header.get("latency_s", 0.0)))
            self._store("results", str(header.get("session", "")), parts)
        elif topic == protocol.TOPIC_ERROR:
            self.errors["analysis_failed"] += 1
            self.metrics.error("analysis_failed")
        elif topic == protocol.TOPIC_REGIONS:
            try:
                self._on_regions(parts)
            except Exception:  # suggestions are advice: never worth the service
                log.exception("suggestions could not be gated")
            return
        self.results.send_multipart(parts)

    # ------------------------------------------------------------------ recommended regions
    def _on_regions(self, parts: list[bytes]) -> None:
        """Publish a frame's suggestions, then gate them (I/O thread; PUB never blocks)."""
        mode = getattr(self.cfg, "regions_mode", "auto")
        if mode == "off":
            return
        msg = protocol.decode_regions(parts)
        self.results.send_multipart(parts)
        self._store("regions", msg.session, parts)
        for s in msg.regions:
            self.metrics.suggestion(s["reason"], "published")
        log.info("suggestions published", extra={
            "session": msg.session, "seq": msg.seq, "mode": mode, "n": len(msg.regions),
            "ids": [s["id"] for s in msg.regions]})
        offer = self.gate.offer(msg.session, msg.seq, msg.regions, mode=mode,
                                expiry_s=float(getattr(self.cfg, "regions_expiry_s", 60.0)),
                                frame_shape=msg.frame_shape, extent_m=self._extent())
        for p in offer.outside:
            self._decided(p, "outside_sample")
        for p in offer.expired:
            self._decided(p, "expired")
        for p in offer.released:
            self._release(p, "auto")
        for p in offer.pending:
            self._record_decision(p, "pending")
        self.metrics.set_pending(len(self.gate))

    def _extent(self) -> list[float] | None:
        extent = getattr(self.cfg, "regions_extent_m", None)
        return list(extent) if extent else None

    def _release(self, p: Pending, mode: str) -> dict:
        """Send ``p`` to the instrument as a scan; its engine hears it was visited."""
        scan = protocol.scan_from_suggestion(p.suggestion, session=p.session, seq=p.seq,
                                             decision="auto" if mode == "auto" else "approved")
        parts = protocol.encode_scan(scan)
        self.results.send_multipart(parts)
        self._store("regions", p.session, parts)
        self.metrics.scan_released(p.reason, mode)
        if mode == "approve":
            self.metrics.suggestion(p.reason, "approved")
        self._record_decision(p, "released" if mode == "auto" else "approved")
        self._visits.append((p.session, p.suggestion))
        log.info("scan released", extra={"session": p.session, "seq": p.seq, "id": p.id,
                                          "reason": p.reason, "mode": mode,
                                          "box_px": p.suggestion["box_px"]})
        return scan.to_map()

    def _decided(self, p: Pending, decision: str) -> None:
        """Count, log and record a suggestion that will never be released."""
        self.metrics.suggestion(p.reason, decision)
        self._record_decision(p, decision)
        log.info(f"suggestion {decision}", extra={"session": p.session, "seq": p.seq,
                                                  "id": p.id, "reason": p.reason})

    def _record_decision(self, p: Pending, decision: str) -> None:
        if self.store is None:
            return
        try:
            self.store.decision(p.session, seq=p.seq, sid=p.id, decision=decision)
        except OSError as exc:
            log.error("session store write failed", extra={"kind": "decision",
                                                           "session": p.session,
                                                           "error": repr(exc)})

    def _expire_suggestions(self) -> None:
        gone = self.gate.expire()
        for p in gone:
            self._decided(p, "expired")
        if gone:
            self.metrics.set_pending(len(self.gate))

    def _suggestion_command(self, cmd: str, req: dict) -> dict:
        """``suggestions``, ``approve ID``, ``reject ID`` (request already validated)."""
        self._expire_suggestions()
        if cmd == "suggestions":
            return {"ok": True, "pending": self.gate.pending(req.get("session"))}
        sid = req["id"]
        try:
            if cmd == "approve":
                p = self.gate.approve(sid, extent_m=self._extent())
                reply = {"ok": True, "scan": self._release(p, "approve")}
            else:
                p = self.gate.reject(sid)
                self._decided(p, "rejected")
                reply = {"ok": True, "id": sid}
        except GateError as exc:
            self.metrics.control_error(exc.code)
            log.warning(f"{cmd} refused", extra={"id": sid, "code": exc.code,
                                                 "detail": exc.message})
            return {"ok": False, "code": exc.code, "error": exc.message}
        finally:
            self.metrics.set_pending(len(self.gate))
        return reply

    # ------------------------------------------------------------------ status + control
    def stats_dict(self) -> dict:
        return {"state": self.state, "frames_received": self.stats.received,
                "frames_accepted": self.stats.frames_accepted,
                "frames_processed": self.stats.frames_processed,
                "frames_dropped": dict(self.dropped), "errors": dict(self.errors),
                "last_seq": self.stats.last_seq, "last_session": self.stats.last_session,
                "uptime_s": round(time.monotonic() - self._started_monotonic, 3),
                "sessions": len(self.ingest.sessions), "queue_depth": self.slot.depth(),
                "connected": self.connected,
                **({"latent": self.trainer.status()} if self.trainer is not None else {})}

    def _heartbeat(self) -> None:
        self.results.send_multipart(protocol.encode_status(self.stats_dict()))

    def _handle_control(self) -> None:
        try:
            req = protocol.decode_request(self.control.recv(), self.cfg.limits())
            reply = self._command(req)
        except ProtocolError as exc:
            reply = {"ok": False, "error": exc.message, "code": exc.code}
            if exc.code in protocol.CONTROL_ERROR_CODES:
                self.metrics.control_error(exc.code)
        except Exception as exc:  # the REP socket must always answer
            log.exception("control command failed")
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.control.send(protocol.pack(reply))

    def _command(self, req: dict) -> dict:
        cmd = req["cmd"]
        if cmd == "ping":
            return {"ok": True, "pong": True, "version": __version__, "state": self.state}
        if cmd == "config":
            return {"ok": True, "config": self.cfg.to_dict()}
        if cmd == "stats":
            return {"ok": True, "stats": self.stats_dict()}
        if cmd in ("suggestions", "approve", "reject"):
            return self._suggestion_command(cmd, req)
        if cmd in ("pause", "resume"):
            paused = cmd == "pause"
            self.slot.set_paused(paused)
            self.state = "paused" if paused else "running"
            self.metrics.set_state(self.state)
            log.info(f"service {self.state}")
            return {"ok": True, "state": self.state}
        if cmd == "set":
            values = {k: v for k, v in req.items() if k != "cmd"}
            try:  # keys and values: config.SETTABLE; workflow/reward names: the engine
                new_cfg = self.cfg.updated_live(values, source="set")
                check_settings(new_cfg)
                self.cfg = new_cfg
            except ConfigError as exc:
                return {"ok": False, "error": str(exc)}
            log.info("settings changed", extra={k: str(v) for k, v in values.items()})
            return {"ok": True, "config": {k: getattr(self.cfg, k) for k in values}}
        return {"ok": False, "error": f"unknown command '{cmd}'; known: "
                                      f"{', '.join(protocol.CONTROL_COMMANDS)}"}
