"""Reliability under faults: exact accounting, store + warm restart after SIGKILL, reconnects,
silent sessions, and bounded memory. Real sockets on loopback, the simulator as instrument."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import loopback
import numpy as np
import pytest

from rewardscope import config, protocol
from rewardscope.clients import ControlClient, InstrumentClient, ResultsClient
from rewardscope.live.daemon import Daemon
from rewardscope.simulators.faults import FaultPlan, plan_stream
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig
from rewardscope.simulators.publisher import publish
from rewardscope.storage.recordlog import RecordReader

LATTICE = 12.0
# The daemon end to end over real sockets and subprocesses: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow


def _daemon(frames_url: str, **overrides) -> tuple[Daemon, threading.Thread]:
    cfg = config.load(None, {"frames": frames_url, "results": "tcp://127.0.0.1:*",
                             "control": "tcp://127.0.0.1:*", "metrics_port": 0,
                             "heartbeat_s": 0.2, "lattice_px": LATTICE, "budget": 3,
                             "cold_budget": 4, **overrides})
    d = Daemon(cfg)
    d.start()
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    return d, t


def _stop(d: Daemon, t: threading.Thread) -> None:
    d.stop()
    t.join(timeout=20)
    assert not t.is_alive()


def test_fault_stream_is_accounted_exactly():
    sim = PerovskiteSimulator(SimConfig(shape=(96, 96), lattice_px=LATTICE, seed=5))
    plan = FaultPlan.parse("all", every=2, seed=3)
    messages = list(plan_stream(sim, 40, "faulty", plan))
    endpoints: dict[str, str] = {}
    ready = threading.Event()
    ledger_box: dict = {}
    pub = threading.Thread(target=lambda: ledger_box.update(ledger=publish(
        "tcp://127.0.0.1:*", messages, rate_hz=15, endpoints=endpoints, endpoint_ready=ready,
        wait_for_subscriber_s=20)), daemon=True)
    pub.start()
    assert ready.wait(10)
    d, t = _daemon(endpoints["frames"])
    try:
        pub.join(timeout=60)
        ledger = ledger_box["ledger"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s = d.stats_dict()
            if (s["frames_processed"] + s["frames_dropped"]["stale"] >= ledger.good_frames
                    and s["queue_depth"] == 0):
                break
            time.sleep(0.2)
        time.sleep(0.5)
        s = d.stats_dict()
        assert ledger.n_errors >= 10 and ledger.seq_gaps > 0 and ledger.restarts >= 1
        assert s["frames_received"] == ledger.messages
        assert s["frames_accepted"] == ledger.good_frames
        assert s["frames_processed"] + s["frames_dropped"]["stale"] == ledger.good_frames
        assert s["frames_dropped"]["seq_gap"] == ledger.seq_gaps
        assert s["frames_dropped"]["duplicate"] == ledger.duplicates
        assert s["frames_dropped"]["invalid"] == ledger.n_errors - ledger.duplicates
        for code, n in ledger.errors.items():
            assert s["errors"][code] == n, code
        assert sum(s["errors"].values()) == ledger.n_errors
        assert t.is_alive()
    finally:
        _stop(d, t)


def test_publisher_restart_and_silent_session_timeout():
    """The instrument goes away and comes back on the same address; a session that never
    sends its end is closed after the gap timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    px = PerovskiteSimulator(SimConfig(shape=(96, 96), lattice_px=LATTICE)).frame(0).pixels
    inst = InstrumentClient(url)
    d, t = _daemon(url, session_gap_timeout_s=1.0)
    results = ResultsClient(d.results_endpoint)
    try:
        assert inst.wait_for_subscriber(10)
        time.sleep(0.3)
        inst.start_session("first")
        inst.send_frame(px)
        assert results.recv_result(timeout=20).session == "first"
        inst.close()  # the acquisition software quits without an end message
        time.sleep(0.5)
        inst = InstrumentClient(url)  # ... and starts again on the same endpoint
        assert inst.wait_for_subscriber(10), "service did not reconnect"
        time.sleep(0.3)
        inst.start_session("second")
        inst.send_frame(px)
        r = results.recv_result(timeout=20)
        assert r.session == "second"
        deadline = time.monotonic() + 10
        while "first" in d.ingest.sessions and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "first" not in d.ingest.sessions, "silent session was not closed"
    finally:
        results.close()
        inst.close()
        _stop(d, t)


