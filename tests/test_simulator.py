"""The stand-in microscope: truth consistency, faults vs. the real decoder, exact ledgers."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from rewardscope import protocol
from rewardscope.protocol import ProtocolError, SessionMarker
from rewardscope.simulators import faults as F
from rewardscope.simulators import perovskite as perovskite_mod
from rewardscope.simulators import publisher as P
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig


class Accountant:
    """Reference receiver written from the protocol spec: decode every message with the real
    decoder, then apply per-session sequence rules. A correct service must agree with it."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.good = self.gaps = self.starts = self.ends = self.restarts = 0
        self.last: int | None = None
        self.live = False
        self.seqs: list[int] = []

    def feed(self, parts: list[bytes]) -> str | None:
        try:
            m = protocol.decode_instrument(parts)
        except ProtocolError as exc:
            self.errors[exc.code] += 1
            return exc.code
        if isinstance(m, SessionMarker):
            if m.kind == "start":
                self.starts += 1
                self.restarts += int(self.live)
                self.live, self.last = True, None
            else:
                self.ends += 1
                self.live = False
                last = -1 if self.last is None else self.last
                self.gaps += max(0, (m.n_frames or 0) - 1 - last)
            return None
        if self.last is not None and m.seq <= self.last:
            code = "duplicate" if m.seq == self.last else "non_monotonic_seq"
            self.errors[code] += 1
            return code
        self.gaps += m.seq - (0 if self.last is None else self.last + 1)
        self.last = m.seq
        self.good += 1
        self.seqs.append(m.seq)
        return None

    def assert_matches(self, led: F.Ledger) -> None:
        assert self.good == led.good_frames
        assert dict(self.errors) == dict(led.errors)
        assert self.gaps == led.seq_gaps
        assert self.starts == led.starts and self.ends == led.ends
        assert self.restarts == led.restarts


def _sides(atoms: np.ndarray, walls: list) -> np.ndarray:
    """(N, n_walls) bool: which side of each (infinite) wall line an atom lies on."""
    out = []
    for x0, y0, x1, y1 in walls:
        out.append((x1 - x0) * (atoms[:, 1] - y0) - (y1 - y0) * (atoms[:, 0] - x0) > 0)
    return np.stack(out, axis=1) if out else np.zeros((len(atoms), 0), bool)


def _clean(**kw) -> PerovskiteSimulator:
    return PerovskiteSimulator(dtype="<f4", **kw)


# ---------------------------------------------------------------------- physics and truth

@pytest.mark.parametrize("kw", [
    {},
    {"shape": (300, 260), "lattice_px": 10.0, "rotation_deg": 23.0},
    {"shape": (256, 320), "lattice_px": 14.5, "rotation_deg": -8.0, "wall_direction": "110",
     "n_variants": 4, "n_walls": 3, "amorphous_regions": 2},
])
def test_atom_count_matches_density(kw):
    sim = PerovskiteSimulator(**kw)
    t = sim.frame(0).truth
    h, w = sim.config.shape
    expected = sim.expected_sites_per_px2 * h * w
    assert abs(len(t.atoms) - expected) / expected < 0.03
    assert t.atoms.dtype == np.float64 and t.atoms.shape[1] == 2
    assert t.site.dtype == np.int8 and t.domain.dtype == np.int16 and t.amorphous.dtype == bool
    assert (t.atoms >= -0.5).all() and (t.atoms[:, 0] < w - 0.5).all()
    assert (t.atoms[:, 1] < h - 0.5).all()
    assert abs((t.site == 0).sum() - (t.site == 1).sum()) < 0.03 * len(t.site)


