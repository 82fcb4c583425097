"""Point-set matching scores (detected vs true atom positions) used by tests and benchmarks.

Matching is *optimal* and one-to-one: among all pairings of predicted to true points closer
than ``tol``, it takes the largest possible number of pairs and, among those, the smallest
total distance. Candidate pairs come from a k-d tree; the bipartite candidate graph is split
into connected components, isolated pairs (the usual case when ``tol`` is below half the
lattice spacing) are accepted directly, and each remaining component is solved exactly with
``scipy.optimize.linear_sum_assignment``. A greedy nearest-first pairing would be one-to-one
too but can under-count TP in crowded regions; this never does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["MatchResult", "match_points"]


@dataclass(frozen=True, eq=False)
class MatchResult:
    """Outcome of :func:`match_points`: counts, scores and the matched pairs.

    Conventions for empty sets: precision is 1 when nothing was predicted (no false claims),
    recall is 1 when there was nothing to find, and F1 is 0 whenever precision + recall is 0,
    so empty-vs-empty scores 1 and a miss of everything scores 0.

    Attributes
    ----------
    tp, fp, fn : int
        Matched, unmatched predicted and unmatched true points.
    precision, recall, f1 : float
        tp / (tp + fp), tp / (tp + fn) and their harmonic mean.
    distances : (tp,) ndarray of float64
        Distance of each matched pair, px.
    pairs : (tp, 2) ndarray of int
        ``(pred_index, true_index)`` of each pair, in the order of ``distances``.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    distances: np.ndarray
    pairs: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.intp))

    @property
    def rmse(self) -> float:
        """Root-mean-square matched distance in px (NaN if nothing matched)."""
        d = self.distances
        return float(np.sqrt(np.mean(d * d))) if d.size else float("nan")


def _as_points(points: np.ndarray | None, name: str) -> np.ndarray:
    arr = np.empty((0, 2)) if points is None else np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return np.empty((0, 2), np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"`{name}` must have shape (N, 2), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` must be finite")
    return arr


def _scores(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_true if n_true else 1.0
    denom = precision + recall
    return precision, recall, (2.0 * precision * recall / denom if denom > 0 else 0.0)


def _candidate_pairs(pred: np.ndarray, true: np.ndarray, tol: float):
    """(i_pred, j_true, distance) for every pair with distance <= tol."""
    found = cKDTree(pred).sparse_distance_matrix(cKDTree(true), tol, output_type="ndarray")
    return found["i"].astype(np.intp), found["j"].astype(np.intp), found["v"].astype(np.float64)


def _solve_component(i: np.ndarray, j: np.ndarray, d: np.ndarray, tol: float):
    """Max-cardinality, then min-distance, assignment on one component's candidate edges."""
    rows, ri = np.unique(i, return_inverse=True)
    cols, ci = np.unique(j, return_inverse=True)
    # Any non-candidate cell costs more than every valid assignment could: more pairs win.
    big = tol * (min(rows.size, cols.size) + 1) + 1.0
    cost = np.full((rows.size, cols.size), big)
    cost[ri, ci] = d
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] < big
    return rows[r[ok]], cols[c[ok]], cost[r[ok], c[ok]]


def match_points(pred_xy: np.ndarray, true_xy: np.ndarray, tol: float) -> MatchResult:
    """Optimal one-to-one matching of predicted to true points within ``tol``.

    The yardstick of atom finding against ground truth: among all pairings closer than
    ``tol`` it takes the largest number of pairs and, among those, the smallest total
    distance (module doc), so crowded regions are not under-counted as a greedy pairing would.

    Parameters
    ----------
    pred_xy, true_xy : (N, 2) array_like of float or None
        Predicted and true positions in px, in the same coordinate order (x, y or y, x: only
        distances matter); None or empty = no points.
    tol : float
        Largest distance of a matched pair, px (inclusive), > 0.

    Returns
    -------
    MatchResult
        Counts, precision/recall/F1 and the matched pairs.

    Raises
    ------
    ValueError
        If ``tol`` is not a finite number > 0, or ``pred_xy`` / ``true_xy`` is not (N, 2)
        finite.
    """
    if not (np.isscalar(tol) and np.isfinite(tol) and tol > 0):
        raise ValueError(f"`tol` must be a finite number > 0, got {tol!r}")
    pred = _as_points(pred_xy, "pred_xy")
    true = _as_points(true_xy, "true_xy")
    n_pred, n_true = len(pred), len(true)
    pi = pj = np.empty(0, np.intp)
    pd = np.empty(0, np.float64)
    if n_pred and n_true:
        pi, pj, pd = _match(pred, true, float(tol))
    tp = int(pi.size)
    precision, recall, f1 = _scores(tp, n_pred, n_true)
    order = np.argsort(pi, kind="stable")
    return MatchResult(
        tp=tp, fp=n_pred - tp, fn=n_true - tp, precision=precision, recall=recall, f1=f1,
        distances=pd[order], pairs=np.column_stack([pi[order], pj[order]]).astype(np.intp),
    )


