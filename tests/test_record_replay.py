"""Record log format, recorder and replay over real ZeroMQ sockets on loopback."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import zmq

from rewardscope import protocol
from rewardscope.clients.recorder import record
from rewardscope.simulators.replay import replay
from rewardscope.storage.recordlog import (
    FILE_HEADER,
    FILE_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    Record,
    RecordFormatError,
    RecordReader,
    RecordWriter,
    is_record_log,
    read_records,
)

ANY_PORT = "tcp://127.0.0.1:*"
REPLAY = sys.modules[replay.__module__]
RECORDER = sys.modules[record.__module__]


class FakeClock:
    """Stands in for the ``time`` module of the replayer or recorder: it moves only when a
    fake wait or poll says so, so pacing and durations are exact on any host (wall-clock
    bounds are noise on a shared 2-core machine)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return self.t

    def __getattr__(self, name: str):
        return getattr(time, name)


class FakeStop:
    """A stop event that is never set; waiting on it advances the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.clock.t += seconds
        return False

    def is_set(self) -> bool:
        return False


class FakeSocket:
    """Records what is sent and when (fake clock); sending costs ``send_s``. Polling finds
    nothing, advances the clock by the timeout and may set ``stop_after_polls``' event."""

    type = zmq.PUB

    def __init__(self, clock: FakeClock, send_s: float = 0.0,
                 stop_after_polls: tuple[int, threading.Event] | None = None) -> None:
        self.clock, self.send_s, self.stop_after_polls = clock, send_s, stop_after_polls
        self.sent: list[tuple[float, list[bytes]]] = []
        self.polls: list[int] = []

    def send_multipart(self, parts, flags=0, copy=True) -> None:
        self.sent.append((self.clock.t, list(parts)))
        self.clock.t += self.send_s

    def poll(self, timeout_ms: int, flags: int = 0) -> int:
        self.polls.append(timeout_ms)
        self.clock.t += timeout_ms / 1000.0
        if self.stop_after_polls and len(self.polls) >= self.stop_after_polls[0]:
            self.stop_after_polls[1].set()
        return 0

    def setsockopt(self, *args) -> None:
        pass

    def connect(self, url: str) -> None:
        pass

    def close(self, linger=None) -> None:
        pass


class FakeContext:
    def __init__(self, sock: FakeSocket) -> None:
        self.sock = sock

    def socket(self, kind: int) -> FakeSocket:
        return self.sock


def make_messages(n_frames: int = 6, session: str = "s1") -> list[list[bytes]]:
    """A protocol session plus one odd message: the recorder must keep bytes, not meaning."""
    rng = np.random.default_rng(0)
    msgs = [protocol.encode_start(session, t=1.0, lattice_px=7.5)]
    for i in range(n_frames):
        dtype = np.uint16 if i % 2 else np.float32
        px = (rng.random((48, 64)) * 1000).astype(dtype)
        msgs.append(protocol.encode_frame(px, session=session, seq=i, t=2.0 + i,
                                          pixel_size_m=1e-11))
    msgs.append([b"frame", b"\xc1not msgpack", b"", b"\x00" * 3])
    msgs.append(protocol.encode_end(session, t=99.0, n_frames=n_frames))
    return msgs


def wait_subscribed(xpub: zmq.Socket, timeout_s: float = 5.0) -> None:
    assert xpub.poll(int(timeout_s * 1000), zmq.POLLIN), "no subscriber joined"
    assert xpub.recv()[:1] == b"\x01"


def receive(sock: zmq.Socket, n: int, timeout_s: float = 10.0) -> tuple[list[list[bytes]],
                                                                         list[float]]:
    got, times = [], []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"received only {len(got)} of {n} messages"
        if sock.poll(int(left * 1000) + 1, zmq.POLLIN):
            got.append(sock.recv_multipart())
            times.append(time.monotonic())
    return got, times


