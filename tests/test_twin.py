"""The digital twin (truth, scan model, coordinates, discovery), the controller and the
closed-loop experiment, over real loopback sockets."""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid

import numpy as np
import pytest
import zmq

from rewardscope import protocol
from rewardscope.cli import main as cli_main
from rewardscope.cli.experiment import KINDS, run_experiment, write_outputs
from rewardscope.clients.controller import SURVEY_FOV_FACTOR, Controller
from rewardscope.simulators.twin import Twin, TwinConfig

# a 2 x 2 sample: one domain, one amorphous patch, one defect cluster, one empty field
SMALL = {"fovs": 2, "domains": 1, "amorphous_regions": 1, "defect_clusters": 1}


@pytest.fixture(scope="module")
def twin() -> Twin:
    return Twin(seed=3)


def _cell_of(tw: Twin, p) -> tuple[int, int]:
    return int(p[0] // tw.base_fov_m), int(p[1] // tw.base_fov_m)


def test_zoomed_frame_on_a_wall_has_it_in_its_truth_and_image(twin: Twin) -> None:
    line = twin.walls_m[0]
    mid = 0.5 * (line[0] + line[1])  # middle of the first wall segment
    twin.scan(mid, twin.base_fov_m / 2)
    fr = twin.frame()
    assert fr.high_mag and fr.magnification == pytest.approx(2.0)
    assert fr.truth.walls, "a zoomed frame centred on a wall must have it in its truth"
    # The wall separates the two variants: both are in the frame, and the frame centre lies on
    # a truth wall segment (distance < 1 px).
    assert set(np.unique(fr.truth.domain).tolist()) == {0, 1}
    c = np.array([(fr.pixels.shape[1] - 1) / 2, (fr.pixels.shape[0] - 1) / 2])
    d = min(_point_segment(c, np.array(w[:2]), np.array(w[2:])) for w in fr.truth.walls)
    assert d < 1.0
    # The image shows the truth's columns: A columns are bright, the space between is dark.
    img = fr.pixels.astype(float)
    a_xy = np.rint(fr.truth.atoms).astype(int)
    ok = (a_xy >= 0).all(axis=1) & (a_xy < img.shape[0]).all(axis=1)
    assert img[a_xy[ok, 1], a_xy[ok, 0]].mean() > 2.0 * np.median(img)


def test_single_domain_field_has_nothing_in_its_truth(twin: Twin) -> None:
    busy = {_cell_of(twin, p.mean(axis=0)) for p in twin.domains_m}
    busy |= {_cell_of(twin, (b.cx, b.cy)) for b in twin.blobs}
    busy |= {_cell_of(twin, c) for c in twin.defect_centres_m}
    n = twin.config.fovs
    free = next((i, j) for j in range(n) for i in range(n) if (i, j) not in busy)
    twin.scan(((free[0] + 0.5) * twin.base_fov_m, (free[1] + 0.5) * twin.base_fov_m))
    fr = twin.frame()
    assert fr.truth.walls == [] and not fr.truth.amorphous_mask.any()
    assert len(fr.truth.defects) == 0 and (fr.truth.domain == 0).all()
    assert len(fr.truth.atoms) > 0


def test_truth_totals_and_features(twin: Twin) -> None:
    cfg = twin.config
    assert len(twin.walls_m) == cfg.domains and twin.wall_length_m > 0
    assert len(twin.blobs) == cfg.amorphous_regions and twin.amorphous_area_m2 > 0
    assert len(twin.defects_m) == cfg.defects_per_cluster * cfg.defect_clusters
    # walls of several orientations: {100} (0 / 90 deg) and {110} (45 / 135 deg)
    angles = {round(math.degrees(math.atan2(*(q - p)[::-1])) % 180) for w in twin.walls_m
              for p, q in zip(w[:-1], w[1:], strict=True)}
    assert {0, 90} <= angles and {45, 135} <= angles
    # vacancies: half the defect sites hold no column any more
    d = np.min(np.linalg.norm(twin._pos[None, :, :] - twin.defects_m[:4, None, :], axis=2),
               axis=1)
    assert (d > 0.2 * cfg.lattice_m).all()


def test_scan_moves_zooms_and_clips() -> None:
    tw = Twin(**SMALL, fov_px=64, seed=1)
    got = tw.scan((0.3 * tw.side_m, 0.6 * tw.side_m), tw.base_fov_m / 4)
    assert got["center_m"] == pytest.approx([0.3 * tw.side_m, 0.6 * tw.side_m])
    assert tw.magnification == pytest.approx(4.0)
    assert tw.pixel_size_m == pytest.approx(tw.base_pixel_size_m / 4)
    got = tw.scan((-1.0, 5.0), tw.base_fov_m)  # off the sample: clipped to its corner
    assert got["center_m"] == pytest.approx([tw.base_fov_m / 2, tw.side_m - tw.base_fov_m / 2])
    assert tw.scan((0, 0), 10 * tw.side_m)["fov_m"] == pytest.approx(tw.side_m)
    assert tw.scan((0, 0), 1e-15)["fov_m"] == pytest.approx(tw.config.min_fov_frac
                                                             * tw.base_fov_m)
    got = tw.scan((0, 0), tw.side_m, rotation_rad=math.pi / 4)  # rotated: still inside
    corners = tw.pixel_to_sample(np.array([[-0.5, -0.5], [63.5, -0.5], [63.5, 63.5],
                                           [-0.5, 63.5]]))
    assert corners.min() >= -1e-18 and corners.max() <= tw.side_m + 1e-18
    before = (tw.center_m, tw.fov_m, tw.rotation_rad)
    for bad in (((math.nan, 0.0), None), ((0.0, 0.0), -1.0), ((0.0, 0.0), math.inf)):
        with pytest.raises(ValueError):
            tw.scan(*bad)
    assert (tw.center_m, tw.fov_m, tw.rotation_rad) == before
    with pytest.raises(ValueError):
        Twin(fovs=1, domains=2)


def test_pixel_sample_coordinates_are_exact() -> None:
    tw = Twin(**SMALL, fov_px=96, seed=2)
    tw.scan((0.5 * tw.side_m, 0.45 * tw.side_m), tw.base_fov_m / 2, rotation_rad=0.3)
    fr = tw.frame()
    px = np.array([[0.0, 0.0], [95.0, 0.0], [17.25, 80.5], [47.5, 47.5]])
    # the contract: sample = origin + R(rot) @ ([x, y] * pixel_size)
    c, s = math.cos(fr.rotation_rad), math.sin(fr.rotation_rad)
    expect = np.array(fr.origin_m) + (px * fr.pixel_size_m) @ np.array([[c, -s], [s, c]]).T
    np.testing.assert_allclose(tw.pixel_to_sample(px), expect, rtol=0, atol=1e-22)
    np.testing.assert_allclose(tw.sample_to_pixel(tw.pixel_to_sample(px)), px, atol=1e-9)
    np.testing.assert_allclose(tw.pixel_to_sample([[47.5, 47.5]])[0], tw.center_m, atol=1e-22)
    # every column of the frame's truth is a column of the sample, at the same place
    back = tw.pixel_to_sample(fr.truth.atoms)
    nearest = [np.min(np.hypot(*(tw._pos - p).T)) for p in back[:50]]
    assert max(nearest) < 1e-6 * tw.config.lattice_m


def test_discovery_is_monotone_and_reaches_one() -> None:
    tw = Twin(**SMALL, fov_px=64, seed=4)
    assert tw.discovery() == {k: 0.0 for k in KINDS}
    tw.scan((0.5 * tw.side_m, 0.5 * tw.side_m), tw.side_m)  # base or lower: never counts
    tw.frame()
    for i in range(2):
        tw.scan(((i + 0.5) * tw.base_fov_m, 0.5 * tw.base_fov_m))
        tw.frame()
    assert tw.discovery() == {k: 0.0 for k in KINDS}
    rng = np.random.default_rng(0)
    prev = tw.discovery()
    for _ in range(6):  # random zooms: never decrease
        tw.scan(rng.uniform(0, tw.side_m, 2), tw.base_fov_m / rng.choice([2, 3, 4]))
        tw.frame()
        now = tw.discovery()
        assert all(now[k] >= prev[k] for k in now)
        prev = now
    half = tw.base_fov_m / 2  # tile the sample at x2: everything imaged
    n = int(round(tw.side_m / half))
    for j in range(n):
        for i in range(n):
            tw.scan(((i + 0.5) * half, (j + 0.5) * half), half)
            tw.frame()
            now = tw.discovery()
            assert all(now[k] >= prev[k] for k in now)
            prev = now
    assert tw.discovery() == {k: 1.0 for k in KINDS}
    assert [h["wall_fraction"] for h in tw.history] == sorted(h["wall_fraction"]
                                                              for h in tw.history)


def test_twin_frames_reach_a_subscriber_with_their_geometry() -> None:
    from rewardscope.clients import InstrumentClient

    tw = Twin(**SMALL, fov_px=64, seed=5)
    ctx = zmq.Context.instance()
    with InstrumentClient("tcp://127.0.0.1:*") as inst:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(inst.endpoint)
        try:
            assert inst.wait_for_subscriber(10.0)
            inst.start_session("twin")
            tw.scan((0.4 * tw.side_m, 0.5 * tw.side_m), tw.base_fov_m / 2, 0.2)
            fr = tw.frame()
            tw.publish(inst, fr)
            got = None
            while sub.poll(10_000):
                msg = protocol.decode_instrument(sub.recv_multipart())
                if isinstance(msg, protocol.Frame):
                    got = msg
                    break
        finally:
            sub.close(linger=0)
    assert got is not None
    h = got.header
    assert h.pixel_size_m == pytest.approx(fr.pixel_size_m)
    assert h.origin_m == pytest.approx(fr.origin_m)
    assert h.meta["scan_rotation_rad"] == pytest.approx(0.2)
    assert h.lattice_px == pytest.approx(tw.config.lattice_px * 2)
    np.testing.assert_array_equal(got.pixels, fr.pixels)


@contextlib.contextmanager
def _controller_on_a_pub(tw: Twin):
    """A rewardscope-strategy controller subscribed to a PUB socket standing in for the
    service's results socket; yields (controller, pub) once the subscription has settled."""
    pub = zmq.Context.instance().socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    ctl = Controller(tw, f"tcp://127.0.0.1:{port}", strategy="rewardscope")
    try:
        time.sleep(0.3)  # the subscription reaches the PUB socket
        yield ctl, pub
    finally:
        ctl.close()
        pub.close(linger=0)


def _suggestion(center, fov, score=1.0, reason="wall"):
    return {"id": uuid.uuid4().hex, "score": score, "reason": reason, "significance": 3.0,
            "box_px": [10.0, 10.0, 20.0, 20.0],
            "box_m": [center[0] - fov / 2, center[1] - fov / 2, center[0] + fov / 2,
                      center[1] + fov / 2],
            "center_m": list(center), "fov_m": fov, "rotation_rad": 0.0, "magnification": 2.0}


def test_controller_follows_scan_messages_then_the_backlog_then_surveys() -> None:
    tw = Twin(**SMALL, fov_px=64, seed=6)
    with _controller_on_a_pub(tw) as (ctl, pub):
        first = _suggestion((0.3 * tw.side_m, 0.7 * tw.side_m), tw.base_fov_m / 2, 5.0)
        second = _suggestion((0.8 * tw.side_m, 0.2 * tw.side_m), tw.base_fov_m / 3, 2.0)
        res = protocol.Result(session="s", seq=0, latency_s=0.1, n_evaluations=1, params={},
                              rewards={}, pareto=[], walls=[], atoms=np.zeros((0, 2)),
                              labels=np.zeros(0, np.int16))
        pub.send_multipart(protocol.encode_result(res))
        pub.send_multipart(protocol.encode_regions("s", 0, [first, second]))
        pub.send_multipart(protocol.encode_scan(protocol.scan_from_suggestion(
            first, session="s", seq=0)))
        assert ctl.wait_for(0, timeout_s=10.0, grace_s=2.0)
        assert len(ctl.regions_by_seq[0]) == 2 and ctl.scans_by_seq[0][0]["id"] == first["id"]
        view = ctl.step(0)  # the released scan
        assert view["id"] == first["id"] and view["kind"] == "suggestion"
        assert tw.center_m == pytest.approx(first["center_m"])
        assert tw.fov_m == pytest.approx(first["fov_m"])
        view = ctl.step(1)  # no message for frame 1: the backlog's best
        assert view["id"] == second["id"]
        assert tw.center_m == pytest.approx(second["center_m"])
        view = ctl.step(2)  # nothing left: a survey step, zoomed out (a wider field)
        assert view["kind"] == "survey"
        assert tw.magnification == pytest.approx(1.0 / SURVEY_FOV_FACTOR)
        assert ctl.followed == [first["id"], second["id"]]


def test_controller_tiles_and_follows_a_published_wall_at_high_magnification() -> None:
    """A survey frame's wall (a result message) leaving the frame through its right edge:
    the controller first follows it past the edge, then covers the rest with views at
    pixel size = base / 2; a later suggestion inside those views is skipped."""
    tw = Twin(**{**SMALL, "fovs": 4}, fov_px=64, seed=7)  # room to follow past the survey
    with _controller_on_a_pub(tw) as (ctl, pub):
        survey = ctl.first_view()
        assert survey["kind"] == "survey"
        assert tw.fov_m == pytest.approx(SURVEY_FOV_FACTOR * tw.base_fov_m)
        wall = [10.0, 32.0, 63.4, 32.0]  # px; its right end at the frame's edge
        res = protocol.Result(session="s", seq=0, latency_s=0.1, n_evaluations=1, params={},
                              rewards={}, pareto=[], walls=[wall], atoms=np.zeros((0, 2)),
                              labels=np.zeros(0, np.int16))
        pub.send_multipart(protocol.encode_result(res))
        assert ctl.wait_for(0, timeout_s=10.0, grace_s=0.2)
        views = [ctl.step(0)]
        # the frame's geometry: px -> m through the view set (pixel centres at integers)
        ends = ctl.frame_to_sample(0, [wall[:2], wall[2:]])
        ps = SURVEY_FOV_FACTOR * tw.base_fov_m / 64
        assert ends[0] == pytest.approx([survey["set"]["center_m"][0] + (10 - 31.5) * ps,
                                         survey["set"]["center_m"][1] + 0.5 * ps])
        while views[-1]["kind"] != "survey" and len(views) < 8:
            views.append(ctl.step(len(views)))
        zoomed, last = views[:-1], views[-1]
        # one follow-up past the edge, then tiles of the wall's length at 0.9 x a zoomed side
        tiles = math.ceil(float(np.hypot(*(ends[1] - ends[0]))) / (0.9 * tw.base_fov_m / 2))
        assert last["kind"] == "survey" and zoomed and len(zoomed) <= 1 + tiles
        assert zoomed[0]["kind"] == "follow" and zoomed[0]["center_m"][0] > ends[1][0]
        assert all(v["set"]["magnification"] == pytest.approx(2.0) for v in zoomed)
        t = np.linspace(0.0, 1.0, 50)[:, None]
        for p in (1 - t) * ends[0] + t * ends[1]:  # the whole wall imaged zoomed x2
            assert ctl._covered({"center_m": p, "fov_m": 0.0})
        # a suggestion inside those views: skipped, the survey goes on
        inside = _suggestion(list((ends[0] + ends[1]) / 2), tw.base_fov_m / 8, 9.0)
        pub.send_multipart(protocol.encode_result(protocol.Result(
            session="s", seq=50, latency_s=0.1, n_evaluations=1, params={}, rewards={},
            pareto=[], walls=[], atoms=np.zeros((0, 2)), labels=np.zeros(0, np.int16))))
        pub.send_multipart(protocol.encode_regions("s", 50, [inside]))
        assert ctl.wait_for(50, timeout_s=10.0, grace_s=1.0)
        assert ctl.regions_by_seq[50][0]["id"] == inside["id"]
        assert ctl.step(50)["kind"] == "survey" and inside["id"] in ctl.skipped


def test_raster_and_random_strategies_keep_the_budget_and_zoom() -> None:
    rec = run_experiment("raster", 8, 0, twin={**SMALL, "fov_px": 64}, service=False)
    assert len(rec["rows"]) == 8 and rec["high_mag_frames"] == 8
    assert all(r["magnification"] == pytest.approx(2.0) for r in rec["rows"])
    # two base fields of view, four quadrants each: the whole top row at x2
    assert {tuple(np.round(np.array(r["center_m"]) / (0.25 * rec["twin"]["base_fov_m"])))
            for r in rec["rows"]} == {(x, y) for x in (1, 3, 5, 7) for y in (1, 3)}
    rnd = run_experiment("random", 8, 1, twin={**SMALL, "fov_px": 64}, service=False)
    assert len(rnd["discovery"]["wall_fraction"]) == 8
    with pytest.raises(ValueError):
        run_experiment("rewardscope", 4, 0, service=False)
    with pytest.raises(ValueError):
        run_experiment("sideways", 4, 0, service=False)


def test_experiment_cli_writes_its_record(tmp_path, capsys) -> None:
    rc = cli_main(["experiment", "--strategy", "raster", "--frames", "5", "--seed", "2",
                   "--fovs", "2", "--domains", "1", "--amorphous", "1", "--fov-px", "64",
                   "--no-service", "--no-progress",
                   "--out", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "experiment.json").read_text())
    assert (doc["strategy"], doc["frames"], doc["seed"]) == ("raster", 5, 2)
    assert set(doc["discovery"]) == set(KINDS)
    assert all(len(v) == 5 for v in doc["discovery"].values())
    assert (tmp_path / "discovery.png").stat().st_size > 1000
    assert "walls" in capsys.readouterr().out
    assert cli_main(["experiment", "--strategy", "rewardscope", "--no-service",
                     "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("approve", [False, True])
def test_closed_loop_experiment_through_the_service(tmp_path, approve) -> None:
    """Auto: the service releases scans itself; approve: the controller approves suggestions
    over the control socket before imaging them."""
    rec = run_experiment("rewardscope", 4, 0, twin={**SMALL, "fov_px": 160}, approve=approve)
    out = write_outputs(rec, tmp_path)
    doc = json.loads((out / "experiment.json").read_text())
    assert (doc["strategy"], doc["frames"], doc["seed"]) == ("rewardscope", 4, 0)
    for k in KINDS:
        v = doc["discovery"][k]
        assert len(v) == 4 and all(0.0 <= x <= 1.0 for x in v) and v == sorted(v)
    # every frame was answered by the service (its counts are in the row)
    assert all("atoms" in r and "walls" in r for r in doc["rows"])
    assert doc["rows"][0]["atoms"] > 0  # the base survey frame of crystal
    assert doc["rows"][0]["kind"] == "survey"
    assert doc["rows"][0]["magnification"] == pytest.approx(1.0 / SURVEY_FOV_FACTOR, abs=1e-4)
    # the overview holds a domain and an amorphous patch: the next frames image what the
    # service found there at x2 (its walls, or its suggestions: approved ones in approve mode)
    assert doc["rows"][0]["regions"] >= 1
    zoomed = [r for r in doc["rows"][1:] if r["kind"] in ("suggestion", "wall", "follow")]
    assert zoomed and all(r["magnification"] >= 2.0 - 1e-6 for r in zoomed)
    assert rec["approve"] is approve
    if approve:
        assert rec["suggestions_followed"] >= 1
        assert all(r["id"] for r in zoomed if r["kind"] == "suggestion")


def _point_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    d = b - a
    t = np.clip(np.dot(p - a, d) / max(np.dot(d, d), 1e-12), 0.0, 1.0)
    return float(np.hypot(*(p - a - t * d)))


def test_twin_config_defaults_documented() -> None:
    cfg = TwinConfig()
    assert cfg.high_mag == 2.0 and cfg.fovs == 8 and cfg.fov_px == 384


def test_controller_tiles_a_domain_box_larger_than_a_zoomed_view() -> None:
    """An overview's ``domain`` suggestion whose box is wider than one zoomed view: the
    controller images the whole box at x2 with a few tiles, then surveys on."""
    tw = Twin(**{**SMALL, "fovs": 4}, fov_px=64, seed=8)
    with _controller_on_a_pub(tw) as (ctl, pub):
        ctl.first_view()
        side = 0.8 * tw.base_fov_m
        dom = _suggestion((1.3 * tw.base_fov_m, 0.9 * tw.base_fov_m), side, 4.0, "domain")
        pub.send_multipart(protocol.encode_result(protocol.Result(
            session="s", seq=0, latency_s=0.1, n_evaluations=1, params={}, rewards={},
            pareto=[], walls=[], atoms=np.zeros((0, 2)), labels=np.zeros(0, np.int16))))
        pub.send_multipart(protocol.encode_regions("s", 0, [dom]))
        assert ctl.wait_for(0, timeout_s=10.0, grace_s=1.0)
        views = [ctl.step(0)]
        while views[-1]["kind"] != "survey" and len(views) < 10:
            views.append(ctl.step(len(views)))
        tiles = views[:-1]
        assert 2 <= len(tiles) <= 4 and all(v["id"] == dom["id"] for v in tiles)
        assert all(v["set"]["magnification"] == pytest.approx(2.0) for v in tiles)
        g = np.linspace(-0.5, 0.5, 9) * side
        for dx in g:  # the whole box imaged zoomed
            for dy in g:
                p = [dom["center_m"][0] + dx, dom["center_m"][1] + dy]
                assert ctl._covered({"center_m": p, "fov_m": 0.0}), p


@pytest.fixture(scope="module")
def amorphous_zoom():
    """The demo's twin (`rewardscope demo --twin`, seed 0), its 13th view: a 2x zoom centred
    on an amorphous region (61 % of the view), the crystal only along the edges; the frame
    and its analysis, cold, with the budget of a first frame."""
    from rewardscope import config
    from rewardscope.engine.session import SessionEngine

    tw = Twin(seed=0, fovs=4, domains=3, amorphous_regions=2, fov_px=384, lattice_px=12.0,
              noise_sigma=0.1)
    tw.scan([4.386616666666666e-08, 4.3898708333333333e-08], 6.247999999999999e-09)
    tw.frames_taken = 12
    fr = tw.frame()
    assert not fr.truth.walls and fr.truth.amorphous_mask.mean() > 0.5  # the view's truth
    cfg = config.load(None, {"workflow": "all", "cold_budget": 24, "budget": 24,
                             "deadline_s": 3600.0, "seed": 0})
    return fr, SessionEngine("twin-amorphous-zoom", cfg).analyse(fr.pixels, None, cfg)


def test_zoom_into_an_amorphous_region_finds_the_lattice_and_claims_no_walls(amorphous_zoom):
    """The lattice search's second window (the crystal only along the edges) finds the 24 px
    cell of the 2x zoom; the crystal's columns are found, and no wall is drawn (before, no
    lattice: no atoms, and the texture routes drew walls on the crystal/amorphous boundary)."""
    from rewardscope.science.scoring import match_points

    fr, result = amorphous_zoom
    lat = result.scalars["lattice"]
    assert lat["window"] == "tukey"
    assert lat["a_px"] == pytest.approx(24.0, rel=0.02) and lat["b_px"] == pytest.approx(
        24.0, rel=0.02)
    assert len(result.walls) == 0
    truth = np.asarray(fr.truth.atoms, float)
    ij = np.clip(np.round(truth).astype(int), 0, np.array(fr.pixels.shape)[::-1] - 1)
    crystal = truth[~fr.truth.amorphous_mask[ij[:, 1], ij[:, 0]]]
    assert len(crystal) > 100
    assert match_points(result.atoms, crystal, 0.25 * 24.0).recall >= 0.9


def test_zoom_into_an_amorphous_region_finds_the_region(amorphous_zoom) -> None:
    """Most found sites (~290 of 491) lie in the amorphous region, so the majority's null is
    the disorder's own (nothing was reported); the sites the lattice indexes define it."""
    from rewardscope.science.scoring import mask_iou

    fr, result = amorphous_zoom
    assert mask_iou(result.arrays.get("amorphous_mask"), fr.truth.amorphous_mask) >= 0.8
    assert len(result.arrays["region_significance"]) >= 1
    assert np.all(result.arrays["region_significance"] >= 2.0)