def _match(pred: np.ndarray, true: np.ndarray, tol: float):
    i, j, d = _candidate_pairs(pred, true, tol)
    if i.size == 0:
        return i, j, d
    n_pred = len(pred)
    graph = coo_matrix(
        (np.ones(i.size), (i, n_pred + j)), shape=(n_pred + len(true),) * 2
    )
    _, label = connected_components(graph, directed=False)
    comp = label[i]
    edges_per_comp = np.bincount(comp, minlength=label.max() + 1)
    single = edges_per_comp[comp] == 1  # one pred, one true, one edge: match it
    out_i, out_j, out_d = [i[single]], [j[single]], [d[single]]
    multi = ~single
    if multi.any():
        mi, mj, md, mc = i[multi], j[multi], d[multi], comp[multi]
        order = np.argsort(mc, kind="stable")
        mi, mj, md, mc = mi[order], mj[order], md[order], mc[order]
        bounds = np.flatnonzero(np.diff(mc)) + 1
        for s, e in zip(np.r_[0, bounds], np.r_[bounds, mc.size], strict=True):
            ri, rj, rd = _solve_component(mi[s:e], mj[s:e], md[s:e], tol)
            out_i.append(ri)
            out_j.append(rj)
            out_d.append(rd)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


# ------------------------------------------------------------------------------------------
# domains, walls and regions against ground truth
# ------------------------------------------------------------------------------------------


def labelled_ari(pred_xy: np.ndarray, pred_labels: np.ndarray, true_xy: np.ndarray,
                 true_labels: np.ndarray, tol: float) -> float:
    """Agreement of predicted and true labels on the atoms both sides found.

    Adjusted Rand index (label ids need not agree, only the partition) of the labelled atoms
    (label >= 0) that match a true atom within ``tol``.

    Parameters
    ----------
    pred_xy : (N, 2) array_like of float
        Predicted positions, px.
    pred_labels : (N,) array_like of int
        Predicted labels, -1 = not labelled.
    true_xy : (M, 2) array_like of float
        True positions, px.
    true_labels : (M,) array_like of int
        True labels.
    tol : float
        Matching distance, px.

    Returns
    -------
    float
        ARI in [-1, 1] (1 = same partition); 0.0 when fewer than two atoms match.
    """
    from sklearn.metrics import adjusted_rand_score

    pred_labels = np.asarray(pred_labels)
    key = pred_labels >= 0
    if key.sum() < 2:
        return 0.0
    m = match_points(np.asarray(pred_xy)[key], true_xy, tol)
    if len(m.pairs) < 2:
        return 0.0
    return float(adjusted_rand_score(np.asarray(true_labels)[m.pairs[:, 1]],
                                     pred_labels[key][m.pairs[:, 0]]))


def mask_iou(pred: np.ndarray | None, true: np.ndarray) -> float:
    """Intersection over union of two boolean masks (how well a region was found).

    Parameters
    ----------
    pred : (H, W) array_like of bool or None
        Predicted mask; None = nothing predicted.
    true : (H, W) array_like of bool
        True mask.

    Returns
    -------
    float
        IoU in [0, 1]; 1.0 when both are empty, 0.0 for ``pred`` None.
    """
    if pred is None:
        return 0.0
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    union = np.logical_or(pred, true).sum()
    return float(np.logical_and(pred, true).sum() / union) if union else 1.0


def _sample_segments(segments: np.ndarray, step: float) -> np.ndarray:
    pts = []
    for x0, y0, x1, y1 in np.asarray(segments, float).reshape(-1, 4):
        n = max(2, int(np.ceil(np.hypot(x1 - x0, y1 - y0) / step)) + 1)
        t = np.linspace(0.0, 1.0, n)[:, None]
        pts.append(np.hstack([x0 + t * (x1 - x0), y0 + t * (y1 - y0)]))
    return np.vstack(pts) if pts else np.zeros((0, 2))


def _point_segment_distance(p: np.ndarray, segments: np.ndarray) -> np.ndarray:
    s = np.asarray(segments, float).reshape(-1, 4)
    a, b = s[:, :2][None], s[:, 2:][None]
    ab = b - a
    t = np.clip(((p[:, None] - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    closest = a + t[..., None] * ab
    return np.sqrt(((p[:, None] - closest) ** 2).sum(-1)).min(axis=1)


def wall_distance_medians(detected: np.ndarray, true: np.ndarray, step: float = 1.0
                          ) -> tuple[float, float]:
    """How far detected walls lie from true ones, both ways.

    Both small means no wall missed and none invented.

    Parameters
    ----------
    detected, true : (S, 4) array_like of float
        Wall segments [x0, y0, x1, y1], px.
    step : float, optional
        Sampling step along the segments, px (default 1).

    Returns
    -------
    (float, float)
        Median distance (px) from points every ``step`` along the detected segments to the
        nearest true wall, and from the true walls to the nearest detected one; (inf, inf)
        when either side is empty.
    """
    det = np.asarray(detected, float).reshape(-1, 4)
    tru = np.asarray(true, float).reshape(-1, 4)
    if len(det) == 0 or len(tru) == 0:
        return float("inf"), float("inf")
    d1 = _point_segment_distance(_sample_segments(det, step), tru)
    d2 = _point_segment_distance(_sample_segments(tru, step), det)
    return float(np.median(d1)), float(np.median(d2))
