"""The crystal's unit cell, found from the frame itself: two vectors, their significance.

Why: the lattice spacing sets every length scale of the analysis (LoG sigmas, neighbour
radii, the expected number of columns), and a spacing typed in by hand is wrong often enough
(another magnification, another material, a binned detector) to ruin a session silently. So
the frame is asked first; a hint (frame header, session start, config) is only compared with
what the frame shows.

Method
------
1. **Fourier peaks.** The frame (mean removed, Kaiser window: side lobes below -60 dB, so a
   strong reflection does not fake weak ones around it) is Fourier transformed; the power is
   *whitened* by its median in narrow rings of equal ``|k|`` (the noise floor there: lattice
   reflections occupy a handful of the ring's bins and do not move its median). For white
   noise a whitened bin exceeds ``t`` with probability ``2**-t``, so a reflection is
   significant when ``t > log2(n_bins / false_alarm)`` (about 26 at 384 x 384 for a 1e-3
   chance per frame of one false reflection). That is the "nothing here" answer: a blank,
   pure-noise or amorphous frame (whose ring of short-range order is absorbed by the ring
   median) has no significant reflection and gets no lattice. Noise that is not isotropic
   escapes a ring median: scan-line offsets put power along the whole ``kx = 0`` line,
   straight edges and walls along a line through the origin. So a reflection must also be a
   *point*: significant again over the median of its own radial line a few bins either side
   (the streak floor).
2. **The cell.** After suppressing satellites and side lobes within ``max(3 bins, 0.2 |k|)``
   of a stronger reflection, the strong reflections (>= 5 % of the strongest power) propose
   the reciprocal basis: the non-collinear pair that indexes most of them, the coarsest such
   (the smallest real cell), refined by least squares on every reflection it indexes
   (sub-bin positions from a parabola through the log power). Weaker significant
   reflections on a half-integer coset of that lattice then halve the reciprocal cell when
   two or more of them (Friedel mates count once) carry >= 1 % of the indexed power. So the
   cell is the smallest periodicity of the *intensity pattern*: for a perovskite the A-A
   cell, because A and B columns differ in brightness and the (1, 0) reflections that tell
   them apart are significant; the finer net of all columns only when A and B are
   indistinguishable (or their difference drowns in the noise). Domain satellites, noise
   spikes and low-frequency background index nowhere and are left out. A lattice of columns
   puts power off its two basis lines too (e.g. at (1, 1)): the indexed reflections must lie
   on at least three lattice directions (:func:`directions`), so two unrelated 1-D
   periodicities (stripe domains plus scan lines, two sets of fringes) are no lattice.
3. **Refined on the columns** (:func:`refine_lattice`, once the columns are found): each
   column is paired with the column one cell vector away, then three; the inliers' mean
   displacement is the refined vector (the Fourier estimate is already within ~0.2 % on
   the simulator's frames; the refinement ties the published cell to the columns reported).
4. **Crystal only along the edges.** The Kaiser window weighs the frame's centre: a view
   centred on an amorphous particle, with the crystal only in a band along the frame's
   edges, shows no significant reflection through it. When the Kaiser pass finds no cell,
   the search runs again through a Tukey window (flat over the central 80 %, :data:`TUKEY_ALPHA`)
   that weighs the edges as much as the centre. Each pass gets half the false-alarm
   budget (Bonferroni), so the chance per frame that noise yields a cell stays
   ``false_alarm``.

The significance reported (:attr:`Lattice.snr`) is the whitened power of the weakest reflection
the cell rests on (the pair proposing the basis, and the strongest member of a coset that
halved it): how far the periodicity stands above the noise floor at its own spatial
frequency, in units of that floor's median.

Contrast polarity (:func:`contrast_skew`): bright columns on a dark background (HAADF) make a
Bragg-filtered image with sharp maxima and broad minima, positive skew; dark columns on a
bright background (bright field, ABF) the mirror image, negative skew.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import scipy.fft as sfft
from scipy.spatial import cKDTree

from rewardscope.science import kernels

__all__ = [
    "Lattice",
    "contrast_skew",
    "directions",
    "find_lattice",
    "hint_agrees",
    "indexed_sites",
    "refine_lattice",
]

KAISER_BETA = 8.6
"""Window shape: side lobes near -60 dB, main lobe half-width ~3 bins."""
TUKEY_ALPHA = 0.2
"""Second pass's window (step 4 of the method): cosine tapers over the outer 10 % of each side."""
WINDOWS = ("kaiser", "tukey")
"""The passes, in order; each tests at ``false_alarm / len(WINDOWS)``."""
NMS_RADIUS_BINS = 3.0
"""Least suppression radius around a reflection, frequency bins (the window's main lobe)."""
NMS_RELATIVE = 0.2
"""Suppression radius relative to the reflection's own |k| (domain satellites, side lobes)."""
STRONG_FRACTION = 0.05
"""Reflections with at least this share of the strongest power must be indexed by the cell."""
INDEX_TOL = 0.12
"""Largest distance, in reciprocal-lattice units, of an indexed reflection from its node."""
COSET_FRACTION = 0.01
"""Least share of the indexed power a half-integer coset needs to halve the reciprocal cell
(the (1, 0) reflections of a perovskite carry ~15 %; domain satellites < 0.2 %)."""
MAX_CANDIDATES = 16
"""Reflections (strongest first) whose pairs are tried as reciprocal bases."""
MIN_PERIODS = 4.0
"""The frame must hold this many cells along each vector (shortest reflection, cycles)."""
MIN_PERIOD_PX = 2.5
"""Shortest lattice period looked for, px (2 px is the Nyquist limit)."""
BAND_SAMPLES = 256
"""Bins sampled per ring for its median power (the noise floor)."""
MIN_PAIRS = 8
"""Column pairs needed before the real-space refinement replaces the Fourier estimate."""
MIN_SIDE_PX = 16
"""Smallest frame side :func:`find_lattice` accepts, px."""
MIN_DIRECTIONS = 3
"""Distinct lattice directions the indexed reflections must lie on (:func:`directions`): the
two basis lines and at least one mixed node such as (1, 1)."""
STREAK_BINS = (3, 4, 5, 6, 7, 8)
"""Radial offsets (bins, both sides) at which a reflection's own line through the origin is
sampled for the streak floor (:func:`_candidates`)."""
HINT_TOLERANCE = 0.10
"""A hint agrees with the frame when within this relative distance of a cell length."""