@pytest.mark.parametrize("rotation", [0.0, 7.0, 31.0])
def test_atoms_sit_on_maxima_and_a_is_brighter(rotation):
    sim = _clean(rotation_deg=rotation, shape=(200, 220), seed=4)
    f = sim.frame(0)
    img, t = f.pixels.astype(float), f.truth
    assert f.pixels.dtype == np.dtype("<f4")
    h, w = img.shape
    ix = np.floor(t.atoms[:, 0] + 0.5).astype(int)
    iy = np.floor(t.atoms[:, 1] + 0.5).astype(int)
    inner = (ix >= 1) & (ix < w - 1) & (iy >= 1) & (iy < h - 1)
    ix, iy = ix[inner], iy[inner]
    windows = np.stack([img[iy + dy, ix + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    assert (img[iy, ix] >= windows.max(axis=0)).all()  # each truth column is a local maximum
    a_val = img[iy, ix][t.site[inner] == 0]
    b_val = img[iy, ix][t.site[inner] == 1]
    assert a_val.mean() > 1.8 * b_val.mean()
    assert a_val.min() > b_val.max()


@pytest.mark.parametrize("kw", [
    {"wall_direction": "100", "n_walls": 2},
    {"wall_direction": "110", "n_walls": 2, "rotation_deg": 13.0},
    {"wall_direction": "random", "n_walls": 3, "n_variants": 3, "seed": 3, "rotation_deg": -5.0},
    {"wall_direction": "100", "n_walls": 3, "n_variants": 4, "rotation_deg": 40.0, "seed": 8},
])
def test_domains_change_across_walls_and_only_there(kw):
    sim = _clean(shape=(320, 320), **kw)
    t = sim.frame(0).truth
    a = t.lattice_px
    assert len(t.walls) == kw["n_walls"]
    sides = _sides(t.atoms, t.walls)
    # One label per region between walls.
    regions: dict[tuple, set] = {}
    for sig, d in zip(map(tuple, sides), t.domain, strict=True):
        regions.setdefault(sig, set()).add(int(d))
    assert all(len(v) == 1 for v in regions.values())
    assert len(regions) == len(t.walls) + 1
    # Nearest-neighbour A-B pairs: label differs exactly when the pair straddles a wall.
    tree = cKDTree(t.atoms)
    pairs = np.array(sorted(tree.query_pairs(0.8 * a)))
    straddle = (sides[pairs[:, 0]] != sides[pairs[:, 1]]).any(axis=1)
    differ = t.domain[pairs[:, 0]] != t.domain[pairs[:, 1]]
    assert straddle.sum() > 10
    np.testing.assert_array_equal(straddle, differ)
    # Stripes are wide: parallel walls are >= ~5 lattice spacings apart.
    x0, y0, x1, y1 = t.walls[0]
    n = np.array([-(y1 - y0), x1 - x0]) / np.hypot(x1 - x0, y1 - y0)
    offsets = sorted(float(n @ np.array(wl[:2])) for wl in t.walls)
    assert np.diff(offsets).min() >= 4.5 * a
    # Walls run along the requested direction relative to the lattice.
    ang = (np.degrees(np.arctan2(y1 - y0, x1 - x0)) - sim.config.rotation_deg) % 90.0
    want = 45.0 if sim.wall_direction == "110" else 0.0
    assert min(abs(ang - want), 90 - abs(ang - want)) < 1e-6
    # Polarization: one unit vector per variant; B displacement follows it.
    assert t.polarization.shape == (sim.config.n_variants, 2)
    np.testing.assert_allclose(np.linalg.norm(t.polarization, axis=1), 1.0)


def test_single_domain_without_walls():
    t = _clean(n_walls=0).frame(0).truth
    assert t.walls == [] and set(t.domain.tolist()) == {0}
    t = _clean(n_walls=2, n_variants=1).frame(0).truth
    assert t.walls == [] and set(t.domain.tolist()) == {0}
    # A field too small for two >= 5-cell stripes gets fewer walls, never narrow stripes.
    t = _clean(n_walls=4, shape=(96, 96), lattice_px=12.0).frame(0).truth
    assert t.walls == [] and set(t.domain.tolist()) == {0}
    t = _clean(n_walls=9, shape=(160, 160), lattice_px=12.0).frame(0).truth
    assert len(t.walls) == 1 and set(t.domain.tolist()) == {0, 1}


def test_amorphous_flags_match_mask_and_columns_are_dimmer():
    sim = _clean(amorphous_regions=3, shape=(256, 256), seed=11)
    f = sim.frame(0)
    t, img = f.truth, f.pixels
    assert t.amorphous_mask.shape == img.shape and t.amorphous_mask.dtype == bool
    assert 0.02 < t.amorphous_mask.mean() < 0.5
    ix = np.floor(t.atoms[:, 0] + 0.5).astype(int)
    iy = np.floor(t.atoms[:, 1] + 0.5).astype(int)
    np.testing.assert_array_equal(t.amorphous, t.amorphous_mask[iy, ix])
    assert t.amorphous.sum() > 10
    a_sites = t.site == 0
    amo = img[iy, ix][a_sites & t.amorphous].mean()
    cry = img[iy, ix][a_sites & ~t.amorphous].mean()
    assert amo < 0.85 * cry
    none = _clean(amorphous_regions=0).frame(0).truth
    assert not none.amorphous_mask.any() and not none.amorphous.any()


def test_deterministic_per_seed_and_index():
    kw = {"shape": (128, 128), "dose": 30.0, "noise_sigma": 0.35, "amorphous_regions": 1,
          "scan_noise_px": 0.4, "gradient": 0.2}
    f1, f2 = PerovskiteSimulator(**kw).frame(2), PerovskiteSimulator(**kw).frame(2)
    np.testing.assert_array_equal(f1.pixels, f2.pixels)
    np.testing.assert_array_equal(f1.truth.atoms, f2.truth.atoms)
    g = PerovskiteSimulator(**kw).frame(3)
    assert not np.array_equal(f1.pixels, g.pixels)  # fresh noise per frame ...
    np.testing.assert_array_equal(f1.truth.atoms, g.truth.atoms)  # ... same sample, no drift
    h = PerovskiteSimulator(**{**kw, "seed": 1}).frame(2)
    assert not np.array_equal(f1.pixels, h.pixels)
    frames = list(PerovskiteSimulator(**kw).frames(3))
    assert [fr.index for fr in frames] == [0, 1, 2]
    np.testing.assert_array_equal(frames[2].pixels, f1.pixels)


def test_drift_moves_the_sample_rigidly():
    drift = (1.5, -0.75)
    sim = _clean(shape=(192, 192), drift_px_per_frame=drift, amorphous_regions=1, seed=5)
    f0, f4 = sim.frame(0), sim.frame(4)
    shift = 4 * np.asarray(drift)
    assert f4.t == pytest.approx(4 * sim.config.frame_time_s)
    moved = f0.truth.atoms + shift
    inside = ((moved >= -0.5) & (moved < 191.5)).all(axis=1)
    dist, idx = cKDTree(f4.truth.atoms).query(moved[inside])
    assert dist.max() < 1e-9
    np.testing.assert_array_equal(f4.truth.domain[idx], f0.truth.domain[inside])
    np.testing.assert_array_equal(f4.truth.site[idx], f0.truth.site[inside])
    back = f4.truth.atoms - shift
    assert inside.sum() == ((back >= -0.5) & (back < 191.5)).all(axis=1).sum()
    for w0, w4 in zip(f0.truth.walls, f4.truth.walls, strict=True):
        p = np.array(w0[:2]) + shift
        x0, y0, x1, y1 = w4
        d = abs((x1 - x0) * (p[1] - y0) - (y1 - y0) * (p[0] - x0)) / np.hypot(x1 - x0, y1 - y0)
        assert d < 1e-9


def test_wire_dtypes_and_scaling():
    u2 = PerovskiteSimulator(shape=(96, 96)).frame(0).pixels
    assert u2.dtype == np.dtype("<u2") and 950 <= u2.max() <= 1200
    f4 = PerovskiteSimulator(shape=(96, 96), dtype="<f4").frame(0).pixels
    assert f4.dtype == np.dtype("<f4") and 0.95 <= f4.max() <= 1.2
    f = PerovskiteSimulator(shape=(96, 96), dose=200.0).frame(0)
    t = f.truth
    iy, ix = np.rint(t.atoms[:, 1]).astype(int), np.rint(t.atoms[:, 0]).astype(int)
    a_counts = f.pixels[iy, ix][t.site == 0].astype(float).mean()
    assert 0.85 * 200 < a_counts < 1.25 * 200
    noisy = PerovskiteSimulator(shape=(96, 96), dtype="<f4", noise_sigma=0.35).frame(0).pixels
    assert (noisy >= 0).all() and np.isfinite(noisy).all()
    frame = protocol.decode_instrument(protocol.encode_frame(u2, session="s", seq=0))
    np.testing.assert_array_equal(frame.pixels, u2)
    for bad in ({"dtype": "<f8"}, {"wall_direction": "111"}, {"n_variants": 5},
                {"dose": 0.0}, {"shape": (4, 4)}):
        with pytest.raises(ValueError):
            PerovskiteSimulator(**bad)
    assert PerovskiteSimulator(SimConfig(seed=3), lattice_px=9.0).config.lattice_px == 9.0


def test_1024_render_work_is_proportional_to_the_frame(monkeypatch):
    """What keeps a 1024^2 frame cheap, counted rather than timed (a timing bound is noise on
    a shared 2-core host): the columns are drawn once per frame, in +-4 sigma windows with
    one accumulation pass per column width, so the pixels touched are a small multiple of
    the frame's (not columns x frame)."""
    renders = []

    def counted(shape, x, y, peak, sigma):
        widths = np.unique(sigma)
        window_px = sum(int((sigma == s).sum()) * (2 * int(np.ceil(4 * s)) + 1) ** 2
                        for s in widths)
        renders.append((len(widths), window_px))
        return render(shape, x, y, peak, sigma)

    render = perovskite_mod._render_gaussians
    monkeypatch.setattr(perovskite_mod, "_render_gaussians", counted)
    clean = PerovskiteSimulator(shape=(1024, 1024), amorphous_regions=3, n_walls=3)
    noisy = PerovskiteSimulator(shape=(1024, 1024), amorphous_regions=3, dose=50.0,
                                noise_sigma=0.35, scan_noise_px=0.3, gradient=0.1)
    for sim in (clean, noisy):
        px = sim.frame(0).pixels
        assert px.shape == (1024, 1024) and np.isfinite(px.astype(np.float64)).all()
    assert len(renders) == 2  # one render per frame
    for n_widths, window_px in renders:
        assert n_widths <= 2  # crystalline and amorphous column widths: two passes at most
        assert window_px < 4 * 1024 * 1024


# ---------------------------------------------------------------------- faults

@pytest.mark.parametrize("name", F.DECODE_FAULTS)
@pytest.mark.parametrize("dtype", ["<u2", "<f4"])
def test_every_fault_is_rejected_by_the_real_decoder(name, dtype):
    template = PerovskiteSimulator(shape=(48, 40), dtype=dtype).frame(0).pixels
    for seed in range(20):
        rng = np.random.default_rng(seed)
        parts, code = F.make_fault(name, rng, session="s", seq=seed, template=template)
        assert code == F.FAULT_CODES[name] and code in protocol.ERROR_CODES
        with pytest.raises(ProtocolError) as info:
            protocol.decode_instrument(parts)
        assert info.value.code == code


def test_individual_builders_hit_their_codes_directly():
    """The builders themselves (before re-drawing) produce the code almost always."""
    template = np.zeros((32, 32), "<u2")
    for name, build in F.BUILDERS.items():
        codes = Counter(F.rejection_code(build(np.random.default_rng(s), "s", 1, template))
                        for s in range(30))
        assert codes[F.FAULT_CODES[name]] >= 28, (name, codes)


def test_fault_names_and_plans():
    assert set(F.ALL_FAULTS) == set(F.FAULT_CODES)
    assert F.canonical("bad_header") == "garbage" and F.canonical("NaN") == "nan"
    plan = F.FaultPlan.parse("garbage,truncated,dtype,nan,huge,gap,duplicate,restart", every=3)
    assert plan.kinds == ("garbage", "truncated", "dtype", "nan", "huge", "gap", "duplicate",
                          "restart")
    assert F.FaultPlan.parse("all").kinds == F.ALL_FAULTS
    assert not F.FaultPlan.parse("none").enabled and not F.FaultPlan.parse("").enabled
    with pytest.raises(ValueError):
        F.FaultPlan.parse("garbage,bogus")
    with pytest.raises(ValueError):
        F.FaultPlan(every=0)


@pytest.mark.parametrize("order", ["cycle", "random"])
def test_ledger_is_exact_against_a_reference_receiver(order):
    sim = PerovskiteSimulator(shape=(64, 64), lattice_px=8.0)
    n, every = 60, 2
    plan = F.FaultPlan(every=every, kinds=F.ALL_FAULTS, seed=7, order=order)
    msgs = list(F.plan_stream(sim, n, "sess", plan))
    led = F.Ledger.of(msgs)
    acc = Accountant()
    for m in msgs:
        assert acc.feed(m.parts) == m.expected_error, m.kind
        assert m.session == "sess"
    acc.assert_matches(led)
    n_slots = (n - 1) // every
    assert led.good_frames == n
    assert sum(led.faults.values()) == n_slots
    assert led.messages == len(msgs) == led.starts + led.ends + n + led.n_errors
    assert led.duplicates == led.errors["duplicate"]
    assert led.seq_gaps == sum(m.gap_before for m in msgs) > 0
    assert led.gap_events == led.faults["gap"]
    assert led.restarts == led.faults["restart"] > 0
    assert led.starts == 1 + led.restarts and led.ends == 1
    goods = [m for m in msgs if m.kind == "frame"]
    assert [m.index for m in goods] == list(range(n))
    assert all(m.truth is not None and m.expected_error is None for m in goods)
    assert msgs[0].kind == "start" and msgs[-1].kind == "end"
    if order == "cycle":
        assert set(led.faults) == set(F.ALL_FAULTS)
        assert set(led.errors) == {c for c in F.FAULT_CODES.values() if c}


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 14), every=st.integers(1, 4), seed=st.integers(0, 2**16),
       kinds=st.lists(st.sampled_from(F.ALL_FAULTS), min_size=1, max_size=6),
       order=st.sampled_from(["cycle", "random"]))
def test_ledger_property(n, every, seed, kinds, order):
    sim = PerovskiteSimulator(shape=(24, 24), lattice_px=6.0, seed=seed)
    msgs = list(F.plan_stream(sim, n, "p", F.FaultPlan(every=every, kinds=tuple(kinds),
                                                         seed=seed, order=order)))
    led = F.Ledger.of(msgs)
    acc = Accountant()
    for m in msgs:
        assert acc.feed(m.parts) == m.expected_error
    acc.assert_matches(led)
    assert led.good_frames == n and led.messages == len(msgs)
    assert sum(led.faults.values()) == max(0, (n - 1) // every)


def test_plan_without_faults_is_clean():
    msgs = list(F.plan_stream(PerovskiteSimulator(shape=(64, 64)), 5, "s"))
    led = F.Ledger.of(msgs)
    assert [m.kind for m in msgs] == ["start"] + ["frame"] * 5 + ["end"]
    assert [m.seq for m in msgs[1:-1]] == list(range(5))
    assert led.n_errors == 0 and led.seq_gaps == 0 and led.good_frames == 5
    end = protocol.decode_instrument(msgs[-1].parts)
    assert end.kind == "end" and end.n_frames == 5
    start = protocol.decode_instrument(msgs[0].parts)
    assert start.lattice_px == 12.0


# ---------------------------------------------------------------------- transport

def test_truth_roundtrip():
    f = PerovskiteSimulator(shape=(96, 96), amorphous_regions=1, seed=2).frame(0)
    msg = P.decode_truth(P.encode_truth(f.truth, session="s", seq=4, index=0))
    assert (msg.session, msg.seq, msg.index) == ("s", 4, 0)
    np.testing.assert_array_equal(msg.atoms, f.truth.atoms)
    np.testing.assert_array_equal(msg.site, f.truth.site)
    np.testing.assert_array_equal(msg.domain, f.truth.domain)
    np.testing.assert_array_equal(msg.amorphous, f.truth.amorphous)
    assert msg.walls == [tuple(w) for w in f.truth.walls]
    assert msg.lattice_px == f.truth.lattice_px
    with pytest.raises(ProtocolError):
        P.decode_truth(P.encode_truth(f.truth, session="s", seq=4)[:-1] + [b"x"])


def _receive(sock: zmq.Socket, until_end: bool = True, timeout_s: float = 15.0
             ) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sock.poll(200):
            continue
        parts = sock.recv_multipart()
        got.append(parts)
        if until_end and bytes(parts[0]) == protocol.TOPIC_END:
            break
    return got


def test_loopback_pub_sub_matches_ledger():
    sim = PerovskiteSimulator(shape=(64, 64), lattice_px=8.0, seed=1)
    plan = F.FaultPlan(every=2, kinds=F.ALL_FAULTS, seed=3)
    endpoints: dict[str, str] = {}
    ready = threading.Event()
    out: dict = {}

    def pub() -> None:
        out["ledger"] = P.publish(
            "tcp://127.0.0.1:*", F.plan_stream(sim, 30, "loop", plan), rate_hz=200.0,
            truth_url="tcp://127.0.0.1:*", truth_wait_s=5.0, endpoint_ready=ready,
            endpoints=endpoints, linger_s=2.0)

    th = threading.Thread(target=pub, daemon=True)
    th.start()
    assert ready.wait(5.0)
    ctx = zmq.Context.instance()
    tsub, sub = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    try:
        tsub.setsockopt(zmq.SUBSCRIBE, P.TOPIC_TRUTH)
        tsub.connect(endpoints["truth"])
        for topic in protocol.INSTRUMENT_TOPICS:  # exactly what the service subscribes to
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(endpoints["frames"])
        got = _receive(sub)
        th.join(10.0)
        assert not th.is_alive()
        truths = _receive(tsub, until_end=False, timeout_s=0.5)
    finally:
        sub.close(linger=0)
        tsub.close(linger=0)
    led = out["ledger"]
    assert len(got) == led.messages
    acc = Accountant()
    for parts in got:
        acc.feed(parts)
    acc.assert_matches(led)
    assert led.good_frames == 30 and led.n_errors > 0 and led.seq_gaps > 0
    decoded = [P.decode_truth(p) for p in truths]
    assert len(decoded) == led.good_frames
    assert [d.seq for d in decoded] == acc.seqs
    assert all(len(d.atoms) > 0 and d.session == "loop" for d in decoded)


def test_loopback_push_pull_matches_ledger():
    sim = PerovskiteSimulator(shape=(64, 64), lattice_px=8.0, seed=2)
    plan = F.FaultPlan.parse("garbage,gap,duplicate,restart,huge", every=1, seed=5)
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    try:
        pull.bind("tcp://127.0.0.1:*")
        url = pull.getsockopt_string(zmq.LAST_ENDPOINT)
        led = P.publish(url, F.plan_stream(sim, 12, "push", plan), rate_hz=0, mode="push",
                        bind=False, wait_for_subscriber_s=5.0)
        got = _receive(pull)
    finally:
        pull.close(linger=0)
    acc = Accountant()
    for parts in got:
        acc.feed(parts)
    acc.assert_matches(led)
    assert len(got) == led.messages and led.good_frames == 12


def test_push_without_peer_times_out():
    with pytest.raises(TimeoutError):
        P.publish("tcp://127.0.0.1:*", iter(()), rate_hz=0, mode="push",
                  wait_for_subscriber_s=0.2, linger_s=0.0)


def test_cli_streams_to_a_pull_socket(capsys):
    parser = argparse.ArgumentParser()
    P.add_arguments(parser)
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    try:
        pull.bind("tcp://127.0.0.1:*")
        url = pull.getsockopt_string(zmq.LAST_ENDPOINT)
        args = parser.parse_args([
            "--publish", url, "--connect", "--mode", "push", "--frames", "8", "--rate", "50",
            "--seed", "3", "--faults", "garbage,truncated,gap,duplicate", "--fault-every", "2",
            "--shape", "64", "72", "--lattice-px", "9", "--noise", "0.35", "--amorphous", "1",
            "--walls", "1", "--session", "cli"])
        assert P.run(args) == 0
        got = _receive(pull)
    finally:
        pull.close(linger=0)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    acc = Accountant()
    for parts in got:
        acc.feed(parts)
    assert summary["good_frames"] == acc.good == 8
    assert summary["errors"] == dict(acc.errors)
    assert summary["seq_gaps"] == acc.gaps and summary["sessions"] == ["cli"]
    frame = protocol.decode_instrument(got[1])
    assert frame.pixels.shape == (64, 72) and frame.header.lattice_px == 9.0
    defaults = parser.parse_args([])
    assert defaults.publish == protocol.DEFAULT_FRAMES_URL and defaults.mode == "pub"
