"""The unit cell found from the frame: vectors against the truth, "no lattice" on noise, hints
checked and not obeyed, motif-based column counts, and the contrast polarity."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from rewardscope import cli, config
from rewardscope.engine.session import SessionEngine
from rewardscope.science import lattice as L
from rewardscope.science.atomfind import normalize_frame
from rewardscope.science.rewards import count_quality, expected_sites
from rewardscope.science.scoring import match_points
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

A = 12.0  # the simulator's A-A spacing, px


def _cfg(**kw) -> config.ServiceConfig:
    return config.load(None, {"workflow": "atoms", "deadline_s": 30.0, **kw})


def _vector_errors(lat: L.Lattice, truth: list[np.ndarray]) -> list[float]:
    """Relative error of each true cell vector against the nearest found one (up to sign and
    order: a cell has no preferred sign or order of its two vectors)."""
    found = [s * v for v in lat.vectors for s in (1.0, -1.0)]
    return [min(float(np.hypot(*(f - t))) for f in found) / float(np.hypot(*t)) for t in truth]


def _sim_truth(rotation_deg: float, a: float = A) -> list[np.ndarray]:
    th = math.radians(rotation_deg)
    return [a * np.array([math.cos(th), math.sin(th)]), a * np.array([-math.sin(th), math.cos(th)])]


def gaussian_lattice(shape, a, b, motif=((0.0, 0.0, 1.0),), sigma=1.3, noise=0.05, seed=0,
                     origin=(3.3, 5.1)):
    """Frame of Gaussian columns on the lattice a, b (px) with fractional motif positions and
    peak heights; returns (image, true column positions inside the frame)."""
    h, w = shape
    rng = np.random.default_rng(seed)
    m = np.array([a, b], float).T
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], float) - origin
    frac = corners @ np.linalg.inv(m).T
    lo, hi = np.floor(frac.min(0)) - 1, np.ceil(frac.max(0)) + 1
    i, j = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    img = np.zeros(shape)
    r = int(math.ceil(4 * sigma))
    inside = []
    for fu, fv, amp in motif:
        pts = np.column_stack([(i + fu).ravel(), (j + fv).ravel()]) @ m.T + origin
        for x, y in pts:
            x0, x1 = max(0, int(x) - r), min(w, int(x) + r + 2)
            y0, y1 = max(0, int(y) - r), min(h, int(y) + r + 2)
            if x0 >= x1 or y0 >= y1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1]
            img[y0:y1, x0:x1] += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
        keep = (pts[:, 0] >= -0.5) & (pts[:, 0] < w - 0.5) & (pts[:, 1] >= -0.5) & \
            (pts[:, 1] < h - 0.5)
        inside.append(pts[keep])
    return img + rng.normal(0.0, noise, shape), np.vstack(inside)


# ------------------------------------------------------------------------------ vectors


@pytest.mark.parametrize("rotation", [0.0, 17.0, 45.0, 73.0])
def test_simulated_perovskite_cell_within_two_percent_without_a_hint(rotation):
    """The A-A cell (not the finer net of all columns, which is a/sqrt2 at 45 deg to it)."""
    sf = PerovskiteSimulator(SimConfig(shape=(256, 256), rotation_deg=rotation,
                                       noise_sigma=0.2, seed=7)).frame(0)
    lat = L.find_lattice(normalize_frame(sf.pixels))
    assert lat is not None
    assert max(_vector_errors(lat, _sim_truth(rotation))) <= 0.02, lat
    assert abs(lat.angle_deg - 90.0) < 1.0 and lat.cell_area == pytest.approx(A * A, rel=0.03)
    assert lat.snr > lat.threshold  # reported significance above this frame's bar


@pytest.mark.parametrize("name,a,b,motif", [
    ("rectangular", (10.0, 0.0), (0.0, 15.0), ((0.0, 0.0, 1.0),)),
    ("rectangular, rotated, two columns", (9.2050, 3.9073), (-5.8610, 13.8075),
     ((0.0, 0.0, 1.0), (0.5, 0.5, 0.45))),
    ("oblique", (11.0, 0.0), (4.0, 13.0), ((0.0, 0.0, 1.0),)),
    ("oblique, two columns", (11.0, 2.0), (3.0, 12.5), ((0.0, 0.0, 1.0), (0.5, 0.3, 0.5))),
])
def test_rectangular_and_oblique_cells_and_their_column_count(name, a, b, motif):
    img, cols = gaussian_lattice((256, 256), a, b, motif)
    lat = L.find_lattice(normalize_frame(img))
    assert lat is not None, name
    truth = [np.array(a), np.array(b)]
    assert max(_vector_errors(lat, truth)) <= 0.02, (name, lat)
    true_area = abs(a[0] * b[1] - a[1] * b[0])
    assert lat.cell_area == pytest.approx(true_area, rel=0.02)
    # the expected count from the found cell and the motif is the number of columns in the
    # frame (edge columns make the +-3 %); the old a^2 rule is off by a^2 / |a x b| - 1
    # (50 % for the 10 x 15 cell)
    n = expected_sites(img.shape, lat.spacing, len(motif), cell_area_px=lat.cell_area)
    assert n == pytest.approx(len(cols), rel=0.03), name
    old = expected_sites(img.shape, lat.spacing, len(motif))
    assert abs(n - len(cols)) < abs(old - len(cols)), name
    assert count_quality(len(cols), img.shape, lat.spacing, len(motif), lat.cell_area) < 0.03


def test_non_square_cell_through_the_engine_with_a_motif():
    """A rectangular lattice with one column per cell: the engine finds the cell, the atoms
    workflow counts with motif = 1, and the columns found are the true ones."""
    img, cols = gaussian_lattice((192, 192), (10.0, 0.0), (0.0, 15.0), noise=0.05, seed=3)
    cfg = _cfg(motif="single")
    res = SessionEngine("rect", cfg).analyse(img, None, cfg)
    lat = res.scalars["lattice"]
    assert lat["a_px"] == pytest.approx(10.0, rel=0.02)
    assert lat["b_px"] == pytest.approx(15.0, rel=0.02)
    assert match_points(res.atoms, cols, 3.0).f1 >= 0.97
    assert res.rewards["count_quality"] < 0.05


def test_orientation_is_kept_from_frame_to_frame():
    sim = PerovskiteSimulator(SimConfig(shape=(192, 192), rotation_deg=30.0, noise_sigma=0.2,
                                        seed=2, drift_px_per_frame=(0.6, -0.3)))
    frames = [normalize_frame(sf.pixels) for sf in sim.frames(3)]
    first = L.find_lattice(frames[0])
    for img in frames[1:]:
        again = L.find_lattice(img, previous=first)
        assert np.hypot(*(again.vectors - first.vectors).T).max() < 0.02 * A


def test_refine_on_columns_keeps_the_cell_and_counts_pairs():
    sf = PerovskiteSimulator(SimConfig(shape=(192, 192), rotation_deg=17.0, seed=5)).frame(0)
    lat = L.find_lattice(normalize_frame(sf.pixels))
    ref = L.refine_lattice(lat, sf.truth.atoms)
    assert ref.n_pairs > 100
    assert max(_vector_errors(ref, _sim_truth(17.0))) <= 0.002
    assert L.refine_lattice(lat, np.zeros((0, 2))) is lat  # nothing to refine on
    with pytest.raises(ValueError, match="xy"):
        L.refine_lattice(lat, np.zeros((5, 3)))


# ------------------------------------------------------------------------------ no lattice


def _random_columns(shape=(256, 256), n=900, min_dist=6.5, seed=0):
    """A fully amorphous frame: Gaussian columns at random positions (no closer than
    min_dist), i.e. short-range order only."""
    rng = np.random.default_rng(seed)
    pts: list[np.ndarray] = []
    while len(pts) < n:
        p = rng.uniform(0, shape[0], 2)
        if not pts or np.hypot(*(np.array(pts) - p).T).min() > min_dist:
            pts.append(p)
    img = np.zeros(shape)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    for x, y in pts:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.3**2))
    return img + rng.normal(0.0, 0.05, shape)


@pytest.mark.parametrize("kind", ["blank", "gaussian", "poisson", "amorphous"])
def test_frames_without_a_lattice_get_none(kind):
    rng = np.random.default_rng(11)
    img = {"blank": lambda: np.full((256, 256), 7.0),
           "gaussian": lambda: rng.normal(size=(256, 256)),
           "poisson": lambda: rng.poisson(2.0, (256, 256)).astype(np.uint16),
           "amorphous": lambda: _random_columns()}[kind]()
    assert L.find_lattice(img) is None


def test_pure_noise_has_no_lattice_at_the_stated_false_alarm_rate():
    """30 independent noise frames at a 1e-3 false-alarm rate: none may show a lattice."""
    rng = np.random.default_rng(5)
    assert not any(L.find_lattice(rng.normal(size=(128, 128))) for _ in range(30))


def test_crystal_only_along_the_edges_is_found_through_the_second_window():
    """A view centred on an amorphous particle (46 % of the frame), the crystal only in the
    corners and along the edges, where the Kaiser window weighs least: that pass finds no
    cell, the Tukey pass finds the right one (within 2 %), and says which window it used."""
    truth = _sim_truth(17.0, 20.0)
    crystal, _ = gaussian_lattice((384, 384), truth[0], truth[1],
                                  motif=((0.0, 0.0, 1.0), (0.5, 0.5, 0.4)), sigma=2.5,
                                  noise=0.1, seed=2)
    amorphous = _random_columns((384, 384), n=int(384 * 384 * 0.46 / 200), min_dist=9.0,
                                seed=3)
    yy, xx = np.mgrid[0:384, 0:384]
    particle = ((yy - 192) / 135.0) ** 4 + ((xx - 192) / 135.0) ** 4 <= 1
    img = np.where(particle, amorphous, crystal)
    assert 0.4 < particle.mean() < 0.5
    assert L._search(img.astype(np.float32), "kaiser", 1e-3 / len(L.WINDOWS), None) is None
    lat = L.find_lattice(img)
    assert lat is not None and lat.window == "tukey"
    assert lat.snr > lat.threshold
    assert max(_vector_errors(lat, truth)) < 0.02
    assert lat.as_dict()["window"] == "tukey"


def test_both_windows_keep_noise_and_edges_free_of_lattices():
    """The second pass must not turn what has no lattice into one: noise frames, a ramp with
    a step edge, scan-line offsets (each pass tests at half the false-alarm rate)."""
    rng = np.random.default_rng(17)
    yy, xx = np.mgrid[0:192, 0:192]
    frames = [rng.normal(size=(192, 192)) for _ in range(20)]
    frames += [0.01 * xx + 0.5 * (yy > 80 + 5 * i) + rng.normal(size=(192, 192))
               for i in range(5)]
    frames += [rng.normal(0.0, 0.3, (192, 1)) + rng.normal(size=(192, 192)) for _ in range(5)]
    assert not any(L.find_lattice(f) for f in frames)


def test_indexed_sites_are_the_lattice_not_random_points():
    """Columns of a perfect lattice (edges included) are indexed; random points with the same
    density and no closer than the columns are, rarely; a tolerance must be positive."""
    truth = _sim_truth(17.0, 15.0)
    _, cols = gaussian_lattice((256, 256), truth[0], truth[1], noise=0.0)
    lat = L.Lattice(a=tuple(truth[0]), b=tuple(truth[1]), snr=100.0)
    assert L.indexed_sites(lat, cols, (256, 256)).mean() > 0.98
    rng = np.random.default_rng(4)
    pts: list[np.ndarray] = []
    while len(pts) < len(cols):
        p = rng.uniform(0, 256, 2)
        if not pts or np.hypot(*(np.array(pts) - p).T).min() > 7.0:
            pts.append(p)
    assert L.indexed_sites(lat, np.array(pts), (256, 256)).mean() < 0.05
    assert not L.indexed_sites(lat, np.zeros((1, 2)), (256, 256)).any()
    with pytest.raises(ValueError, match="tol"):
        L.indexed_sites(lat, cols, (256, 256), tol=0.0)


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_lattice_means_no_atoms_through_the_engine(kind):
    rng = np.random.default_rng(3)
    px = np.zeros((160, 160), np.uint16) if kind == "blank" else \
        rng.poisson(40, (160, 160)).astype(np.uint16)
    cfg = config.load(None, {"workflow": "all", "cold_budget": 4, "budget": 3})
    eng = SessionEngine(kind, cfg)
    for hint in (None, A):  # a hint does not conjure a lattice up
        res = eng.analyse(px, hint, cfg)
        assert res.scalars["lattice"] is None
        assert len(res.atoms) == 0 and len(res.labels) == 0


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_lattice_through_analyze(tmp_path, kind):
    rng = np.random.default_rng(4)
    px = np.full((128, 128), 100, np.uint16) if kind == "blank" else \
        rng.poisson(40, (128, 128)).astype(np.uint16)
    np.save(tmp_path / "f.npy", px)
    out = tmp_path / "out"
    rc = cli.main(["analyze", str(tmp_path / "f.npy"), "--budget", "3", "--out", str(out),
                   "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["lattice"] is None and doc["atoms"] == []


# ------------------------------------------------------------------------------ hints


def test_a_wrong_hint_is_reported_and_the_frame_lattice_used(caplog):
    sf = PerovskiteSimulator(SimConfig(shape=(256, 256), noise_sigma=0.2, seed=9)).frame(0)
    cfg = _cfg()
    eng = SessionEngine("hinted", cfg)
    with caplog.at_level(logging.WARNING, logger="rewardscope.engine"):
        res = eng.analyse(sf.pixels, 1.5 * A, cfg)
    lat = res.scalars["lattice"]
    assert lat["hint_px"] == 1.5 * A and lat["hint_agrees"] is False
    assert lat["a_px"] == pytest.approx(A, rel=0.02) and lat["b_px"] == pytest.approx(A, rel=0.02)
    assert any("disagrees" in r.getMessage() for r in caplog.records)
    # the frame's spacing was used: the columns found are the true ones
    assert match_points(res.atoms, sf.truth.atoms, 0.3 * A).f1 >= 0.97
    good = SessionEngine("right", cfg).analyse(sf.pixels, 1.05 * A, cfg).scalars["lattice"]
    assert good["hint_agrees"] is True


def test_lattice_constant_and_pixel_size_make_a_hint():
    sf = PerovskiteSimulator(SimConfig(shape=(160, 160), seed=1)).frame(0)
    cfg = _cfg(lattice_constant_m=3.905e-10)
    for size, agrees in ((3.905e-10 / A, True), (3.905e-10 / (1.5 * A), False)):
        lat = SessionEngine("m", cfg).analyse(sf.pixels, None, cfg,
                                              pixel_size_m=size).scalars["lattice"]
        assert lat["hint_px"] == pytest.approx(3.905e-10 / size, rel=1e-6)
        assert lat["hint_agrees"] is agrees


def test_hint_agreement_and_argument_checks():
    lat = L.Lattice(a=(10.0, 0.0), b=(0.0, 15.0), snr=100.0)
    assert L.hint_agrees(lat, 10.8) and L.hint_agrees(lat, 14.0)
    assert not L.hint_agrees(lat, 12.5) and not L.hint_agrees(lat, 20.0)
    with pytest.raises(ValueError, match="hint_px"):
        L.hint_agrees(lat, -1.0)
    with pytest.raises(ValueError, match="image"):
        L.find_lattice(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="image"):
        L.find_lattice(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="false_alarm"):
        L.find_lattice(np.zeros((32, 32)), false_alarm=2.0)
    assert lat.cell_area == 150.0 and lat.angle_deg == pytest.approx(90.0)
    assert lat.as_dict()["a"] == [10.0, 0.0]


# ------------------------------------------------------------------------------ motif, contrast


def test_motif_presets_numbers_and_refusals():
    assert config.load(None, {"motif": "perovskite-001"}).columns_per_cell() == 2.0
    assert config.load(None, {"motif": "perovskite-110"}).columns_per_cell() == 2.0
    assert config.load(None, {"motif": "2.5"}).columns_per_cell() == 2.5
    for bad in ("perovskite-999", "0", "-2", "two"):
        with pytest.raises(config.ConfigError, match="motif"):
            config.load(None, {"motif": bad})
    with pytest.raises(config.ConfigError, match="contrast"):
        config.load(None, {"contrast": "grey"})


def test_dark_columns_are_found_with_contrast_auto():
    """A bright-field-like frame (the simulator's frame inverted: dark columns on a bright
    background): auto decides dark, inverts, and the atoms are the true ones."""
    sf = PerovskiteSimulator(SimConfig(shape=(256, 256), noise_sigma=0.2, seed=12)).frame(0)
    inverted = (sf.pixels.max() - sf.pixels).astype(np.uint16)
    lat = L.find_lattice(normalize_frame(inverted))
    assert L.contrast_skew(inverted, lat) < -0.2 < 0.2 < L.contrast_skew(sf.pixels, lat)
    cfg = _cfg()
    res = SessionEngine("abf", cfg).analyse(inverted, None, cfg)
    assert res.scalars["contrast"]["polarity"] == "dark"
    assert match_points(res.atoms, sf.truth.atoms, 0.3 * A).f1 >= 0.97
    forced = _cfg(contrast="bright")  # told wrong: the interstices are what it finds
    wrong = SessionEngine("told", forced).analyse(inverted, None, forced)
    assert wrong.scalars["contrast"] == {"mode": "bright", "polarity": "bright"}
    assert match_points(wrong.atoms, sf.truth.atoms, 0.3 * A).f1 < 0.7


def test_analyze_without_a_lattice_argument_writes_the_lattice(tmp_path):
    sf = PerovskiteSimulator(SimConfig(shape=(192, 192), rotation_deg=17.0, noise_sigma=0.1,
                                       seed=6)).frame(0)
    np.save(tmp_path / "frame.npy", sf.pixels)
    out = tmp_path / "out"
    rc = cli.main(["analyze", str(tmp_path / "frame.npy"), "--workflow", "atoms", "--budget",
                   "8", "--motif", "perovskite-001", "--contrast", "auto", "--out", str(out),
                   "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    lat = L.Lattice(a=tuple(doc["lattice"]["a"]), b=tuple(doc["lattice"]["b"]), snr=1.0)
    assert max(_vector_errors(lat, _sim_truth(17.0))) <= 0.02
    assert doc["contrast"]["polarity"] == "bright"
    assert match_points(np.array(doc["atoms"]), sf.truth.atoms, 0.3 * A).f1 >= 0.95
