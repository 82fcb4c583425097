"""Recommended regions on the wire and the approval gate.

Protocol round trips and validation, the gate's bookkeeping on plain suggestion dicts, and a
real daemon over loopback sockets fed simulated frames with domain walls (the engine suggests
the walls): approve -> a scan with that id, reject -> never a scan with that id, auto releases
the top suggestion, bad ids and malformed commands are refused by name and change nothing, and
nobody approving does not stall the service (suggestions expire, frames keep being answered).
"""

from __future__ import annotations

import math
import time
import uuid

import h5py
import loopback
import msgpack
import numpy as np
import pytest

from rewardscope import protocol
from rewardscope.clients.watch import Operator
from rewardscope.live.gate import Gate, GateError
from rewardscope.protocol import ProtocolError
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig
from rewardscope.storage.hdf5 import export_session
from rewardscope.storage.sessions import load_session, session_path

LATTICE = 12.0


def suggestion(score: float = 1.0, reason: str = "wall", box=(10.0, 20.0, 50.0, 60.0),
               **kw) -> dict:
    """A contract suggestion (plain data)."""
    s = {"id": uuid.uuid4().hex, "score": score, "reason": reason, "significance": 12.5,
         "box_px": list(box), "box_m": None, "center_m": None, "fov_m": None,
         "rotation_rad": 0.0, "magnification": 2.0}
    s.update(kw)
    return s


# ----------------------------------------------------------------------------- protocol

def test_regions_round_trip_keeps_every_field() -> None:
    regions = [suggestion(0.9), suggestion(0.4, "amorphous", box_m=[1e-9, 2e-9, 3e-9, 4e-9],
                                          center_m=[2e-9, 3e-9], fov_m=2e-9,
                                          rotation_rad=0.1, magnification=4.0)]
    parts = protocol.encode_regions("s", 7, regions, t=123.5, frame_shape=(256, 384))
    assert bytes(parts[0]) == b"regions" and len(parts) == 2
    msg = protocol.decode_regions(parts)
    assert (msg.session, msg.seq, msg.t, msg.frame_shape) == ("s", 7, 123.5, (256, 384))
    assert msg.regions == regions
    h = msgpack.unpackb(parts[1])
    assert h["v"] == 1 and h["type"] == "regions"


def test_scan_round_trip_from_a_suggestion() -> None:
    s = suggestion(center_m=[1.5e-9, 2.5e-9], fov_m=3e-9, rotation_rad=0.25)
    scan = protocol.scan_from_suggestion(s, session="s", seq=3, t=9.0, decision="approved")
    back = protocol.decode_scan(protocol.encode_scan(scan))
    assert back == scan
    assert (back.id, back.box_px, back.center_m, back.fov_m, back.rotation_rad,
            back.magnification) == (s["id"], s["box_px"], [1.5e-9, 2.5e-9], 3e-9, 0.25, 2.0)
    h = msgpack.unpackb(protocol.encode_scan(scan)[1])
    assert {"v", "type", "session", "seq", "t", "id", "center_m", "fov_m", "rotation_rad",
            "box_px", "magnification"} <= set(h)
    assert protocol.scan_from_map(scan.to_map()) == scan


@pytest.mark.parametrize("change, code", [
    ({"score": math.nan}, "wrong_type"),
    ({"score": math.inf}, "wrong_type"),
    ({"score": True}, "wrong_type"),
    ({"significance": "high"}, "wrong_type"),
    ({"reason": "pretty"}, "wrong_type"),
    ({"id": ""}, "wrong_type"),
    ({"id": "x" * 65}, "wrong_type"),
    ({"id": 17}, "wrong_type"),
    ({"box_px": [50.0, 20.0, 10.0, 60.0]}, "wrong_type"),  # x0 > x1
    ({"box_px": [10.0, 60.0, 50.0, 60.0]}, "wrong_type"),  # y0 == y1
    ({"box_px": [10.0, 20.0, 50.0]}, "wrong_type"),
    ({"box_px": [10.0, 20.0, math.nan, 60.0]}, "wrong_type"),
    ({"box_m": [1.0, 1.0, 0.0, 2.0]}, "wrong_type"),
    ({"center_m": [1.0]}, "wrong_type"),
    ({"fov_m": -1.0}, "wrong_type"),
    ({"magnification": 0.5}, "wrong_type"),
    ({"rotation_rad": math.nan}, "wrong_type"),
])
def test_malformed_suggestions_are_refused_by_name(change: dict, code: str) -> None:
    s = suggestion(**change)
    with pytest.raises(ProtocolError) as exc:
        protocol.encode_regions("s", 0, [s])
    assert exc.value.code == code
    # the same suggestion arriving on the wire is refused the same way, with its frame named
    good = protocol.encode_regions("s", 4, [suggestion()])
    h = msgpack.unpackb(good[1])
    h["regions"] = [s]
    with pytest.raises(ProtocolError) as exc:
        protocol.decode_regions([good[0], msgpack.packb(h)])
    assert exc.value.code == code and (exc.value.session, exc.value.seq) == ("s", 4)


