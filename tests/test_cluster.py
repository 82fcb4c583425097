"""``serve --cluster``: session engines as Dask actors on a real LocalCluster of 2 workers, two
simulated instruments served at once over loopback; the cluster mailbox; spec parsing."""

from __future__ import annotations

import json
import os
import threading
import types

import pytest
from loopback import Rig

from rewardscope import protocol
from rewardscope.config import ConfigError
from rewardscope.live.cluster import SessionSlots, parse_cluster
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig
from rewardscope.storage.sessions import CHECKPOINT, session_path


def _item(session: str, seq: int):
    return types.SimpleNamespace(frame=types.SimpleNamespace(session=session, seq=seq))


def test_parse_cluster_specs_and_named_error():
    assert parse_cluster("local:2") == ("local", 2)
    assert parse_cluster("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    for bad in ("local:0", "lokal:2", "10.0.0.5:8786", ""):
        with pytest.raises(ConfigError, match="cluster"):
            parse_cluster(bad)


def test_session_slots_newest_per_session_one_session_per_thread():
    stale = []
    slots = SessionSlots(on_stale=stale.append)
    assert slots.put(_item("a", 0)) is None
    assert slots.put(_item("b", 0)) is None
    replaced = slots.put(_item("a", 1))  # same session: the older frame is replaced
    assert (replaced.frame.session, replaced.frame.seq) == ("a", 0)
    assert slots.depth() == 2
    first = slots.take()
    assert (first.frame.session, first.frame.seq) == ("a", 1)  # waited longest
    slots.put(_item("a", 2))
    got: list = []
    other = threading.Thread(target=lambda: got.append(slots.take()))
    other.start()
    other.join(timeout=5)
    assert got[0].frame.session == "b"  # "a" is in analysis in this thread: not handed out
    nxt = slots.take()  # this thread hands "a" back and takes its next frame
    assert (nxt.frame.session, nxt.frame.seq) == ("a", 2)
    slots.put(_item("c", 0))
    slots.put(_item("d", 0))
    assert slots.close().frame.session == "c"
    assert stale == [1]  # the other waiting frame is counted as dropped
    assert slots.take() is None


def test_two_instruments_served_at_once_on_two_workers(tmp_path):
    environ = dict(os.environ)
    rig = Rig(cluster="local:2", workflow="atoms", budget=3, cold_budget=5,
              cold_deadline_s=60.0, deadline_s=30.0, store=str(tmp_path))
    try:
        sims = {s: PerovskiteSimulator(SimConfig(shape=(96, 96), noise_sigma=0.1, seed=k))
                for k, s in enumerate(("scope-1", "scope-2"))}
        for s in sims:
            rig.instrument.sock.send_multipart(protocol.encode_start(s))
        got: dict[str, list[int]] = {s: [] for s in sims}
        for seq in range(3):
            for s, sim in sims.items():
                rig.instrument.sock.send_multipart(
                    protocol.encode_frame(sim.frame(seq).pixels, session=s, seq=seq))
            results, errors = rig.collect(2, timeout=120)
            assert not errors
            for r in results:
                got[r.session].append(r.seq)
                assert len(r.atoms) > 20  # a real analysis came back from the worker
        assert got == {"scope-1": [0, 1, 2], "scope-2": [0, 1, 2]}
        # Dask's nanny wrote its workers' settings into this process's environment; the
        # cluster put it back, so what the daemon starts later does not inherit them
        assert dict(os.environ) == environ
        engines = rig.daemon.engines
        assert {engines[s].worker for s in sims} == set(rig.daemon.cluster.workers())
        assert all(engines[s].state_dict()["frames_processed"] == 3 for s in sims)
    finally:
        rig.close()
    for s in sims:  # the daemon's checkpoint writer stored each worker's optimizer state
        state = json.loads((session_path(tmp_path, s) / CHECKPOINT).read_text())["state"]
        assert state["session"] == s and state["frames_processed"] == 3


def test_a_killed_worker_moves_its_session_warm_and_loses_no_frame(tmp_path):
    """The worker holding a session's engine dies between frames: the next frame is analysed
    on a live worker with the session's last state (warm), every frame gets its result, and
    the checkpoint continues the count."""
    rig = Rig(cluster="local:2", workflow="atoms", budget=3, cold_budget=5,
              cold_deadline_s=60.0, deadline_s=30.0, store=str(tmp_path))
    session = "scope-k"
    try:
        sim = PerovskiteSimulator(SimConfig(shape=(96, 96), noise_sigma=0.1, seed=4))
        rig.instrument.sock.send_multipart(protocol.encode_start(session))
        seen = []

        def one(seq: int):
            rig.instrument.sock.send_multipart(
                protocol.encode_frame(sim.frame(seq).pixels, session=session, seq=seq))
            results, errors = rig.collect(1, timeout=120)
            assert not errors and len(results) == 1
            seen.append(results[0].seq)
            return results[0]

        one(0)
        one(1)
        engine = rig.daemon.engines[session]
        victim = engine.worker
        try:
            rig.daemon.cluster.client.run(os._exit, 1, workers=[victim])
        except Exception:
            pass  # the worker dies before it can answer
        after = one(2)
        assert engine.moves == 1  # the session was placed again ...
        assert after.extra.get("warm_started") and len(after.atoms) > 20  # ... with its state
        one(3)
        assert seen == [0, 1, 2, 3]  # no frame lost
        assert engine.state_dict()["frames_processed"] == 4
    finally:
        rig.close()
    state = json.loads((session_path(tmp_path, session) / CHECKPOINT).read_text())["state"]
    assert state["frames_processed"] == 4
