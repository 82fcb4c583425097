"""Is there a domain structure at all, and does each wall stand above the noise?

The measured polarization of a site is its column's offset from the centre of its cage of
other-sublattice columns (px). Two tests on those offsets let the domain analysis answer
"one domain, no walls" with a stated false-alarm rate, and say how far each reported wall
stands above the noise:

* :func:`homogeneity_test` (once per frame): are the offsets the same everywhere? The
  testable sites are grouped in square blocks of ``BLOCK_CELLS`` lattice spacings and the
  block means compared, Q = sum_b (m_b - m)^T V_b^-1 (m_b - m), against chi^2 with
  2 (B - 1) degrees of freedom (V_b = design effect * Sigma / n_b + floor). A frame whose p is
  not below ``ALPHA`` (1e-3) is one domain: at most one homogeneous frame in a thousand is
  called structured, however many candidates the optimizer tries on it.
* :func:`wall_tests` (per candidate, per wall segment): do the sites on the two sides of the
  segment differ? Sites in a band ``BAND`` = (0.8, 4.0) lattice spacings from the segment's
  line on each side, within its length, are compared by a two-sample Welch-type T^2 on the
  2-D offsets (unequal covariances; degrees of freedom by Krishnamoorthy & Yu 2004, a
  modified Nel-van der Merwe solution of the multivariate Behrens-Fisher problem), p from
  F(2, nu - 1). The row of sites next to the line (< 0.8 a) is left out: the wall was placed
  by the labels of exactly those sites, so testing on them would test the labelling against
  itself. A workflow publishes the segments that are :func:`discoveries` at false-discovery
  rate ``ALPHA`` (Benjamini-Hochberg over the candidate's segments: on a frame without walls
  at most one candidate in a thousand publishes any wall; with real walls, at most one in a
  thousand published walls is false, in expectation).

The noise model (:func:`offset_noise`, once per frame) is estimated from the frame itself,
robustly, so that domain walls and stray sites do not inflate it:

* sites closer than ``EDGE_MARGIN`` (1 lattice spacing) to the frame edge are not tested:
  their cages are incomplete and their offsets biased (measured: median 0.5-0.8 px off on a
  clean simulated frame, against 0 inside);
* offsets are winsorised at ``CLIP_SIGMAS`` (3) noise standard deviations from the median of
  their 3 x 3 site neighbourhood (a misplaced column does not make a wall; a domain, many
  sites wide, keeps its value);
* the per-site covariance Sigma is half the trimmed second moment of the differences between
  sites two lattice spacings apart (they share no cage column, so their noise is
  independent, and few such pairs straddle a wall);
* neighbouring sites share cage columns, so their offsets correlate; the correlation rho of
  nearest (1 a) and diagonal (1.4 a) neighbours is 1 - median |d|^2 / median |d_2a|^2, and
  means are taken as (1 + 4 rho_1 + 4 rho_d) times noisier than independent sites would be
  (the design effect; exact in the bulk, conservative in thin bands);
* a systematic floor of ``SYSTEMATIC_FLOOR`` (0.01 lattice spacings, ~0.04 A at a = 3.9 A)
  on the standard error of every mean difference: scan distortion, drift and residual
  cage-centre bias are not averaged away by more sites, and a noiseless frame would otherwise
  make any difference, however small, "significant".

Measured on simulated single-domain frames (384 x 384, a = 12 px, LoG atoms; clean, noise
0.35 of the A peak, dose 10 and 30, scan noise 0.3 px, gradient, rotated, amorphous blobs;
4 seeds each): Q / dof 0.2-1.2 (1 = exactly calibrated) except with amorphous blobs (1.7:
their sites are far noisier; walls are then judged one by one); random segments gave
p < 1e-3 at rates 0-0.0008 (the highest with 0.3 px scan-line jitter, which the frame test
absorbs). Real walls on structured frames: -log10 p 30-50 at noise 0.2 of the A peak, ~5 at
0.35 with LoG positions (better-refined positions do better).

Coordinates: x = column, y = row, px.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from rewardscope.science import kernels, tails

__all__ = [
    "ALPHA",
    "BAND",
    "BLOCK_CELLS",
    "EDGE_MARGIN",
    "SYSTEMATIC_FLOOR",
    "OffsetNoise",
    "discoveries",
    "edge_distance",
    "homogeneity_test",
    "offset_noise",
    "wall_tests",
]

ALPHA = 1e-3  # false-alarm rate: per frame (homogeneity) and per candidate (walls, Bonferroni)
SYSTEMATIC_FLOOR = 0.01  # lattice spacings: floor on the standard error of a mean difference
EDGE_MARGIN = 1.0  # lattice spacings: sites closer to the frame edge are not tested
BAND = (0.8, 4.0)  # lattice spacings from a wall's line: the sites each side that test it
BLOCK_CELLS = 4.0  # lattice spacings: block size of the homogeneity test
CLIP_SIGMAS = 3.0  # winsorising radius, noise standard deviations
MIN_SIDE_SITES = 6  # fewer sites on a side of a segment: untestable (p = 1)
MIN_BLOCK_SITES = 4  # blocks with fewer testable sites are left out
MAX_RHO = 0.9  # cap of each neighbour correlation estimate
MAX_NEG_LOG10_P = 300.0  # -log10 p is reported up to this (float64 p underflows near 1e-308)
_LN10 = math.log(10.0)
_CHI2_2_MEDIAN = 2.0 * math.log(2.0)  # median of chi^2 with 2 dof
_TRIM = 13.8155 / _CHI2_2_MEDIAN  # |d|^2 beyond the chi^2_2 99.9 % point (in medians)
_TRIM_BIAS = 2.0 / (2.0 - (13.8155 + 2.0) * math.exp(-13.8155 / 2.0)) * (1.0 - 1e-3)


@dataclass(frozen=True, eq=False)
class OffsetNoise:
    """The frame's noise model of the measured polarization (see the module doc).

    Attributes
    ----------
    offsets : (n, 2) ndarray of float64
        Winsorised offsets x, y, px (what the tests average).
    testable : (n,) ndarray of bool
        Sites at least ``EDGE_MARGIN`` lattice spacings inside the frame.
    covariance : (2, 2) ndarray of float64
        Per-site noise covariance, px^2.
    design_effect : float
        Variance of a mean over neighbouring sites relative to independent ones, >= 1.
    floor : float
        Systematic variance floor of a mean difference, px^2 (``SYSTEMATIC_FLOOR * a`` squared).
    lattice_px : float
        Lattice spacing a, px.
    """

    offsets: np.ndarray
    testable: np.ndarray
    covariance: np.ndarray
    design_effect: float
    floor: float
    lattice_px: float


def _points(value: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2) as [x, y] rows, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


def _positive(value: float, name: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def edge_distance(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Distance of each point to the nearest frame edge, px.

    Parameters
    ----------
    xy : (n, 2) array_like of float
        Points x, y in px (pixel centres at integers; the frame spans [-0.5, W - 0.5]).
    shape : (int, int)
        Frame (H, W) in px.

    Returns
    -------
    (n,) ndarray of float64
        Distances, px (negative outside the frame).
    """
    pts = _points(xy, "xy")
    h, w = (int(s) for s in tuple(shape)[:2])
    return np.minimum.reduce([pts[:, 0] + 0.5, w - 0.5 - pts[:, 0],
                              pts[:, 1] + 0.5, h - 0.5 - pts[:, 1]]) if len(pts) else np.zeros(0)


