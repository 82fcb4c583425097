"""Latent workflow: the iVAE model manager and the GMM-on-latents workflow, on simulated frames.

Tiny models (one hidden layer of 32, 10 epochs, one CPU thread): each training takes a few
seconds on ~500 patches, so trainings are shared through module fixtures where possible.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from rewardscope.science import rewards
from rewardscope.science.atomfind import normalize_frame
from rewardscope.science.kernels import extract_patches
from rewardscope.science.rewards import latent_variance
from rewardscope.science.vae import LatentModel, default_device
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig
from rewardscope.workflows.base import FrameContext
from rewardscope.workflows.latent import (
    LatentWorkflow,
    half_window,
)

LATTICE = 12.0
HALF = 6  # 13 px patches: half a lattice spacing at 12 px


def _frame(**overrides):
    cfg = SimConfig(shape=(192, 192), lattice_px=LATTICE, seed=1, **overrides)
    return PerovskiteSimulator(cfg).frame(0)


def _ctx(frame) -> FrameContext:
    return FrameContext(image=normalize_frame(frame.pixels), lattice_px=LATTICE,
                        atoms=np.asarray(frame.truth.atoms, dtype=np.float64))


@pytest.fixture(scope="module")
def single_domain():
    """One polarization domain: A vs B is the only structure around the columns."""
    return _frame(n_walls=0)


@pytest.fixture(scope="module")
def two_domains():
    return _frame()


@pytest.fixture(scope="module")
def big_patches(single_domain):
    """19 px patches at the true atoms: rotated, then cropped to 13 px (no empty corners)."""
    return extract_patches(normalize_frame(single_domain.pixels), single_domain.truth.atoms,
                           HALF + 3, HALF + 3)


@pytest.fixture(scope="module")
def patches(big_patches):
    return np.ascontiguousarray(big_patches[:, 3:-3, 3:-3])


@pytest.fixture(scope="module")
def model(patches):
    m = LatentModel(2 * HALF + 1, latent_dim=2, invariances=("r",), hidden=(32,))
    m.fit(patches, epochs=10, batch_size=64)
    return m


# --------------------------------------------------------------------------------------------
# LatentModel
# --------------------------------------------------------------------------------------------


def test_training_loss_decreases(model, patches):
    h = model.history_
    assert h.n_patches == len(patches) and len(h.loss) == 10
    assert all(math.isfinite(v) for v in h.loss)
    assert h.loss[-1] < 0.8 * h.loss[0]
    assert min(h.loss[-3:]) <= min(h.loss[:3])
    assert h.seconds > 0.0  # recorded; how long it takes is the benchmarks' business


def test_encode_shapes(model, patches):
    z, angle = model.encode(patches)
    assert z.shape == (len(patches), 2) and z.dtype == np.float32
    assert angle is not None and angle.shape == (len(patches),)
    assert np.all(np.isfinite(z)) and np.all(np.isfinite(angle))
    assert model.encode(patches[:0])[0].shape == (0, 2)
    # rotation + translation: 3 special latents (angle, dx, dy) are split off the content
    rt = LatentModel(2 * HALF + 1, latent_dim=3, invariances=("r", "t"), hidden=(8,))
    z3, a3 = rt.encode(patches[:5])
    assert rt.n_special == 3 and z3.shape == (5, 3) and a3.shape == (5,)
    vanilla = LatentModel(2 * HALF + 1, latent_dim=2, invariances=(), hidden=(8,))
    zv, av = vanilla.encode(patches[:5])
    assert vanilla.n_special == 0 and zv.shape == (5, 2) and av is None
    with pytest.raises(ValueError, match="patches must have shape"):
        model.encode(patches[:, :-1])


def test_name_says_architecture(model):
    assert model.name.startswith("ivae-r-d2-p13-")
    other = LatentModel(2 * HALF + 1, latent_dim=2, invariances=("r",), hidden=(16,))
    assert other.name.startswith("ivae-r-d2-p13-") and other.name != model.name


def test_reconstruction_error(model, patches):
    rec = model.reconstruct(patches[:20])
    assert rec.shape == (20, 13, 13) and np.all((rec >= 0) & (rec <= 1))
    err = model.reconstruction_error(patches)
    assert 0.0 < err < 0.1  # patch variance is ~0.06: the latent explains most of it
    assert model.reconstruction_error(patches[:0]) == math.inf


def test_rotation_invariance_loose(model, big_patches, patches, single_domain):
    """Patches rotated by 30 degrees keep their content latents (loosely): the A/B mixture
    fitted on the originals still labels the rotated copies by site, and the shift is well
    below the A-B separation. (Measured: shift 0.33 of the separation, ARI 1.0.)"""
    site = single_domain.truth.site
    z, _ = model.encode(patches)
    gmm = GaussianMixture(2, random_state=0).fit(z)
    rotated = ndimage.rotate(big_patches, 30, axes=(1, 2), reshape=False, order=1)
    zr, _ = model.encode(np.ascontiguousarray(rotated[:, 3:-3, 3:-3]))
    sep = np.linalg.norm(z[site == 0].mean(axis=0) - z[site == 1].mean(axis=0))
    shift = np.median(np.linalg.norm(zr - z, axis=1))
    assert shift < 0.5 * sep
    assert adjusted_rand_score(site, gmm.predict(zr)) >= 0.8


def test_fit_is_reproducible(patches):
    runs = []
    for _ in range(2):
        m = LatentModel(2 * HALF + 1, latent_dim=2, hidden=(8,), seed=3)
        m.fit(patches[:64], epochs=2, batch_size=32)
        runs.append((m.history_.loss, m.encode(patches[:10])[0]))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_state_dict_round_trip(model, patches, tmp_path):
    path = model.save(tmp_path / "ckpt" / f"{model.name}.pt")
    assert path.is_file()
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    clone = LatentModel(2 * HALF + 1, latent_dim=2, invariances=("r",), hidden=(32,))
    assert not clone.trained
    clone.load(path)
    assert clone.trained and clone.name == model.name
    for a, b in zip(model.encode(patches), clone.encode(patches), strict=True):
        np.testing.assert_array_equal(a, b)
    assert clone.reconstruction_error(patches) == model.reconstruction_error(patches)
    wrong = LatentModel(2 * HALF + 1, latent_dim=3, invariances=("r",), hidden=(32,))
    with pytest.raises(RuntimeError):
        wrong.load(path)


def test_device_selection(model):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device() == expected and model.device_ == expected
    assert model.device is None  # the configuration as given; device_ is what it resolved to
    assert {p.device.type for p in model.vae_.parameters()} == {expected}
    if not torch.cuda.is_available():
        assert model.device_ == "cpu"


def test_bad_arguments():
    with pytest.raises(ValueError, match="invariances"):
        LatentModel(13, invariances=("x",))
    with pytest.raises(ValueError, match="patch_px"):
        LatentModel(2)
    with pytest.raises(ValueError, match="patches must hold at least one patch"):
        LatentModel(13, hidden=(8,)).fit(np.zeros((0, 13, 13), np.float32), epochs=1)


# --------------------------------------------------------------------------------------------
# rewards
# --------------------------------------------------------------------------------------------


def test_rewards_registered_with_directions():
    wf = LatentWorkflow()
    assert {n: rewards.REGISTRY[n].direction for n in wf.rewards} == {
        "latent_bic": "min", "latent_variance": "max", "latent_reconstruction": "min"}


def test_latent_variance_flags_collapse():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(200, 2))
    collapsed = spread * np.array([1.0, 1e-4])
    assert latent_variance(spread) == pytest.approx(0.0, abs=0.2)
    assert latent_variance(collapsed) < latent_variance(spread) - 7
    assert latent_variance(np.zeros((200, 2))) == pytest.approx(-24.0)
    assert latent_variance(np.zeros((1, 2))) == -math.inf


# --------------------------------------------------------------------------------------------
# the workflow
# --------------------------------------------------------------------------------------------


def test_space_and_defaults():
    wf = LatentWorkflow()
    assert set(wf.default_params(LATTICE)) == set(wf.param_names())
    assert half_window(wf.default_params(LATTICE)["window"], LATTICE) == HALF
    assert [half_window(w, LATTICE) for w in (4, 5, 6)] == [6, 8, 9]


def test_workflow_separates_sites(single_domain):
    """All atoms, 2 components, on a single-domain frame: the labels are the A/B sites
    (measured ARI 1.0)."""
    ctx = _ctx(single_domain)
    wf = LatentWorkflow()
    ev = wf.evaluate(ctx, wf.default_params(LATTICE))
    assert all(math.isfinite(v) for v in ev.rewards.values())
    assert np.all(np.isfinite(wf.objective_vector(ev)))
    labels = ev.output["labels"]
    assert labels.dtype == np.int16 and labels.shape == (len(ctx.atoms),)
    assert set(np.unique(labels)) == {0, 1}
    assert adjusted_rand_score(single_domain.truth.site, labels) >= 0.8
    assert ev.output["latent"].shape == (len(ctx.atoms), 2)
    assert ev.output["model"].startswith("ivae-r-d2-p13-")
    assert ev.timings["vae"] > 0
    assert 0.0 < ev.rewards["latent_reconstruction"] < 0.1


def test_workflow_b_sublattice_finds_domains(two_domains):
    """B columns only, 2 components, on a two-domain frame: the labels are the polarization
    domains (measured ARI 1.0); A columns are left unlabelled (-1)."""
    ctx = _ctx(two_domains)
    wf = LatentWorkflow(sublattice="B")
    ev = wf.evaluate(ctx, wf.default_params(LATTICE))
    labels = ev.output["labels"]
    b = labels >= 0
    assert ctx.sites is not None and np.array_equal(b, np.asarray(ctx.sites) == 1)
    assert np.array_equal(b, two_domains.truth.site == 1)
    assert np.all(np.isnan(ev.output["latent"][~b]))
    assert adjusted_rand_score(two_domains.truth.domain[b], labels[b]) >= 0.8
    assert all(math.isfinite(v) for v in ev.rewards.values())


def test_workflow_trains_once_per_architecture(two_domains):
    ctx = _ctx(two_domains)
    wf = LatentWorkflow(sublattice="B", epochs=2)
    base = wf.default_params(LATTICE)
    first = wf.evaluate(ctx, base)
    assert (wf.trainings_, wf.model_swaps_) == (1, 1)
    again = wf.evaluate(ctx, {**base, "n_components": 3, "covariance_type": "diag"})
    assert (wf.trainings_, wf.model_swaps_) == (1, 1)  # GMM-only change: same model, cached
    assert again.output["model"] == first.output["model"]
    assert again.rewards["latent_variance"] == first.rewards["latent_variance"]
    wider = wf.evaluate(ctx, {**base, "window": 5})
    assert (wf.trainings_, wf.model_swaps_) == (2, 2)
    assert wider.output["model"] != first.output["model"]
    wf.evaluate(_ctx(two_domains), base)  # next frame, old architecture: swap, no training
    assert (wf.trainings_, wf.model_swaps_) == (2, 3)


def test_workflow_checkpoint_reuse(two_domains, tmp_path):
    ctx = _ctx(two_domains)
    params = LatentWorkflow().default_params(LATTICE)
    a = LatentWorkflow(sublattice="B", epochs=2, checkpoint_dir=tmp_path)
    ev_a = a.evaluate(ctx, params)
    assert a.trainings_ == 1 and (tmp_path / f"{ev_a.output['model']}.pt").is_file()
    b = LatentWorkflow(sublattice="B", epochs=2, checkpoint_dir=tmp_path)
    ev_b = b.evaluate(_ctx(two_domains), params)
    assert b.trainings_ == 0 and b.model_swaps_ == 1
    np.testing.assert_array_equal(ev_a.output["latent"], ev_b.output["latent"])


def test_workflow_needs_atoms_and_enough_of_them(single_domain):
    wf = LatentWorkflow()
    ctx = FrameContext(image=normalize_frame(single_domain.pixels), lattice_px=LATTICE)
    with pytest.raises(ValueError, match="needs ctx.atoms"):
        wf.evaluate(ctx, wf.default_params(LATTICE))
    ctx.atoms = np.asarray(single_domain.truth.atoms[:3], dtype=np.float64)
    ev = wf.evaluate(ctx, wf.default_params(LATTICE))
    assert np.all(ev.output["labels"] == -1) and wf.trainings_ == 0
    assert np.all(np.isinf(wf.objective_vector(ev)))