@dataclass(frozen=True)
class Lattice:
    """The two vectors of the frame's unit cell and how significant its periodicity is.

    Attributes
    ----------
    a, b : (float, float)
        Cell vectors [dx, dy], px (x = column, y = row). A reduced basis: ``|a| <= |b|``, the
        angle between them in [60, 90] deg up to the sign of ``b``; ``a`` points right (or
        down when vertical) and ``a x b > 0``.
    snr : float
        Whitened power of the weakest reflection the cell rests on, in units of the median
        noise power at its |k| (a pure-noise bin exceeds ``t`` with probability ``2**-t``).
    threshold : float
        The significance a reflection needed in this frame (depends on the frame's size).
    n_reflections : int
        Significant reflections indexed by the cell.
    n_pairs : int
        Column pairs the real-space refinement used (0: Fourier estimate only).
    window : str
        The window of the pass that found the cell: ``"kaiser"``, or ``"tukey"`` when the
        crystal showed only along the frame's edges (see the module doc, step 4).
    """

    a: tuple[float, float]
    b: tuple[float, float]
    snr: float
    threshold: float = 0.0
    n_reflections: int = 0
    n_pairs: int = 0
    window: str = "kaiser"
    k_max: float = field(default=0.5, repr=False)  # largest |k| indexed, cycles/px

    @property
    def vectors(self) -> np.ndarray:
        """(2, 2) float64, rows a and b, px."""
        return np.array([self.a, self.b], dtype=np.float64)

    @property
    def reciprocal(self) -> np.ndarray:
        """(2, 2) float64, rows g1 and g2 in cycles/px, with ``a . g1 = b . g2 = 1``."""
        return np.linalg.inv(self.vectors).T

    @property
    def lengths(self) -> tuple[float, float]:
        """(|a|, |b|), px."""
        return float(math.hypot(*self.a)), float(math.hypot(*self.b))

    @property
    def spacing(self) -> float:
        """The characteristic spacing |a| (the shorter vector), px."""
        return self.lengths[0]

    @property
    def angle_deg(self) -> float:
        """Angle between a and b, degrees."""
        la, lb = self.lengths
        c = float(np.dot(self.a, self.b)) / (la * lb)
        return math.degrees(math.acos(max(-1.0, min(1.0, c))))

    @property
    def cell_area(self) -> float:
        """|a x b|, px^2."""
        return abs(self.a[0] * self.b[1] - self.a[1] * self.b[0])

    def as_dict(self) -> dict:
        """Plain data for a result header: vectors, lengths, angle, significance."""
        la, lb = self.lengths
        return {"a": [round(self.a[0], 4), round(self.a[1], 4)],
                "b": [round(self.b[0], 4), round(self.b[1], 4)],
                "a_px": round(la, 4), "b_px": round(lb, 4),
                "angle_deg": round(self.angle_deg, 3), "snr": round(float(self.snr), 2),
                "threshold": round(float(self.threshold), 2),
                "n_reflections": int(self.n_reflections), "n_pairs": int(self.n_pairs),
                "window": self.window}