def _pair_diffs(values: np.ndarray, pairs: np.ndarray, dist: np.ndarray, lo: float,
                hi: float) -> np.ndarray:
    p = pairs[(dist > lo) & (dist <= hi)]
    return values[p[:, 0]] - values[p[:, 1]]


def _median_sq(d: np.ndarray) -> float:
    return float(np.median(np.einsum("ij,ij->i", d, d))) if len(d) >= 10 else math.nan


def offset_noise(xy: np.ndarray, offsets: np.ndarray, lattice_px: float,
                 shape: tuple[int, int]) -> OffsetNoise:
    """The frame's noise model of the measured polarization, estimated robustly.

    See the module doc for each step (edge margin, winsorising, covariance from sites two
    lattice spacings apart, neighbour correlation, systematic floor).

    Parameters
    ----------
    xy : (n, 2) array_like of float
        Site positions (cage centres) x, y in px.
    offsets : (n, 2) array_like of float
        Each site's column offset from its cage centre (the measured polarization), px.
    lattice_px : float
        Lattice spacing a, px.
    shape : (int, int)
        Frame (H, W) in px.

    Returns
    -------
    OffsetNoise
        The cleaned offsets, testable sites, covariance, design effect and floor.

    Raises
    ------
    ValueError
        If ``xy`` or ``offsets`` is not (n, 2) finite, they differ in length, or
        ``lattice_px`` is not a positive finite number.
    """
    pts = _points(xy, "xy")
    off = _points(offsets, "offsets")
    if len(pts) != len(off):
        raise ValueError(f"xy ({len(pts)}) and offsets ({len(off)}) must have the same length")
    a = _positive(lattice_px, "lattice_px")
    floor = (SYSTEMATIC_FLOOR * a) ** 2
    testable = edge_distance(pts, shape) >= EDGE_MARGIN * a
    if len(pts) < 3:
        return OffsetNoise(off.copy(), testable, np.zeros((2, 2)), 1.0, floor, a)
    tree = cKDTree(pts)
    dist, idx = tree.query(pts, k=min(9, len(pts)), distance_upper_bound=1.5 * a)
    found = np.isfinite(dist)
    local = kernels.row_median(off[np.where(found, idx, 0)], found)  # self is always found
    pairs = tree.query_pairs(2.3 * a, output_type="ndarray")
    pairs = pairs[testable[pairs[:, 0]] & testable[pairs[:, 1]]] if len(pairs) else pairs
    if len(pairs) == 0:
        return OffsetNoise(off.copy(), testable, np.zeros((2, 2)), 1.0, floor, a)
    sep = np.hypot(*(pts[pairs[:, 0]] - pts[pairs[:, 1]]).T) / a
    raw2 = _median_sq(_pair_diffs(off, pairs, sep, 1.8, 2.3))
    var = raw2 / (2.0 * _CHI2_2_MEDIAN) if math.isfinite(raw2) else 0.0  # per component
    resid = off - local
    norm = np.hypot(resid[:, 0], resid[:, 1])
    limit = CLIP_SIGMAS * math.sqrt(2.0 * var)
    shrink = np.where(norm > limit, limit / np.maximum(norm, 1e-300), 1.0)
    clean = local + resid * shrink[:, None]
    d1, dd, d2 = (_pair_diffs(clean, pairs, sep, lo, hi)
                  for lo, hi in ((0.0, 1.2), (1.2, 1.6), (1.8, 2.3)))
    m1, md, m2 = _median_sq(d1), _median_sq(dd), _median_sq(d2)
    if not m2 > 0.25 * floor:  # (NaN-safe) no measurable noise: the floor rules
        return OffsetNoise(clean, testable, np.zeros((2, 2)), 1.0, floor, a)
    rho = [float(np.clip(1.0 - m / m2, 0.0, MAX_RHO)) if math.isfinite(m) else 0.0
           for m in (m1, md)]
    keep = np.einsum("ij,ij->i", d2, d2) <= _TRIM * m2
    cov = d2[keep].T @ d2[keep] / (2.0 * max(int(keep.sum()), 1)) * _TRIM_BIAS
    return OffsetNoise(clean, testable, cov, 1.0 + 4.0 * rho[0] + 4.0 * rho[1], floor, a)


