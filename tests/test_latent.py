"""Latent analysis: models, the fast loop (workflow in the engine), the slow loop (trainer),
checkpoints, and the daemon end to end. Tiny models (one hidden layer of 32, <= 15 epochs, one
CPU thread) on small simulated frames."""

from __future__ import annotations

import logging
import math
import os
import signal
import time

import numpy as np
import pytest
from scipy.spatial import cKDTree
from sklearn.metrics import adjusted_rand_score

from rewardscope import config
from rewardscope.engine import SessionEngine
from rewardscope.live import trainer as trainer_mod
from rewardscope.science import latentstats, rewards
from rewardscope.science.atomfind import normalize_frame
from rewardscope.science.vae import (
    CheckpointError,
    FrameSample,
    LatentModel,
    load_checkpoint,
    model_info,
    model_slot,
)
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig
from rewardscope.simulators.pfm import PFMConfig, PFMSimulator
from rewardscope.workflows.latent import grid_keypoints, half_window, patches_at

LATTICE = 12.0
HALF = 6


@pytest.fixture(scope="module")
def sim():
    return PerovskiteSimulator(SimConfig(shape=(192, 192), lattice_px=LATTICE, seed=1, dose=200))


@pytest.fixture(scope="module")
def b_model(sim):
    """A vanilla VAE on the B sublattice's patches (its A cage shows the polarization)."""
    f = sim.frame(0)
    b = f.truth.site == 1
    patches, _ = patches_at(normalize_frame(f.pixels), f.truth.atoms[b], HALF)
    m = LatentModel(2 * HALF + 1, 2, (), (32,))
    m.fit(patches, epochs=15, batch_size=64)
    return m


@pytest.fixture
def slot():
    s = model_slot()
    s.clear()
    yield s
    s.clear()
    s.collect = False


def _truth_at(truth, xy):
    d, j = cKDTree(truth.atoms).query(np.asarray(xy, np.float64))
    return d, j


def test_fast_loop_labels_separate_polarization_domains(sim, b_model, slot):
    slot.swap(b_model, model_info(b_model, sublattice="B"))
    cfg = config.load(None, {"workflow": ["atoms", "domains", "latent"], "cold_budget": 6,
                             "budget": 4, "lattice_px": LATTICE})
    f = sim.frame(1)  # other noise than the training frame
    a = SessionEngine("t", cfg).analyse(f.pixels, LATTICE, cfg)
    lab, z = a.arrays["latent_labels"], a.arrays["latent"]
    assert np.array_equal(a.arrays["keypoints"], a.atoms)
    assert lab.shape == (len(a.atoms),) and z.shape == (len(a.atoms), 2)
    assert a.arrays["latent_scale"].shape == z.shape
    d, j = _truth_at(f.truth, a.atoms)
    b_rows = (lab >= 0) & (d < 2)
    assert np.all(f.truth.site[j[lab >= 0]] == 1)  # the model's sublattice only
    assert np.all(np.isnan(z[lab < 0]))
    assert adjusted_rand_score(f.truth.domain[j[b_rows]], lab[b_rows]) >= 0.9
    assert a.scalars["model"]["id"] == b_model.name
    # the KDE-of-z2 route finds the wall, significantly, near the true one (x ~ 95 px)
    walls = a.arrays["latent_walls"]
    assert len(walls) >= 1 and np.all(a.arrays["latent_wall_significance"] > 3)
    tx = f.truth.walls[0][0]
    assert abs(0.5 * (walls[0][0] + walls[0][2]) - tx) < LATTICE


def test_without_a_model_nothing_latent_is_claimed(sim, slot):
    cfg = config.load(None, {"workflow": ["atoms", "latent"], "cold_budget": 2,
                             "lattice_px": LATTICE})
    a = SessionEngine("t", cfg).analyse(sim.frame(0).pixels, LATTICE, cfg)
    assert a.scalars["model"] == {"id": None}
    assert np.all(a.arrays["latent_labels"] == -1) and a.arrays["latent"].size == 0
    assert len(a.arrays["latent_walls"]) == 0
    assert not slot.samples()  # no trainer: nothing buffered


