"""Every Prometheus metric the service exports, in one place.

Names follow the Prometheus naming guide: prefix ``rewardscope_``, base units (seconds), counters
end in ``_total``. Every labelled series whose label values are known up front is created at
zero in ``__init__`` so dashboards and ``rate()`` show zeros, not gaps, before the first event.
Labels are always drawn from small fixed sets (drop reasons, error codes, stages, states, reward
and workflow names from the workflow registry); session ids and sequence numbers never become
labels.

Each :class:`Metrics` owns its own ``CollectorRegistry`` so that tests, and several services in
one process, never clash on the global default registry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from rewardscope import __version__, protocol

log = logging.getLogger(__name__)

PREFIX = "rewardscope"

DROP_REASONS = ("seq_gap", "stale", "invalid", "duplicate")
STAGES = ("decode", "lattice", "atoms", "refine", "descriptors", "cluster", "walls", "optimizer",
          "publish", "vae", "store", "checkpoint")
STATES = ("starting", "running", "paused", "stopping")
# Error codes come from the protocol module; anything else is counted as "other" rather than
# raising inside error handling or growing the label set.
OTHER_ERROR = "other"
ERROR_LABELS = (*protocol.ERROR_CODES, OTHER_ERROR)
# Reward names are bounded by the workflow registry; this cap only guards against a bug that
# would feed unbounded names (one series each) into the time-series database.
MAX_REWARDS = 64
# Workflow names (the ``workflow`` label of the Pareto gauges) are bounded the same way.
MAX_WORKFLOWS = 16
NO_MODEL = "none"
# Recommended regions: what happened to each suggestion, and how scans were released.
SUGGESTION_DECISIONS = ("published", "approved", "rejected", "expired", "outside_sample")
RELEASE_MODES = ("auto", "approve")

# Stage timings: 1 ms .. 30 s; frame-to-result latency: 10 ms .. 30 s.
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0,
                   30.0)


class Metrics:
    """The service's metrics; the daemon calls the methods, Prometheus scrapes ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 rewards: Iterable[str] = (), workflows: Iterable[str] = (),
                 process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

        self.frames_received = Counter(
            "frames_received", "Frame messages received from the instrument.",
            namespace=PREFIX, registry=r)
        self.frames_processed = Counter(
            "frames_processed", "Frames analysed and published as a result.",
            namespace=PREFIX, registry=r)
        self.frames_dropped = Counter(
            "frames_dropped", "Frames not analysed, by reason (seq_gap counts missing frames).",
            ["reason"], namespace=PREFIX, registry=r)
        self.errors = Counter(
            "errors", "Errors published on the error topic, by protocol error code.",
            ["code"], namespace=PREFIX, registry=r)
        self.stage_duration = Histogram(
            "stage_duration_seconds", "Wall time of one pipeline stage for one frame.",
            ["stage"], namespace=PREFIX, registry=r, buckets=STAGE_BUCKETS)
        self.latency = Histogram(
            "frame_latency_seconds", "Frame arrival to result published.",
            namespace=PREFIX, registry=r, buckets=LATENCY_BUCKETS)
        self.optimizer_evaluations = Counter(
            "optimizer_evaluations", "Hyperparameter evaluations run by the optimizer.",
            namespace=PREFIX, registry=r)
        self.reward_value = Gauge(
            "reward_value", "Latest value of each reward of the chosen analysis.",
            ["reward"], namespace=PREFIX, registry=r)
        self.pareto_size = Gauge(
            "pareto_front_size", "Points on the latest frame's Pareto front, per workflow.",
            ["workflow"], namespace=PREFIX, registry=r)
        self.pareto_hypervolume = Gauge(
            "pareto_hypervolume",
            "Hypervolume of the latest frame's Pareto front of one workflow (its own units).",
            ["workflow"], namespace=PREFIX, registry=r)
        self.queue_depth = Gauge(
            "queue_depth", "Frames received and waiting to be analysed (0 or 1).",
            namespace=PREFIX, registry=r)
        self.lag = Gauge(
            "lag_seconds",
            "Age of the oldest frame in analysis (since it was received); 0 when idle.",
            namespace=PREFIX, registry=r)
        # Measured at scrape time while a frame is in analysis, so a slow frame shows its age
        # growing instead of the value it had when analysis began. One entry per analysis
        # thread (several in cluster mode, one frame each): the lag is the oldest frame's.
        self._analysing_since: dict[int, float] = {}
        self._lag_value = 0.0
        self.lag.set_function(self._lag_now)
        self.checkpoint_failures = Counter(
            "checkpoint_failures", "Optimizer checkpoints that could not be written.",
            namespace=PREFIX, registry=r)
        self.model_swaps = Counter(
            "model_swaps", "Times the analysis model was replaced.", namespace=PREFIX,
            registry=r)
        self.model = Info("model", "Analysis model in use.", namespace=PREFIX, registry=r)
        self.last_frame = Gauge(
            "last_frame_timestamp_seconds", "Unix time the last frame was received (0 = none).",
            namespace=PREFIX, registry=r)
        self.connected = Gauge(
            "connected", "1 while the frame socket has a live connection to the instrument.",
            namespace=PREFIX, registry=r)
        self.state = Gauge(
            "state", "1 for the service's current state, 0 for the others.", ["state"],
            namespace=PREFIX, registry=r)
        self.warm = Gauge(
            "warm", "1 when the current session's optimizer is warm-started.",
            namespace=PREFIX, registry=r)
        self.build = Info("build", "Version of the running service (value always 1).",
                          namespace=PREFIX, registry=r)
        self.suggestions = Counter(
            "suggestions", "Recommended regions, by reason and what became of them.",
            ["reason", "decision"], namespace=PREFIX, registry=r)
        self.scans_released = Counter(
            "scans_released", "Suggestions released to the instrument as scans, by reason "
            "and gate mode.", ["reason", "mode"], namespace=PREFIX, registry=r)
        self.control_errors = Counter(
            "control_errors", "Refused suggestion commands on the control socket, by code.",
            ["code"], namespace=PREFIX, registry=r)
        self.suggestions_pending = Gauge(
            "suggestions_pending", "Suggestions waiting for an operator's decision.",
            namespace=PREFIX, registry=r)
        if process:
            ProcessCollector(namespace=PREFIX, registry=r)
        for reason in protocol.REGION_REASONS:
            for decision in SUGGESTION_DECISIONS:
                self.suggestions.labels(reason=reason, decision=decision)
            for mode in RELEASE_MODES:
                self.scans_released.labels(reason=reason, mode=mode)
        for code in protocol.CONTROL_ERROR_CODES:
            self.control_errors.labels(code=code)

        for reason in DROP_REASONS:
            self.frames_dropped.labels(reason=reason)
        for code in ERROR_LABELS:
            self.errors.labels(code=code)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)
        self._reward_names: set[str] = set()
        for name in rewards:
            self._reward_child(str(name))
        self._workflow_names: set[str] = set()
        for name in workflows:
            self._workflow_known(str(name))
        self.model.info({"model": NO_MODEL})
        self.build.info({"version": __version__})
        self.set_state("starting")

    # ------------------------------------------------------------------ frames and errors

    def frame_received(self, timestamp: float | None = None) -> None:
        """Count a frame and stamp the last-frame time (``timestamp`` defaults to now)."""
        self.frames_received.inc()
        self.last_frame.set(time.time() if timestamp is None else timestamp)

    def frame_processed(self) -> None:
        self.frames_processed.inc()

    def frame_dropped(self, reason: str, n: int = 1) -> None:
        """Count ``n`` dropped frames; ``reason`` must be one of :data:`DROP_REASONS`."""
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}; known: {DROP_REASONS}")
        if n > 0:
            self.frames_dropped.labels(reason=reason).inc(n)

    def error(self, code: str) -> None:
        """Count one error; codes outside ``protocol.ERROR_CODES`` are counted as ``other``."""
        if code not in protocol.ERROR_CODES:
            log.warning("metrics: unknown error code %r counted as %r", code, OTHER_ERROR)
            code = OTHER_ERROR
        self.errors.labels(code=code).inc()

    # ------------------------------------------------------------------ timings

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record one stage's duration; ``stage`` must be one of :data:`STAGES`."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
        self.stage_duration.labels(stage=stage).observe(seconds)

    def observe_stages(self, timings: Mapping[str, float]) -> None:
        """Record an ``Analysis.timings`` dict; names outside STAGES are skipped, not fatal."""
        for stage, seconds in timings.items():
            if stage in STAGES:
                self.stage_duration.labels(stage=stage).observe(seconds)

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        """Time the ``with`` body as ``stage``, also when it raises."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stage_duration.labels(stage=stage).observe(time.perf_counter() - t0)

    def observe_latency(self, seconds: float) -> None:
        """Frame arrival to result published, in seconds."""
        self.latency.observe(seconds)

    # ------------------------------------------------------------------ optimizer and results

    def evaluations(self, n: int) -> None:
        if n > 0:
            self.optimizer_evaluations.inc(n)

    def set_rewards(self, values: Mapping[str, float]) -> None:
        """Set the reward gauges; names are bounded by the workflow registry (cap MAX_REWARDS)."""
        for name, value in values.items():
            child = self._reward_child(str(name))
            if child is not None:
                child.set(float(value))

    def _reward_child(self, name: str) -> Gauge | None:
        with self._lock:
            if name not in self._reward_names:
                if len(self._reward_names) >= MAX_REWARDS:
                    log.warning("metrics: reward %r ignored, already %d reward series", name,
                                MAX_REWARDS)
                    return None
                self._reward_names.add(name)
            return self.reward_value.labels(reward=name)

    def set_pareto(self, sizes: Mapping[str, int],
                   hypervolumes: Mapping[str, float] | None = None) -> None:
        """The latest frame's Pareto front, per workflow: points on it and its hypervolume.

        A workflow with a series but missing from ``sizes`` (or from ``hypervolumes``) had no
        front on this frame and reads 0. ``hypervolumes=None`` leaves the hypervolumes as they
        were. Hypervolumes of different workflows are in different units: never sum them.
        """
        self._set_per_workflow(self.pareto_size, sizes)
        if hypervolumes is not None:
            self._set_per_workflow(self.pareto_hypervolume, hypervolumes)

    def _set_per_workflow(self, gauge: Gauge, values: Mapping[str, float]) -> None:
        values = {str(k): float(v) for k, v in values.items()}
        for name in [n for n in values if not self._workflow_known(n)]:
            del values[name]
        for name in sorted(self._workflow_names):
            gauge.labels(workflow=name).set(values.get(name, 0.0))

    def _workflow_known(self, name: str) -> bool:
        """Register ``name`` as a workflow label (both Pareto gauges, at 0); False past the cap."""
        with self._lock:
            if name not in self._workflow_names:
                if len(self._workflow_names) >= MAX_WORKFLOWS:
                    log.warning("metrics: workflow %r ignored, already %d workflow series", name,
                                MAX_WORKFLOWS)
                    return False
                self._workflow_names.add(name)
                self.pareto_size.labels(workflow=name)
                self.pareto_hypervolume.labels(workflow=name)
            return True

    def checkpoint_failed(self) -> None:
        """Count an optimizer checkpoint that could not be written."""
        self.checkpoint_failures.inc()

    # ------------------------------------------------------------------ recommended regions

    def suggestion(self, reason: str, decision: str, n: int = 1) -> None:
        """Count ``n`` suggestions of ``reason`` (:data:`protocol.REGION_REASONS`) that were
        ``decision`` (:data:`SUGGESTION_DECISIONS`)."""
        if reason not in protocol.REGION_REASONS:
            raise ValueError(f"unknown region reason {reason!r}; known: "
                             f"{protocol.REGION_REASONS}")
        if decision not in SUGGESTION_DECISIONS:
            raise ValueError(f"unknown decision {decision!r}; known: {SUGGESTION_DECISIONS}")
        if n > 0:
            self.suggestions.labels(reason=reason, decision=decision).inc(n)

    def scan_released(self, reason: str, mode: str) -> None:
        """Count one scan sent to the instrument; ``mode`` is one of :data:`RELEASE_MODES`."""
        if reason not in protocol.REGION_REASONS or mode not in RELEASE_MODES:
            raise ValueError(f"unknown reason/mode {reason!r}/{mode!r}")
        self.scans_released.labels(reason=reason, mode=mode).inc()

    def control_error(self, code: str) -> None:
        """Count one refused suggestion command (:data:`protocol.CONTROL_ERROR_CODES`)."""
        if code not in protocol.CONTROL_ERROR_CODES:
            raise ValueError(f"unknown control error code {code!r}")
        self.control_errors.labels(code=code).inc()

    def set_pending(self, n: int) -> None:
        """Suggestions now waiting for approval."""
        self.suggestions_pending.set(n)

    # ------------------------------------------------------------------ service state

    def set_queue(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def set_analysing(self, received_monotonic: float | None) -> None:
        """The calling thread analyses a frame received at ``received_monotonic``
        (``time.monotonic()``): ``lag_seconds`` reports the age of the oldest frame in analysis
        at every scrape. ``None``: this thread is done (lag 0 once no thread analyses)."""
        me = threading.get_ident()
        if received_monotonic is None:
            self._analysing_since.pop(me, None)
            if not self._analysing_since:
                self._lag_value = 0.0
        else:
            self._analysing_since[me] = float(received_monotonic)

    def set_lag_seconds(self, seconds: float) -> None:
        """A fixed lag value (stops following frames' ages, see :meth:`set_analysing`)."""
        self._analysing_since.clear()
        self._lag_value = float(seconds)

    def _lag_now(self) -> float:
        since = list(self._analysing_since.values())  # a copy: threads add and remove entries
        return self._lag_value if not since else max(0.0, time.monotonic() - min(since))

    def model_swap(self, model_name: str, **labels: object) -> None:
        """Count a model replacement and label the model now in use (plus ``labels``, e.g. the
        latent model's ``train_s``, ``n_patches``, ``rewards``)."""
        self.model_swaps.inc()
        self.model.info({"model": str(model_name), **{k: str(v) for k, v in labels.items()}})

    def set_last_frame_timestamp(self, t: float) -> None:
        """Unix time (seconds) of the last frame received."""
        self.last_frame.set(t)

    def set_connected(self, connected: bool) -> None:
        self.connected.set(1 if connected else 0)

    def set_state(self, state: str) -> None:
        """Mark ``state`` (one of :data:`STATES`) as current: 1 for it, 0 for the others."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; known: {STATES}")
        for s in STATES:
            self.state.labels(state=s).set(1 if s == state else 0)

    def set_warm(self, warm: bool) -> None:
        self.warm.set(1 if warm else 0)

    # ------------------------------------------------------------------ exposition

    def serve(self, port: int = protocol.DEFAULT_METRICS_PORT,
              addr: str = "127.0.0.1") -> WSGIServer:
        """Start ``/metrics`` on ``addr:port`` (loopback by default; port 0 picks a free one)."""
        if self._server is not None:
            raise RuntimeError("metrics endpoint already running; call stop() first")
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        log.info("metrics: serving http://%s:%d/metrics", addr, self.port)
        return self._server

    @property
    def port(self) -> int | None:
        """The bound port of the running endpoint, or None when not serving."""
        return None if self._server is None else int(self._server.server_port)

    def stop(self) -> None:
        """Stop the endpoint (idempotent); the registry and its values stay."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def render(self) -> bytes:
        """The text exposition, exactly what a scrape returns."""
        return generate_latest(self.registry)
