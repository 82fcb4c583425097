"""Plain-numpy reference twins of the package's numba kernels: the specification they are tested
against. Slow and obvious on purpose; they live with the tests, not in the package."""

from __future__ import annotations

import itertools
import math

import numpy as np

from rewardscope.optimize.hypervolume import _prepare
from rewardscope.optimize.pareto import _as_2d
from rewardscope.science.kernels import (
    _as_points,
    _as_segments,
    _dedupe,
    _perimeters_from_counts,
    _rounded_centres,
    _sample_count,
)

# ---- optimize.pareto

def _domination_matrix(Y: np.ndarray) -> np.ndarray:
    le = np.all(Y[:, None, :] <= Y[None, :, :], axis=2)
    lt = np.any(Y[:, None, :] < Y[None, :, :], axis=2)
    return le & lt  # [i, j]: i dominates j


def non_dominated_mask_reference(Y) -> np.ndarray:
    """Plain-numpy O(n^2 m) memory reference for tests."""
    Y = _as_2d(Y)
    return ~_domination_matrix(Y).any(axis=0)


def non_dominated_sort_reference(Y) -> np.ndarray:
    """Plain-numpy reference: peel fronts one at a time."""
    Y = _as_2d(Y)
    dom = _domination_matrix(Y)
    rank = np.full(Y.shape[0], -1, dtype=np.int64)
    remaining = np.ones(Y.shape[0], dtype=bool)
    r = 0
    while remaining.any():
        sub = dom[np.ix_(remaining, remaining)]
        front = np.flatnonzero(remaining)[~sub.any(axis=0)]
        rank[front] = r
        remaining[front] = False
        r += 1
    return rank


# ---- optimize.hypervolume

def hypervolume_reference(Y, ref) -> float:
    """Exact grid reference (any dimension, O(n^d * n)) for tests.

    The distinct coordinates cut the box below `ref` into cells; a cell is covered iff some
    point weakly dominates its lower corner. No Monte Carlo, so the comparison is exact.
    """
    P, ref = _prepare(Y, ref)
    if P.shape[0] == 0:
        return 0.0
    d = ref.size
    cuts = [np.unique(np.append(P[:, k], ref[k])) for k in range(d)]
    widths = [np.diff(c) for c in cuts]
    lowers = np.array(list(itertools.product(*[c[:-1] for c in cuts])))
    vols = np.array([np.prod(w) for w in itertools.product(*widths)])
    covered = np.all(P[None, :, :] <= lowers[:, None, :], axis=2).any(axis=1)
    return float(vols[covered].sum())


# ---- science.kernels



def knn_distance_sums_reference(xy: np.ndarray, k: int = 4) -> np.ndarray:
    """O(N^2) brute force twin of :func:`knn_distance_sums`."""
    pts = _as_points(xy, "xy")
    n = pts.shape[0]
    if n == 0:
        return np.zeros(0)
    if k == 0:
        return np.zeros(n)
    if n - 1 < k:
        return np.full(n, np.inf)
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(axis=-1))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].sum(axis=1)


def extract_patches_reference(
    image: np.ndarray, xy: np.ndarray, half_h: int, half_w: int
) -> np.ndarray:
    """Twin of :func:`extract_patches` via explicit reflected index arrays."""
    img = np.asarray(image, dtype=np.float32)
    rows, cols = _rounded_centres(xy)

    def reflect(idx: np.ndarray, n: int) -> np.ndarray:
        if n == 1:
            return np.zeros_like(idx)
        period = 2 * (n - 1)
        idx = np.mod(idx, period)
        return np.where(idx >= n, period - idx, idx)

    du = np.arange(-half_h, half_h + 1)
    dv = np.arange(-half_w, half_w + 1)
    rr = reflect(rows[:, None] + du[None, :], img.shape[0])
    cc = reflect(cols[:, None] + dv[None, :], img.shape[1])
    return img[rr[:, :, None], cc[:, None, :]].astype(np.float32)