def homogeneity_test(xy: np.ndarray, noise: OffsetNoise,
                     block_cells: float = BLOCK_CELLS) -> tuple[float, float]:
    """Are the measured offsets the same all over the frame? -log10 p of "one domain".

    Block means of the testable sites' offsets against their precision-weighted mean:
    Q = sum_b (m_b - m)^T V_b^-1 (m_b - m), V_b = design effect * Sigma / n_b + floor * I,
    referred to chi^2 with 2 (B - 1) degrees of freedom (B blocks with at least
    ``MIN_BLOCK_SITES`` sites).

    Parameters
    ----------
    xy : (n, 2) array_like of float
        Site positions x, y in px (those ``noise`` was estimated on).
    noise : OffsetNoise
        The frame's noise model (:func:`offset_noise`).
    block_cells : float, optional
        Block size, lattice spacings (default ``BLOCK_CELLS``).

    Returns
    -------
    neg_log10_p : float
        -log10 of the p-value (0 = no evidence of structure; > 3 rejects "one domain" at
        ``ALPHA``), at most ``MAX_NEG_LOG10_P``; 0.0 with fewer than two blocks.
    q_per_dof : float
        Q / (2 (B - 1)): ~1 on a homogeneous frame, >> 1 with domains; 0.0 when untested.

    Raises
    ------
    ValueError
        If ``xy`` does not match ``noise`` or ``block_cells`` is not positive.
    """
    pts = _points(xy, "xy")
    if len(pts) != len(noise.offsets):
        raise ValueError(f"xy ({len(pts)}) must have one row per site of noise "
                         f"({len(noise.offsets)})")
    size = _positive(block_cells, "block_cells") * noise.lattice_px
    x, o = pts[noise.testable], noise.offsets[noise.testable]
    if len(x) < 2 * MIN_BLOCK_SITES:
        return 0.0, 0.0
    cell = np.floor(x / size).astype(np.int64)
    code = np.unique(cell, axis=0, return_inverse=True)[1].ravel()
    count = np.bincount(code).astype(np.float64)
    means = np.stack([np.bincount(code, o[:, k]) for k in range(2)], axis=1) / count[:, None]
    use = count >= MIN_BLOCK_SITES
    if use.sum() < 2:
        return 0.0, 0.0
    var = (noise.design_effect * noise.covariance[None] / count[use][:, None, None]
           + noise.floor * np.eye(2)[None])
    prec = np.linalg.inv(var)
    centre = np.linalg.solve(prec.sum(axis=0), np.einsum("bij,bj->i", prec, means[use]))
    dev = means[use] - centre
    q = float(np.einsum("bi,bij,bj->", dev, prec, dev))
    dof = 2 * (int(use.sum()) - 1)
    return float(_clip_logp(-tails.chi2_logsf(q, dof) / _LN10)), q / dof