def start_replay(path, **kwargs) -> tuple[threading.Thread, str, dict]:
    """Run replay() in a thread on a random port; return (thread, endpoint, result box)."""
    bound = threading.Event()
    box: dict = {}

    def on_bound(ep: str) -> None:
        box["endpoint"] = ep
        bound.set()

    def target() -> None:
        try:
            box["sent"] = replay(path, ANY_PORT, on_bound=on_bound, **kwargs)
        except BaseException as exc:  # surfaced by the test below
            box["error"] = exc
            bound.set()

    th = threading.Thread(target=target, daemon=True)
    th.start()
    assert bound.wait(10)
    assert "error" not in box, box.get("error")
    return th, box["endpoint"], box


# ----------------------------------------------------------------------------- ZeroMQ round trip

def test_record_then_replay_is_byte_identical(tmp_path: Path) -> None:
    """Over real sockets: every byte arrives, in order, with receive times. The pacing itself
    is checked exactly, on a fake clock, in test_replay_keeps_the_recorded_gaps."""
    msgs = make_messages()
    out = tmp_path / "session.rsrec"
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.bind(ANY_PORT)
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    counted: dict = {}
    rec = threading.Thread(target=lambda: counted.setdefault(
        "n", record(endpoint, out, mode="sub", stop_after=len(msgs), duration_s=20)))
    rec.start()
    try:
        wait_subscribed(pub)
        gap = 0.5 / (len(msgs) - 1)  # a 0.5 s session
        for i, m in enumerate(msgs):
            if i:
                time.sleep(gap)
            pub.send_multipart(m)
        rec.join(20)
    finally:
        pub.close()
    assert not rec.is_alive()
    assert counted["n"] == len(msgs)

    records = read_records(out)
    assert [r.parts for r in records] == msgs
    assert all(b.t >= a.t for a, b in zip(records, records[1:], strict=False))

    th, ep, box = start_replay(out, speed=2.0, wait_for_subscriber_s=10)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(ep)
    try:
        got, _ = receive(sub, len(msgs))
    finally:
        sub.close()
    th.join(10)
    assert box.get("sent") == len(msgs)
    assert got == msgs  # every part, byte for byte, in order


@pytest.mark.parametrize("speed", [1.0, 2.0, 0.0])
def test_replay_keeps_the_recorded_gaps(monkeypatch, speed: float) -> None:
    """Message i leaves (t_i - t_0) / speed after the first; speed 0 never waits."""
    clock = FakeClock(1000.0)
    monkeypatch.setattr(REPLAY, "time", clock)
    stop, sock = FakeStop(clock), FakeSocket(clock)
    t_rec = [100.0, 100.5, 100.5, 101.75, 104.0]
    records = [Record(t=t, parts=[b"m%d" % i]) for i, t in enumerate(t_rec)]
    assert REPLAY._send_paced(sock, records, speed, stop) == len(records)
    assert [parts for _, parts in sock.sent] == [r.parts for r in records]
    sent_at = [t - sock.sent[0][0] for t, _ in sock.sent]
    if speed > 0:
        assert sent_at == pytest.approx([(t - t_rec[0]) / speed for t in t_rec])
    else:
        assert sent_at == [0.0] * len(t_rec) and stop.waits == []


def test_replay_schedules_from_the_first_message_without_drift(monkeypatch) -> None:
    """A slow send (0.25 s each here) shortens the next wait instead of delaying the rest."""
    clock = FakeClock()
    monkeypatch.setattr(REPLAY, "time", clock)
    stop, sock = FakeStop(clock), FakeSocket(clock, send_s=0.25)
    records = [Record(t=float(i), parts=[b"x"]) for i in range(6)]
    assert REPLAY._send_paced(sock, records, 1.0, stop) == 6
    assert [t for t, _ in sock.sent] == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert stop.waits == pytest.approx([0.75] * 5)