def test_regions_message_validation() -> None:
    with pytest.raises(ProtocolError) as exc:
        protocol.encode_regions("s", 0, [])
    assert exc.value.code == "wrong_type"
    s = suggestion()
    with pytest.raises(ProtocolError, match="repeat"):
        protocol.encode_regions("s", 0, [s, dict(s)])
    missing = suggestion()
    del missing["box_px"]
    with pytest.raises(ProtocolError) as exc:
        protocol.encode_regions("s", 0, [missing])
    assert exc.value.code == "missing_key"
    good = protocol.encode_regions("s", 0, [suggestion()])
    for parts, code in [([good[0]], "bad_parts"), ([b"scan", good[1]], "bad_topic"),
                        ([good[0], b"\xc1garbage"], "bad_header")]:
        with pytest.raises(ProtocolError) as exc:
            protocol.decode_regions(parts)
        assert exc.value.code == code
    h = msgpack.unpackb(good[1])
    for key, bad, code in [("v", 2, "unknown_version"), ("seq", -1, "wrong_type"),
                           ("frame_shape", [0, 5], "wrong_type"), ("session", None, None)]:
        d = dict(h)
        if bad is None:
            del d[key]
        else:
            d[key] = bad
        with pytest.raises(ProtocolError) as exc:
            protocol.decode_regions([good[0], msgpack.packb(d)])
        assert exc.value.code == (code or "missing_key")


def test_control_requests_are_validated() -> None:
    assert {"suggestions", "approve", "reject"} <= set(protocol.CONTROL_COMMANDS)
    assert protocol.CONTROL_COMMANDS[:6] == ("ping", "config", "set", "pause", "resume",
                                             "stats")
    ok = protocol.decode_request(protocol.encode_request("approve", id="abc"))
    assert ok == {"cmd": "approve", "id": "abc"}
    for cmd in ("approve", "reject"):
        for args in ({}, {"id": 5}, {"id": ""}, {"id": "x" * 65}, {"id": None},
                     {"id": ["a"]}):
            with pytest.raises(ProtocolError) as exc:
                protocol.decode_request(protocol.encode_request(cmd, **args))
            assert exc.value.code == "bad_command", (cmd, args)
    with pytest.raises(ProtocolError) as exc:
        protocol.decode_request(protocol.encode_request("suggestions", session=3))
    assert exc.value.code == "bad_command"
    assert set(protocol.CONTROL_ERROR_CODES) == {"unknown_suggestion", "expired_suggestion",
                                                 "outside_sample", "bad_command"}
    assert not set(protocol.CONTROL_ERROR_CODES) & set(protocol.ERROR_CODES)


def test_existing_topics_unchanged() -> None:
    assert protocol.RESULT_TOPICS == (b"result", b"status", b"error")
    assert protocol.REGION_TOPICS == (b"regions", b"scan")


# ----------------------------------------------------------------------------- the gate

def test_gate_approve_releases_and_reject_drops_for_good() -> None:
    g = Gate()
    a, b = suggestion(0.9), suggestion(0.5)
    off = g.offer("s", 3, [b, a], mode="approve", expiry_s=60, frame_shape=(100, 100), now=0.0)
    assert [p.id for p in off.pending] == [a["id"], b["id"]] and not off.released
    assert [s["id"] for s in g.pending(now=1.0)] == [a["id"], b["id"]]
    assert g.pending(now=1.0)[0]["seq"] == 3 and g.pending(now=1.0)[0]["expires_in_s"] == 59
    p = g.approve(a["id"], now=2.0)
    assert p.suggestion == a and p.seq == 3 and g.decision(a["id"]) == "approved"
    g.reject(b["id"], now=2.0)
    assert len(g) == 0 and g.decision(b["id"]) == "rejected"
    for sid, fn in [(b["id"], g.approve), (b["id"], g.reject), (a["id"], g.approve)]:
        with pytest.raises(GateError) as exc:
            fn(sid, now=3.0)
        assert exc.value.code == "unknown_suggestion"
    # offering the rejected one again (a replayed message) does not revive it
    again = g.offer("s", 3, [b], mode="approve", expiry_s=60, now=4.0)
    assert not again.pending and g.decision(b["id"]) == "rejected"


