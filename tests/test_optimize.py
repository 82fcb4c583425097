"""rewardscope.optimize: numba kernels vs numpy references, exact hypervolume, knee, ParEGO."""

from __future__ import annotations

import copy
import json
import threading
import time

import numpy as np
import pytest
from references import (
    hypervolume_reference,
    non_dominated_mask_reference,
    non_dominated_sort_reference,
)
from skopt.space import Categorical, Integer, Real, Space

from rewardscope.optimize import (
    MultiObjectiveOptimizer,
    hypervolume,
    knee_index,
    non_dominated_mask,
    non_dominated_sort,
    run_frame,
)
from rewardscope.optimize import mobo as mobo_module


class _Clock:
    """Stands in for the ``time`` module inside ``optimize.mobo``: ``perf_counter`` moves only
    when an evaluation says so, so deadlines and wall times are exact on any host (timing
    bounds are noise on a shared 2-core machine)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def advance_to(self, t: float) -> None:
        with self._lock:
            self.now = max(self.now, t)

    def __getattr__(self, name: str):
        return getattr(time, name)


def _random_sets(n_sets: int, max_obj: int, seed: int = 0):
    """Continuous sets, integer-grid sets (many ties) and sets with duplicated rows."""
    rng = np.random.default_rng(seed)
    for t in range(n_sets):
        n = int(rng.integers(1, 35))
        m = int(rng.integers(1, max_obj + 1))
        if t % 3 == 0:
            Y = rng.random((n, m))
        elif t % 3 == 1:
            Y = rng.integers(0, 4, (n, m)).astype(float)
        else:
            Y = rng.random((n, m))
            Y = np.vstack([Y, Y[rng.integers(0, n, size=n // 2 + 1)]])
        yield Y


# ---------------------------------------------------------------- Pareto


def test_non_dominated_kernels_match_reference():
    for Y in _random_sets(150, 4):
        np.testing.assert_array_equal(non_dominated_mask(Y), non_dominated_mask_reference(Y))
        np.testing.assert_array_equal(non_dominated_sort(Y), non_dominated_sort_reference(Y))


def test_non_dominated_known_case():
    Y = np.array([[1, 4], [2, 2], [4, 1], [3, 3], [2, 2], [5, 5], [1, 4.5]], dtype=float)
    np.testing.assert_array_equal(
        non_dominated_mask(Y), [True, True, True, False, True, False, False]
    )
    np.testing.assert_array_equal(non_dominated_sort(Y), [0, 0, 0, 1, 0, 2, 1])
    assert non_dominated_mask(np.zeros((0, 2))).shape == (0,)


# ---------------------------------------------------------------- hypervolume


def test_hypervolume_analytic_cases():
    assert hypervolume([[0.0, 0.0]], [1.0, 2.0]) == pytest.approx(2.0)
    # staircase: union of [0,3]x[2,3] ∪ [1,3]x[1,3] ∪ [2,3]x[0,3] = 3 + 2 + 1
    assert hypervolume([[0, 2], [1, 1], [2, 0]], [3, 3]) == pytest.approx(6.0)
    # dominated, duplicated and out-of-box points add nothing
    pts = [[0, 2], [1, 1], [2, 0], [1, 1], [2, 2], [5, -1], [np.nan, 0]]
    assert hypervolume(pts, [3, 3]) == pytest.approx(6.0)
    assert hypervolume(np.zeros((0, 2)), [1, 1]) == 0.0
    # 3-D: two boxes, overlap by inclusion-exclusion: 8 + 8 - 4 = 12 (ref 2,2,2)
    assert hypervolume([[0, 0, 0]], [2, 2, 2]) == pytest.approx(8.0)
    assert hypervolume([[0, 1, 0], [1, 0, 0]], [3, 3, 1]) == pytest.approx(6 + 6 - 4)
    assert hypervolume([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [2, 2, 2]) == pytest.approx(
        3 * 4 - 3 * 2 + 1
    )
    assert hypervolume([[0.5]], [2.0]) == pytest.approx(1.5)


def test_hypervolume_matches_grid_reference():
    rng = np.random.default_rng(1)
    for t in range(120):
        m = 2 + t % 2
        n = int(rng.integers(1, 25))
        Y = rng.integers(0, 5, (n, m)).astype(float) if t % 4 < 2 else rng.random((n, m)) * 4
        ref = np.full(m, 4.5) if t % 3 else rng.random(m) * 3 + 1.5  # some points outside
        assert hypervolume(Y, ref) == pytest.approx(hypervolume_reference(Y, ref), rel=1e-12)


def test_hypervolume_rejects_many_objectives():
    with pytest.raises(ValueError, match="1-3 objectives"):
        hypervolume(np.zeros((3, 4)), np.ones(4))
    with pytest.raises(ValueError):
        hypervolume(np.zeros((3, 2)), np.ones(3))


# ---------------------------------------------------------------- knee


def test_knee_on_known_front():
    Y = np.array([[0.0, 1.0], [0.05, 0.6], [0.45, 0.45], [1.0, 0.0]])
    assert knee_index(Y, "euclidean") == 1  # |.|_2: 0.602 < 0.636
    assert knee_index(Y, "chebyshev") == 2  # |.|_inf: 0.45 < 0.6
    # dominated / non-finite rows ignored; index refers to the input rows
    Y2 = np.vstack([[2.0, 2.0], [np.nan, 0.0], Y])
    assert knee_index(Y2, "chebyshev") == 4
    # constant objective (zero range) is guarded
    assert knee_index(np.array([[1.0, 3.0], [1.0, 2.0], [1.0, 5.0]])) == 1
    with pytest.raises(ValueError):
        knee_index(Y, "manhattan")


# ---------------------------------------------------------------- ParEGO


def zdt1(x) -> list[float]:
    x = np.asarray(x, dtype=float)
    g = 1.0 + 9.0 * x[1:].mean()
    return [float(x[0]), float(g * (1.0 - np.sqrt(x[0] / g)))]


def sphere_pair(shift: float):
    a = np.array([0.25, 0.3, 0.35]) + shift
    b = np.array([0.7, 0.75, 0.6]) + shift

    def f(x) -> list[float]:
        x = np.asarray(x, dtype=float)
        return [float(np.sum((x - a) ** 2)), float(np.sum((x - b) ** 2))]

    return f


def _unit_dims(n: int) -> list:
    return [Real(0.0, 1.0, name=f"x{i}") for i in range(n)]


def test_mobo_beats_random_search_on_zdt1():
    ref, budget = [1.1, 10.0], 20
    dims = _unit_dims(2)
    hv_bo, hv_rand = [], []
    for seed in range(3):
        opt = MultiObjectiveOptimizer(dims, 2, seed=seed, n_candidates=1000)
        res = run_frame(zdt1, opt, budget=budget)
        assert res.n_evaluations == budget and not res.warm_started
        hv_bo.append(hypervolume(res.Y, ref))
        rng = np.random.default_rng(seed)
        hv_rand.append(hypervolume([zdt1(rng.random(2)) for _ in range(budget)], ref))
    # optimum 11 - 1/3 = 10.667; random search sits near 9
    assert np.median(hv_bo) > 10.3
    assert np.median(hv_bo) > np.median(hv_rand) + 0.8


def test_warm_start_reevaluates_front_and_matches_bigger_cold_run():
    dims, ref = _unit_dims(3), [1.0, 1.0]
    warm, cold_big, cold_small = [], [], []
    for seed in range(3):
        opt = MultiObjectiveOptimizer(dims, 2, seed=seed)
        first = run_frame(sphere_pair(0.0), opt, budget=25)
        second = run_frame(sphere_pair(0.05), opt, budget=8)
        assert second.warm_started and not opt.stats["jump"]
        k = min(len(first.pareto_X), opt.max_reevaluate)
        prev = {tuple(x) for x in first.pareto_X}
        assert all(tuple(x) in prev for x in second.X[:k])  # re-evaluation comes first
        warm.append(hypervolume(second.Y, ref))
        for budget, out in ((32, cold_big), (8, cold_small)):
            cold = MultiObjectiveOptimizer(dims, 2, seed=seed + 100)
            out.append(hypervolume(run_frame(sphere_pair(0.05), cold, budget=budget).Y, ref))
    assert np.median(warm) >= 0.95 * np.median(cold_big)
    assert np.median(warm) > np.median(cold_small) + 0.1


def test_jump_widens_exploration_and_drift_does_not():
    dims = _unit_dims(3)
    opt = MultiObjectiveOptimizer(dims, 2, seed=3)
    run_frame(sphere_pair(0.0), opt, budget=15)
    run_frame(sphere_pair(0.02), opt, budget=8)
    assert opt.stats["warm"] and not opt.stats["jump"]

    reeval = opt.new_frame()
    f = sphere_pair(0.4)
    opt.tell(reeval, [f(x) for x in reeval])
    assert opt.stats["jump"] and opt.stats["last_move"] > 3 * 0.02
    assert (opt._frame_of == opt._frame).all()  # stale frames dropped
    assert len(opt.ask(opt.n_initial)) == opt.n_initial  # the fresh LHS design
    assert opt._init_queue == [] and opt._xi > 0.01

    opt.new_frame()
    assert not opt.stats["jump"]
    opt.observe_jump()
    assert opt.stats["jump"] and len(opt._init_queue) == opt.n_initial


def test_reevaluation_cap_and_forgetting_rule():
    Y = [[0, 1], [0.1, 0.6], [0.3, 0.3], [0.6, 0.1], [1, 0], [0.9, 0.9]]
    X = [[0.0], [0.1], [0.3], [0.6], [1.0], [0.5]]
    opt = MultiObjectiveOptimizer(_unit_dims(1), 2, max_reevaluate=3)
    opt.tell(X, Y)
    assert opt.new_frame() == [[0.3], [0.0], [1.0]]  # knee, then each objective's extreme
    assert opt._noise()[0] == pytest.approx((0.03 * 2.0) ** 2)  # sd grows forgetting**age
    for _ in range(4):
        opt.new_frame()
    assert len(opt._X) == 6  # age 5: sd 0.03 * 32 < 1, still informative
    opt.new_frame()
    assert len(opt._X) == 0  # age 6: sd > 1 = prior spread, dropped

    keep = MultiObjectiveOptimizer(_unit_dims(1), 2, forgetting=1.0, max_observations=4)
    keep.tell(X, Y)
    for _ in range(8):
        keep.new_frame()
    assert len(keep._X) == 4  # no ageing with forgetting=1, only the size cap


def test_categorical_integer_dims_and_batches():
    dims = [
        Categorical(["good", "bad", "ugly"], name="kind"),
        Integer(1, 12, name="n"),
        Real(1e-3, 1.0, prior="log-uniform", name="t"),
    ]
    penalty = {"good": 0.0, "bad": 0.5, "ugly": 1.0}

    def f(x):
        kind, n, t = x
        u = np.log10(t) / 3 + 1  # in [0, 1]
        return [penalty[kind] + (n - 3) ** 2 / 81 + u, penalty[kind] + (n - 9) ** 2 / 81 + 1 - u]

    opt = MultiObjectiveOptimizer(dims, 2, seed=0, n_candidates=1000)
    res = run_frame(f, opt, budget=24, batch=4)
    assert res.n_evaluations == 24
    assert len({tuple(x) for x in res.X}) == 24  # batches are distinct points
    for x in res.X:
        assert x[0] in penalty and isinstance(x[1], int) and 1 <= x[1] <= 12
        assert isinstance(x[2], float)
    assert res.knee_x[0] == "good"
    assert {x[0] for x in res.pareto_X} == {"good"}


def test_non_finite_objectives_are_worst_and_excluded_from_front():
    def f(x):
        return [np.nan, 0.0] if x[0] < 0.3 else [x[0], 1.0 - x[0] + x[1]]

    opt = MultiObjectiveOptimizer(_unit_dims(2), 2, seed=1, n_candidates=500)
    res = run_frame(f, opt, budget=14)
    assert np.isnan(res.Y).any()
    assert np.all(np.isfinite(res.pareto_Y)) and np.all(np.asarray(res.pareto_X)[:, 0] >= 0.3)
    late = np.asarray(res.X[8:])[:, 0]
    assert np.mean(late < 0.3) < 0.5  # the model learnt that the failing region is bad


def test_three_objectives():
    def f(x):
        x = np.asarray(x)
        return [np.sum((x - c) ** 2) for c in (0.2, 0.5, 0.8)]

    opt = MultiObjectiveOptimizer(_unit_dims(2), 3, seed=0, n_candidates=500)
    res = run_frame(f, opt, budget=12, batch=3)
    assert res.pareto_Y.shape[1] == 3 and res.hypervolume > 0
    assert opt.hypervolume([1, 1, 1]) == pytest.approx(hypervolume(res.pareto_Y, [1, 1, 1]))


def test_state_dict_round_trip():
    dims = [Categorical(["a", "b"], name="c"), Integer(0, 5, name="k"), Real(0, 1, name="r")]

    def f(x):
        return [x[1] / 5 + x[2] + (x[0] == "b"), 1 - x[2] + (5 - x[1]) / 5]

    opt = MultiObjectiveOptimizer(dims, 2, seed=5, n_candidates=500)
    run_frame(f, opt, budget=10)
    run_frame(f, opt, budget=4)
    pending = opt.ask(2)
    opt.tell(pending[:1], [f(pending[0])])
    opt.tell([pending[1]], [[np.inf, 0.0]])
    d = json.loads(json.dumps(opt.state_dict()))
    clone = MultiObjectiveOptimizer.from_state_dict(dims, d)
    assert clone.state_dict() == d
    assert clone.ask(3) == opt.ask(3)
    X1, Y1 = opt.pareto()
    X2, Y2 = clone.pareto()
    assert X1 == X2 and np.array_equal(Y1, Y2)
    assert clone.new_frame() == opt.new_frame()


def test_overhead_stats_and_deadline(monkeypatch):
    def slow(x):
        time.sleep(0.01)
        return sphere_pair(0.0)(x)

    opt = MultiObjectiveOptimizer(_unit_dims(3), 2, seed=2, n_candidates=500)
    res = run_frame(slow, opt, budget=10)
    s = opt.stats
    assert s["n_asks"] == 10 and s["n_tells"] == 10 and s["warm"] is False
    assert s["overhead_s"] > 0 and s["n_hyperfits"] >= 1
    assert res.optimizer_s == pytest.approx(s["overhead_s"])
    assert res.evaluation_s >= 10 * 0.01
    assert res.knee_y is not None and res.hypervolume > 0

    clock = _Clock()
    monkeypatch.setattr(mobo_module, "time", clock)

    def timed(x):
        clock.advance(0.0625)  # each evaluation "takes" 1/16 s
        return sphere_pair(0.0)(x)

    res2 = run_frame(timed, opt, budget=1000, deadline_s=0.25)
    assert res2.n_evaluations == 4 and res2.warm_started  # the deadline stopped it, not budget
    assert res2.evaluation_s == pytest.approx(0.25)
    assert opt.stats["n_tells"] == 10 + 4


def test_workers_evaluate_candidates_concurrently_and_in_order(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(mobo_module, "time", clock)
    pair = threading.Barrier(2, timeout=30)  # passes only when both candidates run at once
    active, peak, lock = [0], [0], threading.Lock()

    def paired(x):
        start = clock.perf_counter()
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        pair.wait()
        clock.advance_to(start + 1.0)  # each evaluation "takes" 1 s, side by side
        with lock:
            active[0] -= 1
        return sphere_pair(0.0)(x)

    opt = MultiObjectiveOptimizer(_unit_dims(3), 2, seed=3, n_candidates=300)
    res = run_frame(paired, opt, budget=8, workers=2)
    assert peak[0] == 2 and res.n_evaluations == 8 and opt.stats["n_tells"] == 8
    # every told observation is the evaluation of its own x (order kept through the pool)
    for x, y in zip(res.X, res.Y, strict=True):
        np.testing.assert_allclose(y, sphere_pair(0.0)(x))
    assert res.evaluation_s == pytest.approx(4.0)  # wall time of 4 pairs, not 8 evaluations

    def timed(x):
        clock.advance(0.5)
        return sphere_pair(0.0)(x)

    res2 = run_frame(timed, opt, budget=20, deadline_s=2.5, workers=2)
    # checked before each pair: stops once 5 evaluations (2.5 s) are done, mid-pair at most 6
    assert 5 <= res2.n_evaluations <= 6


def test_blas_is_pinned_to_one_thread_and_openmp_limited_per_thread():
    """The optimizer pins BLAS to one thread for the whole process (every thread sees it,
    whoever set it first); a workflow's ``single_thread`` limits OpenMP in its own thread
    only and gives it back on leaving, whatever order overlapping threads leave in."""
    import threading

    from threadpoolctl import threadpool_info

    from rewardscope.workflows.base import single_thread

    def counts(api):
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == api]

    MultiObjectiveOptimizer(_unit_dims(2), 2)  # pins BLAS
    seen: dict[str, list] = {}

    def look(tag):
        seen[tag] = [counts("blas"), counts("openmp")]

    t = threading.Thread(target=look, args=("fresh",))
    t.start()
    t.join()
    omp_before = seen["fresh"][1]
    assert all(n == 1 for n in seen["fresh"][0]) and all(n == 1 for n in counts("blas"))
    both_in, first_out = threading.Barrier(2, timeout=10), threading.Event()

    def worker(tag, leaves_first):
        with single_thread():
            both_in.wait()
            look(tag)
            if not leaves_first:
                first_out.wait(10)
        if leaves_first:
            first_out.set()
        look(tag + " after")

    threads = [threading.Thread(target=worker, args=(f"w{i}", i == 0)) for i in range(2)]
    for w in threads:
        w.start()
    for w in threads:
        w.join()
    for tag in ("w0", "w1"):
        assert all(n == 1 for row in seen[tag] for n in row), seen
        assert all(n == 1 for n in seen[tag + " after"][0])
        assert seen[tag + " after"][1] == omp_before


def test_candidate_snapping_matches_skopt_round_trip():
    dims = [
        Categorical(["a", "b"], name="two"),
        Categorical(["x", "y", "z", "w"], name="four"),
        Integer(1, 9, name="k"),
        Integer(2, 200, prior="log-uniform", name="logk"),
        Real(1e-3, 10.0, prior="log-uniform", name="t"),
    ]
    opt = MultiObjectiveOptimizer(dims, 2, seed=0)
    Z = np.random.default_rng(0).random((300, opt.space.transformed_n_dims))
    snapped = opt._snap(Z)
    np.testing.assert_allclose(snapped, opt.space.transform(opt.space.inverse_transform(snapped)))
    np.testing.assert_allclose(snapped, opt.space.transform(opt.space.inverse_transform(Z)))


def test_hyperparameter_fit_is_scikit_learns_gaussian_process_fit():
    """The GP likelihood behind the hyperparameter refits is scikit-learn's (value and
    gradient), and the fitted theta is the one ``GaussianProcessRegressor.fit`` finds."""
    import warnings

    from skopt.learning import GaussianProcessRegressor

    rng = np.random.default_rng(4)
    opt = MultiObjectiveOptimizer([Real(0, 1, name="a"), Real(0, 1, name="b"),
                                   Integer(1, 5, name="c")], 2)
    kernel = opt._sklearn_kernel()
    # the numpy path's start and bounds are the kernel's, to the bit
    np.testing.assert_array_equal(opt._theta0, kernel.theta)
    np.testing.assert_array_equal(opt._bounds, kernel.bounds)
    X = rng.random((40, 3))
    y = np.sin(4 * X[:, 0]) + X[:, 1] ** 2 + 0.05 * rng.normal(size=40)
    y = (y - y.mean()) / y.std()
    alpha = rng.choice([0.03**2, 0.06**2, 0.12**2], size=40)
    theta = np.clip(kernel.theta + 0.5 * rng.normal(size=kernel.theta.shape),
                    kernel.bounds[:, 0], kernel.bounds[:, 1])
    for restarts in (0, 1):
        gp = GaussianProcessRegressor(kernel=kernel.clone_with_theta(theta), alpha=alpha,
                                      optimizer=mobo_module._lbfgs_capped, normalize_y=False,
                                      n_restarts_optimizer=restarts, random_state=9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gp.fit(X, y)
        lml, grad = gp.log_marginal_likelihood(theta, eval_gradient=True)
        value, ours = mobo_module._neg_log_marginal_likelihood(theta, X, y, alpha)
        assert value == pytest.approx(-lml, rel=1e-10)
        np.testing.assert_allclose(ours, -grad, rtol=1e-8, atol=1e-10)
        fitted = mobo_module._fit_theta(X, y, alpha, kernel.bounds, theta, restarts, 9)
        np.testing.assert_allclose(fitted, gp.kernel_.theta, atol=1e-5)


def test_run_frame_skips_reevaluations_unchanged_within_noise():
    """A warm frame whose re-evaluated anchor moved no more than the calm-frame typical move
    keeps the rest of the previous front's values (counted toward the budget, evaluated on
    no candidate); a frame that changed re-evaluates the whole front."""
    calls: list[list] = []
    scale = {"k": 1.0}

    def objective(x):
        calls.append(list(x))
        a, b = float(x[0]), float(x[1])
        return [scale["k"] * a, scale["k"] * (1.0 - a) ** 2 + 0.1 * b]

    opt = MultiObjectiveOptimizer([Real(0, 1, name="a"), Real(0, 1, name="b")], 2, seed=1,
                                  n_initial=4)
    run_frame(objective, opt, budget=12)  # cold
    first = run_frame(objective, opt, budget=8, reuse=True)  # nothing measured yet: no reuse
    assert first.reused_X == [] and opt.stats["n_calm"] == 1
    anchor = first.knee_x
    front = len(opt._select_reevaluation(np.flatnonzero(opt._frame_of == opt._frame)))
    assert front >= 2
    calls.clear()
    calm = run_frame(objective, opt, budget=8, reuse=True, anchor=anchor)
    assert calls[0] == list(anchor)  # the previous choice is re-evaluated first
    assert len(calm.reused_X) == min(front, 8) - 1 and list(anchor) not in calm.reused_X
    assert calm.n_evaluations == len(calls) == 8 - len(calm.reused_X)
    assert opt.stats["n_reused"] == len(calm.reused_X)
    assert len(calm.pareto_X) >= 1
    scale["k"] = 3.0  # the scene changed: the anchor moves, everything is re-evaluated
    calls.clear()
    moved = run_frame(objective, opt, budget=8, reuse=True, anchor=calm.knee_x)
    assert moved.reused_X == [] and moved.n_evaluations == len(calls) == 8


def test_snap_rules_are_skopts_round_trip():
    """The closed-form snap of one-column integers and two-valued categoricals equals skopt's
    transform(inverse_transform(x)) everywhere, rounding ties and the binariser's threshold
    included; other dimensions have no rule (the dimension's own path)."""
    from rewardscope.optimize.mobo import _normalised_space, _snap_rule
    from rewardscope.science import dimensions

    space = _normalised_space([Integer(2, 12), Integer(2, 4), Integer(-5, 7), Integer(1, 2),
                               Integer(0, 1000), Categorical([0.25, 0.5]),
                               Categorical(["a", "b"]), Categorical([True, False]),
                               Categorical([8, 16, 32]), Real(0, 1)])
    rng = np.random.default_rng(0)
    ruled = 0
    for dim in space.dimensions:
        rule = _snap_rule(dim)
        if dim.transformed_size != 1 or isinstance(dim, dimensions.Real):
            assert rule is None
            continue
        x = np.concatenate([rng.random(5000), np.linspace(0, 1, 2001),
                            [0.5, np.nextafter(0.5, 0), np.nextafter(0.5, 1)]])
        if isinstance(dim, dimensions.Integer):
            span = dim.high - dim.low
            half = (np.arange(span) + 0.5) / span  # where rounding ties fall
            x = np.clip(np.concatenate([x, np.arange(span + 1) / span, half,
                                        np.nextafter(half, 0), np.nextafter(half, 1)]), 0, 1)
        ref = dim.skopt()  # skopt's own class, same transform
        expect = np.asarray(ref.transform(ref.inverse_transform(x)), dtype=float).reshape(-1)
        np.testing.assert_array_equal(rule(x), expect)
        ruled += 1
    assert ruled == 8


def test_run_frame_pairs_the_anchor_where_reuse_cannot_follow():
    """With two evaluation threads the anchor is evaluated alone only where this search's
    last anchor was calm (reuse may follow); before any calm frame, or after an anchor that
    moved, the whole previous front goes in one pass, the anchor first (told together), and
    the reuse decision is still the anchor's own."""
    scale = {"k": 1.0}

    def objective(x):
        a, b = float(x[0]), float(x[1])
        return [scale["k"] * a, scale["k"] * (1.0 - a) ** 2 + 0.1 * b]

    opt = MultiObjectiveOptimizer([Real(0, 1, name="a"), Real(0, 1, name="b")], 2, seed=1,
                                  n_initial=4)
    run_frame(objective, opt, budget=12)  # cold
    told: list[list] = []  # the points of each tell, in order
    real_tell = opt.tell

    def tell(xs, ys):
        told.append([list(x) for x in xs])
        real_tell(xs, ys)

    opt.tell = tell

    def front_size() -> int:
        return len(opt._select_reevaluation(np.flatnonzero(opt._frame_of == opt._frame)))

    n = front_size()
    assert n >= 2
    first = run_frame(objective, opt, budget=8, reuse=True, workers=2)
    assert first.reused_X == [] and len(told[0]) == n  # no calm frame yet: one pass
    assert not opt.stats["anchor_moved"]  # a steady scene: calm
    told.clear()
    calm = run_frame(objective, opt, budget=8, reuse=True, workers=2, anchor=first.knee_x)
    assert told[0] == [list(first.knee_x)] and len(calm.reused_X) >= 1  # alone, then reuse
    scale["k"] = 3.0  # the scene changed: the anchor (alone) moved, the rest is re-evaluated
    told.clear()
    moved = run_frame(objective, opt, budget=8, reuse=True, workers=2, anchor=calm.knee_x)
    assert told[0] == [list(calm.knee_x)] and moved.reused_X == []
    assert opt.stats["anchor_moved"] and moved.n_evaluations == 8
    n = front_size()
    told.clear()
    after = run_frame(objective, opt, budget=8, reuse=True, workers=2, anchor=moved.knee_x)
    assert len(told[0]) == min(n, 8) and told[0][0] == list(moved.knee_x)  # one pass
    assert after.reused_X == []


def test_in_order_starts_the_next_point_when_a_thread_is_free():
    """Results come back in the points' order; a slow point does not hold back the next
    one (the next starts when any thread is free); the deadline stops new starts only, so
    the results are those of a prefix; an error is raised after the points in flight."""
    from concurrent.futures import ThreadPoolExecutor

    from rewardscope.optimize.mobo import _in_order

    started: list[tuple[int, float]] = []
    t0 = time.perf_counter()

    def objective(x):
        started.append((x[0], time.perf_counter() - t0))
        time.sleep(0.3 if x[0] == 0 else 0.02)
        if x[0] == 99:
            raise RuntimeError("bad point")
        return [float(x[0])]

    with ThreadPoolExecutor(2) as pool:
        out = _in_order(objective, [[i] for i in range(5)], pool, 2, lambda: True)
        assert out == [[0.0], [1.0], [2.0], [3.0], [4.0]]
        at = dict(started)
        assert at[4] < 0.25  # points 1..4 ran beside the slow point 0, one after another
        # a deadline that allows three starts: the first three, in order
        starts = iter([True, True, True, False, False])
        assert _in_order(objective, [[i] for i in range(1, 6)], pool, 2,
                         lambda: next(starts)) == [[1.0], [2.0], [3.0]]
        with pytest.raises(RuntimeError, match="bad point"):
            _in_order(objective, [[1], [99], [2], [3]], pool, 2, lambda: True)
    assert _in_order(objective, [[7], [8]], None, 1, lambda: True) == [[7.0], [8.0]]


def test_design_lookahead_keeps_the_sequential_search():
    """Asks that the initial design alone answers are asked ahead and evaluated in one
    pass: with two threads the frame's points, values and front are exactly those of one
    thread (same order, same tells), cold and warm."""
    def objective(x):
        a, b = float(x[0]), float(x[1])
        return [a + 0.1 * b, (1.0 - a) ** 2 + 0.1 * (1.0 - b)]

    space = [Real(0, 1, name="a"), Real(0, 1, name="b")]
    runs = []
    for workers in (1, 2):
        opt = MultiObjectiveOptimizer(space, 2, seed=4, n_initial=6)
        assert opt.design_answers(6) and not opt.design_answers(7)
        frames = [run_frame(objective, opt, budget=12, batch=2, workers=workers)]
        opt.observe_jump()  # a new scene: a fresh design is queued, asked ahead again
        frames.append(run_frame(objective, opt, budget=10, batch=2, workers=workers))
        runs.append([(f.X, f.pareto_X, f.knee_x) for f in frames])
    assert runs[0] == runs[1]


def test_fast_transform_is_skopts():
    """The optimizer's table-driven transform equals skopt's Space.transform (categoricals of
    2 and more values, booleans, integers, log-uniform reals)."""
    from rewardscope.plaindata import plain

    space = [Real(0, 1, name="a"), Categorical(["x", "y"], name="b"),
             Categorical(["p", "q", "r"], name="c"), Integer(2, 12, name="d"),
             Real(1e-3, 1.0, prior="log-uniform", name="e"), Categorical([True, False], name="f"),
             Categorical([8, 16, 32], name="g")]
    opt = MultiObjectiveOptimizer(space, 2)
    xs = [[plain(v) for v in x] for x in opt.space.rvs(100, random_state=3)]
    np.testing.assert_array_equal(opt._transform(xs), opt.space.transform(xs))


def test_initial_design_is_skopts_maximin_lhs():
    """Same random designs, same choice as skopt's Lhs(criterion="maximin")."""
    import copy

    from skopt.sampler import Lhs

    from rewardscope.plaindata import plain

    space = [Real(0, 1, name="a"), Integer(2, 12, name="b"),
             Categorical(["x", "y", "z"], name="c"), Categorical([True, False], name="d")]
    opt = MultiObjectiveOptimizer(space, 2)
    for seed, (n, iterations) in enumerate([(5, 20), (6, 200), (1, 20), (2, 3)]):
        opt._seed = lambda s=seed: s  # the seed skopt would get
        ref = Lhs(criterion="maximin", iterations=iterations).generate(
            copy.deepcopy(space), n, random_state=seed)
        assert opt._initial_design(n, iterations) == [[plain(v) for v in x] for x in ref]


def test_patience_ends_a_search_whose_answer_settled_and_only_then():
    """``patience``: a flat landscape's knee never changes, so the search ends ``patience``
    evaluations after its initial design; without patience (or with a knee that keeps
    moving) the whole budget is spent."""
    def flat(x):
        return [1.0, 1.0]

    opt = MultiObjectiveOptimizer(_unit_dims(2), 2, seed=0, n_initial=5)
    res = run_frame(flat, opt, budget=40, patience=4)
    assert res.n_evaluations == 5 + 4  # the design, then four that left the knee as it was
    opt = MultiObjectiveOptimizer(_unit_dims(2), 2, seed=0, n_initial=5)
    assert run_frame(flat, opt, budget=40).n_evaluations == 40

    seen = []

    def moving(x):  # every new point is the best in both objectives: a new knee each time
        seen.append(x)
        return [-float(len(seen)), -float(len(seen))]

    opt = MultiObjectiveOptimizer(_unit_dims(2), 2, seed=0, n_initial=5)
    assert run_frame(moving, opt, budget=20, patience=2).n_evaluations == 20


def test_normalised_space_is_skopts_normalize_dimensions():
    """The optimizer's space is ``Space(skopt.utils.normalize_dimensions(dims))``: the same
    transformed coordinates and decoded values for every kind of dimension (skopt's classes
    given, rewardscope's held), without loading skopt."""
    from skopt.utils import normalize_dimensions

    dims = [Real(0, 1, name="a"), Categorical(["x", "y"], name="b"),
            Categorical(["p", "q", "r"], name="c"), Integer(2, 12, name="d"),
            Real(1e-3, 1.0, prior="log-uniform", name="e"), Categorical([True, False], name="f"),
            Integer(1, 64, prior="log-uniform", name="g")]
    ours = mobo_module._normalised_space(dims)
    ref = Space(normalize_dimensions(copy.deepcopy(dims)))
    pts = Space(dims).rvs(50, random_state=3)
    np.testing.assert_array_equal(ours.transform(pts), ref.transform(pts))
    assert ours.transformed_n_dims == ref.transformed_n_dims
    z = np.random.default_rng(1).random((50, ref.transformed_n_dims))
    assert repr(ours.inverse_transform(z)) == repr(ref.inverse_transform(z))
    assert [d.name for d in ours.dimensions] == [d.name for d in dims]
    assert dims[0].transform_ == "identity"  # the caller's dimensions are left as they were