def test_checkpoint_reload_gives_identical_encodings(tmp_path, b_model, sim):
    f = sim.frame(0)
    p, _ = patches_at(normalize_frame(f.pixels), f.truth.atoms, HALF)
    path = b_model.save(tmp_path / "m.pt", {"sublattice": "B"})
    again, info = load_checkpoint(path)
    assert again.name == b_model.name and info == {"sublattice": "B"}
    np.testing.assert_array_equal(again.posterior(p)[0], b_model.posterior(p)[0])
    np.testing.assert_array_equal(again.posterior(p)[1], b_model.posterior(p)[1])


def test_bad_checkpoints_are_reported_and_not_used(tmp_path, slot, caplog, b_model):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(bad)
    with caplog.at_level(logging.ERROR, "rewardscope.trainer"):
        assert trainer_mod.load_into_slot(bad, slot) is None
    assert "not loaded" in caplog.text and slot.current() is None
    other = LatentModel(2 * HALF + 1, 3, (), (32,))
    path = b_model.save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="architecture"):
        other.load(path)
    assert trainer_mod.load_into_slot(tmp_path / "missing.pt", slot) is None


def test_conditional_model_encodes_with_the_sublattice(sim):
    f = sim.frame(0)
    p, _ = patches_at(normalize_frame(f.pixels), f.truth.atoms[:64], HALF)
    c = np.eye(2, dtype=np.float32)[f.truth.site[:64]]
    m = LatentModel(2 * HALF + 1, 2, ("r", "t"), (8,), c_dim=2, kl_weight=2.0)
    m.fit(p, epochs=1, batch_size=32, c=c)
    loc, scale = m.posterior(p, c)
    assert loc.shape == (64, 5) and np.all(scale > 0) and m.name.startswith("civae-rt-d2")
    assert math.isfinite(m.loss_per_pixel(p, c))
    with pytest.raises(ValueError, match="c must be given"):
        m.posterior(p)


def test_collapsed_candidates_are_rejected_and_the_model_in_use_kept(sim, b_model, slot,
                                                                     caplog):
    f = sim.frame(0)
    slot.swap(b_model, model_info(b_model, sublattice="B"))
    slot.offer(FrameSample(normalize_frame(f.pixels), f.truth.atoms,
                           f.truth.site.astype(np.int8), LATTICE))
    # every latent counts as collapsed: nothing may replace the model in use
    settings = trainer_mod.TrainSettings(round_s=30, candidates=1, epochs=2, hidden=16,
                                         min_patches=16, collapse_log10=10.0)
    tr = trainer_mod.LatentTrainer(slot, settings)
    with caplog.at_level(logging.WARNING, "rewardscope.trainer"):
        best = tr.round()
    assert tr.rejected_ == 1 and "rejected: collapsed" in caplog.text
    assert best is None or best.status == "in_use"
    assert slot.current().model is b_model
    # a model trained with a crushing KL weight is a real collapse
    p, _ = patches_at(normalize_frame(f.pixels), f.truth.atoms, HALF)
    squashed = LatentModel(2 * HALF + 1, 2, (), (16,), kl_weight=200.0)
    squashed.fit(p, epochs=5, batch_size=64)
    rw = trainer_mod.score_model(squashed, p, f.truth.site, collapse_log10=-2.0)
    assert rw["latent_variance"] / 2 < -2.0
    assert rw["latent_icl"] == math.inf  # gated: no mixture is fitted on a collapsed latent


def test_a_round_swaps_in_the_best_and_saves_it(sim, slot, tmp_path):
    f = sim.frame(0)
    slot.offer(FrameSample(normalize_frame(f.pixels), f.truth.atoms,
                           f.truth.site.astype(np.int8), LATTICE))
    settings = trainer_mod.TrainSettings(round_s=60, candidates=1, epochs=15, hidden=32,
                                         min_patches=16)
    swapped = []
    tr = trainer_mod.LatentTrainer(slot, settings, checkpoint=tmp_path / "ck.pt",
                                   on_swap=swapped.append)
    best = tr.round()
    assert best is not None and best.chosen and slot.current().model is best.model
    assert swapped[0]["id"] == best.model.name and swapped[0]["n_patches"] > 0
    assert set(trainer_mod.OBJECTIVES) <= set(swapped[0]["rewards"])
    again, info = load_checkpoint(tmp_path / "ck.pt")
    assert again.name == best.model.name and info["id"] == best.model.name


