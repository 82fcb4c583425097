"""Recommended regions against the simulator's truth, through SessionEngine (workflow "all")."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rewardscope import config
from rewardscope.config import ConfigError
from rewardscope.engine import regions
from rewardscope.engine.session import SessionEngine
from rewardscope.protocol import Frame, FrameHeader
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

LATTICE = 12.0
SHAPE = (256, 256)
FIELDS = {"id", "score", "reason", "significance", "box_px", "box_m", "center_m", "fov_m",
          "rotation_rad", "magnification"}


def _settings(**kw) -> config.ServiceConfig:
    return config.load(None, {"workflow": "all", "deadline_s": 30.0, "cold_deadline_s": 30.0,
                              **kw})


def _frame(sim: PerovskiteSimulator, index: int, origin=(2.0e-6, -1.0e-6), rotation=0.25):
    sf = sim.frame(index)
    header = FrameHeader(session="s", seq=index, t=sf.t, shape=SHAPE, dtype="<u2",
                         pixel_size_m=sim.pixel_size_m, origin_m=origin,
                         meta={"scan_rotation_rad": rotation})
    return Frame(header=header, pixels=sf.pixels), sf.truth


def _box_iou_mask(box, mask) -> tuple[float, float]:
    """(IoU of ``box`` with the mask's bounding box, fraction of the mask inside ``box``)."""
    rows, cols = np.nonzero(mask)
    truth = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    inside = mask[max(y0, 0):y1, max(x0, 0):x1].sum() / mask.sum()
    return regions.iou(box, truth), float(inside)


def _dist_to_segment(p, seg) -> float:
    a, b = np.asarray(seg[:2], float), np.asarray(seg[2:], float)
    t = np.clip((p - a) @ (b - a) / ((b - a) @ (b - a)), 0.0, 1.0)
    return float(np.hypot(*(p - (a + t * (b - a)))))


def _centre(s) -> np.ndarray:
    b = s["box_px"]
    return np.array([(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0])


@pytest.fixture(scope="module")
def walls_and_amorphous():
    """Two sessions' first frames: two walls + one amorphous region, seeds 3 and 8."""
    out = []
    for seed in (3, 8):
        sim = PerovskiteSimulator(SimConfig(shape=SHAPE, lattice_px=LATTICE, n_walls=2,
                                            amorphous_regions=1, seed=seed))
        frame, truth = _frame(sim, 0)
        eng = SessionEngine(f"wa{seed}", _settings())
        out.append((eng, frame, truth, eng.process(frame, _settings()), sim))
    return out


# ----------------------------------------------------------------------------- coordinates


def test_pixel_instrument_transform_known_answer_and_exact_round_trip():
    # 90 degrees: pixel +x goes to instrument +y, pixel +y to instrument -x.
    m = regions.px_to_m([10.0, 5.0], 1e-10, (1e-6, 2e-6), math.pi / 2)
    assert np.allclose(m, [1e-6 - 5e-10, 2e-6 + 1e-9], rtol=0, atol=1e-18)
    assert np.allclose(regions.px_to_m([3.0, 4.0], 2e-10), [6e-10, 8e-10], rtol=0, atol=1e-20)
    rng = np.random.default_rng(0)
    xy = rng.uniform(-50, 600, (200, 2))
    for rot in (0.0, 0.3, -2.1, math.pi):
        back = regions.m_to_px(regions.px_to_m(xy, 3.2e-11, (5e-7, -4e-7), rot), 3.2e-11,
                               (5e-7, -4e-7), rot)
        assert np.allclose(back, xy, rtol=0, atol=1e-9), rot
    with pytest.raises(ValueError, match="pixel_size_m"):
        regions.px_to_m([0, 0], 0.0)


def test_suggestions_follow_the_contract_and_convert_between_frames(walls_and_amorphous):
    for _eng, frame, _truth, a, _sim in walls_and_amorphous:
        assert a.regions, "walls and an amorphous region: something to look at"
        h = frame.header
        geo = regions.FrameGeometry(SHAPE, h.pixel_size_m, h.origin_m, 0.25)
        scores = [s["score"] for s in a.regions]
        assert scores == sorted(scores, reverse=True) and len(a.regions) <= 3
        assert len({s["id"] for s in a.regions}) == len(a.regions)
        for s in a.regions:
            assert set(s) == FIELDS and len(s["id"]) == 32
            x0, y0, x1, y1 = s["box_px"]
            assert 0 <= x0 < x1 <= SHAPE[1] and 0 <= y0 < y1 <= SHAPE[0]
            assert min(x1 - x0, y1 - y0) >= LATTICE * 0.99  # at least one lattice spacing
            assert s["rotation_rad"] == 0.25
            corners = geo.to_px(np.reshape(s["box_m"], (2, 2)))
            assert np.allclose(corners.ravel(), s["box_px"], atol=1e-6)
            assert np.allclose(geo.to_px(s["center_m"]), _centre(s), atol=1e-6)
            side = max(x1 - x0, y1 - y0)
            assert s["fov_m"] == pytest.approx(side * h.pixel_size_m)
            assert s["magnification"] == pytest.approx(max(SHAPE) / side) and \
                s["magnification"] >= 1
            json.dumps(s)  # plain data


# ----------------------------------------------------------------------------- against truth


def test_wall_suggestions_lie_on_true_walls(walls_and_amorphous):
    n_walls = 0
    for _eng, _frame, truth, a, _sim in walls_and_amorphous:
        for s in a.regions:
            if s["reason"] != "wall":
                continue
            n_walls += 1
            d = min(_dist_to_segment(_centre(s), w) for w in truth.walls)
            assert d <= LATTICE, (s, truth.walls)
            assert s["significance"] > 3
    assert n_walls >= 2


def test_top_suggestion_covers_the_amorphous_region():
    for seed in (3, 5):
        sim = PerovskiteSimulator(SimConfig(shape=SHAPE, lattice_px=LATTICE, n_walls=0,
                                            amorphous_regions=1, seed=seed))
        sf = sim.frame(0)
        eng = SessionEngine("am", _settings())
        a = eng.analyse(sf.pixels, None, _settings())
        assert a.regions and a.regions[0]["reason"] == "amorphous"
        box_iou, inside = _box_iou_mask(a.regions[0]["box_px"], sf.truth.amorphous_mask)
        assert box_iou > 0.3 and inside > 0.3, (box_iou, inside)
        assert a.regions[0]["box_m"] is None and a.regions[0]["center_m"] is None


def test_amorphous_weight_puts_the_region_first_on_a_frame_with_walls(walls_and_amorphous):
    eng, frame, truth, a, _sim = walls_and_amorphous[0]
    assert a.regions[0]["reason"] == "wall"  # equal weights: the walls are more significant
    eng2 = SessionEngine("w", _settings(regions_weights="amorphous:3"))
    b = eng2.process(frame, _settings(regions_weights="amorphous:3"))
    assert b.regions[0]["reason"] == "amorphous"
    assert _box_iou_mask(b.regions[0]["box_px"], truth.amorphous_mask)[1] > 0.3


@pytest.mark.parametrize("noise", [0.0, 0.35])
def test_single_domain_crystal_suggests_nothing(noise):
    sim = PerovskiteSimulator(SimConfig(shape=SHAPE, lattice_px=LATTICE, n_walls=0,
                                        noise_sigma=noise, seed=2))
    eng = SessionEngine("one", _settings())
    for index in range(2):
        frame, _truth = _frame(sim, index)
        assert eng.process(frame, _settings()).regions == []


def test_a_new_polarization_state_is_novel_once():
    """Session: a single domain, then a frame with a second variant: the new variant is
    suggested as novel (inside the true domain of that variant), and not again after."""
    one = PerovskiteSimulator(SimConfig(shape=SHAPE, lattice_px=LATTICE, n_walls=0, seed=3))
    two = PerovskiteSimulator(SimConfig(shape=SHAPE, lattice_px=LATTICE, n_walls=2, seed=3))
    cfg = _settings(regions_weights="wall:0")  # novelty alone
    eng = SessionEngine("nov", cfg)
    first = one.frame(0)
    assert eng.analyse(first.pixels, None, cfg).regions == []
    sf = two.frame(0)
    a = eng.analyse(sf.pixels, None, cfg)
    novel = [s for s in a.regions if s["reason"] == "novelty"]
    assert len(novel) == 1, a.regions
    old_variants = set(np.unique(first.truth.domain))
    new_atoms = ~np.isin(sf.truth.domain, list(old_variants))
    assert new_atoms.any()
    nearest = np.argmin(np.hypot(*(sf.truth.atoms - _centre(novel[0])).T))
    assert new_atoms[nearest], "the novelty box is centred in the new variant's domain"
    b = eng.analyse(two.frame(1).pixels, None, cfg)
    assert [s for s in b.regions if s["reason"] == "novelty"] == []


# ----------------------------------------------------------------------------- history


def test_visited_place_is_penalised_and_the_next_frame_prefers_another(walls_and_amorphous):
    eng, frame, _truth, a, sim = walls_and_amorphous[1]
    top = a.regions[0]
    before = eng.regions.state_dict()
    with pytest.raises(KeyError):
        eng.visited("0" * 32)
    with pytest.raises(ValueError):
        eng.visited(center_px=[float("nan"), 1.0])
    assert eng.regions.state_dict() == before  # refused: nothing changed
    eng.visited(top["id"])
    frame1, _ = _frame(sim, 1)
    b = eng.process(frame1, _settings())
    assert b.regions and np.hypot(*(_centre(b.regions[0]) - _centre(top))) > 3 * LATTICE
    same = [s for s in b.regions if np.hypot(*(_centre(s) - _centre(top))) < LATTICE]
    assert all(s["score"] < 0.5 * top["score"] for s in same)
    # The penalty in numbers: 1 - exp(-d^2 / (2 r^2)) at the visited place and far from it.
    geo = regions.FrameGeometry(SHAPE)
    st = regions.RegionState()
    st.visit(center_px=[100.0, 100.0])
    assert st.penalty(np.array([100.0, 100.0]), 20.0, geo, 36.0) == 0.0
    assert st.penalty(np.array([136.0, 100.0]), 20.0, geo, 36.0) == \
        pytest.approx(1 - math.exp(-0.5))


def test_region_state_survives_a_checkpoint(walls_and_amorphous):
    eng, frame, _truth, a, _sim = walls_and_amorphous[0]
    eng.visited(a.regions[-1])
    state = json.loads(json.dumps(eng.state_dict()))
    fresh = SessionEngine("wa3", _settings())
    fresh.load_state_dict(state)
    assert fresh.regions.state_dict() == eng.regions.state_dict()
    assert fresh.regions.seen_states  # the polarization states seen so far
    fresh.visited(a.regions[0]["id"])  # ids of suggestions made before the restart resolve


# ----------------------------------------------------------------------------- ranking


def _synthetic(region_labels, walls=(), wall_sig=(), **kw):
    st = regions.RegionState()
    out = regions.suggest(
        walls=[list(w) for w in walls],
        arrays={"region_labels": region_labels, "region_significance": np.array([6.0, 20.0]),
                "wall_significance": np.asarray(wall_sig, float)},
        scalars={}, geo=regions.FrameGeometry(region_labels.shape), spacing_px=LATTICE,
        settings=_settings(**kw), state=st)
    return out, st


def test_overlapping_candidates_merge_into_the_union_box():
    lab = np.zeros(SHAPE, np.int16)
    lab[50:100, 50:100] = 1  # significance 6
    lab[60:110, 60:110] = 2  # significance 20, IoU of the boxes 0.47
    lab[50:100, 50:100][lab[50:100, 50:100] == 0] = 1
    out, _ = _synthetic(lab)
    assert len(out) == 1
    assert out[0]["box_px"] == [50.0, 50.0, 110.0, 110.0]
    assert out[0]["significance"] == 20.0  # the stronger candidate's reason and score stay
    assert out[0]["score"] == pytest.approx(20 / 23)
    far = np.zeros(SHAPE, np.int16)
    far[10:40, 10:40], far[150:200, 150:200] = 1, 2
    assert len(_synthetic(far)[0]) == 2  # disjoint: not merged


def test_crossing_walls_make_a_junction():
    walls = [(20.0, 128.0, 236.0, 128.0), (100.0, 20.0, 100.0, 120.0)]  # T: stops 8 px short
    out, _ = _synthetic(np.zeros(SHAPE, np.int16), walls, (9.0, 5.0), regions_max=5,
                        regions_weights="wall:0.1")
    junction = [s for s in out if s["reason"] == "junction"]
    assert len(junction) == 1 and junction[0]["significance"] == 5.0
    assert np.allclose(_centre(junction[0]), [100.0, 128.0])
    parallel = [(20.0, 60.0, 236.0, 60.0), (20.0, 128.0, 236.0, 128.0)]
    out, _ = _synthetic(np.zeros(SHAPE, np.int16), parallel, (9.0, 5.0))
    assert [s["reason"] for s in out] == ["wall", "wall"]


def test_config_changes_take_effect(walls_and_amorphous):
    _eng, frame, _truth, _a, _sim = walls_and_amorphous[0]
    lab = np.zeros(SHAPE, np.int16)
    lab[10:40, 10:40], lab[150:200, 150:200] = 1, 2
    walls = [(20.0, 128.0, 120.0, 128.0)]
    assert len(_synthetic(lab, walls, (9.0,))[0]) == 3
    assert len(_synthetic(lab, walls, (9.0,), regions_max=1)[0]) == 1
    assert _synthetic(lab, walls, (9.0,), regions_mode="off")[0] == []
    assert [s["reason"] for s in _synthetic(lab, walls, (9.0,), regions_weights="wall:5")[0]
            ][0] == "wall"
    assert "wall" not in [s["reason"] for s in
                          _synthetic(lab, walls, (9.0,), regions_weights={"wall": 0})[0]]
    big = _synthetic(lab, walls, (9.0,), regions_min_px=64)[0]
    assert all(min(b[2] - b[0], b[3] - b[1]) >= 64 for b in (s["box_px"] for s in big))
    cfg = _settings()
    live = cfg.updated_live({"regions_weights": "wall:2,amorphous:0.5", "regions_max": 5})
    assert live.regions_weights["wall"] == 2.0 and live.regions_weights["novelty"] == 1.0
    for bad in ("wal:2", "wall", "wall:-1", "wall:x", "wall:inf"):
        with pytest.raises(ConfigError, match="regions_weights"):
            cfg.updated_live({"regions_weights": bad})
    with pytest.raises(ConfigError, match="regions_mode"):
        cfg.updated_live({"regions_mode": "sometimes"})
    assert cfg.regions_weights == dict.fromkeys(regions.REASONS, 1.0)  # refused: unchanged


def test_regions_keys_from_toml_and_environment(tmp_path):
    p = tmp_path / "rs.toml"
    p.write_text('[regions]\nregions_mode = "approve"\nregions_weights = {wall = 2, novelty = 0}\n')
    cfg = config.load(p, env={"REWARDSCOPE_REGIONS_MAX": "5",
                              "REWARDSCOPE_REGIONS_PENALTY_RADIUS": "2.5"})
    assert cfg.regions_mode == "approve" and cfg.regions_max == 5
    assert cfg.regions_penalty_radius == 2.5
    assert cfg.regions_weights == {**dict.fromkeys(regions.REASONS, 1.0), "wall": 2.0,
                                   "novelty": 0.0}


def test_noise_scattered_polarization_is_no_novel_state():
    """A noisy two-domain stream (noise 0.35) shows its two variants from the first frame on:
    the cells noise tips into neighbouring 45-degree bins never count as a new state."""
    sim = PerovskiteSimulator(SimConfig(shape=SHAPE, lattice_px=LATTICE, n_walls=2,
                                        noise_sigma=0.35, seed=1))
    eng = SessionEngine("noisy", _settings())
    for sf in sim.frames(4):
        a = eng.analyse(sf.pixels, None, _settings())
        assert "novelty" not in [s["reason"] for s in a.regions], sf.index
    assert len(eng.regions.seen_states) == len(np.unique(sf.truth.domain)) == 2


# ----------------------------------------------------------------------------- domains


def _grid_cells(n: int = 40, step: float = 6.0) -> np.ndarray:
    g = np.arange(n) * step
    gx, gy = np.meshgrid(g, g)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def test_a_block_of_the_other_variant_is_one_domain_with_its_box():
    c = _grid_cells()
    rng = np.random.default_rng(0)
    p = np.array([0.35, 0.35]) + rng.normal(0.0, 0.2, c.shape)
    inside = (c[:, 0] >= 60) & (c[:, 0] <= 120) & (c[:, 1] >= 90) & (c[:, 1] <= 132)
    p[inside] *= -1.0  # the 180-degree variant
    out = regions.domain_candidates(c, p, 6.0, 40.0)
    assert len(out) == 1
    (d,) = out
    assert d["reason"] == "domain" and d["significance"] == pytest.approx(40.0)
    assert regions.iou(d["box_px"], [54, 84, 126, 138]) > 0.95  # the block padded by a cell
    # the frame's own test is the gate: "one domain" not rejected -> nothing
    assert regions.domain_candidates(c, p, 6.0, 2.0) == []
    assert regions.domain_candidates(c, p, 6.0, None) == []


def test_noise_alone_makes_no_domain_even_with_the_gate_open():
    c = _grid_cells()
    false = 0
    for seed in range(40):  # per-cell noise as large as the polarization itself
        rng = np.random.default_rng(seed)
        p = np.array([0.35, 0.35]) + rng.normal(0.0, 0.5, c.shape)
        false += len(regions.domain_candidates(c, p, 6.0, 50.0))
    assert false == 0


def test_overview_suggests_each_twin_domain_where_it_is():
    """A 2x overview of the twin (6 px per cell, where no wall segment is drawn): the domain
    of the other variant is suggested with a box on its true outline; a single-domain
    overview suggests no domain."""
    from rewardscope.simulators.twin import Twin

    tw = Twin(seed=1)
    st = _settings()
    eng = SessionEngine("overview", st)
    rng = np.random.default_rng(5)
    ious = []
    for poly in tw.domains_m[:3]:
        tw.scan(poly.mean(axis=0) + rng.uniform(-0.3, 0.3, 2) * tw.base_fov_m, 2 * tw.base_fov_m)
        fr = tw.frame()
        an = eng.analyse(fr.pixels, fr.lattice_px, st, pixel_size_m=fr.pixel_size_m,
                         origin_m=fr.origin_m)
        # a domain the front also disputes may come out as "instability" (merged boxes keep
        # the stronger candidate's reason): both point at the same place
        doms = [s for s in an.regions if s["reason"] in ("domain", "instability")]
        assert all(s["significance"] >= regions.DOMAIN_MIN_SIGNIFICANCE for s in doms)
        side = fr.pixels.shape[0] - 1.0
        mids = np.array([[(w[0] + w[2]) / 2, (w[1] + w[3]) / 2] for w in an.walls]).reshape(-1, 2)
        for other in tw.domains_m:  # every domain well inside the view: its own box...
            v = np.clip(tw.sample_to_pixel(other), 0.0, side)
            truth = [*v.min(axis=0), *v.max(axis=0)]
            if min(truth[2] - truth[0], truth[3] - truth[1]) < 4 * fr.lattice_px:
                continue
            pad = 2 * fr.lattice_px  # ...or walls drawn on it (then no domain box is needed)
            drawn = np.all((mids >= np.subtract(truth[:2], pad))
                           & (mids <= np.add(truth[2:], pad)), axis=1).any()
            ious.append(1.0 if drawn else max((regions.iou(s["box_px"], truth) for s in doms),
                                              default=0.0))
    assert len(ious) >= 3 and min(ious) >= 0.7, ious
    busy = {(int(p.mean(axis=0)[0] // tw.base_fov_m), int(p.mean(axis=0)[1] // tw.base_fov_m))
            for p in tw.domains_m}
    n = tw.config.fovs
    free = next((i, j) for j in range(1, n - 1) for i in range(1, n - 1)
                if not any((i + di, j + dj) in busy for di in (-1, 0, 1) for dj in (-1, 0, 1)))
    tw.scan(((free[0] + 0.5) * tw.base_fov_m, (free[1] + 0.5) * tw.base_fov_m), 2 * tw.base_fov_m)
    fr = tw.frame()
    an = eng.analyse(fr.pixels, fr.lattice_px, st, pixel_size_m=fr.pixel_size_m,
                     origin_m=fr.origin_m)
    assert not fr.truth.walls
    assert [s for s in an.regions if s["reason"] == "domain"] == []


# ----------------------------------------------------------------------------- instability


def test_label_instability_matches_label_ids_before_counting():
    from rewardscope.engine.session import label_instability

    chosen = np.r_[np.zeros(50, int), np.ones(50, int)]
    swapped = 1 - chosen  # the same partition, other ids: no disagreement
    moved = chosen.copy()
    moved[40:50] = 1  # ten atoms change sides
    share = label_instability(chosen, [swapped, moved])
    assert np.allclose(share[:40], 0.0) and np.allclose(share[40:50], 0.5)
    assert np.allclose(share[50:], 0.0)
    unlabelled = chosen.copy()
    unlabelled[:5] = -1
    assert np.isnan(label_instability(unlabelled, [chosen])[:5]).all()
    assert label_instability(chosen, []) is None


def test_a_disputed_patch_is_an_instability_candidate_and_scattered_doubt_is_not():
    xy = _grid_cells(30, 6.0)
    share = np.zeros(len(xy))
    patch = (xy[:, 0] >= 60) & (xy[:, 0] <= 96) & (xy[:, 1] >= 30) & (xy[:, 1] <= 60)
    share[patch] = 1.0
    (c,) = regions.instability_candidates(xy, share, 6.0)
    assert c["reason"] == "instability" and c["significance"] > 10
    assert regions.iou(c["box_px"], [54, 24, 102, 66]) > 0.95
    rng = np.random.default_rng(1)
    scattered = (rng.random(len(xy)) < 0.5).astype(float)  # the front disputes everything
    assert regions.instability_candidates(xy, scattered, 6.0) == []


def test_a_patch_the_latent_model_is_unsure_of_is_suggested_and_uniform_doubt_is_not():
    xy = _grid_cells(30, 6.0)
    rng = np.random.default_rng(2)
    scale = np.exp(rng.normal(-2.0, 0.1, (len(xy), 2)))
    patch = (xy[:, 0] >= 120) & (xy[:, 0] <= 150) & (xy[:, 1] >= 90) & (xy[:, 1] <= 126)
    scale[patch] *= 3.0  # posterior spread x3 there
    scale[:7] = np.nan  # rows that are no key point
    (c,) = regions.uncertainty_candidates(xy, scale, 6.0)
    assert c["reason"] == "uncertainty" and c["significance"] >= regions.MIN_SIGNIFICANCE
    assert regions.iou(c["box_px"], [114, 84, 156, 132]) > 0.9
    for seed in range(20):  # the same spread everywhere: nothing
        r = np.random.default_rng(seed)
        flat = np.exp(r.normal(-2.0, 0.1, (len(xy), 2)))
        assert regions.uncertainty_candidates(xy, flat, 6.0) == []