def curvature_profile_reference(
    points: np.ndarray, step: float | None = None, smooth: int = 0
) -> np.ndarray:
    """Twin of :func:`curvature_profile` with np.interp resampling and sliced differences."""
    pts = _dedupe(_as_points(points))
    if pts.shape[0] < 2:
        return np.zeros(0)
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    length = cum[-1]
    m = _sample_count(length, pts.shape[0] - 1, step)
    if m < 2:
        return np.zeros(0)
    s = length * np.arange(m + 1) / m
    p = np.stack([np.interp(s, cum, pts[:, 0]), np.interp(s, cum, pts[:, 1])], axis=1)
    if smooth:
        q = np.empty_like(p)
        for j in range(m + 1):
            h = min(smooth, j, m - j)
            q[j] = p[j - h : j + h + 1].mean(axis=0)
        p = q
    ds = length / m
    v = (p[2:] - p[:-2]) / (2 * ds)
    a = (p[2:] - 2 * p[1:-1] + p[:-2]) / ds**2
    cross = np.abs(v[:, 0] * a[:, 1] - v[:, 1] * a[:, 0])
    speed2 = (v**2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(speed2 > 0, cross / speed2**1.5, np.inf)
    return np.minimum(kappa, 2.0 / ds)


def label_perimeters_reference(
    labels: np.ndarray, n_labels: int, method: str = "crofton"
) -> np.ndarray:
    """Twin of :func:`label_perimeters` via shifted comparisons of a zero-padded label image."""
    lab = np.pad(np.asarray(labels, dtype=np.int64), 1)
    counts = np.zeros((n_labels + 1, 4), dtype=np.int64)
    pairs = [
        (lab[:, :-1], lab[:, 1:]),
        (lab[:-1, :], lab[1:, :]),
        (lab[:-1, :-1], lab[1:, 1:]),
        (lab[:-1, 1:], lab[1:, :-1]),
    ]
    for d, (a, b) in enumerate(pairs):
        diff = a != b
        for side in (a[diff], b[diff]):
            counts[:, d] += np.bincount(side, minlength=n_labels + 1)[: n_labels + 1]
    counts[0] = 0
    return _perimeters_from_counts(counts, method)


def subpixel_patches_reference(image: np.ndarray, xy: np.ndarray, half_h: int,
                               half_w: int) -> np.ndarray:
    """Numpy twin of :func:`subpixel_patches`: integer-centred patches one pixel larger,
    shifted by the fractional offset with separable linear interpolation."""
    pts = _as_points(xy, "xy")
    base = np.floor(pts)
    big = extract_patches_reference(image, base, half_h + 1, half_w + 1)[:, 1:, 1:]
    frac = (pts - base).astype(np.float32)
    fx = frac[:, 0, None, None]
    fy = frac[:, 1, None, None]
    gx = big[:, :, :-1] * (1 - fx) + big[:, :, 1:] * fx
    return (gx[:, :-1, :] * (1 - fy) + gx[:, 1:, :] * fy).astype(np.float32)


def draw_segments_reference(shape: tuple[int, int], p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``skimage.draw.line`` twin of :func:`draw_segments` (ties may break differently)."""
    from skimage.draw import line

    h, w = int(shape[0]), int(shape[1])
    img = np.zeros((h, w), dtype=bool)
    hi = np.array([w - 1, h - 1])
    ia = np.clip(np.floor(_as_points(p, "p") + 0.5).astype(np.int64), 0, hi)
    ib = np.clip(np.floor(_as_points(q, "q") + 0.5).astype(np.int64), 0, hi)
    for a, b in zip(ia, ib, strict=True):
        rr, cc = line(a[1], a[0], b[1], b[0])
        img[rr, cc] = True
    return img


def collinear_pairs_reference(segments: np.ndarray, max_angle: float, max_offset: float,
                              max_gap: float) -> np.ndarray:
    """(S, S) broadcast twin of :func:`collinear_pairs`."""
    seg = _as_segments(segments)
    p0, d = seg[:, :2], seg[:, 2:] - seg[:, :2]
    length = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-12)
    u = d / length[:, None]
    n = np.stack([-u[:, 1], u[:, 0]], axis=1)
    r0 = seg[None, :, :2] - p0[:, None, :]
    r1 = seg[None, :, 2:] - p0[:, None, :]
    same_dir = np.abs(u @ u.T) >= math.cos(max_angle)
    off = np.maximum(np.abs(np.einsum("ijk,ik->ij", r0, n)),
                     np.abs(np.einsum("ijk,ik->ij", r1, n)))
    t0, t1 = np.einsum("ijk,ik->ij", r0, u), np.einsum("ijk,ik->ij", r1, u)
    near = (np.minimum(t0, t1) - length[:, None] <= max_gap) & (-np.maximum(t0, t1) <= max_gap)
    return np.argwhere(same_dir & (off <= max_offset) & near).astype(np.int64)


def zscore_rows_reference(x: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`zscore_rows`."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return (x / np.where(sd > 0, sd, 1.0)).astype(np.float32)


# ---- science.kernels.any_within

def any_within_reference(points, queries, radius) -> np.ndarray:
    """A k-d tree's answer: a finite distance from ``distance_upper_bound`` (strictly closer)."""
    from scipy.spatial import cKDTree

    d, _ = cKDTree(np.asarray(points, dtype=np.float64)).query(
        np.asarray(queries, dtype=np.float64), distance_upper_bound=radius)
    return np.isfinite(d)


# ---- science.kernels.nearest_within

def nearest_within_reference(xy, shape, reach, step=1, offset=0.0):
    """Brute force over every grid point and site: the nearest (first of ties) within reach."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    ny, nx = -(-shape[0] // step), -(-shape[1] // step)
    gy, gx = np.mgrid[0:ny, 0:nx] * float(step) + offset
    owner = np.full((ny, nx), -1, dtype=np.int64)
    dist = np.full((ny, nx), np.inf)
    if len(xy):
        d2 = (gx[..., None] - xy[:, 0]) ** 2 + (gy[..., None] - xy[:, 1]) ** 2
        k = np.argmin(d2, axis=2)
        best = np.take_along_axis(d2, k[..., None], axis=2)[..., 0]
        inside = best <= reach * reach
        owner[inside] = k[inside]
        dist[inside] = np.sqrt(best[inside])
    return owner, dist


# ---- kernels: graphs (the scipy.sparse.csgraph computations the kernels replace)

def edge_components_reference(n: int, edges: np.ndarray) -> tuple[int, np.ndarray]:
    """``connected_components`` of the edge list's sparse matrix."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    return connected_components(graph.tocsr(), directed=False)


def spanning_forest_reference(n: int, edges: np.ndarray, weights: np.ndarray,
                              min_size: int = 2) -> tuple[np.ndarray, list[np.ndarray]]:
    """scipy's ``minimum_spanning_tree`` of the edges' CSR matrix, and each big enough
    component's longest path by two ``dijkstra`` sweeps from its smallest node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, dijkstra, minimum_spanning_tree

    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.asarray(weights, float), (e[:, 0], e[:, 1])), shape=(n, n))
    tree = minimum_spanning_tree(graph.tocsr())
    coo = tree.tocoo()
    forest = np.stack([coo.row, coo.col], axis=1).astype(np.int64)
    n_comp, comp = connected_components(tree, directed=False)
    sizes = np.bincount(comp, minlength=n_comp)
    firsts = np.unique(comp, return_index=True)[1]
    paths = []
    for c in np.flatnonzero(sizes >= min_size):
        dist, _ = dijkstra(tree, directed=False, indices=int(firsts[c]), return_predecessors=True)
        dist[~np.isfinite(dist)] = -1.0
        u = int(np.argmax(dist))
        dist, pred = dijkstra(tree, directed=False, indices=u, return_predecessors=True)
        dist[~np.isfinite(dist)] = -1.0
        path = [int(np.argmax(dist))]
        while path[-1] != u and pred[path[-1]] >= 0:
            path.append(int(pred[path[-1]]))
        paths.append(np.asarray(path[::-1], dtype=np.int64))
    return forest, paths