def test_latent_rewards_are_registered_with_worst_values():
    for name in ("latent_loss", "latent_aic", "latent_icl", "latent_bgmm", "latent_bic",
                 "latent_variance", "latent_separability"):
        assert name in rewards.REGISTRY
    assert rewards.latent_icl(math.nan) == math.inf and rewards.latent_loss(0.3) == 0.3


def test_latent_statistics_prefer_separated_clusters():
    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(-2, 0.3, (300, 2)), rng.normal(2, 0.3, (300, 2))])
    one = rng.normal(0, 1.0, (600, 2))
    c2 = latentstats.gmm_criteria(two, k_range=(1, 2, 3))
    assert c2["k_bic"] == 2 and c2["k_icl"] == 2 and c2["n_rows"] == latentstats.SUBSET_ROWS
    assert latentstats.gmm_criteria(one, k_range=(1, 2, 3))["k_icl"] == 1
    assert latentstats.bgmm_score(two) < latentstats.bgmm_score(one)
    lab, peaks = latentstats.kde_peak_labels(two[:, 1])
    assert len(peaks) == 2 and adjusted_rand_score(np.repeat([0, 1], 300), lab) == 1.0
    assert len(latentstats.kde_peak_labels(one[:, 1])[1]) == 1  # "nothing here"
    # the classes come from the dimension that carries them, whichever it is
    mixed = np.stack([rng.normal(0, 1.0, 600), two[:, 0]], axis=1)
    lab, peaks, dim = latentstats.kde_classes(mixed)
    assert dim == 1 and len(peaks) == 2
    assert adjusted_rand_score(np.repeat([0, 1], 300), lab) == 1.0
    lab, peaks, dim = latentstats.kde_classes(one)
    assert dim is None and np.all(lab == 0) and len(peaks) == 1  # "nothing here"


def test_scoring_a_candidate_stops_on_the_stop_signal(sim, b_model):
    f = sim.frame(0)
    b = f.truth.site == 1
    p, _ = patches_at(normalize_frame(f.pixels), f.truth.atoms[b], HALF)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) >= 3  # true from the first check inside the mixture grid

    with pytest.raises(trainer_mod.RoundStopped):
        trainer_mod.score_model(b_model, p, f.truth.site[b], stop=stop)
    assert len(calls) == 4  # two steps, then the grid stopped before its first fit
    c = latentstats.gmm_criteria(b_model.encode(p)[0], stop=lambda: True)
    assert math.isnan(c["icl"]) and c["icl_by_k"] == {}


@pytest.mark.parametrize("seed, side", [(0, 256), (2, 192), (3, 256), (6, 192)])
def test_pfm_frames_show_no_lattice(seed, side):
    """Stripe domains, needles, walls and scan-line offsets are no 2-D lattice (these frames
    gave a false one before the streak floor and the three-directions rule)."""
    from rewardscope.science.lattice import find_lattice

    f = PFMSimulator(PFMConfig(seed=seed, shape=(side, side))).frame(0)
    assert find_lattice(normalize_frame(f.pixels)) is None


def test_pfm_frame_through_the_engine_claims_no_atoms_and_uses_a_grid(slot):
    f = PFMSimulator(PFMConfig(seed=6, shape=(192, 192))).frame(0)
    cfg = config.load(None, {"workflow": ["atoms", "latent"], "cold_budget": 2})
    a = SessionEngine("t", cfg).analyse(f.pixels, None, cfg)
    assert len(a.atoms) == 0 and a.scalars.get("lattice") is None
    assert len(a.arrays["keypoints"]) == len(grid_keypoints((192, 192), 6.0))


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_pfm_frames_latent_classes_separate_a_and_c(seed, slot):
    """On PFM-like frames (no atoms) the key points are a grid (step 6 px); a model trained
    on one frame at the grid's smallest window (4/8 of the step: patches that tile the grid)
    encodes another frame of the film; the KDE-peak classes of its most multimodal latent
    dimension separate a from c (truth: the class of each patch's centre pixel)."""
    sim = PFMSimulator(PFMConfig(seed=seed, shape=(192, 192)))
    f = sim.frame(0)
    assert set(np.unique(f.truth.classes)) == {0, 1, 2}
    kp = grid_keypoints(f.pixels.shape, 6.0)
    half = half_window(4, 6.0)
    p, inside = patches_at(f.pixels, kp, half)
    m = LatentModel(2 * half + 1, 2, (), (32,))
    m.fit(p[inside], epochs=15, batch_size=64)
    slot.swap(m, model_info(m))
    g = sim.frame(1)
    cfg = config.load(None, {"workflow": ["latent"], "cold_budget": 2, "lattice_px": 12.0})
    a = SessionEngine("t", cfg).analyse(g.pixels, 12.0, cfg)
    assert np.array_equal(a.arrays["keypoints"], kp.astype(np.float32))
    cls = a.arrays["latent_classes"]
    assert np.all(cls >= 0) and len(np.unique(cls)) >= 2  # every key point is classed
    assert adjusted_rand_score(g.truth.ac_class(kp), cls) >= 0.8