def test_gate_expiry_and_unknown_ids_change_nothing() -> None:
    g = Gate()
    a, b = suggestion(0.9), suggestion(0.8)
    g.offer("s", 0, [a], mode="approve", expiry_s=10, now=0.0)
    g.offer("s", 1, [b], mode="approve", expiry_s=10, now=5.0)
    before = g.pending(now=6.0)
    with pytest.raises(GateError) as exc:
        g.approve("f" * 32, now=6.0)
    assert exc.value.code == "unknown_suggestion" and g.pending(now=6.0) == before
    assert [p.id for p in g.expire(now=10.0)] == [a["id"]]
    with pytest.raises(GateError) as exc:
        g.approve(a["id"], now=10.5)
    assert exc.value.code == "expired_suggestion"
    with pytest.raises(GateError) as exc:  # expired while nobody called expire()
        g.reject(b["id"], now=15.0)
    assert exc.value.code == "expired_suggestion" and len(g) == 0


def test_gate_auto_releases_the_top_suggestion_inside_the_sample() -> None:
    g = Gate()
    outside = suggestion(5.0, box=(90.0, 10.0, 130.0, 40.0))  # beyond the 100 px wide frame
    top, other = suggestion(0.9), suggestion(0.3)
    off = g.offer("s", 0, [other, outside, top], mode="auto", expiry_s=60,
                  frame_shape=(100, 100), now=0.0)
    assert [p.id for p in off.released] == [top["id"]]
    assert [p.id for p in off.outside] == [outside["id"]]
    assert len(g) == 0 and g.decision(other["id"]) == "published"
    with pytest.raises(GateError) as exc:
        g.approve(outside["id"], now=1.0)
    assert exc.value.code == "outside_sample"
    # a sample extent in metres refuses boxes beyond it
    far = suggestion(box_m=[0.0, 0.0, 2e-6, 2e-6])
    off = g.offer("s", 1, [far], mode="approve", expiry_s=60, frame_shape=(100, 100),
                  extent_m=[0.0, 0.0, 1e-6, 1e-6], now=0.0)
    assert [p.id for p in off.outside] == [far["id"]]
    assert not g.offer("s", 2, [suggestion()], mode="off", expiry_s=60).pending
    with pytest.raises(ValueError):
        g.offer("s", 2, [suggestion()], mode="sometimes", expiry_s=60)


def test_gate_is_bounded() -> None:
    g = Gate(max_pending=3, remember=5)
    items = [suggestion(1.0 - i / 10) for i in range(5)]
    off = [g.offer("s", i, [s], mode="approve", expiry_s=60, now=float(i))
           for i, s in enumerate(items)]
    assert len(g) == 3 and [p.id for p in off[3].expired] == [items[0]["id"]]
    with pytest.raises(GateError) as exc:
        g.approve(items[0]["id"], now=6.0)
    assert exc.value.code == "expired_suggestion"


@pytest.mark.slow
def test_operator_commands(tmp_path) -> None:
    """`watch --approve`'s command logic against a real control socket of a real gate."""
    rig = Rig(tmp_path, regions_mode="approve")
    try:
        regions = rig.send_until_regions("op")
        op = Operator(rig.control)
        text = op.show_regions(regions)
        assert "[1]" in text and regions.regions[0]["id"] in text
        listing = op.command("l")
        assert all(s["id"] in listing for s in regions.regions)
        assert op.command("a 1").startswith(f"approved {regions.regions[0]['id']}")
        scan = rig.wait_for(lambda m: isinstance(m, protocol.Scan), 10)
        assert scan is not None and scan.id == regions.regions[0]["id"]
        if len(regions.regions) > 1:
            second = regions.regions[1]["id"]
            assert op.command(f"r {second[:10]}") == f"rejected {second}"
        assert op.command("a 1").startswith("refused unknown_suggestion")
        assert op.command("approve nosuchid").startswith("refused unknown_suggestion")
        assert op.command("frobnicate").startswith("commands:")
        assert op.command("") == ""
    finally:
        rig.close()