def _serve(store: Path, ports: list[int]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rewardscope.cli", "serve", "--frames",
           f"tcp://127.0.0.1:{ports[0]}", "--results", f"tcp://127.0.0.1:{ports[1]}",
           "--control", f"tcp://127.0.0.1:{ports[2]}", "--metrics-port", "0",
           "--store", str(store), "--lattice-px", str(LATTICE), "--budget", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ctl = ControlClient(f"tcp://127.0.0.1:{ports[2]}", timeout_s=1.0)
    try:
        for _ in range(90):
            try:
                if ctl.ping()["ok"]:
                    return proc
            except TimeoutError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        raise AssertionError("service did not come up")
    finally:
        ctl.close()


def test_sigkill_loses_no_received_frame_and_restarts_warm(tmp_path):
    from rewardscope.storage.sessions import session_path

    ports = loopback.free_ports(3)
    sim = PerovskiteSimulator(SimConfig(shape=(128, 128), lattice_px=LATTICE, seed=9))
    inst = InstrumentClient(f"tcp://127.0.0.1:{ports[0]}")
    proc = _serve(tmp_path, ports)
    results = ResultsClient(f"tcp://127.0.0.1:{ports[1]}")
    try:
        assert inst.wait_for_subscriber(20)
        time.sleep(0.3)
        inst.start_session("beam-7", lattice_px=LATTICE)
        for sf in sim.frames(3):
            seq = inst.send_frame(sf.pixels)
            r = results.recv_result(timeout=30)
            assert r is not None and r.seq == seq
        assert r.extra["warm_started"] is True
        # a frame in flight when the service is killed
        inst.send_frame(sim.frame(3).pixels)
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        stored = [protocol.decode_instrument(rec.parts)
                  for rec in RecordReader(session_path(tmp_path, "beam-7") / "frames.rsrec")]
        seqs = [m.seq for m in stored if isinstance(m, protocol.Frame)]
        assert seqs == [0, 1, 2, 3], "every received frame is in the store"
        assert (session_path(tmp_path, "beam-7") / "checkpoint.json").exists()

        proc = _serve(tmp_path, ports)
        results.close()
        results = ResultsClient(f"tcp://127.0.0.1:{ports[1]}")
        assert inst.wait_for_subscriber(20)
        time.sleep(0.5)
        seq = inst.send_frame(sim.frame(4).pixels)
        r = results.recv_result(timeout=30)
        assert r is not None and r.seq == seq
        assert r.extra["warm_started"] is True, "first frame after restart is warm"
        assert r.n_evaluations <= 3, "and uses the warm budget, not the cold one"
    finally:
        results.close()
        inst.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow
def test_bounded_soak_memory_does_not_grow():
    """~40 s at 8 frames/s with faults mixed in: RSS after warm-up stays within a small bound.
    (The one-hour version is ``python -m benchmarks soak``.)"""
    sim = PerovskiteSimulator(SimConfig(shape=(128, 128), lattice_px=LATTICE, seed=2))
    frames = [sim.frame(i).pixels for i in range(8)]
    inst = InstrumentClient("tcp://127.0.0.1:*")
    d, t = _daemon(inst.endpoint, budget=2, cold_budget=3)
    try:
        assert inst.wait_for_subscriber(10)
        rng = np.random.default_rng(0)
        samples = []
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 40:
            if i % 50 == 0:
                inst.start_session(f"soak-{i // 50 % 3}")  # sessions come and go
            inst.send_frame(frames[i % len(frames)])
            if i % 7 == 0:
                inst.sock.send_multipart([b"frame", rng.bytes(64), rng.bytes(256)])
            i += 1
            time.sleep(0.125)
            if i % 40 == 0:
                samples.append(_rss_mb())
        base, peak = samples[2], max(samples[2:])
        assert d.stats_dict()["frames_processed"] > 100
        assert peak - base < 60, f"RSS grew from {base:.0f} MB to {peak:.0f} MB"
        assert t.is_alive()
    finally:
        inst.close()
        _stop(d, t)