# --------------------------------------------------------------------------------------------
# Spectrum
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(shape: tuple[int, int]) -> dict:
    """Per frame shape: rfft2 frequencies, ring bands (fixed-size samples of each); the same
    for every window."""
    h, w = shape
    fy = sfft.fftfreq(h)  # cycles/px, rfft2 rows
    fx = sfft.rfftfreq(w)
    kabs = np.hypot(fy[:, None], fx[None, :])
    r = kabs * max(h, w)  # radius in bins of the longer side
    edges = [0.0]
    while edges[-1] <= r.max():
        edges.append(edges[-1] + max(2.0, 0.06 * edges[-1]))
    band = np.digitize(r, edges).ravel() - 1
    n_bands = len(edges) - 1
    rng = np.random.default_rng(0)
    samples = np.zeros((n_bands, BAND_SAMPLES), np.int64)
    for i in range(n_bands):
        idx = np.flatnonzero(band == i)
        if idx.size:
            samples[i] = rng.choice(idx, BAND_SAMPLES, replace=idx.size < BAND_SAMPLES)
    return {"fy": fy, "fx": fx, "kabs": kabs, "band": band.reshape(kabs.shape),
            "samples": samples}


@lru_cache(maxsize=8)
def _window_2d(shape: tuple[int, int], window: str) -> np.ndarray:
    """The (H, W) float32 window of a pass, per frame shape."""
    h, w = shape
    return np.outer(_window(h, window), _window(w, window)).astype(np.float32)


def _window(n: int, window: str) -> np.ndarray:
    """One side of the 2-D window: Kaiser (``KAISER_BETA``) or Tukey (``TUKEY_ALPHA``).

    The Tukey taper is written out here: ``scipy.signal.windows.tukey`` would import
    scipy.signal, which nothing else on a cold ``analyze`` needs."""
    if window == "kaiser":
        return np.kaiser(n, KAISER_BETA)
    if window != "tukey":
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    taper = max(1, int(math.floor(TUKEY_ALPHA * (n - 1) / 2.0)))  # samples per cosine taper
    out = np.ones(n)
    ramp = 0.5 * (1.0 - np.cos(np.pi * np.arange(taper) / taper))
    out[:taper] = ramp
    out[n - taper:] = ramp[::-1]
    return out


def _spectrum(image: np.ndarray, window: str = "kaiser"
              ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Power spectrum (rfft2 layout) of the windowed frame, and it whitened by ring medians."""
    g = _grid(image.shape)
    img = image.astype(np.float32, copy=False)
    x = (img - np.float32(img.mean())) * _window_2d(image.shape, window)
    f = sfft.rfft2(x, workers=-1)
    p = (f.real * f.real + f.imag * f.imag).astype(np.float64)
    med = np.median(p.ravel()[g["samples"]], axis=1)
    tiny = max(float(p.max()), 1e-300) * 1e-15  # noise-free frames: keep the ratio finite
    wht = p / np.maximum(med[g["band"]], tiny)
    return p, wht, g


def _lookup(arr: np.ndarray, iy: np.ndarray, ix: np.ndarray, w: int) -> np.ndarray:
    """``arr`` (rfft2 layout of a width-``w`` frame) at full-plane indices, by Hermitian
    symmetry where ``ix`` leaves the stored half."""
    h = arr.shape[0]
    mirror = (ix < 0) | (ix > w // 2)
    jx = np.where(ix < 0, -ix, np.where(ix > w // 2, w - ix, ix))
    jy = np.where(mirror, -iy, iy) % h
    return arr[jy, jx]


def _candidates(p: np.ndarray, wht: np.ndarray, g: dict, threshold: float,
                k_lo: float, k_hi: float, w: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Significant reflections in the upper half plane: k (cycles/px, [kx, ky]), power, W."""
    h = p.shape[0]
    fy, fx, kabs = g["fy"], g["fx"], g["kabs"]
    half = (fx[None, :] > 0) | (fy[:, None] > 0)
    # Below the window's side-lobe level of the strongest reflection nothing is measurable.
    ok = (wht > threshold) & half & (kabs >= k_lo) & (kabs <= k_hi) & (p >= 1e-6 * p.max())
    iy, ix = np.nonzero(ok)
    if iy.size == 0:
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0)
    v = wht[iy, ix]
    local = np.ones(iy.size, bool)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            if dy or dx:
                local &= v >= _lookup(wht, iy + dy, ix + dx, w)
    iy, ix = iy[local], ix[local]
    pw = p[iy, ix]
    order = np.argsort(-pw)[:128]
    iy, ix, pw = iy[order], ix[order], pw[order]
    kk = np.column_stack([fx[ix], fy[iy]])
    # Non-maximum suppression, strongest first: satellites and side lobes within
    # max(3 bins, 0.2 |k|) of a stronger reflection (or of its Friedel mate) are dropped.
    binsz = 1.0 / max(h, w)
    rad = np.maximum(NMS_RADIUS_BINS * binsz, NMS_RELATIVE * np.hypot(*kk.T))
    diff = kk[:, None, :] - kk[None, :, :]
    summ = kk[:, None, :] + kk[None, :, :]
    dist = np.minimum(np.hypot(diff[..., 0], diff[..., 1]), np.hypot(summ[..., 0], summ[..., 1]))
    close = dist < rad[:, None]
    keep = np.zeros(len(kk), bool)
    for n in range(len(kk)):
        keep[n] = not (close[n, :n] & keep[:n]).any()
    sel = np.flatnonzero(keep)[:64]
    iy, ix = iy[sel], ix[sel]
    # Streak floor: scan-line offsets (the kx = 0 line), straight edges and walls put power
    # on a whole line through the origin, which the ring median does not see. A reflection
    # is a point: it must also stand ``threshold`` above the median of its own radial line.
    kb = np.column_stack([fx[ix] * w, fy[iy] * h])  # bins
    kn = np.maximum(np.hypot(*kb.T), 1e-9)
    samples = []
    for d in STREAK_BINS:
        for sgn in (-1.0, 1.0):
            r = np.maximum(kn + sgn * d, 1.0) / kn
            samples.append(_lookup(wht, np.rint(kb[:, 1] * r).astype(int),
                                   np.rint(kb[:, 0] * r).astype(int), w))
    streak = np.maximum(np.median(np.stack(samples), axis=0), 1.0)
    point = wht[iy, ix] / streak > threshold
    sel, iy, ix = sel[point], iy[point], ix[point]
    # Sub-bin position: a parabola through the log power along each axis.
    c = np.log(np.maximum(p[iy, ix], 1e-300))
    offs = []
    for dy, dx in ((1, 0), (0, 1)):
        lo = np.log(np.maximum(_lookup(p, iy - dy, ix - dx, w), 1e-300))
        hi = np.log(np.maximum(_lookup(p, iy + dy, ix + dx, w), 1e-300))
        den = lo - 2.0 * c + hi
        with np.errstate(divide="ignore", invalid="ignore"):
            offs.append(np.where(den < 0, np.clip(0.5 * (lo - hi) / den, -0.5, 0.5), 0.0))
    ks = np.column_stack([fx[ix] + offs[1] / w, fy[iy] + offs[0] / h])
    return ks, pw[sel], wht[iy, ix]