def test_push_pull_record_and_fast_replay(tmp_path: Path) -> None:
    msgs = make_messages(n_frames=20)
    out = tmp_path / "pp.rsrec"
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.bind(ANY_PORT)
    endpoint = push.getsockopt_string(zmq.LAST_ENDPOINT)
    counted: dict = {}
    rec = threading.Thread(target=lambda: counted.setdefault(
        "n", record(endpoint, out, mode="pull", stop_after=len(msgs), duration_s=20)))
    rec.start()
    try:
        for m in msgs:  # PUSH blocks until the puller is connected: nothing is lost
            push.send_multipart(m)
        rec.join(20)
    finally:
        push.close()
    assert counted["n"] == len(msgs)

    th, ep, box = start_replay(out, speed=0, mode="push")
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(ep)
    try:
        got, _ = receive(pull, len(msgs))
    finally:
        pull.close()
    th.join(10)
    assert got == msgs
    assert box["sent"] == len(msgs)


def test_replay_loop_until_stopped(tmp_path: Path) -> None:
    msgs = make_messages(n_frames=2)
    out = tmp_path / "loop.rsrec"
    with RecordWriter(out) as w:
        for i, m in enumerate(msgs):
            w.write(m, t=100.0 + 0.01 * i)
    stop = threading.Event()
    th, ep, box = start_replay(out, speed=0, loop=True, stop_event=stop)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(ep)
    try:
        got, _ = receive(sub, 3 * len(msgs))
    finally:
        stop.set()
        sub.close()
    th.join(10)
    assert not th.is_alive()
    assert got == msgs * 3
    assert box["sent"] >= 3 * len(msgs)


def test_record_polls_until_the_duration_then_stops(tmp_path: Path, monkeypatch) -> None:
    """On a fake clock: the recorder waits for messages until exactly ``duration_s`` has
    passed, in polls of at most 100 ms (so it notices a stop event), and no longer."""
    clock = FakeClock()
    monkeypatch.setattr(RECORDER, "time", clock)
    sock = FakeSocket(clock)
    assert record("tcp://127.0.0.1:1", tmp_path / "d.rsrec", duration_s=0.375,
                  context=FakeContext(sock)) == 0
    assert max(sock.polls) <= 100
    assert sum(sock.polls) == pytest.approx(375, abs=1)
    assert read_records(tmp_path / "d.rsrec") == []
    stop = threading.Event()
    sock = FakeSocket(clock, stop_after_polls=(3, stop))
    assert record("tcp://127.0.0.1:1", tmp_path / "s.rsrec", stop_event=stop,
                  context=FakeContext(sock)) == 0
    assert len(sock.polls) == 3  # stopped at the first look after the event was set