@pytest.mark.parametrize("seed", [4, 7])
def test_the_trainer_selects_a_model_whose_classes_separate_a_and_c(seed, slot):
    """The slow loop's own search on a PFM-like frame: the engine's latent workflow buffers
    the frame, one round trains the cold design (the defaults at the middle, smallest and
    largest window) and the knee of latent_loss and latent_separability is swapped in; on
    another frame of the film its latent classes separate a from c. On seed 4 the former
    loss/ICL knee chose window 6 (a/c ARI 0.66)."""
    sim = PFMSimulator(PFMConfig(seed=seed, shape=(192, 192)))
    cfg = config.load(None, {"workflow": ["latent"], "cold_budget": 2, "lattice_px": 12.0})
    slot.collect = True
    SessionEngine("t", cfg).analyse(sim.frame(0).pixels, 12.0, cfg)
    slot.collect = False
    assert len(slot.samples()) == 1 and slot.samples()[0].spacing_px == 6.0
    settings = trainer_mod.TrainSettings(round_s=120, candidates=3, epochs=15, hidden=32,
                                         min_patches=16)
    tr = trainer_mod.LatentTrainer(slot, settings)
    best = tr.round()
    windows = [c["params"]["window"] for c in tr.last_round_]
    assert windows == [6, trainer_mod.SPACE[0].low, trainer_mod.SPACE[0].high]
    assert best is not None and slot.current().model is best.model
    seps = [c["rewards"]["latent_separability"] for c in tr.last_round_]
    assert all(s >= 0 for s in seps) and best.rewards["latent_separability"] == max(seps)
    g = sim.frame(1)
    a = SessionEngine("t", cfg).analyse(g.pixels, 12.0, cfg)
    cls = a.arrays["latent_classes"]
    assert a.scalars["model"]["id"] == best.model.name
    assert np.all(cls >= 0) and len(np.unique(cls)) >= 2
    assert adjusted_rand_score(g.truth.ac_class(a.arrays["keypoints"]), cls) >= 0.8


def test_the_trainer_selects_a_model_whose_labels_separate_polarization_domains(sim, slot):
    """The same search on a perovskite frame with two polarization variants (B sublattice):
    the chosen model's latent labels on another frame separate the domains."""
    f = sim.frame(0)
    slot.offer(FrameSample(normalize_frame(f.pixels), f.truth.atoms,
                           f.truth.site.astype(np.int8), LATTICE))
    settings = trainer_mod.TrainSettings(round_s=120, candidates=3, epochs=15, hidden=32,
                                         min_patches=16, sublattice="B")
    best = trainer_mod.LatentTrainer(slot, settings).round()
    assert best is not None and slot.current().model is best.model
    cfg = config.load(None, {"workflow": ["atoms", "domains", "latent"], "cold_budget": 6,
                             "budget": 4, "lattice_px": LATTICE})
    g = sim.frame(1)
    a = SessionEngine("t", cfg).analyse(g.pixels, LATTICE, cfg)
    lab = a.arrays["latent_labels"]
    d, j = _truth_at(g.truth, a.atoms)
    rows = (lab >= 0) & (d < 2)
    assert np.all(g.truth.site[j[rows]] == 1) and rows.sum() > 50
    assert adjusted_rand_score(g.truth.domain[j[rows]], lab[rows]) >= 0.9