# ----------------------------------------------------------------------------- the daemon

class Rig(loopback.Rig):
    """The shared loopback rig with a session store, workflow domains and the regions topics;
    frames come from a simulator with two walls."""

    def __init__(self, tmp_path, **overrides) -> None:
        self.store = tmp_path / "store"
        super().__init__(topics=protocol.RESULT_TOPICS + protocol.REGION_TOPICS,
                         control_timeout_s=20,
                         **{"workflow": "domains", "lattice_px": LATTICE,
                            "store": str(self.store), **overrides})
        self.sim = PerovskiteSimulator(SimConfig(shape=(192, 192), lattice_px=LATTICE, seed=5,
                                                 n_walls=2))
        self.frames = self.sim.frames(1000)

    def frame(self, session: str) -> tuple[protocol.Result, protocol.Regions | None]:
        """Send one frame (lockstep) and return its result and its regions (if any)."""
        if self.instrument.session != session:
            self.instrument.start_session(session, lattice_px=LATTICE)
        seq = self.instrument.send_frame(next(self.frames).pixels, lattice_px=LATTICE)
        result = self.wait_for(lambda m: isinstance(m, protocol.Result) and m.seq == seq
                               and m.session == session, 60)
        assert result is not None, f"no result for {session}/{seq}"
        # the regions message follows the result on the same socket, right after it
        regions = self.wait_for(lambda m: not (isinstance(m, tuple) and m[0] == "status"), 1.0)
        return result, regions if isinstance(regions, protocol.Regions) else None

    def send_until_regions(self, session: str, tries: int = 3) -> protocol.Regions:
        for _ in range(tries):
            _, regions = self.frame(session)
            if regions is not None:
                return regions
        raise AssertionError("the engine suggested no region on frames with two walls")

    def metric(self, name: str, **labels: str) -> float:
        for fam in self.daemon.metrics.registry.collect():
            for s in fam.samples:
                if s.name == name and s.labels == labels:
                    return s.value
        raise KeyError((name, labels))