def test_record_duration_and_stop_event(tmp_path: Path) -> None:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(ANY_PORT)
    ep = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        assert record(ep, tmp_path / "d.rsrec", duration_s=0.3) == 0
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        assert record(ep, tmp_path / "e.rsrec", stop_event=stop) == 0
    finally:
        pub.close(linger=0)
    assert read_records(tmp_path / "d.rsrec") == []
    with pytest.raises(ValueError):
        record(ep, tmp_path / "x.rsrec", mode="bogus")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_record_cli_stops_cleanly_on_signal(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "cli.rsrec"
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.bind(ANY_PORT)
    ep = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    msgs = make_messages(n_frames=2)
    proc = subprocess.Popen([sys.executable, "-m", "rewardscope.cli", "record",
                             "--frames", ep, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_subscribed(pub, 20)
        for m in msgs:
            pub.send_multipart(m)
        deadline = time.monotonic() + 10
        while len(read_records(out)) < len(msgs):
            assert time.monotonic() < deadline, "recorder did not write the messages"
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close(linger=0)
    assert proc.returncode == 0, stderr.decode()
    assert f"recorded {len(msgs)} messages".encode() in stdout
    reader = RecordReader(out)
    assert [r.parts for r in reader] == msgs
    assert not reader.truncated_tail


def test_replay_rejects_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        replay(tmp_path / "nope.rsrec", ANY_PORT)
    odd = tmp_path / "notes.txt"
    odd.write_text("hello")
    with pytest.raises(ValueError):
        replay(odd, ANY_PORT)


# ----------------------------------------------------------------------------- file format

def write_log(path: Path, msgs: list[list[bytes]]) -> list[int]:
    """Write msgs; return the byte offset at which each record ends."""
    ends = []
    with RecordWriter(path) as w:
        for i, m in enumerate(msgs):
            w.write(m, t=1000.0 + i)
            ends.append(FILE_HEADER_SIZE + w.bytes_written)
    assert ends[-1] == path.stat().st_size
    return ends


def test_layout_matches_the_documented_offsets(tmp_path: Path) -> None:
    p = tmp_path / "one.rsrec"
    with RecordWriter(p) as w:
        w.write([b"abc", b"", b"\x00\x01"], t=12.5)
    data = p.read_bytes()
    assert data[:7] == FILE_HEADER == b"RSREC\x01\n"
    body_len, t, n_parts, crc = struct.unpack_from("<IdII", data, 7)
    body = data[7 + 20:]
    assert (body_len, t, n_parts) == (len(body), 12.5, 3)
    assert body == struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0) + struct.pack(
        "<I", 2) + b"\x00\x01"
    assert crc == zlib.crc32(body, zlib.crc32(data[7:7 + 16]))
    assert is_record_log(p)


def test_truncated_file_reads_complete_records_and_flags_tail(tmp_path: Path) -> None:
    msgs = make_messages(n_frames=4)
    full = tmp_path / "full.rsrec"
    ends = write_log(full, msgs)
    data = full.read_bytes()
    starts = [FILE_HEADER_SIZE, *ends[:-1]]
    cuts = {FILE_HEADER_SIZE, FILE_HEADER_SIZE + 5, starts[2] + RECORD_HEADER_SIZE,
            starts[2] + RECORD_HEADER_SIZE + 3, (starts[3] + ends[3]) // 2, ends[3] - 1,
            ends[3], ends[-1] - 1, ends[-1]}
    for cut in sorted(cuts):
        p = tmp_path / f"cut{cut}.rsrec"
        p.write_bytes(data[:cut])
        reader = RecordReader(p)
        got = list(reader)
        complete = sum(1 for e in ends if e <= cut)
        assert [r.parts for r in got] == msgs[:complete], cut
        assert [r.t for r in got] == [1000.0 + i for i in range(complete)]
        last_good = ends[complete - 1] if complete else FILE_HEADER_SIZE
        assert reader.good_bytes == last_good
        assert reader.truncated_tail == (cut != last_good), cut
        assert reader.bytes_skipped == cut - last_good
    with pytest.raises(RecordFormatError):
        (tmp_path / "short").write_bytes(data[:4])
        RecordReader(tmp_path / "short")


def test_crc_detects_corruption_in_body_and_header(tmp_path: Path) -> None:
    msgs = make_messages(n_frames=3)
    p = tmp_path / "c.rsrec"
    ends = write_log(p, msgs)
    clean = p.read_bytes()
    for offset, why in [(ends[1] + RECORD_HEADER_SIZE + 10, "body"),
                        (ends[1] + 6, "time"), (ends[1] + 12, "n_parts")]:
        bad = bytearray(clean)
        bad[offset] ^= 0x40
        p.write_bytes(bytes(bad))
        reader = RecordReader(p)
        assert [r.parts for r in reader] == msgs[:2], why
        assert reader.truncated_tail and reader.tail_reason in ("crc_mismatch", "oversized",
                                                               "bad_parts"), why
        assert reader.bytes_skipped == len(clean) - ends[1]
    bad = bytearray(clean)
    bad[ends[0] + RECORD_HEADER_SIZE + 30] ^= 0xFF
    p.write_bytes(bytes(bad))
    reader = RecordReader(p)
    assert len(list(reader)) == 1 and reader.tail_reason == "crc_mismatch"


def _raw_record(parts_blob: bytes, n_parts: int, t: float = 1.0,
                body_len: int | None = None) -> bytes:
    bl = len(parts_blob) if body_len is None else body_len
    pre = struct.pack("<IdI", bl, t, n_parts)
    return pre + struct.pack("<I", zlib.crc32(parts_blob, zlib.crc32(pre))) + parts_blob


def test_reader_caps_refuse_huge_lengths_without_allocating(tmp_path: Path) -> None:
    good = _raw_record(struct.pack("<I", 2) + b"ok", 1)
    cases = {
        "oversized": _raw_record(b"", 1, body_len=0xFFFFFFF0),  # 4 GiB claimed
        "oversized_parts": _raw_record(b"", 10_000_000),
        "partial_body": _raw_record(b"", 1, body_len=1000),
        "bad_parts": _raw_record(struct.pack("<I", 50) + b"short", 1),
        "leftover": _raw_record(struct.pack("<I", 1) + b"ab", 1),
        "bad_time": _raw_record(struct.pack("<I", 1) + b"a", 1, t=float("nan")),
    }
    expected = {"oversized": "oversized", "oversized_parts": "oversized",
                "partial_body": "partial_body", "bad_parts": "bad_parts",
                "leftover": "bad_parts", "bad_time": "bad_time"}
    for name, raw in cases.items():
        p = tmp_path / f"{name}.rsrec"
        p.write_bytes(FILE_HEADER + good + raw)
        reader = RecordReader(p)
        assert list(reader) == [Record(1.0, [b"ok"])], name
        assert reader.tail_reason == expected[name], name
        assert reader.bytes_skipped == len(raw)
    # Caps are configurable: a small cap turns an ordinary big record into a damaged tail.
    p = tmp_path / "big.rsrec"
    with RecordWriter(p) as w:
        w.write([b"x" * 10])
        w.write([b"x" * 5000])
    reader = RecordReader(p, max_record_bytes=1000)
    assert len(list(reader)) == 1 and reader.tail_reason == "oversized"
    reader = RecordReader(p, max_parts=0)
    assert list(reader) == [] and reader.tail_reason == "oversized"


def test_not_a_record_log(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"GIF89a....")
    assert not is_record_log(p)
    with pytest.raises(RecordFormatError):
        RecordReader(p)
    p.write_bytes(b"RSREC\x09\n")
    with pytest.raises(RecordFormatError, match="version"):
        RecordReader(p)


def test_append_cuts_a_damaged_tail_and_continues(tmp_path: Path) -> None:
    msgs = make_messages(n_frames=2)
    p = tmp_path / "a.rsrec"
    ends = write_log(p, msgs)
    with open(p, "r+b") as f:
        f.truncate(ends[1] + 7)  # crash in the middle of record 3
    with RecordWriter(p, append=True) as w:
        w.write([b"after", b"crash"], t=5.0)
    reader = RecordReader(p)
    assert [r.parts for r in reader] == [*msgs[:2], [b"after", b"crash"]]
    assert not reader.truncated_tail


def test_writer_accepts_buffers_and_many_threads(tmp_path: Path) -> None:
    p = tmp_path / "t.rsrec"
    arr = np.arange(1000, dtype=np.uint16)
    with RecordWriter(p, fsync=True) as w:
        threads = [threading.Thread(target=lambda i=i: [w.write([b"t", memoryview(arr),
                                                                  bytearray([i])])
                                                        for _ in range(20)])
                   for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    records = read_records(p)
    assert len(records) == 80
    assert all(r.parts[1] == arr.tobytes() for r in records)
    assert os.path.getsize(p) == FILE_HEADER_SIZE + 80 * (RECORD_HEADER_SIZE + 12 + 1 + 2000
                                                          + 1)
