"""Operations tell the truth: the connection gauge follows the frames socket's link, queue depth
and lag follow the frame in hand, Pareto metrics are per workflow, and optimizer checkpoints
are written off the latency path (flushed on shutdown, failures counted, never fatal).

Real ZeroMQ sockets on loopback; an engine stand-in (patched into the daemon) makes the frame in
analysis observable and the checkpoint writes controllable.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rewardscope import config
from rewardscope.clients import InstrumentClient, ResultsClient
from rewardscope.engine import Analysis
from rewardscope.live import daemon as daemon_mod
from rewardscope.live.checkpoints import CheckpointWriter
from rewardscope.live.daemon import Daemon
from rewardscope.storage.sessions import CHECKPOINT, session_path

WAIT_S = 20.0  # generous: the machine is slow and shared; only ever a timeout, never a measure
PX = np.zeros((32, 32), np.uint16)


def wait_for(cond: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def metric(d: Daemon, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(d.metrics.render().decode()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"{name} {labels} not exported")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeEngine:
    """Stands in for a SessionEngine: returns a fixed analysis, optionally held at a gate."""

    gate = threading.Event()
    entered = threading.Event()

    def __init__(self, session: str, _settings: object = None) -> None:
        self.session = session
        self.history: list[int] = []  # mutated in place by every frame

    def process(self, frame, _settings) -> Analysis:
        FakeEngine.entered.set()
        assert FakeEngine.gate.wait(WAIT_S), "test never opened the gate"
        self.history.append(frame.seq)
        return Analysis(atoms=np.zeros((0, 2), np.float32), labels=np.zeros(0, np.int16),
                        pareto=[{"workflow": "atoms", "params": {}, "rewards": {}}] * 2
                        + [{"workflow": "domains", "params": {}, "rewards": {}}],
                        hypervolume={"atoms": 0.5, "domains": 7.0})

    def state_dict(self) -> dict:
        return {"session": self.session, "history": self.history}  # not a copy, on purpose


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> type[FakeEngine]:
    FakeEngine.gate, FakeEngine.entered = threading.Event(), threading.Event()
    FakeEngine.gate.set()
    monkeypatch.setattr(daemon_mod, "make_engine", FakeEngine)
    return FakeEngine


def start_daemon(frames: str, *, before_start: Callable[[Daemon], None] | None = None,
                 **overrides) -> tuple[Daemon, threading.Thread]:
    cfg = config.load(None, {"frames": frames, "results": "tcp://127.0.0.1:*",
                             "control": "tcp://127.0.0.1:*", "metrics_port": 0,
                             "heartbeat_s": 0.2, **overrides})
    d = Daemon(cfg)
    if before_start is not None:
        before_start(d)
    d.start()
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    return d, t


def stop_daemon(d: Daemon, t: threading.Thread) -> None:
    d.stop()
    t.join(timeout=30)
    assert not t.is_alive()


# ----------------------------------------------------------------------------- connected

def test_connected_follows_the_instrument_link_of_a_connecting_socket() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    d, t = start_daemon(url)  # nothing listens there yet
    inst = None
    try:
        assert d.stats_dict()["connected"] is False
        assert metric(d, "rewardscope_connected") == 0, "no instrument: not connected"
        inst = InstrumentClient(url)
        wait_for(lambda: d.stats_dict()["connected"], "the handshake with the instrument")
        assert metric(d, "rewardscope_connected") == 1
        inst.close()  # the acquisition software quits
        wait_for(lambda: not d.stats_dict()["connected"], "the disconnect")
        assert metric(d, "rewardscope_connected") == 0
        inst = InstrumentClient(url)  # ... and comes back on the same endpoint
        wait_for(lambda: d.stats_dict()["connected"], "the reconnect")
        assert metric(d, "rewardscope_connected") == 1
    finally:
        if inst is not None:
            inst.close()
        stop_daemon(d, t)
    assert metric(d, "rewardscope_connected") == 0


def test_connected_counts_peers_of_a_bound_socket() -> None:
    d, t = start_daemon("tcp://127.0.0.1:*", frames_bind=True)
    insts = []
    try:
        assert d.stats_dict()["connected"] is False
        insts = [InstrumentClient(d.frames_endpoint, bind=False) for _ in range(2)]
        wait_for(lambda: d._peers == 2, "two accepted instruments")
        assert d.stats_dict()["connected"] is True
        assert metric(d, "rewardscope_connected") == 1
        insts.pop().close()
        wait_for(lambda: d._peers == 1, "one instrument gone")
        assert metric(d, "rewardscope_connected") == 1, "one instrument is still connected"
        insts.pop().close()
        wait_for(lambda: d._peers == 0, "both instruments gone")
        assert d.stats_dict()["connected"] is False
        assert metric(d, "rewardscope_connected") == 0
    finally:
        for inst in insts:
            inst.close()
        stop_daemon(d, t)


# ----------------------------------------------------------------------------- queue and lag

def test_queue_depth_and_lag_follow_the_frame_in_hand(fake_engine: type[FakeEngine]) -> None:
    inst = InstrumentClient("tcp://127.0.0.1:*")
    d, t = start_daemon(inst.endpoint)
    res = ResultsClient(d.results_endpoint)
    try:
        assert inst.wait_for_subscriber(WAIT_S)
        time.sleep(0.3)  # slow joiner of the results subscription
        fake_engine.gate.clear()
        inst.start_session("lag")
        inst.send_frame(PX)
        assert fake_engine.entered.wait(WAIT_S)
        # taken from the mailbox: nothing waits; the frame in hand ages at every scrape
        assert metric(d, "rewardscope_queue_depth") == 0
        assert d.stats_dict()["queue_depth"] == 0
        first = metric(d, "rewardscope_lag_seconds")
        assert first > 0
        assert metric(d, "rewardscope_lag_seconds") >= first
        fake_engine.gate.set()
        r = res.recv_result(timeout=WAIT_S)
        assert r is not None and r.session == "lag"
        wait_for(lambda: metric(d, "rewardscope_lag_seconds") == 0, "lag back to 0 when idle")
        assert metric(d, "rewardscope_queue_depth") == 0
        # per-workflow Pareto metrics from the analysis
        assert metric(d, "rewardscope_pareto_front_size", workflow="atoms") == 2
        assert metric(d, "rewardscope_pareto_front_size", workflow="domains") == 1
        assert metric(d, "rewardscope_pareto_hypervolume", workflow="atoms") == 0.5
        assert metric(d, "rewardscope_pareto_hypervolume", workflow="domains") == 7.0
    finally:
        res.close()
        inst.close()
        stop_daemon(d, t)


def test_a_summed_hypervolume_is_labelled_all() -> None:
    d = Daemon(config.load(None, {"metrics_port": 0}))  # never started: no sockets, no threads
    d._pareto_metrics([{"workflow": "atoms"}], 3.0)
    assert metric(d, "rewardscope_pareto_hypervolume", workflow="all") == 3.0
    assert metric(d, "rewardscope_pareto_front_size", workflow="atoms") == 1
    d._pareto_metrics([], None)  # no hypervolume: sizes only, hypervolumes unchanged
    assert metric(d, "rewardscope_pareto_front_size", workflow="atoms") == 0
    assert metric(d, "rewardscope_pareto_hypervolume", workflow="all") == 3.0


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_is_written_off_the_latency_path(tmp_path, fake_engine) -> None:
    release, started = threading.Event(), threading.Event()
    written: list[dict] = []

    def slow_disk(d: Daemon) -> None:
        real = d.store.checkpoint

        def write(session: str, state: dict) -> None:
            started.set()
            assert release.wait(WAIT_S), "test never released the checkpoint write"
            written.append(json.loads(json.dumps(state)))
            real(session, state)

        d.store.checkpoint = write

    inst = InstrumentClient("tcp://127.0.0.1:*")
    d, t = start_daemon(inst.endpoint, store=str(tmp_path), before_start=slow_disk)
    res = ResultsClient(d.results_endpoint)
    stopped = False
    try:
        assert inst.wait_for_subscriber(WAIT_S)
        time.sleep(0.3)
        inst.start_session("ckpt")
        for seq in range(3):
            inst.send_frame(PX)
            r = res.recv_result(timeout=WAIT_S)
            assert r is not None and r.seq == seq, "results go out while the checkpoint waits"
            if seq == 0:  # frame 0's snapshot is in the writer's hands, held by the slow disk
                assert started.wait(WAIT_S)
        assert not written
        assert not (session_path(tmp_path, "ckpt") / CHECKPOINT).exists()
        # frame 0's snapshot is being written; frame 1's was replaced by frame 2's
        assert d.checkpoints.replaced == 1 and d.checkpoints.pending() == 2
        release.set()
        stop_daemon(d, t)  # shutdown flushes what is pending
        stopped = True
    finally:
        release.set()
        res.close()
        inst.close()
        if not stopped:
            stop_daemon(d, t)
    # each snapshot is the state at its frame, not the engine's state at write time
    assert [w["history"] for w in written] == [[0], [0, 1, 2]]
    assert d.store.load_checkpoint("ckpt")["history"] == [0, 1, 2]
    assert d.checkpoints.written == 2 and d.checkpoints.failed == 0


def test_a_failing_checkpoint_is_counted_not_fatal(tmp_path, fake_engine) -> None:
    def full_disk(d: Daemon) -> None:
        def write(session: str, state: dict) -> None:
            raise OSError(28, "No space left on device")

        d.store.checkpoint = write

    inst = InstrumentClient("tcp://127.0.0.1:*")
    d, t = start_daemon(inst.endpoint, store=str(tmp_path), before_start=full_disk)
    res = ResultsClient(d.results_endpoint)
    try:
        assert inst.wait_for_subscriber(WAIT_S)
        time.sleep(0.3)
        inst.start_session("full")
        for seq in range(2):
            inst.send_frame(PX)
            r = res.recv_result(timeout=WAIT_S)
            assert r is not None and r.seq == seq
        assert d.checkpoints.flush(WAIT_S)
        assert d.checkpoints.failed == 2
        assert metric(d, "rewardscope_checkpoint_failures_total") == 2
        assert t.is_alive()
    finally:
        res.close()
        inst.close()
        stop_daemon(d, t)


def test_checkpoint_writer_latest_state_wins_and_close_flushes() -> None:
    gate, calls = threading.Event(), []

    def write(session: str, state: dict) -> None:
        assert gate.wait(WAIT_S)
        if state.get("bad"):
            raise TypeError("not JSON-serialisable")
        calls.append((session, state["n"]))

    failures = []
    w = CheckpointWriter(write, on_failed=lambda: failures.append(1))
    w.submit("a", {"n": 1})
    wait_for(lambda: w.pending() == 1 and not w._pending, "the first write to start")
    for n in (2, 3, 4):
        w.submit("a", {"n": n})
    w.submit("b", {"n": 10})
    w.submit("c", {"bad": True})
    assert w.replaced == 2 and w.pending() == 4
    assert not w.flush(timeout=0.05)
    gate.set()
    assert w.close()
    assert calls == [("a", 1), ("a", 4), ("b", 10)]
    assert w.written == 3 and w.failed == 1 and failures == [1]
    w.submit("a", {"n": 5})  # after close: written in the caller's thread, not lost
    assert calls[-1] == ("a", 5)
