"""Sub-pixel columns and the polarization map, against the simulator's ground truth.

Truth: ``Truth.atoms`` (exact column positions), ``Truth.site`` (0 = A, 1 = B),
``Truth.domain`` (variant per column) and ``Truth.polarization`` (unit vector per variant);
the simulator moves every B column by ``displacement_frac * a`` along its variant's vector,
and never moves A columns, so the true displacement of a B column from the centre of its A
cage is exactly that vector.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rewardscope import config
from rewardscope.engine import SessionEngine
from rewardscope.science import atomfind, polarization, refine
from rewardscope.science.scoring import match_points
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig
from rewardscope.workflows.atoms import AtomsWorkflow
from rewardscope.workflows.base import Evaluation, FrameContext

LATTICE = 12.0


def _found(sim: PerovskiteSimulator, point: int = 0):
    """(frame, normalised image, context, the atoms workflow's candidate ``point``)."""
    sf = sim.frame(0)
    a = sim.config.lattice_px
    img = atomfind.normalize_frame(sf.pixels)
    wf = AtomsWorkflow()
    ctx = FrameContext(image=img, lattice_px=a, pixel_size_m=sim.pixel_size_m)
    wf.prepare(ctx)
    return sf, img, ctx, wf, wf.evaluate(ctx, wf.initial_points(ctx)[point])


def _rmse(xy: np.ndarray, truth_xy: np.ndarray, tol: float) -> float:
    m = match_points(xy, truth_xy, tol)
    pairs = np.asarray(m.pairs)
    assert m.f1 >= 0.95  # the comparison is over (nearly) every column
    d = xy[pairs[:, 0]] - truth_xy[pairs[:, 1]]
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


def _vectors_against_truth(sim: PerovskiteSimulator, sf, pm: polarization.PolarizationMap,
                           xy: np.ndarray):
    """(estimated, true) displacement of every cell whose B column matches a true B column."""
    a = sim.config.lattice_px
    m = match_points(xy[pm.site], sf.truth.atoms, 0.3 * a)
    pairs = np.asarray(m.pairs)
    truth = sf.truth
    assert np.all(truth.site[pairs[:, 1]] == 1)  # every cell's column is a real B column
    true = sim.config.displacement_frac * a * truth.polarization[truth.domain[pairs[:, 1]]]
    return pm.polarization[pairs[:, 0]], true


def _within_45(est: np.ndarray, true: np.ndarray) -> np.ndarray:
    cos = np.sum(est * true, axis=1) / (np.linalg.norm(est, axis=1)
                                         * np.linalg.norm(true, axis=1) + 1e-12)
    return cos >= math.cos(math.radians(45.0))


# ------------------------------------------------------------------------------ refinement


@pytest.mark.parametrize("overrides", [
    {"seed": 0},
    {"seed": 1, "rotation_deg": 17.0},
    {"seed": 2, "lattice_px": 8.0},
    {"seed": 3, "column_sigma_frac": 0.15},  # wider columns: neighbours reach into the window
])
def test_refined_columns_beat_the_log_positions_on_clean_frames(overrides):
    sim = PerovskiteSimulator(SimConfig(shape=(256, 256), **overrides))
    sf, img, ctx, wf, ev = _found(sim)
    a = sim.config.lattice_px
    log_xy = ev.output["atoms"].astype(np.float64)
    ref = refine.refine_columns(img, log_xy, a)
    rmse_log = _rmse(log_xy, sf.truth.atoms, 0.3 * a)
    rmse_fit = _rmse(ref.xy, sf.truth.atoms, 0.3 * a)
    assert rmse_fit <= 0.12
    assert rmse_fit < rmse_log  # the baseline, same frame
    assert ref.fitted.mean() >= 0.95
    assert np.all(ref.snr[ref.fitted] >= refine.MIN_SNR)


def test_second_pass_removes_the_pull_of_bright_neighbours():
    """Columns 0.15 a wide: a dim B column's window holds its A cage's tails."""
    sim = PerovskiteSimulator(SimConfig(shape=(256, 256), seed=3, column_sigma_frac=0.15))
    sf, img, _, _, ev = _found(sim)
    xy = ev.output["atoms"].astype(np.float64)
    one = _rmse(refine.refine_columns(img, xy, LATTICE, passes=1).xy, sf.truth.atoms, 3.6)
    two = refine.refine_columns(img, xy, LATTICE, passes=2)
    assert _rmse(two.xy, sf.truth.atoms, 3.6) < 0.5 * one
    # by default the second pass runs where it matters (these columns are wide) ...
    np.testing.assert_array_equal(refine.refine_columns(img, xy, LATTICE).xy, two.xy)
    # ... and is skipped on narrow columns, where the first pass is already exact
    sim = PerovskiteSimulator(SimConfig(shape=(256, 256), seed=3, column_sigma_frac=0.1))
    sf, img, _, _, ev = _found(sim)
    xy = ev.output["atoms"].astype(np.float64)
    auto = refine.refine_columns(img, xy, LATTICE)
    np.testing.assert_array_equal(auto.xy, refine.refine_columns(img, xy, LATTICE, passes=1).xy)
    assert _rmse(auto.xy, sf.truth.atoms, 3.6) <= 0.01


def test_refinement_on_a_shot_noise_frame_is_no_worse_than_the_log():
    sim = PerovskiteSimulator(SimConfig(shape=(256, 256), seed=5, dose=100))
    sf, img, _, _, ev = _found(sim, point=1)
    xy = ev.output["atoms"].astype(np.float64)
    ref = refine.refine_columns(img, xy, LATTICE)
    assert _rmse(ref.xy, sf.truth.atoms, 3.6) <= _rmse(xy, sf.truth.atoms, 3.6)


def test_untrusted_fits_keep_their_input_position():
    rng = np.random.default_rng(0)
    noise = atomfind.normalize_frame(rng.normal(0.3, 0.05, (128, 128)))
    xy = rng.uniform(5.0, 122.0, (200, 2))
    ref = refine.refine_columns(noise, xy, LATTICE)
    # nothing here: most random spots on pure noise are not fitted, and none moves far
    assert ref.fitted.mean() < 0.25
    np.testing.assert_array_equal(ref.xy[~ref.fitted], xy[~ref.fitted])
    moved = np.hypot(*(ref.xy - xy).T)
    assert moved.max() <= refine.MAX_SHIFT_FRAC * LATTICE + 1e-9
    assert np.all(np.isnan(ref.amplitude[~ref.fitted]))
    # a flat frame has no peak; a position far outside the frame has no pixels
    flat = refine.refine_columns(np.full((32, 32), 0.3), [[10.0, 12.0], [-50.0, 5.0]], LATTICE)
    assert not flat.fitted.any()
    np.testing.assert_array_equal(flat.xy, [[10.0, 12.0], [-50.0, 5.0]])
    assert list(flat.status) == [3, 1]


def test_refine_validates_its_arguments():
    img = np.zeros((16, 16))
    with pytest.raises(ValueError, match="image"):
        refine.refine_columns(np.zeros(16), [[1.0, 1.0]], LATTICE)
    with pytest.raises(ValueError, match="xy"):
        refine.refine_columns(img, [[1.0, np.nan]], LATTICE)
    with pytest.raises(ValueError, match="xy"):
        refine.refine_columns(img, [1.0, 2.0, 3.0], LATTICE)
    with pytest.raises(ValueError, match="lattice_px"):
        refine.refine_columns(img, [[1.0, 1.0]], 0.0)
    with pytest.raises(ValueError, match="passes"):
        refine.refine_columns(img, [[1.0, 1.0]], LATTICE, passes=0)
    with pytest.raises(ValueError, match="max_shift_frac"):
        refine.refine_columns(img, [[1.0, 1.0]], LATTICE, max_shift_frac=-1.0)
    empty = refine.refine_columns(img, np.zeros((0, 2)), LATTICE)
    assert empty.xy.shape == (0, 2) and empty.fitted.shape == (0,)


# ------------------------------------------------------------------------------ polarization


@pytest.mark.parametrize("overrides", [
    {"seed": 0},
    {"seed": 2, "wall_direction": "110"},
    {"seed": 1, "rotation_deg": 17.0},
    {"seed": 4, "n_variants": 4, "n_walls": 3},
])
def test_polarization_direction_and_magnitude_on_clean_multi_variant_frames(overrides):
    sim = PerovskiteSimulator(SimConfig(shape=(384, 384), **overrides))
    sf, img, ctx, wf, ev = _found(sim)
    out = wf.finalize(ctx, ev)
    xy = out["atoms"].astype(np.float64)
    pm = polarization.polarization_map(xy, ctx.sites, LATTICE)
    np.testing.assert_allclose(out["polarization"], pm.polarization, atol=1e-4)
    est, true = _vectors_against_truth(sim, sf, pm, xy)
    assert len(np.unique(sf.truth.domain)) >= 2
    assert len(est) >= 0.9 * np.sum(sf.truth.site == 1)  # edge cells (incomplete cage) only
    assert _within_45(est, true).mean() >= 0.99
    mag_err = np.abs(np.linalg.norm(est, axis=1) - np.linalg.norm(true, axis=1))
    assert np.median(mag_err) <= 0.1


def test_polarization_direction_on_a_shot_noise_frame():
    sim = PerovskiteSimulator(SimConfig(shape=(384, 384), seed=5, dose=200))
    sf, img, ctx, wf, ev = _found(sim, point=1)
    out = wf.finalize(ctx, ev)
    xy = out["atoms"].astype(np.float64)
    pm = polarization.polarization_map(xy, ctx.sites, LATTICE)
    est, true = _vectors_against_truth(sim, sf, pm, xy)
    assert _within_45(est, true).mean() >= 0.99


def test_a_single_domain_frame_gives_one_direction():
    sim = PerovskiteSimulator(SimConfig(shape=(256, 256), seed=6, n_walls=0, n_variants=1,
                                        rotation_deg=8.0))
    sf, img, ctx, wf, ev = _found(sim)
    out = wf.finalize(ctx, ev)
    vec = out["polarization"].astype(np.float64)
    assert len(vec) > 100
    true = sim.config.displacement_frac * LATTICE * sf.truth.polarization[0]
    assert _within_45(vec, np.broadcast_to(true, vec.shape)).all()
    angle = np.degrees(np.arctan2(vec[:, 1], vec[:, 0]))
    true_angle = math.degrees(math.atan2(true[1], true[0]))
    spread = np.abs((angle - true_angle + 180.0) % 360.0 - 180.0)
    assert spread.max() <= 5.0


def test_cells_are_the_centres_of_complete_cages():
    sim = PerovskiteSimulator(SimConfig(shape=(256, 256), seed=7))
    sf, img, ctx, wf, ev = _found(sim)
    xy = wf.finalize(ctx, ev)["atoms"].astype(np.float64)
    pm = polarization.polarization_map(xy, ctx.sites, LATTICE)
    assert np.all(ctx.sites[pm.site] == 1) and np.all(ctx.sites[pm.cage] == 0)
    np.testing.assert_allclose(pm.cells, xy[pm.cage].mean(axis=1))
    np.testing.assert_allclose(pm.polarization, xy[pm.site] - pm.cells)
    d = np.linalg.norm(xy[pm.cage] - xy[pm.site][:, None, :], axis=2)
    d0 = LATTICE / math.sqrt(2.0)
    assert np.all(np.abs(d / d0 - 1.0) <= polarization.CAGE_TOLERANCE)
    # true cell centres (undisplaced B sites) against ours
    true_b = sf.truth.atoms[sf.truth.site == 1]
    true_centres = true_b - (sim.config.displacement_frac * LATTICE
                             * sf.truth.polarization[sf.truth.domain[sf.truth.site == 1]])
    m = match_points(pm.cells, true_centres, 0.3 * LATTICE)
    assert m.precision == 1.0
    assert np.median(m.distances) <= 0.05


def test_removing_a_cage_column_removes_the_cell():
    sim = PerovskiteSimulator(SimConfig(shape=(128, 128), seed=8))
    sf = sim.frame(0)
    xy, site = sf.truth.atoms, sf.truth.site.astype(np.int64)
    full = polarization.polarization_map(xy, site, LATTICE)
    victim = full.cage[len(full) // 2, 0]
    keep = np.arange(len(xy)) != victim
    fewer = polarization.polarization_map(xy[keep], site[keep], LATTICE)
    users = np.sum(np.any(full.cage == victim, axis=1))
    assert users >= 1 and len(fewer) == len(full) - users


def test_degenerate_inputs_give_empty_maps():
    empty = polarization.polarization_map(np.zeros((0, 2)), np.zeros(0, np.int8), LATTICE)
    assert empty.cells.shape == (0, 2) and empty.polarization.shape == (0, 2)
    sf = PerovskiteSimulator(SimConfig(shape=(96, 96), seed=9)).frame(0)
    a_only = sf.truth.site == 0
    one = polarization.polarization_map(sf.truth.atoms[a_only],
                                        np.zeros(a_only.sum(), np.int8), LATTICE)
    assert len(one) == 0 and one.polarization.shape == (0, 2)
    few = polarization.polarization_map([[0.0, 0.0], [8.5, 0.0], [4.0, 4.0]], [0, 0, 1], LATTICE)
    assert len(few) == 0
    # the workflow's finalize on no atoms, and on one visible sublattice
    img = atomfind.normalize_frame(sf.pixels)
    wf = AtomsWorkflow()
    ctx = FrameContext(image=img, lattice_px=LATTICE)
    out = wf.finalize(ctx, Evaluation(rewards={}, output={"atoms": np.zeros((0, 2))}))
    assert out["atoms"].shape == (0, 2) and out["cells"].shape == (0, 2)
    assert out["polarization"].shape == (0, 2) and "polarization_pm" not in out
    ctx = FrameContext(image=img, lattice_px=LATTICE)
    out = wf.finalize(ctx, Evaluation(rewards={}, output={"atoms": sf.truth.atoms[a_only]}))
    assert out["polarization"].shape == (0, 2)


def test_no_map_without_two_columns_per_cell():
    """A motif without an A/B pair per cell (here one column per cell) has no cages: the
    columns are still refined, and no map is claimed."""
    sim = PerovskiteSimulator(SimConfig(shape=(128, 128), seed=13))
    sf, img, ctx, _, ev = _found(sim)
    out = AtomsWorkflow(sites_per_cell=1).finalize(ctx, ev)
    assert "cells" not in out and "polarization" not in out and ctx.sites is None
    assert _rmse(out["atoms"].astype(np.float64), sf.truth.atoms, 0.3 * LATTICE) <= 0.12


def test_polarization_validates_its_arguments():
    xy = np.zeros((3, 2))
    with pytest.raises(ValueError, match="sites"):
        polarization.polarization_map(xy, [0, 1], LATTICE)
    with pytest.raises(ValueError, match="sites"):
        polarization.polarization_map(xy, [0.0, 1.0, 0.5], LATTICE)
    with pytest.raises(ValueError, match="xy"):
        polarization.polarization_map([[0.0, np.inf]], [0], LATTICE)
    with pytest.raises(ValueError, match="lattice_px"):
        polarization.polarization_map(xy, [0, 0, 1], -2.0)
    with pytest.raises(ValueError, match="tolerance"):
        polarization.polarization_map(xy, [0, 0, 1], LATTICE, tolerance=0.5)
    with pytest.raises(ValueError, match="pixel_size_m"):
        polarization.to_picometres(xy, 0.0)
    np.testing.assert_allclose(polarization.to_picometres([[1.0, -2.0]], 3e-11), [[30.0, -60.0]])


# ------------------------------------------------------------------------------ engine


def test_session_engine_publishes_refined_atoms_and_the_polarization_map():
    sim = PerovskiteSimulator(SimConfig(shape=(160, 160), seed=10))
    sf = sim.frame(0)
    cfg = config.load(None, {"workflow": "atoms", "cold_budget": 4, "lattice_px": LATTICE,
                             "cold_deadline_s": 120.0})
    eng = SessionEngine("pol", cfg)
    res = eng.analyse(sf.pixels, LATTICE, cfg, pixel_size_m=sim.pixel_size_m)
    cells, vec = res.arrays["cells"], res.arrays["polarization"]
    assert cells.shape == vec.shape and cells.shape[1] == 2 and len(cells) > 50
    np.testing.assert_allclose(res.arrays["polarization_pm"], vec * sim.pixel_size_m * 1e12,
                               rtol=1e-5)
    assert _rmse(res.atoms.astype(np.float64), sf.truth.atoms, 0.3 * LATTICE) <= 0.12
    # without a pixel size there is no pm map; the px map is the same
    again = SessionEngine("pol2", cfg).analyse(sf.pixels, LATTICE, cfg)
    assert "polarization_pm" not in again.arrays
    np.testing.assert_allclose(again.arrays["polarization"], vec)


def test_domains_label_the_refined_atoms():
    """The engine hands the refined atoms (and finalize's A/B split) to the next workflow."""
    sim = PerovskiteSimulator(SimConfig(shape=(160, 160), seed=11))
    sf = sim.frame(0)
    cfg = config.load(None, {"workflow": ["atoms", "domains"], "cold_budget": 3,
                             "lattice_px": LATTICE, "cold_deadline_s": 120.0})
    res = SessionEngine("pol3", cfg).analyse(sf.pixels, LATTICE, cfg)
    xy = res.atoms.astype(np.float64)
    assert _rmse(xy, sf.truth.atoms, 0.3 * LATTICE) <= 0.12
    assert len(res.labels) == len(xy)
    m = match_points(xy, sf.truth.atoms, 0.3 * LATTICE)
    pairs = np.asarray(m.pairs)
    labelled = res.labels[pairs[:, 0]] >= 0  # domains labels the B sublattice
    assert labelled.any()
    assert np.mean(sf.truth.site[pairs[labelled, 1]] == 1) >= 0.99


def test_polarization_map_survives_the_wire_and_the_hdf5_export(tmp_path):
    """Results encoded as the daemon publishes them, stored, exported: /cells, /polarization
    and /polarization_pm are ragged per frame like /atoms, with units and column names."""
    import h5py

    from rewardscope import protocol
    from rewardscope.live.publish import result_message
    from rewardscope.storage import sessions as store
    from rewardscope.storage.hdf5 import export_session
    from rewardscope.storage.recordlog import RecordWriter

    sim = PerovskiteSimulator(SimConfig(shape=(128, 128), seed=12))
    cfg = config.load(None, {"workflow": "atoms", "cold_budget": 3, "budget": 2,
                             "lattice_px": LATTICE, "cold_deadline_s": 120.0})
    eng = SessionEngine("h5", cfg)
    path = store.init_session_dir(tmp_path, "h5", created=1.0)
    expected = []
    with RecordWriter(path / store.FRAMES_LOG) as fw, \
            RecordWriter(path / store.RESULTS_LOG) as rw:
        fw.write(protocol.encode_start("h5", t=1.0, lattice_px=LATTICE), t=1.0)
        for seq in range(2):
            parts = protocol.encode_frame(sim.frame(seq).pixels, session="h5", seq=seq,
                                          t=2.0 + seq, pixel_size_m=sim.pixel_size_m)
            fw.write(parts, t=2.0 + seq)
            frame = protocol.decode_instrument(parts)
            res = eng.process(frame, cfg)
            expected.append(res.arrays)
            rw.write(result_message(frame, res, 0.0), t=2.5 + seq)
    out = export_session(path, tmp_path / "h5.h5")
    assert out.n_results == 2
    with h5py.File(tmp_path / "h5.h5", "r") as h5:
        for name, units, columns in (("cells", "px", ["x", "y"]),
                                     ("polarization", "px", ["dx", "dy"]),
                                     ("polarization_pm", "pm", ["dx", "dy"])):
            ds = h5[name]
            assert ds.attrs["units"] == units and list(ds.attrs["columns"]) == columns
            o = h5[ds.attrs["offsets"]][:]
            for i, arrays in enumerate(expected):
                np.testing.assert_array_equal(ds[o[i]:o[i + 1]], arrays[name])
        assert len(h5["cells"]) > 0


def test_analyze_writes_the_map_and_draws_it(tmp_path):
    """``rewardscope analyze``: result.json's ``polarization`` names an (M, 4) x, y, dx, dy
    table equal to the published arrays; the overlay states the arrow magnification."""
    import json

    from rewardscope import cli
    from rewardscope.cli import plots

    sim = PerovskiteSimulator(SimConfig(shape=(160, 160), seed=14, n_walls=0, n_variants=1))
    sf = sim.frame(0)
    np.save(tmp_path / "frame.npy", sf.pixels)
    out = tmp_path / "out"
    rc = cli.main(["analyze", str(tmp_path / "frame.npy"), "--lattice-px", str(LATTICE),
                   "--workflow", "atoms", "--budget", "4", "--out", str(out), "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    table = np.load(out / doc["polarization"])
    cells = np.load(out / doc["cells"])
    assert table.shape == (len(cells), 4) and len(cells) > 50
    np.testing.assert_array_equal(table[:, :2], cells)
    true = sim.config.displacement_frac * LATTICE * sf.truth.polarization[0]
    assert _within_45(table[:, 2:].astype(np.float64), np.broadcast_to(true, (len(table), 2))
                      ).mean() >= 0.99
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the magnification: a 1-2-5 number that makes the median arrow at most ARROW_FILL of
    # the cell spacing, and more than a fifth of it
    gain = plots.arrow_gain(table[:, :2], table[:, 2:])
    mantissa = gain / 10 ** np.floor(np.log10(gain))
    assert any(abs(mantissa - m) < 1e-9 for m in (1.0, 2.0, 5.0))
    arrow = gain * np.median(np.hypot(table[:, 2], table[:, 3]))
    assert 0.2 * LATTICE <= arrow <= plots.ARROW_FILL * LATTICE + 1e-6
    assert plots.arrow_gain(table[:, :2], np.zeros_like(table[:, 2:])) == 1.0


def test_cages_of_random_columns_get_no_cell_with_the_lattice() -> None:
    """Truth columns (A and B) in the left half of a 384² frame, random columns of both
    kinds in the right half: the cage test alone gives cells to some random cages; with the
    frame's lattice none is left there, and every crystal cell at least a cell away from the
    random half is kept."""
    from rewardscope.science.lattice import Lattice

    sim = PerovskiteSimulator(SimConfig(shape=(384, 384), lattice_px=LATTICE, seed=5,
                                        n_walls=0))
    truth = sim.frame(0).truth
    left = truth.atoms[:, 0] < 192
    xy, site = truth.atoms[left], truth.site[left]
    rng = np.random.default_rng(0)
    pts: list[np.ndarray] = []
    while len(pts) < int(left.sum()):  # the crystal's density: one column per a² / 2
        p = rng.uniform([198, 0], [384, 384])
        if not pts or np.hypot(*(np.array(pts) - p).T).min() > 0.45 * LATTICE:
            pts.append(p)
    xy = np.vstack([xy, pts])
    site = np.r_[site, rng.integers(0, 2, len(pts))]
    plain = polarization.polarization_map(xy, site, LATTICE)
    assert (plain.cells[:, 0] > 198).sum() >= 3  # random columns do make cages
    lat = Lattice(a=(LATTICE, 0.0), b=(0.0, LATTICE), snr=100.0)
    on = polarization.polarization_map(xy, site, LATTICE, lattice=lat, shape=(384, 384))
    assert not (on.cells[:, 0] > 192).any()
    inner = plain.cells[:, 0] < 192 - 1.5 * LATTICE
    kept = {tuple(c) for c in np.round(on.cells, 9)}
    assert all(tuple(c) in kept for c in np.round(plain.cells[inner], 9))
    with pytest.raises(ValueError, match="shape"):
        polarization.polarization_map(xy, site, LATTICE, lattice=lat)