def test_separability_is_zero_without_classes_and_compares_across_scales():
    from rewardscope.workflows.base import single_thread

    rng = np.random.default_rng(1)
    one = rng.normal(0, 1.0, (800, 2))
    two = np.concatenate([rng.normal(-2, 0.5, (400, 2)), rng.normal(2, 0.5, (400, 2))])
    with single_thread():
        assert latentstats.class_separability(one) == 0.0  # "nothing here"
        sep = latentstats.class_separability(two)
        assert sep > 1.0
        # the scale a model learned and the number of patches do not change it
        assert latentstats.class_separability(100.0 * two) == pytest.approx(sep, rel=1e-6)
        assert latentstats.class_separability(two[::2]) == pytest.approx(sep, abs=0.2)
    assert math.isnan(latentstats.class_separability(np.zeros((0, 2))))
    assert rewards.latent_separability(math.nan) == -math.inf
    assert rewards.get_reward("latent_separability").direction == "max"


@pytest.mark.slow
def test_serve_trains_in_the_background_and_hot_swaps_without_dropping(sim, b_model, slot):
    import loopback

    rig = loopback.Rig(lattice_px=LATTICE, cold_budget=2, budget=2, deadline_s=5.0,
                       workflow=["atoms", "latent"], latent_round_s=20.0,
                       latent_candidates=1, latent_epochs=15, latent_hidden=32,
                       latent_min_patches=64)
    try:
        assert rig.daemon.trainer is not None and rig.daemon.trainer.alive
        rig.instrument.start_session("lat")
        ids = []
        for i in range(120):  # frames keep coming while the slow loop trains (<= ~60 s)
            rig.instrument.send_frame(sim.frame(i % 4).pixels)
            res, errors = rig.collect(1, 30)
            assert res and not errors
            ids.append(res[0].extra["model"]["id"])
            if ids[-1] is not None:
                break
            time.sleep(0.5)
        assert ids[0] is None and ids[-1] is not None  # the slow loop's model reached results
        # the slow loop is another process: kill it; frames keep their model, it restarts
        tr = rig.daemon.trainer
        first_pid = tr.pid
        assert first_pid != os.getpid()
        os.kill(first_pid, signal.SIGKILL)
        for i in range(60):
            rig.instrument.send_frame(sim.frame(i % 4).pixels)
            res, errors = rig.collect(1, 30)
            assert res and not errors and res[0].extra["model"]["id"] == ids[-1]
            if tr.restarts_ == 1 and tr.alive:
                break
            time.sleep(0.2)
        assert tr.restarts_ == 1 and tr.alive and tr.pid != first_pid
        slot.swap(b_model, model_info(b_model, sublattice="B"))  # hot swap mid-stream
        rig.instrument.send_frame(sim.frame(5).pixels)
        res, errors = rig.collect(1, 30)
        assert res and res[0].extra["model"]["id"] == b_model.name
        stats = rig.control.stats()["stats"]
        assert sum(stats["frames_dropped"].values()) == 0
        assert stats["latent"]["model"]["id"] == b_model.name and stats["latent"]["rounds"] >= 1
    finally:
        rig.close()
    assert not rig.daemon.trainer.alive


def test_analyze_selects_a_model_and_writes_latent_outputs(tmp_path, sim, slot):
    import json

    from rewardscope import cli

    f = sim.frame(2)
    img = tmp_path / "frame.npy"
    np.save(img, f.pixels)
    out = tmp_path / "out"
    rc = cli.main(["analyze", str(img), "--lattice-px", str(LATTICE), "--workflow", "latent",
                   "--budget", "3", "--latent-candidates", "2", "--latent-epochs", "8",
                   "--out", str(out), "--no-progress"])
    assert rc == 0
    sel = json.loads((out / "vae-select.json").read_text())
    assert len(sel["candidates"]) == 2 and sel["objectives"] == list(trainer_mod.OBJECTIVES)
    chosen = [c for c in sel["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["id"] == sel["chosen"]
    assert all(set(trainer_mod.OBJECTIVES) <= set(c["rewards"]) for c in sel["candidates"])
    doc = json.loads((out / "result.json").read_text())
    assert doc["model"]["id"] == sel["chosen"]
    lab = np.load(out / doc["latent_labels"])
    z = np.load(out / doc["latent"])
    assert lab.shape == (len(doc["atoms"]),) and z.shape[0] == len(lab)
    assert np.all(np.isfinite(z[lab >= 0])) and len(np.unique(lab[lab >= 0])) >= 2
    assert (out / "latent.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert slot.current() is None  # the offline model does not stay in the process's slot