def _reduce(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction of a 2-D basis: |u| <= |v|, |u . v| <= |u|^2 / 2."""
    u, v = u.astype(np.float64), v.astype(np.float64)
    for _ in range(64):
        if np.dot(v, v) < np.dot(u, u):
            u, v = v, u
        m = round(float(np.dot(u, v) / np.dot(u, u)))
        if m == 0:
            break
        v = v - m * u
    if np.dot(v, v) < np.dot(u, u):
        u, v = v, u
    return u, v


def _index(basis: np.ndarray, ks: np.ndarray, tol: float = INDEX_TOL
           ) -> tuple[np.ndarray, np.ndarray]:
    """Integer indices of ``ks`` in the reciprocal basis (rows) and whether each is indexed."""
    frac = ks @ np.linalg.inv(basis)
    hk = np.rint(frac)
    ok = (np.abs(frac - hk).max(axis=1) <= tol) & (np.abs(hk).sum(axis=1) > 0)
    return hk, ok


def _lstsq_basis(basis: np.ndarray, ks: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Least-squares reciprocal basis from the reflections ``ok`` indexed by ``basis``."""
    hk, _ = _index(basis, ks)
    if ok.sum() >= 3 and np.linalg.matrix_rank(hk[ok]) == 2:
        sol, *_ = np.linalg.lstsq(hk[ok], ks[ok], rcond=None)
        if np.all(np.isfinite(sol)) and abs(np.linalg.det(sol)) > 0:
            return sol
    return basis


def _span(basis: np.ndarray, node: np.ndarray) -> np.ndarray:
    """Reduced basis of the lattice spanned by the rows of ``basis`` and one more ``node``
    (given in that basis' rational indices)."""
    vs = [(i + l * node[0]) * basis[0] + (j + l * node[1]) * basis[1]
          for i in range(-3, 4) for j in range(-3, 4) for l in range(0, 4)]
    vs = [v for v in vs if math.hypot(*v) > 1e-12]
    u = min(vs, key=lambda v: math.hypot(*v))
    lu = math.hypot(*u)
    rest = [v for v in vs if abs(u[0] * v[1] - u[1] * v[0]) > 1e-6 * lu * math.hypot(*v)]
    v = min(rest, key=lambda v: math.hypot(*v))
    return np.array(_reduce(u, v))


def directions(basis: np.ndarray, ks: np.ndarray) -> int:
    """How many distinct lattice directions the reflections ``ks`` lie on.

    Each reflection's integer index (h, k) in ``basis`` is reduced to its primitive
    direction (h, k) / gcd(h, k), up to sign: (2, 0) and (-1, 0) are one direction, (1, 1)
    another. A two-dimensional lattice of compact motifs (columns) puts power on nodes off
    the two basis lines too; two unrelated one-dimensional periodicities (domain stripes
    plus scan-line noise, two sets of fringes) put it on two lines only.

    Parameters
    ----------
    basis : (2, 2) ndarray
        Reciprocal basis (rows), cycles/px.
    ks : (N, 2) ndarray
        Reflections it indexes, cycles/px.

    Returns
    -------
    int
        Number of distinct primitive directions.
    """
    hk, ok = _index(basis, np.asarray(ks, float).reshape(-1, 2))
    seen = set()
    for h, k in hk[ok].astype(int):
        g = math.gcd(int(h), int(k)) or 1
        h, k = h // g, k // g
        if h < 0 or (h == 0 and k < 0):
            h, k = -h, -k
        seen.add((int(h), int(k)))
    return len(seen)


def _choose_basis(ks: np.ndarray, pw: np.ndarray, wht: np.ndarray
                  ) -> tuple[np.ndarray, float, np.ndarray] | None:
    """The reciprocal basis (rows g1, g2) spanning the reflections, the significance of the
    weakest reflection it rests on, and which reflections it indexes.

    The strong reflections (>= STRONG_FRACTION of the strongest power) give the first basis:
    the pair that indexes most of them, the coarsest such, refined by least squares. Weaker
    significant reflections at half-integer nodes of it then halve the reciprocal cell (the
    A-B contrast of a perovskite when the (1, 0) reflections are weak; a doubled cell) when
    at least two distinct reflections (Friedel mates count once) sit on the same coset and
    carry COSET_FRACTION of the power; reflections at no such node (noise, satellites) are
    left out."""
    is_strong = pw >= STRONG_FRACTION * pw.max()
    strong = np.flatnonzero(is_strong)[:MAX_CANDIDATES]
    best = None
    for x, i in enumerate(strong):
        for j in strong[x + 1:]:
            u, v = ks[i], ks[j]
            if abs(u[0] * v[1] - u[1] * v[0]) < 0.2 * math.hypot(*u) * math.hypot(*v):
                continue  # (nearly) collinear
            basis = np.array(_reduce(u, v))
            _, ok = _index(basis, ks[strong], 1.5 * INDEX_TOL)
            area = abs(basis[0, 0] * basis[1, 1] - basis[0, 1] * basis[1, 0])
            score = (int(ok.sum()), area, min(wht[i], wht[j]))
            if best is None or score > best[0]:
                best = (score, basis, min(float(wht[i]), float(wht[j])))
    if best is None:
        return None
    _, basis, snr = best
    _, ok = _index(basis, ks, 1.5 * INDEX_TOL)
    basis = _lstsq_basis(basis, ks, ok & is_strong)
    _, ok = _index(basis, ks)
    basis = _lstsq_basis(basis, ks, ok)
    # Half-integer cosets of the strong lattice with two or more distinct reflections.
    frac = ks @ np.linalg.inv(basis)
    node = np.rint(2.0 * frac) / 2.0
    on = (np.abs(frac - node).max(axis=1) <= INDEX_TOL) & ~_index(basis, ks)[1]
    cosets: dict[tuple[int, int], list[int]] = {}
    for n in np.flatnonzero(on):
        key = (int(round(2 * node[n, 0])) % 2, int(round(2 * node[n, 1])) % 2)
        cosets.setdefault(key, []).append(int(n))
    total = pw[_index(basis, ks)[1]].sum()
    support = {c: m for c, m in cosets.items()
               if len(m) >= 2 and pw[m].sum() >= COSET_FRACTION * total}
    if support:
        c, members = max(support.items(), key=lambda cm: sum(wht[m] for m in cm[1]))
        basis = _span(basis, np.array(c, float) / 2.0)
        _, ok = _index(basis, ks)
        basis = _lstsq_basis(basis, ks, ok)
        snr = min(snr, float(max(wht[m] for m in members)))
    _, ok = _index(basis, ks)
    return basis, snr, ok


# --------------------------------------------------------------------------------------------
# Real space
# --------------------------------------------------------------------------------------------


SITE_TOL = 0.15
"""Largest miss of a lattice translate in :func:`indexed_sites`, in units of |a|."""


def indexed_sites(lattice: Lattice, xy: np.ndarray, shape: tuple[int, int],
                  tol: float = SITE_TOL, of: np.ndarray | None = None) -> np.ndarray:
    """The sites the cell indexes: another site lies one cell vector away (+-a, +-b) for every
    translate inside the frame but at most one, and for at least two (three of four inside
    the frame, two of three along an edge, both at a corner).

    Why: a reference for "crystal" that does not depend on how many sites are crystalline.
    A site in a disordered region passes only by chance: with one site per ~|a|^2 / 2 and a
    disk of radius ``tol`` |a| per translate, a translate finds a site with probability
    ~2 pi tol^2 (0.14 at the default), three of four ~1e-2, two of three (along an edge)
    ~6e-2 (columns spread less evenly than random points, so less). One missing translate
    is forgiven: a column the detection missed would otherwise cost each of its neighbours.

    Parameters
    ----------
    lattice : Lattice
        The frame's cell (px).
    xy : (N, 2) array_like of float
        Site positions x, y, px.
    shape : (int, int)
        Frame (H, W), px: a translate outside it is not asked for.
    tol : float, optional
        Largest distance from a translate to the site found there, in units of |a|.
    of : (M,) array_like of int, optional
        Indices of the sites to test (default all); the translates may find any site.

    Returns
    -------
    (N,) ndarray of bool, or (M,) with ``of``
    """
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    ask = pts if of is None else pts[np.asarray(of, dtype=np.int64).reshape(-1)]
    if len(pts) < 2:
        return np.zeros(len(ask), dtype=bool)
    h, w = shape
    # the four translates (+-a, +-b) of every asked site, one block each
    t = np.concatenate([ask + v for v in (*lattice.vectors, *(-lattice.vectors))])
    ok = ((t[:, 0] >= 0) & (t[:, 0] <= w - 1) & (t[:, 1] >= 0) & (t[:, 1] <= h - 1))
    # a site strictly within tol |a| of a translate (a k-d tree's distance_upper_bound query,
    # on a grid: ~10x faster), all translates in one call
    hit = kernels.any_within(pts, t, tol * lattice.spacing) & ok
    found = hit.reshape(4, len(ask)).sum(axis=0)
    inside = ok.reshape(4, len(ask)).sum(axis=0)
    return found >= np.maximum(2, inside - 1)


def _refine_vector(tree: cKDTree, pts: np.ndarray, v: np.ndarray, tol: float
                   ) -> tuple[np.ndarray, int]:
    """Mean displacement to the column one (then three) cell vectors away; pairs used."""
    used = 0
    for steps, frac in ((1, 1.0), (3, 0.5)):
        # one thread: scipy starts Python threads per call for workers > 1, which cost more
        # than they save here (measured: 0.75 vs 1.6 ms per query for 2,000 columns, 5.8 vs
        # 5.5 ms for 14,000)
        dist, j = tree.query(pts + steps * v, distance_upper_bound=frac * tol)
        ok = np.isfinite(dist)
        if ok.sum() < MIN_PAIRS:
            break
        d = (pts[j[ok]] - pts[ok]) / steps
        med = np.median(d, axis=0)
        inl = np.hypot(*(d - med).T) <= 0.5 * frac * tol / steps
        if inl.sum() < MIN_PAIRS:
            break
        v = d[inl].mean(axis=0)
        used = int(inl.sum())
    return v, used


def _orient(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduced basis, a the shortest vector nearest to +x (ties within 1 %: the one nearest
    +x, so a square cell reads [a, 0], [0, a] at rotation 0), and a x b > 0."""
    a0, b0 = _reduce(a, b)
    la = math.hypot(*a0)
    vs = [i * a0 + j * b0 for i in range(-2, 3) for j in range(-2, 3) if i or j]
    a = max((v for v in vs if math.hypot(*v) <= 1.01 * la),
            key=lambda v: (v[0] / math.hypot(*v), v[1]))
    cands = [v for v in vs if a[0] * v[1] - a[1] * v[0] > 1e-6 * la * la]
    lb = min(math.hypot(*v) for v in cands)
    short = [v for v in cands if math.hypot(*v) <= 1.01 * lb]
    b = max(short, key=lambda v: (-abs(np.dot(a, v)) / math.hypot(*v), v[1]))
    return np.asarray(a, np.float64), np.asarray(b, np.float64)


# --------------------------------------------------------------------------------------------
# Public
# --------------------------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"`image` must be a 2-D array, got {arr.ndim}-D")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"`image` must be real-valued, got dtype {arr.dtype}")
    return arr


def find_lattice(image: np.ndarray, *, previous: Lattice | None = None,
                 false_alarm: float = 1e-3) -> Lattice | None:
    """Find the unit cell of the frame's intensity pattern, or say there is none.

    Parameters
    ----------
    image : (H, W) array_like
        The frame, any real dtype (a normalised [0, 1] frame or raw counts; non-finite pixels
        count as the mean). Both sides must be at least 16 px.
    previous : Lattice, optional
        The cell found on the session's previous frame: when this frame shows the same cell
        (within 3 %), its vectors keep the previous order and signs, so a session's ``a``
        stays the same physical direction from frame to frame.
    false_alarm : float, optional
        Chance per frame that pure noise yields one significant reflection (default 1e-3),
        0 < false_alarm < 1.

    Returns
    -------
    Lattice or None
        The cell (vectors in px), or None when the frame shows no two-dimensional periodicity
        above the noise (blank, pure noise, amorphous, or a single set of fringes).

    Raises
    ------
    ValueError
        If ``image`` is not 2-D, smaller than 16 px on a side, or ``false_alarm`` is not in
        (0, 1).
    TypeError
        If ``image`` is not real-valued.
    """
    arr = _check_image(image)
    if min(arr.shape) < MIN_SIDE_PX:
        raise ValueError(f"`image` must be at least {MIN_SIDE_PX} x {MIN_SIDE_PX} px, got "
                         f"{arr.shape}")
    if not (0.0 < float(false_alarm) < 1.0):
        raise ValueError(f"`false_alarm` must be in (0, 1), got {false_alarm!r}")
    img = arr.astype(np.float32)
    finite = np.isfinite(img)
    if not finite.all():
        img[~finite] = img[finite].mean() if finite.any() else 0.0
    if not finite.any() or float(img.max()) == float(img.min()):
        return None
    for window in WINDOWS:  # each pass tests at a share of the false-alarm budget
        lat = _search(img, window, float(false_alarm) / len(WINDOWS), previous)
        if lat is not None:
            return lat
    return None


def _search(img: np.ndarray, window: str, false_alarm: float,
            previous: Lattice | None) -> Lattice | None:
    """One pass of :func:`find_lattice` through one window, at ``false_alarm``."""
    h, w = img.shape
    k_lo = MIN_PERIODS / min(h, w)
    k_hi = 1.0 / MIN_PERIOD_PX
    p, wht, g = _spectrum(img, window)
    n_search = max(1, int(((g["kabs"] >= k_lo) & (g["kabs"] <= k_hi)).sum()))
    threshold = math.log2(n_search / false_alarm)
    ks, pw, ww = _candidates(p, wht, g, threshold, k_lo, k_hi, w)
    if len(ks) < 2:
        return None
    chosen = _choose_basis(ks, pw, ww)
    if chosen is None:
        return None
    basis, snr, ok = chosen
    if directions(basis, ks[ok]) < MIN_DIRECTIONS:
        return None  # two unrelated 1-D periodicities (stripes, scan lines) are no lattice
    real = np.linalg.inv(basis).T  # rows a, b: a . g1 = 1, a . g2 = 0
    a, b = _orient(real[0], real[1])
    if max(np.hypot(*a), np.hypot(*b)) * MIN_PERIODS > max(h, w):
        return None
    if previous is not None:
        # the session's cell again (within 3 %): keep its vectors' order and signs
        pa, pb = previous.vectors
        cands = [(a, b), (-a, -b), (b, -a), (-b, a), (a, -b), (-a, b), (b, a), (-b, -a)]
        ca, cb = min(cands, key=lambda ab: np.hypot(*(ab[0] - pa)) + np.hypot(*(ab[1] - pb)))
        if np.hypot(*(ca - pa)) <= 0.03 * np.hypot(*pa) and \
                np.hypot(*(cb - pb)) <= 0.03 * np.hypot(*pb):
            a, b = ca, cb
    k_max = float(np.hypot(*ks[ok].T).max()) if ok.any() else 0.5
    return Lattice(a=(float(a[0]), float(a[1])), b=(float(b[0]), float(b[1])),
                   snr=float(snr), threshold=float(threshold), n_reflections=int(ok.sum()),
                   window=window, k_max=k_max)


def refine_lattice(lattice: Lattice, xy: np.ndarray) -> Lattice:
    """Refine the cell vectors on column positions found in the frame.

    Each column is paired with the column found one cell vector away, then three (the
    longer baseline divides position noise by three); the inliers' mean displacement is the
    refined vector. Double detections, noise blobs and pairs straddling a domain wall fall
    outside the inlier radius. The refinement only refines: it is refused (``lattice``
    returned as it is) with fewer than :data:`MIN_PAIRS` pairs per vector or when a vector
    would move by more than 3 %.

    Parameters
    ----------
    lattice : Lattice
        The cell from :func:`find_lattice`.
    xy : (N, 2) array_like of float
        Column positions x, y, px (e.g. the atoms workflow's chosen atoms).

    Returns
    -------
    Lattice
        The refined cell, ``n_pairs`` = the smaller number of pairs behind a vector; or
        ``lattice`` itself.

    Raises
    ------
    ValueError
        If ``xy`` is not (N, 2) finite.
    """
    pts = np.asarray(xy, dtype=np.float64)
    if pts.size == 0:
        return lattice
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise ValueError(f"`xy` must be (N, 2) finite, got shape {pts.shape}")
    if len(pts) < MIN_PAIRS:
        return lattice
    a, b = lattice.vectors
    d_min = float(min(np.hypot(*a), np.hypot(*b), np.hypot(*(a + b)), np.hypot(*(a - b))))
    tree = cKDTree(pts)
    a2, na = _refine_vector(tree, pts, a, 0.25 * d_min)
    b2, nb = _refine_vector(tree, pts, b, 0.25 * d_min)
    if min(na, nb) < MIN_PAIRS:
        return lattice
    if np.hypot(*(a2 - a)) > 0.03 * np.hypot(*a) or np.hypot(*(b2 - b)) > 0.03 * np.hypot(*b):
        return lattice
    return replace(lattice, a=(float(a2[0]), float(a2[1])), b=(float(b2[0]), float(b2[1])),
                   n_pairs=int(min(na, nb)))


def hint_agrees(lattice: Lattice, hint_px: float, tolerance: float = HINT_TOLERANCE) -> bool:
    """Whether a lattice-spacing hint matches a cell length of ``lattice``.

    Parameters
    ----------
    lattice : Lattice
        The cell found in the frame.
    hint_px : float
        The expected spacing, px (> 0).
    tolerance : float, optional
        Largest relative difference accepted (default 0.10).

    Returns
    -------
    bool
        True when ``|hint - |a|| <= tolerance * |a|`` or the same for ``|b|``.

    Raises
    ------
    ValueError
        If ``hint_px`` or ``tolerance`` is not a positive finite number.
    """
    for name, v in (("hint_px", hint_px), ("tolerance", tolerance)):
        if not (np.isscalar(v) and math.isfinite(float(v)) and float(v) > 0):
            raise ValueError(f"`{name}` must be a positive finite number, got {v!r}")
    return any(abs(float(hint_px) - n) <= float(tolerance) * n for n in lattice.lengths)


def contrast_skew(image: np.ndarray, lattice: Lattice, radius_bins: float = 2.5) -> float:
    """Skewness of the Bragg-filtered frame: > 0 for bright columns, < 0 for dark ones.

    The frame is filtered to its lattice reflections (disks of ``radius_bins`` around every
    node of the reciprocal lattice up to the highest significant order), which removes the
    noise and everything aperiodic (gradients, thickness, amorphous patches) and keeps the
    column shape: bright columns on a dark background are sharp maxima between broad minima
    (positive skew), dark columns on a bright background the reverse.

    Parameters
    ----------
    image : (H, W) array_like
        The frame (normalised or raw; the sign of the skew does not depend on scale).
    lattice : Lattice
        Its cell, from :func:`find_lattice`.
    radius_bins : float, optional
        Radius of the pass disks, frequency bins (default 2.5).

    Returns
    -------
    float
        The skewness of the filtered frame, away from a border of one cell length; 0.0 for
        a frame without contrast.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or ``radius_bins`` is not a positive finite number.
    TypeError
        If ``image`` is not real-valued.
    """
    arr = _check_image(image)
    if not (math.isfinite(float(radius_bins)) and float(radius_bins) > 0):
        raise ValueError(f"`radius_bins` must be a positive finite number, got {radius_bins!r}")
    img = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    h, w = img.shape
    f = sfft.rfft2(img - img.mean(), workers=-1)
    fy = sfft.fftfreq(h)[:, None]
    fx = sfft.rfftfreq(w)[None, :]
    a, b = lattice.vectors
    hh = np.rint(fx * a[0] + fy * a[1])  # nearest reciprocal node: h = k . a, l = k . b
    ll = np.rint(fx * b[0] + fy * b[1])
    g = lattice.reciprocal
    nx = hh * g[0, 0] + ll * g[1, 0]
    ny = hh * g[0, 1] + ll * g[1, 1]
    dist = np.hypot((fx - nx) * w, (fy - ny) * h)  # in bins
    kmax = lattice.k_max + 1.5 * radius_bins / min(h, w)
    mask = (dist <= radius_bins) & ((hh != 0) | (ll != 0)) & (np.hypot(nx, ny) <= kmax)
    filt = sfft.irfft2(f * mask, s=(h, w), workers=-1)
    m = int(min(max(lattice.lengths), min(h, w) / 4))
    core = filt[m:h - m, m:w - m] if m > 0 else filt
    sd = float(core.std())
    if not sd > 0:
        return 0.0
    z = (core - core.mean()) / sd
    return float(np.mean(z * z * z))
