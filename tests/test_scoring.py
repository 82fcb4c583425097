"""Point matching: optimal one-to-one pairing within a tolerance, and its score conventions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from rewardscope.science import scoring
from rewardscope.science.scoring import MatchResult, match_points


def brute_force_max_pairs(pred: np.ndarray, true: np.ndarray, tol: float) -> int:
    """Largest one-to-one matching within tol, by trying every assignment (tiny inputs)."""
    d = np.linalg.norm(pred[:, None] - true[None], axis=-1)
    best = 0
    small, large = (pred, true) if len(pred) <= len(true) else (true, pred)
    dd = d if len(pred) <= len(true) else d.T
    for perm in itertools.permutations(range(len(large)), len(small)):
        best = max(best, int(sum(dd[i, j] <= tol for i, j in enumerate(perm))))
    return best


def test_perfect_and_shifted_matches():
    pts = np.random.default_rng(0).uniform(0, 100, (50, 2))
    m = match_points(pts, pts, 1.0)
    assert (m.tp, m.fp, m.fn) == (50, 0, 0)
    assert m.precision == m.recall == m.f1 == 1.0
    assert np.all(m.distances == 0) and m.rmse == 0.0
    grid = np.stack(np.meshgrid(np.arange(5.0), np.arange(4.0)), -1).reshape(-1, 2) * 3
    shifted = match_points(grid + [0.0, 0.5], grid, 0.5)  # distance exactly 0.5: inclusive
    assert shifted.tp == 20
    np.testing.assert_array_equal(shifted.distances, 0.5)
    assert match_points(grid + [0.0, 0.5], grid, 0.499).tp == 0


def test_counts_precision_recall_f1():
    true = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])
    pred = np.array([[0.2, 0.0], [10.0, 0.3], [50.0, 50.0]])
    m = match_points(pred, true, 1.0)
    assert (m.tp, m.fp, m.fn) == (2, 1, 2)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(0.5)
    assert m.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    np.testing.assert_array_equal(m.pairs, [[0, 0], [1, 1]])
    np.testing.assert_allclose(m.distances, [0.2, 0.3])


@pytest.mark.parametrize("pred, true, expect", [
    (np.empty((0, 2)), np.empty((0, 2)), (0, 0, 0, 1.0, 1.0, 1.0)),
    (np.empty((0, 2)), [[1.0, 2.0]], (0, 0, 1, 1.0, 0.0, 0.0)),
    ([[1.0, 2.0]], np.empty((0, 2)), (0, 1, 0, 0.0, 1.0, 0.0)),
    ([], None, (0, 0, 0, 1.0, 1.0, 1.0)),
    ([[0.0, 0.0]], [[5.0, 5.0]], (0, 1, 1, 0.0, 0.0, 0.0)),
])
def test_empty_and_disjoint_conventions(pred, true, expect):
    m = match_points(pred, true, 1.0)
    assert (m.tp, m.fp, m.fn, m.precision, m.recall, m.f1) == expect
    assert m.distances.shape == (m.tp,) and m.pairs.shape == (m.tp, 2)
    if m.tp == 0:
        assert np.isnan(m.rmse)


def test_beats_greedy_nearest_first():
    # Greedy takes the closest pair (p0, t1) first and then p1 has nothing left; optimal
    # pairs p0-t0 and p1-t1.
    true = np.array([[0.0, 0.0], [1.0, 0.0]])
    pred = np.array([[0.55, 0.0], [1.9, 0.0]])
    m = match_points(pred, true, 1.0)
    assert m.tp == 2
    np.testing.assert_array_equal(m.pairs, [[0, 0], [1, 1]])


def test_minimises_total_distance_among_maximal_matchings():
    true = np.array([[0.0, 0.0], [1.0, 0.0]])
    pred = np.array([[0.1, 0.0], [0.9, 0.0]])
    m = match_points(pred, true, 2.0)  # both crossings are maximal; the short one wins
    np.testing.assert_array_equal(m.pairs, [[0, 0], [1, 1]])
    assert m.distances.sum() == pytest.approx(0.2)


@pytest.mark.parametrize("seed", range(30))
def test_one_to_one_and_optimal_on_crowded_random_sets(seed):
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0, 3, (int(rng.integers(1, 7)), 2))
    true = rng.uniform(0, 3, (int(rng.integers(1, 7)), 2))
    tol = float(rng.uniform(0.3, 1.5))
    m = match_points(pred, true, tol)
    assert len(set(m.pairs[:, 0])) == len(set(m.pairs[:, 1])) == m.tp  # one-to-one
    d = np.linalg.norm(pred[m.pairs[:, 0]] - true[m.pairs[:, 1]], axis=1)
    np.testing.assert_allclose(m.distances, d)
    assert np.all(d <= tol)
    assert m.tp == brute_force_max_pairs(pred, true, tol)
    assert m.tp + m.fp == len(pred) and m.tp + m.fn == len(true)


def test_total_distance_matches_dense_assignment():
    rng = np.random.default_rng(7)
    true = rng.uniform(0, 20, (60, 2))
    pred = true + rng.normal(0, 0.4, true.shape)
    tol = 1.0
    m = match_points(pred, true, tol)
    d = np.linalg.norm(pred[:, None] - true[None], axis=-1)
    big = 1e6
    cost = np.where(d <= tol, d, big)
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] < big
    assert m.tp == ok.sum()
    assert m.distances.sum() == pytest.approx(cost[r[ok], c[ok]].sum())


def test_large_lattice_is_solved_in_small_components(monkeypatch):
    """What keeps 22 500 atoms cheap, counted rather than timed: with ``tol`` below half the
    spacing an isolated pair is accepted directly, and only the crowded components (double
    detections) go to an assignment solver, each as small as the crowd."""
    shapes = []

    def counted(cost):
        shapes.append(cost.shape)
        return linear_sum_assignment(cost)

    monkeypatch.setattr(scoring, "linear_sum_assignment", counted)
    g = np.stack(np.meshgrid(np.arange(150), np.arange(150)), -1).reshape(-1, 2) * 12.0
    rng = np.random.default_rng(8)
    pred = g + rng.normal(0, 0.5, g.shape)
    m = match_points(pred, g, 3.0)
    assert m.tp > 0.99 * len(g)
    assert isinstance(m, MatchResult)
    assert shapes == []  # every pair isolated: no assignment problem at all
    doubled = np.concatenate([pred, g[:40] + 0.3])  # 40 double detections
    m2 = match_points(doubled, g, 3.0)
    assert m2.tp == m.tp and m2.fp == m.fp + 40
    assert len(shapes) == 40 and set(shapes) == {(2, 1)}


@pytest.mark.parametrize("pred, true, tol, msg", [
    (np.zeros((3, 3)), np.zeros((3, 2)), 1.0, r"`pred_xy` must have shape \(N, 2\)"),
    (np.zeros((3, 2)), np.zeros(4), 1.0, r"`true_xy` must have shape \(N, 2\)"),
    ([[np.nan, 0.0]], np.zeros((1, 2)), 1.0, "`pred_xy` must be finite"),
    (np.zeros((1, 2)), np.zeros((1, 2)), 0.0, "`tol` must be a finite number > 0"),
    (np.zeros((1, 2)), np.zeros((1, 2)), float("inf"), "`tol` must be a finite number > 0"),
])
def test_validation(pred, true, tol, msg):
    with pytest.raises(ValueError, match=msg):
        match_points(pred, true, tol)