@pytest.mark.slow
def test_approve_releases_a_scan_and_reject_never_does(tmp_path) -> None:
    rig = Rig(tmp_path, regions_mode="approve")
    try:
        regions = rig.send_until_regions("ap")
        assert regions.frame_shape == (192, 192)
        assert all(s["reason"] in protocol.REGION_REASONS for s in regions.regions)
        for _ in range(3):  # one to approve, at least one to reject
            pending = rig.control.suggestions()
            assert pending["ok"] and {s["id"] for s in pending["pending"]} >= {
                s["id"] for s in regions.regions}
            if len(pending["pending"]) >= 2:
                break
            rig.frame("ap")
        ids = [regions.regions[0]["id"]] + [s["id"] for s in pending["pending"]
                                            if s["id"] != regions.regions[0]["id"]]
        assert len(ids) >= 2
        assert not any(isinstance(m, protocol.Scan) for m in rig.seen)  # nothing before approval
        rep = rig.control.approve(ids[0])
        assert rep["ok"] and rep["scan"]["id"] == ids[0]
        assert rep["scan"]["box_px"] == regions.regions[0]["box_px"]
        scan = rig.wait_for(lambda m: isinstance(m, protocol.Scan), 10)
        assert scan is not None and scan.id == ids[0] and scan.decision == "approved"
        assert scan.seq == regions.seq and scan.session == "ap"
        rejected = ids[1:]
        for sid in rejected:
            assert rig.control.reject(sid) == {"ok": True, "id": sid}
            again = rig.control.approve(sid)
            assert again["ok"] is False and again["code"] == "unknown_suggestion"
        # more frames, more suggestions; a rejected id is never sent as a scan, not later either
        rig.frame("ap")
        # the released place reached the session's engine (it scores places near it lower)
        visits = rig.daemon.engines["ap"].regions.visited
        assert any(v.get("kind") == "scan" for v in visits), visits
        rig.control.set(regions_mode="auto")
        rig.frame("ap")
        rig.wait_for(lambda m: False, 0.5)
        scans = [m.id for m in rig.seen if isinstance(m, protocol.Scan)]
        assert scans[0] == ids[0] and not set(rejected) & set(scans)
        assert len(scans) == len(set(scans))
        reason = regions.regions[0]["reason"]
        assert rig.metric("rewardscope_scans_released_total", reason=reason,
                          mode="approve") == 1
        assert rig.metric("rewardscope_suggestions_total", reason=reason,
                          decision="approved") == 1
        n_rejected = sum(rig.metric("rewardscope_suggestions_total", reason=r,
                                    decision="rejected") for r in protocol.REGION_REASONS)
        assert n_rejected == len(rejected)
        assert rig.metric("rewardscope_control_errors_total",
                          code="unknown_suggestion") == len(rejected)
    finally:
        rig.close()
    # the store recorded the suggestions and every decision; the export has the table
    sess = load_session(session_path(rig.store, "ap"))
    by_id = {s.id: s for s in sess.suggestions}
    assert by_id[ids[0]].decision == "approved" and by_id[ids[0]].scanned
    assert all(by_id[sid].decision == "rejected" and not by_id[sid].scanned
               for sid in rejected)
    assert sess.regions_log.skipped == 0
    out = tmp_path / "ap.h5"
    export_session(session_path(rig.store, "ap"), out)
    with h5py.File(out) as h5:
        g = h5["regions"]
        rows = {sid: i for i, sid in enumerate(g["id"].asstr()[:])}
        assert len(rows) == len(sess.suggestions) >= len(ids)
        i = rows[ids[0]]
        assert g["decision"].asstr()[i] == "approved" and g["seq"][i] == regions.seq
        assert g["reason"].asstr()[i] == regions.regions[0]["reason"]
        np.testing.assert_allclose(g["box_px"][i], regions.regions[0]["box_px"])
        assert g["score"][i] == regions.regions[0]["score"]
        assert g["significance"][i] == regions.regions[0]["significance"]
        assert all(g["decision"].asstr()[rows[sid]] == "rejected" for sid in rejected)
        assert np.isnan(g["box_m"][i]).all()  # no pixel size in these headers


@pytest.mark.slow
def test_auto_mode_releases_the_top_suggestion(tmp_path) -> None:
    rig = Rig(tmp_path, regions_mode="auto")
    try:
        regions = rig.send_until_regions("au")
        top = max(regions.regions, key=lambda s: s["score"])
        scan = rig.wait_for(lambda m: isinstance(m, protocol.Scan), 10)
        assert scan is not None and scan.id == top["id"] and scan.decision == "auto"
        assert scan.box_px == top["box_px"] and scan.magnification == top["magnification"]
        assert rig.control.suggestions()["pending"] == []  # auto keeps nothing waiting
        rep = rig.control.approve(top["id"])  # already released
        assert rep["ok"] is False and rep["code"] == "unknown_suggestion"
        assert rig.metric("rewardscope_scans_released_total", reason=top["reason"],
                          mode="auto") == 1
        published = sum(rig.metric("rewardscope_suggestions_total", reason=r,
                                   decision="published") for r in protocol.REGION_REASONS)
        assert published == len(regions.regions)
        # off: results go on, no regions, no scans
        rig.control.set(regions_mode="off")
        n_before = len(rig.seen)
        rig.frame("au")
        rig.wait_for(lambda m: False, 0.5)
        assert not any(isinstance(m, (protocol.Regions, protocol.Scan))
                       for m in rig.seen[n_before:])
    finally:
        rig.close()


@pytest.mark.slow
def test_bad_commands_are_named_and_change_nothing(tmp_path) -> None:
    rig = Rig(tmp_path, regions_mode="approve")
    try:
        rig.send_until_regions("bad")
        before = rig.control.suggestions()["pending"]
        assert before
        cases = [({"cmd": "approve"}, "bad_command"), ({"cmd": "approve", "id": 7}, "bad_command"),
                 ({"cmd": "reject", "id": ""}, "bad_command"),
                 ({"cmd": "reject", "id": "z" * 200}, "bad_command"),
                 ({"cmd": "suggestions", "session": 5}, "bad_command"),
                 ({"cmd": "approve", "id": "0" * 32}, "unknown_suggestion"),
                 ({"cmd": "reject", "id": "0" * 32}, "unknown_suggestion")]
        for req, code in cases:
            args = {k: v for k, v in req.items() if k != "cmd"}
            rep = rig.control.call(req["cmd"], **args)
            assert rep["ok"] is False and rep["code"] == code and rep["error"], req
        after = rig.control.suggestions()["pending"]
        assert [s["id"] for s in after] == [s["id"] for s in before]
        assert rig.metric("rewardscope_control_errors_total", code="bad_command") == 5
        assert rig.control.ping()["ok"]  # the control socket still answers
        rig.wait_for(lambda m: False, 0.3)
        assert not any(isinstance(m, protocol.Scan) for m in rig.seen)
    finally:
        rig.close()