def discoveries(neg_log10_p: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Which tests are discoveries at false-discovery rate ``alpha`` (Benjamini-Hochberg).

    The k smallest p-values are discoveries, k the largest rank with p_(k) <= k alpha / m. When
    nothing is there (every null hypothesis true) this is as strict as Bonferroni: the chance
    of any discovery is at most ``alpha``; when some walls are real, a weaker one next to
    them is not held to alpha / m.

    Parameters
    ----------
    neg_log10_p : (m,) array_like of float
        -log10 p of each test.
    alpha : float, optional
        False-discovery rate (default ``ALPHA``).

    Returns
    -------
    (m,) ndarray of bool
        True for the discoveries.

    Raises
    ------
    ValueError
        If ``alpha`` is not in (0, 1).
    """
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    lp = np.asarray(neg_log10_p, dtype=np.float64).ravel()
    m = lp.size
    out = np.zeros(m, dtype=bool)
    if m == 0:
        return out
    order = np.argsort(-lp, kind="stable")  # smallest p first
    bound = -np.log10(float(alpha) * np.arange(1, m + 1) / m)
    passed = np.flatnonzero(lp[order] > bound)
    if passed.size:
        out[order[: passed[-1] + 1]] = True
    return out


def wall_tests(segments: np.ndarray, xy: np.ndarray, noise: OffsetNoise,
               band: tuple[float, float] = BAND) -> np.ndarray:
    """-log10 p of each wall segment: do the offsets on its two sides differ?

    Sites (testable ones) whose projection falls within the segment and whose distance to its
    line is in ``band`` (lattice spacings) on either side; per side the mean offset and its
    covariance (sample covariance * design effect / n); T^2 = d^T V^-1 d with
    V = V_+ + V_- + floor * I; p from F(2, nu - 1) on T^2 (nu - 1) / (2 nu), nu by
    Krishnamoorthy & Yu (module doc). A segment with fewer than ``MIN_SIDE_SITES`` sites on
    a side cannot be tested (p = 1).

    Parameters
    ----------
    segments : (S, 4) array_like of float
        Wall segments [x0, y0, x1, y1], px.
    xy : (n, 2) array_like of float
        Site positions x, y in px (those ``noise`` was estimated on).
    noise : OffsetNoise
        The frame's noise model (:func:`offset_noise`).
    band : (float, float), optional
        Nearest and farthest distance of a tested site from the line, lattice spacings
        (default ``BAND``).

    Returns
    -------
    (S,) ndarray of float64
        -log10 p per segment in [0, ``MAX_NEG_LOG10_P``] (see :func:`discoveries`).

    Raises
    ------
    ValueError
        If ``segments`` is not (S, 4) finite, ``xy`` does not match ``noise``, or ``band`` is
        not 0 <= near < far.
    """
    seg = np.asarray(segments, dtype=np.float64)
    if seg.size == 0:
        seg = np.zeros((0, 4))
    if seg.ndim != 2 or seg.shape[1] != 4 or not np.isfinite(seg).all():
        raise ValueError(f"segments must be (S, 4) finite [x0, y0, x1, y1] rows, got {seg.shape}")
    pts = _points(xy, "xy")
    if len(pts) != len(noise.offsets):
        raise ValueError(f"xy ({len(pts)}) must have one row per site of noise "
                         f"({len(noise.offsets)})")
    near, far = (float(b) for b in band)
    if not 0.0 <= near < far:
        raise ValueError(f"band must be (near, far) with 0 <= near < far, got {band!r}")
    out = np.zeros(len(seg))
    x, o = pts[noise.testable], noise.offsets[noise.testable]
    if len(seg) == 0 or len(x) < 2 * MIN_SIDE_SITES:
        return out
    a = noise.lattice_px
    moments = np.stack([np.ones(len(o)), o[:, 0], o[:, 1], o[:, 0] ** 2, o[:, 0] * o[:, 1],
                        o[:, 1] ** 2], axis=1)
    return _segment_logp(seg, x, moments, noise, near * a, far * a)


_TREE: tuple[bytes, tuple, cKDTree] | None = None


def _site_tree(x: np.ndarray) -> cKDTree:
    """k-d tree of the sites ``x``, reused while the same sites come again (every candidate of
    a frame tests its walls on the frame's sites): kept for the last site set, by content."""
    global _TREE
    key = (np.ascontiguousarray(x).tobytes(), (x.shape, x.dtype.str))
    hit = _TREE
    if hit is not None and hit[1] == key[1] and hit[0] == key[0]:
        return hit[2]
    tree = cKDTree(x)
    _TREE = (key[0], key[1], tree)
    return tree


def _segment_logp(seg: np.ndarray, x: np.ndarray, moments: np.ndarray, noise: OffsetNoise,
                  near: float, far: float) -> np.ndarray:
    p0, d = seg[:, :2], seg[:, 2:] - seg[:, :2]
    length = np.hypot(d[:, 0], d[:, 1])
    u = d / np.maximum(length, 1e-12)[:, None]
    # Candidate (segment, site) pairs: sites in the disk around each segment that holds its
    # two bands, from a k-d tree, instead of every site against every segment.
    found = _site_tree(x).query_ball_point(p0 + 0.5 * d, np.hypot(0.5 * length, far))
    counts = np.fromiter((len(f) for f in found), dtype=np.int64, count=len(seg))
    sid = np.repeat(np.arange(len(seg)), counts)
    site = np.fromiter(itertools.chain.from_iterable(found), dtype=np.int64,
                       count=int(counts.sum()))
    rel = x[site] - p0[sid]
    along = rel[:, 0] * u[sid, 0] + rel[:, 1] * u[sid, 1]
    across = rel[:, 1] * u[sid, 0] - rel[:, 0] * u[sid, 1]
    inside = (along >= 0.0) & (along <= length[sid])
    side = np.where(across > 0.0, 0, 1)
    w = inside & (np.abs(across) >= near) & (np.abs(across) <= far)
    # Per (segment, side): n, sum x, sum y, sum xx, sum xy, sum yy. Summed by bincount in
    # (row, site) order, the order (and so the rounding) of the sparse 0/1 product it replaces.
    row, col = 2 * sid[w] + side[w], site[w]
    order = np.lexsort((col, row))
    row, picked = row[order], moments[col[order]]
    all_sums = np.stack([np.bincount(row, weights=picked[:, j], minlength=2 * len(seg))
                         for j in range(moments.shape[1])], axis=1).reshape(len(seg), 2, 6)
    sides = []
    for k in range(2):
        sums = all_sums[:, k]
        n = sums[:, 0]
        safe = np.maximum(n, 1.0)
        mean = sums[:, 1:3] / safe[:, None]
        cxx = (sums[:, 3] - n * mean[:, 0] ** 2) / np.maximum(n - 1.0, 1.0)
        cxy = (sums[:, 4] - n * mean[:, 0] * mean[:, 1]) / np.maximum(n - 1.0, 1.0)
        cyy = (sums[:, 5] - n * mean[:, 1] ** 2) / np.maximum(n - 1.0, 1.0)
        cov = np.stack([np.stack([cxx, cxy], -1), np.stack([cxy, cyy], -1)], -2)
        cov = np.maximum(cov, np.where(np.eye(2, dtype=bool), 0.0, -np.inf))  # rounding
        sides.append((n, mean, noise.design_effect * cov / safe[:, None, None]))
    (n1, m1, v1), (n2, m2, v2) = sides
    prec = np.linalg.inv(v1 + v2 + noise.floor * np.eye(2)[None])
    diff = m1 - m2
    t2 = np.einsum("si,sij,sj->s", diff, prec, diff)
    den = np.zeros(len(seg))
    for v, n in ((v1, n1), (v2, n2)):
        r = v @ prec
        tr = np.trace(r, axis1=1, axis2=2)
        den += (np.trace(r @ r, axis1=1, axis2=2) + tr * tr) / np.maximum(n - 1.0, 1.0)
    nu = np.clip(6.0 / np.maximum(den, 1e-12), 1.5, 1e6)
    logp = _f2_logsf(t2, nu)
    ok = (n1 >= MIN_SIDE_SITES) & (n2 >= MIN_SIDE_SITES)
    return np.where(ok, _clip_logp(-logp / _LN10), 0.0)


def _f2_logsf(t2: np.ndarray, nu: np.ndarray) -> np.ndarray:
    """log P(F > t2 (nu - 1) / (2 nu)) for F with (2, nu - 1) degrees of freedom.

    The survival function of F(2, d) has the closed form (1 + 2x/d)^(-d/2), so the log is
    -(d/2) log1p(t2 / nu): exact in both tails (scipy.stats' ``f.logsf`` agrees to 1e-15
    relative) and without its per-call dispatch, ~0.1 ms of held GIL per candidate's wall
    tests. Negative rounding of t2 counts as 0 (log p = 0), NaN stays NaN (no evidence).
    """
    return -0.5 * (nu - 1.0) * np.log1p(np.maximum(t2, 0.0) / nu)


def _clip_logp(value):
    """-log10 p into [0, MAX_NEG_LOG10_P] (NaN -> 0: no evidence)."""
    return np.clip(np.nan_to_num(value, nan=0.0, posinf=MAX_NEG_LOG10_P), 0.0, MAX_NEG_LOG10_P)
