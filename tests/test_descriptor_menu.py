"""The domains workflow's descriptor menu (issue 13): grid routes on low-magnification frames.

Against the per-pixel truth of :mod:`rewardscope.simulators.phases` (two phases that differ
in texture only, columns not resolved; and single-phase frames): each route forced, and the
optimizer's free choice. Real skopt search (:class:`WorkflowSearch`), no atoms.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from rewardscope.engine.session import WorkflowSearch
from rewardscope.science import descriptors
from rewardscope.simulators.phases import PhaseConfig, PhaseSimulator
from rewardscope.workflows.base import FrameContext
from rewardscope.workflows.domains import ROUTES, DomainsWorkflow

GRID_ROUTES = descriptors.GRID_FAMILIES
SEEDS = (0, 1, 5)
BUDGET = 20
FREE_SLACK = 0.012
"""The free choice counts as "as good as the best forced route" when its ARI is >= 0.9 and
at most this below the best forced route's on the same frame (same budget). Measured on
seeds 0-5 (256 px, 20 evaluations), free - best forced = -0.004, -0.005, -0.011, 0.000,
-0.005, -0.001 (mean free 0.964; best forced per frame 0.968; best route on average,
fft_nmf, 0.9645); before grid candidates with separation <= 0 were failed
(MIN_GRID_SEPARATION), seed 5 was -0.043 (free mean 0.957). The free search has a quarter
of a forced search's evaluations per route, the best forced route is the best of four
searches, and one 4 px row of windows along a 256 px boundary moves the ARI by ~0.01."""


def _search(frame, routes=None):
    ctx = FrameContext(image=frame.image, lattice_px=12.0)
    wf = DomainsWorkflow(routes=routes)
    wf = wf.for_regime(wf.regime(ctx))  # as the engine does: the frame's regime's search
    ev, params, front, _ = WorkflowSearch(wf, seed=0).search(ctx, BUDGET, 60.0, "euclidean")
    ev.output.update(wf.finalize(ctx, ev))
    return ev, params, front


def _ari(frame, ev) -> float:
    lm = ev.output["label_map"]
    assert lm.shape == frame.truth.shape and lm.dtype == np.int16
    return adjusted_rand_score(frame.truth.ravel(), lm.ravel())


@pytest.fixture(scope="module")
def two_phase():
    return [PhaseSimulator(PhaseConfig(seed=s)).frame() for s in SEEDS]


@pytest.fixture(scope="module")
def forced(two_phase):
    return {r: [_ari(f, _search(f, (r,))[0]) for f in two_phase] for r in GRID_ROUTES}


TARGET = 0.9
"""Per-pixel ARI each forced route must reach (the issue's target). Measured on seeds 0-5:
window 0.922-0.962, fft_svd 0.956-0.969, fft_nmf 0.954-0.974, fft_ica 0.938-0.974."""


@pytest.mark.parametrize("route", GRID_ROUTES)
def test_each_forced_route_segments_two_phases(forced, route):
    assert min(forced[route]) >= TARGET, forced[route]


def test_free_choice_as_good_as_best_forced_route(two_phase, forced):
    for i, f in enumerate(two_phase):
        ev, params, front = _search(f)
        best = max(forced[r][i] for r in GRID_ROUTES)
        assert _ari(f, ev) >= max(0.9, best - FREE_SLACK), (params, _ari(f, ev), best)
        assert params["descriptor"] in ROUTES
        assert front and all("descriptor" in p["params"] for p in front)
        assert len(ev.output["walls"]) >= 1 and len(ev.output["wall_significance"]) >= 1


@pytest.mark.parametrize("seed", [0, 1])
def test_single_phase_is_one_phase_no_boundary(seed):
    f = PhaseSimulator(PhaseConfig(seed=seed, n_phases=1, gradient=1.0)).frame()
    ev, _, _ = _search(f)
    assert ev.output["walls"] == []
    assert np.all(ev.output["label_map"] == 0)


def test_grid_candidate_that_does_not_follow_the_texture_is_a_failed_candidate(two_phase):
    """Seed 5: 4 ICA phases on 24 px windows are no answer (separation NaN, curvature +inf,
    no walls), so they cannot stretch the knee's range of separation. When written, their
    walls passed the significance gate but the labels had a negative silhouette on the
    texture yardstick (-0.09, ARI 0.65: ``rejected_separation``); with the libraries of
    2026-12-01 (scikit-learn 1.9.1) no wall passes the gate and the frame's own test rejects
    one domain (``_null_phase``). Either way the candidate fails; its output says which
    test caught it."""
    f = two_phase[SEEDS.index(5)]
    wf = DomainsWorkflow().for_regime("grid")
    ctx = FrameContext(image=f.image, lattice_px=12.0)
    wf.prepare(ctx)
    ev = wf.evaluate(ctx, {"pca_dims": 7, "n_components": 4, "covariance_type": "diag",
                           "descriptor": "fft_ica", "window": 24, "stride": 0.5})
    assert ev.output.get("rejected_separation", 0.0) < 0 or ev.output.get("_null_phase")
    assert np.isnan(ev.rewards["cluster_separation"]) and ev.rewards["wall_curvature"] == np.inf
    assert ev.output["walls"] == []
    good = wf.evaluate(ctx, wf.default_params(12.0))  # the first grid route, "window"
    assert good.rewards["cluster_separation"] > 0.5 and len(good.output["walls"]) >= 1


def test_atom_routes_fail_without_atoms_grid_routes_do_not():
    f = PhaseSimulator(PhaseConfig(shape=(128, 128), seed=3)).frame()
    wf = DomainsWorkflow()
    ctx = FrameContext(image=f.image, lattice_px=12.0)
    base = wf.default_params(12.0)
    atom = wf.evaluate(ctx, {**base, "descriptor": "patch"})
    assert not np.isfinite(atom.rewards["wall_curvature"])
    grid = wf.evaluate(ctx, {**base, "descriptor": "fft_svd", "window": 16})
    assert np.isfinite(grid.rewards["wall_curvature"])


def test_grid_descriptors_cache_one_stack_per_window():
    img = PhaseSimulator(PhaseConfig(shape=(96, 96))).frame().image
    cache: dict = {}
    a = descriptors.grid_descriptors(img, "fft_svd", 16, 0.25, 3, cache=cache)
    b = descriptors.grid_descriptors(img, "fft_svd", 16, 0.5, 3, cache=cache)
    stacks = [k for k in cache if k[0] == "grid-stack"]
    assert len(stacks) == 1
    assert b.step == 2 * a.step and b.grid[0] == (a.grid[0] + 1) // 2
    np.testing.assert_array_equal(b.scores, a.scores.reshape(*a.grid, -1)[::2, ::2]
                                  .reshape(-1, a.scores.shape[1]))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="routes"):
        DomainsWorkflow(routes=("pca",))
    with pytest.raises(ValueError, match="family"):
        descriptors.grid_descriptors(np.zeros((32, 32)), "svd", 16, 0.5, 2)
    with pytest.raises(ValueError, match="stride"):
        descriptors.grid_descriptors(np.zeros((32, 32)), "fft_svd", 16, 2.0, 2)
    with pytest.raises(ValueError, match="n_phases"):
        PhaseSimulator(PhaseConfig(n_phases=3))


def test_atomic_frame_is_searched_in_exactly_the_atom_routes_space():
    """With resolved atoms the frame's regime is "atoms": its search is over the atom routes'
    dimensions only (the space the domains workflow had before the grid routes, so the
    atomic-resolution search is unchanged), and no evaluation goes to a grid route."""
    from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

    f = PerovskiteSimulator(SimConfig(shape=(160, 160), seed=2)).frame(0)
    wf = DomainsWorkflow()
    ctx = FrameContext(image=f.pixels, lattice_px=f.truth.lattice_px,
                       atoms=f.truth.atoms.astype(float))
    assert wf.regime(ctx) == "atoms"
    atom = wf.for_regime("atoms")
    assert atom.param_names() == ["w1", "w2", "blur", "pca_dims", "n_components",
                                  "covariance_type", "descriptor"]
    assert list(atom.space[-1].categories) == ["patch", "fft"]
    _, params, _, fs = WorkflowSearch(atom, seed=0).search(ctx, 10, 60.0, "euclidean")
    routes = [x[atom.param_names().index("descriptor")] for x in fs.X]
    assert len(routes) == 10 and set(routes) <= {"patch", "fft"}, routes
    assert params["descriptor"] in ("patch", "fft")
    grid = wf.for_regime("grid")
    assert set(grid.param_names()) == {"pca_dims", "n_components", "covariance_type",
                                       "descriptor", "window", "stride"}
    assert DomainsWorkflow(routes=("window",)).regime(ctx) == ""  # a forced route: one space
    with pytest.raises(ValueError, match="regime"):
        wf.for_regime("pixels")


def test_engine_keeps_one_search_per_regime_and_checkpoints_it():
    """The engine asks the workflow for the frame's regime and keeps that regime's search
    (key ``domains@scale#grid`` on a frame without atoms); a checkpoint restores it warm."""
    from rewardscope import config
    from rewardscope.engine.session import SessionEngine

    f = PhaseSimulator(PhaseConfig(shape=(128, 128), seed=1)).frame()
    cfg = config.load(None, {"workflow": "domains", "budget": 3, "cold_budget": 5})
    eng = SessionEngine("regimes", cfg)
    an = eng.analyse(f.image, 12.0, cfg)
    keys = [k for k in eng.searches if k.startswith("domains@")]
    grid = [k for k in keys if k.endswith("#grid")]
    assert len(grid) == 1 and eng.searches[grid[0]].frames == 1, keys
    assert an.params["domains"]["descriptor"] in GRID_ROUTES
    assert set(an.params["domains"]) == set(eng.searches[grid[0]].workflow.param_names())
    # the regime's search replaced the base one, whose optimizer was never needed nor made
    base = [k for k in keys if "#" not in k]
    assert len(base) == 1 and eng.searches[base[0]]._optimizer is None
    assert eng.searches[grid[0]]._optimizer is not None
    again = SessionEngine("regimes", cfg)
    again.load_state_dict(eng.state_dict())
    restored = again.searches[grid[0]]
    assert restored.frames == 1 and restored.workflow.routes == GRID_ROUTES
    assert again._frames_at("domains", 12.0) == 1


def test_refined_label_map_beats_the_coarse_grid_map():
    """A stride-1/2 candidate's label map, refined on the finest grid (finalize), is closer to
    the truth than the coarse grid's own map (measured on seeds 0-3: +0.02 on average,
    13 of 14 frame/route pairs better or equal within 0.01)."""
    from rewardscope.workflows.domains import _grid_label_map

    gains = []
    for seed in (1, 3):
        f = PhaseSimulator(PhaseConfig(seed=seed)).frame()
        wf = DomainsWorkflow()
        ctx = FrameContext(image=f.image, lattice_px=12.0)
        wf.prepare(ctx)
        for route in ("window", "fft_svd"):
            ev = wf.evaluate(ctx, {**wf.default_params(12.0), "descriptor": route,
                                   "window": 32, "stride": 0.5})
            g, lab = ev.output["_grid"][:2]
            coarse = adjusted_rand_score(f.truth.ravel(),
                                         _grid_label_map(g, lab, f.truth.shape).ravel())
            refined = _ari(f, type(ev)(rewards=ev.rewards,
                                       output={**ev.output, **wf.finalize(ctx, ev)}))
            gains.append(refined - coarse)
    assert min(gains) >= -0.01 and np.mean(gains) >= 0.01, gains


def test_pareto_png_labels_points_by_route(tmp_path):
    """A real low-magnification search's front drawn on pareto.png: one legend entry per
    route on the front, the chosen one named (the legend entries pareto() returns)."""
    from rewardscope.cli import plots
    from rewardscope.engine.analysis import Analysis

    f = PhaseSimulator(PhaseConfig(shape=(128, 128), seed=1)).frame()
    ev, params, front = _search(f)
    analysis = Analysis(atoms=np.zeros((0, 2), np.float32), labels=np.zeros(0, np.int16),
                        params={"domains": params}, pareto=front)
    legends = plots.pareto(analysis, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 0
    routes = {e["params"]["descriptor"] for e in front}
    texts = legends["domains"]
    assert {f"route {r}" for r in routes - {params['descriptor']}} <= set(texts), texts
    assert f"route {params['descriptor']} (chosen)" in texts, texts