@pytest.mark.slow
def test_nobody_approving_does_not_stall_the_service(tmp_path) -> None:
    """Approve mode, no operator: every frame is answered, suggestions expire, late approvals
    are refused as expired."""
    rig = Rig(tmp_path, regions_mode="approve", regions_expiry_s=0.5)
    try:
        first = rig.send_until_regions("dead")
        results = [rig.frame("dead")[0] for _ in range(3)]
        assert [r.seq for r in results] == [first.seq + 1 + i for i in range(3)]
        deadline = time.monotonic() + 20
        while rig.control.suggestions()["pending"] and time.monotonic() < deadline:
            rig.wait_for(lambda m: False, 0.2)
        assert rig.control.suggestions()["pending"] == []
        rep = rig.control.approve(first.regions[0]["id"])
        assert rep["ok"] is False and rep["code"] == "expired_suggestion"
        expired = sum(rig.metric("rewardscope_suggestions_total", reason=r, decision="expired")
                      for r in protocol.REGION_REASONS)
        assert expired >= len(first.regions)
        assert rig.metric("rewardscope_suggestions_pending") == 0
        assert not any(isinstance(m, protocol.Scan) for m in rig.seen)
        assert rig.control.stats()["stats"]["frames_processed"] == first.seq + 4
    finally:
        rig.close()
    sess = load_session(session_path(rig.store, "dead"))
    assert {s.decision for s in sess.suggestions} == {"expired"}


@pytest.mark.slow
def test_watch_approve_cli_releases_what_the_operator_approves(tmp_path) -> None:
    """`rewardscope watch --approve` as a subprocess: suggestions printed, `a 1` typed -> scan."""
    import subprocess
    import sys

    rig = Rig(tmp_path, regions_mode="approve")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rewardscope.cli", "watch", "--approve", "--results",
         rig.daemon.results_endpoint, "--control", rig.daemon.control_endpoint, "--count", "50"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        bufsize=1)
    try:
        lines: list[str] = []
        regions = None
        for _ in range(4):  # the watcher may join after the first frame
            if regions is not None:
                break
            _, regions = rig.frame("cli")
            if regions is None or not lines_until(proc, lines, "[1] "):
                regions = None
        assert regions is not None, lines
        first = next(ln for ln in lines if "[1] " in ln).split()[1]
        proc.stdin.write("a 1\n")
        proc.stdin.flush()
        assert lines_until(proc, lines, "approved "), lines
        scan = rig.wait_for(lambda m: isinstance(m, protocol.Scan), 10)
        assert scan is not None and scan.id == first
        # the scan line may have come in the same read as the approval's reply
        assert any("SCAN cli" in ln for ln in lines) or lines_until(proc, lines, "SCAN cli"), \
            lines
    finally:
        proc.kill()
        proc.wait(timeout=10)
        rig.close()


def lines_until(proc, lines: list[str], needle: str, timeout: float = 20.0) -> bool:
    """Read the subprocess's stdout into ``lines`` until a line contains ``needle``.

    Reads the pipe's file descriptor directly (no Python-side buffer: two lines that arrive
    in one chunk must both be seen, or the second would wait in a buffer the selector cannot
    see); a partial last line is kept for the next call."""
    import os
    import selectors

    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(0.2):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return False
            text = _PARTIAL.pop(proc.pid, "") + chunk.decode()
            *complete, rest = text.split("\n")
            if rest:
                _PARTIAL[proc.pid] = rest
            lines.extend(complete)
            if any(needle in ln for ln in complete):
                return True
        return False
    finally:
        sel.close()


_PARTIAL: dict[int, str] = {}  # pid -> the partial last line read from its stdout
