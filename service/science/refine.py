"""Sub-pixel column positions: a 2-D Gaussian + background fit around every column.

Why: the LoG finder's sub-pixel step is a per-axis parabola through three samples of the
LoG response, which is biased by the neighbouring columns inside the LoG kernel and by the
pixel phase of the column; a polarization map reads B-column offsets of a tenth of a lattice
spacing (~1 px) and needs positions good to ~0.1 px. Here every column is fitted on the
normalised frame by Levenberg-Marquardt (a damped Gauss-Newton) with the model

    I(x, y) = b + A exp(-((x - cx)^2 + (y - cy)^2) / (2 s^2))

in a disk of radius ``WINDOW_FRAC * a`` (0.35 lattice spacings: the column and its shoulders,
while the nearest neighbours, a / sqrt(2) away in a perovskite [001] projection, stay outside).
Neighbours still reach into the disk with their tails, which pulls a dim column towards a
bright neighbour (B-column RMSE 0.1-0.4 px for columns 0.15-0.18 a wide); so where the
columns are wide enough for that (``PASS2_WIDTH_FRAC``) the fit runs twice: the second pass
subtracts every other column's first-pass Gaussian (rendered once per pass into a model image)
from the data before fitting.
Saturated pixels (at the normalised frame's clip value 1.0) carry no shape information and are
left out of the fit.

Fall-back rule (the column keeps its input position, and ``fitted`` is False) when the fit
cannot be trusted:

* fewer than ``MIN_PIXELS`` usable pixels (a column at the very frame edge, a saturated blob);
* the iteration diverged (non-finite values) or ended without a positive amplitude (no peak);
* the fitted width is outside [``MIN_SIGMA_PX``, window radius] (a single hot pixel, or a
  background slope rather than a column);
* the centre moved more than ``max_shift_frac * a`` from the input (default 0.15 a, 1.8 px
  at a = 12 px; at least ``MIN_SHIFT_PX``): a move that large means the window (0.35 a)
  held something other than one column (a double detection a few px off a column, a column
  centred outside the frame, an amorphous smear). 0.15 a rather than a tighter limit: on
  simulated 384^2 frames at dose 50 and 200 e/px the smoothing LoG places some dim B
  columns 1.2-1.8 px off and the fit brings them back (B-column RMSE 0.25 -> 0.18 px and
  0.21 -> 0.09 px against a 0.1 a limit; the LoG alone: 0.28 and 0.26 px);
* the amplitude is below ``MIN_SNR`` = 3 times the RMS of the fit's residuals: the column
  hardly stands above the noise, and a smoothing finder (the LoG at a width above the
  column's) can place it better than a free 5-parameter fit. Measured on simulated 384^2
  frames with Gaussian noise of 0.2 and 0.35 of the A peak: B-column median error 0.47 ->
  0.45 px and 0.89 -> 0.82 px with the gate (the LoG alone: 0.41 and 0.69 px: at that
  noise the fit is not an improvement for dim columns); at dose 20 e/px or noise 0.1 the
  gate changes nothing (fit 0.25 and 0.21 px, LoG 0.23 and 0.23 px).

A column of the first pass that fell back is not subtracted from its neighbours in the second;
a column that falls back in the second pass keeps its first-pass fit when that one was valid.

On clean simulated frames the column RMSE against the truth is 0.001 px (0.01 and 0.05 px for
columns 0.15 and 0.18 a wide); the LoG positions': 0.08-0.18 px, mostly ~1 px errors on
columns cut by the frame edge.
The loops are ``@njit(cache=True, nogil=True)`` kernels, O(N) in the columns, ~3 iterations
per column and pass; the separable Gaussian costs 2 (2r + 1) exponentials per evaluation
instead of one per pixel. Measured on this repository's (busy) 2-core machine, a = 12 px:
5 ms for the ~2100 columns of a 384^2 frame and 34 ms for the ~14 600 of a 1024^2 frame with
one pass (columns 0.11 a wide), 12 ms and ~95 ms with two (0.15 a).

Coordinates: ``xy[:, 0]`` = x = column, ``xy[:, 1]`` = y = row, in pixels, pixel centres at
integers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from rewardscope.science import kernels

__all__ = [
    "MAX_SHIFT_FRAC",
    "WINDOW_FRAC",
    "Refinement",
    "refine_columns",
    "warmup",
]

WINDOW_FRAC = 0.35
"""Fit disk radius, lattice spacings (neighbours at >= a / sqrt(2) = 0.71 a stay outside)."""
MAX_SHIFT_FRAC = 0.15
"""Largest accepted move of a column from its input position, lattice spacings."""
MIN_SHIFT_PX = 0.5
"""The accepted move is never smaller than this, px (small lattices)."""
PASS2_WIDTH_FRAC = 0.115
"""By default (``passes=None``) the second pass runs only when the first pass's median column
width exceeds this * a: then a neighbour a / sqrt(2) away still has ~1 % of its peak at the
window's edge. Measured first-pass pull on clean simulated frames: 0.002 px RMSE at widths
0.11 a (the second pass would cost ~40 % more for nothing), 0.01 / 0.02 / 0.07 px at 0.12 /
0.13 / 0.15 a, and 0.001-0.01 px after the second pass."""
REACH = 4.0
"""Fitted Gaussians are subtracted out to this many widths from their centre."""
SIGMA_FRAC = 0.1
"""Starting column width, lattice spacings (HAADF columns are ~0.1 a wide)."""
MIN_SIGMA_PX = 0.3
"""Narrowest accepted column width, px (narrower is a hot pixel, not a column)."""
MIN_SNR = 3.0
"""A fit whose amplitude is below this many residual RMS is not trusted (module doc)."""
MIN_PIXELS = 8
"""Fewest usable pixels in a window for a fit of 5 parameters."""
MAX_ITER = 25
"""Levenberg-Marquardt iterations per fit (columns converge in ~3)."""
TOL_PX = 1e-3
"""A fit has converged when a step moves the centre by less than this, px."""
SATURATION = 1.0
"""Pixels at or above this value of the normalised frame (its clip value) are left out."""

# kernel status codes
_OK, _FEW_PIXELS, _DIVERGED, _NO_PEAK, _BAD_WIDTH, _MOVED, _FAINT = 0, 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class Refinement:
    """Sub-pixel positions of the columns, row-aligned with the input positions.

    Attributes
    ----------
    xy : (N, 2) ndarray of float64
        Refined x, y in px; the input position where the fit fell back.
    fitted : (N,) ndarray of bool
        True where the fit was accepted (module doc: the fall-back rule).
    amplitude : (N,) ndarray of float64
        Fitted peak height above the local background, in the image's unit; NaN where not
        fitted.
    sigma : (N,) ndarray of float64
        Fitted Gaussian width, px; NaN where not fitted.
    background : (N,) ndarray of float64
        Fitted local background, in the image's unit; NaN where not fitted.
    snr : (N,) ndarray of float64
        How far the column stands above the noise: fitted amplitude / RMS of the fit's
        residuals in its window (dimensionless); NaN where not fitted.
    status : (N,) ndarray of int8
        0 fitted; why not otherwise: 1 too few pixels, 2 diverged, 3 no peak, 4 width out of
        range, 5 moved too far, 6 too faint (amplitude < MIN_SNR residual RMS).
    """

    xy: np.ndarray
    fitted: np.ndarray
    amplitude: np.ndarray
    sigma: np.ndarray
    background: np.ndarray
    snr: np.ndarray
    status: np.ndarray


# --------------------------------------------------------------------------------------------
# kernel
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _solve5(a, b, out):  # pragma: no cover - numba
    """Solve the 5x5 symmetric positive definite system a x = b by Cholesky; False if not SPD."""
    n = 5
    lo = np.zeros((5, 5))
    for i in range(n):
        for j in range(i + 1):
            s = a[i, j]
            for k in range(j):
                s -= lo[i, k] * lo[j, k]
            if i == j:
                if s <= 0.0:
                    return False
                lo[i, i] = math.sqrt(s)
            else:
                lo[i, j] = s / lo[j, j]
    y = np.zeros(5)
    for i in range(n):
        s = b[i]
        for k in range(i):
            s -= lo[i, k] * y[k]
        y[i] = s / lo[i, i]
    for i in range(n - 1, -1, -1):
        s = y[i]
        for k in range(i + 1, n):
            s -= lo[k, i] * out[k]
        out[i] = s / lo[i, i]
    return True


@njit(cache=True, nogil=True, fastmath=True)
def _profiles(x0, y0, side, c, s, ex, ey):  # pragma: no cover - numba
    """exp(-(x - cx)^2 / (2 s^2)) on the window's columns and rows (the Gaussian is separable,
    so 2 * side exponentials serve every pixel of the window)."""
    inv = 1.0 / (2.0 * s * s)
    for u in range(side):
        d = x0 + u - c[0]
        ex[u] = math.exp(-d * d * inv)
        d = y0 + u - c[1]
        ey[u] = math.exp(-d * d * inv)


@njit(cache=True, nogil=True, fastmath=True)
def _sse(gx, gy, pv, n, p, x0, y0, side, ex, ey):  # pragma: no cover - numba
    _profiles(x0, y0, side, p[2:4], p[4], ex, ey)
    s = 0.0
    for k in range(n):
        r = pv[k] - p[0] - p[1] * ex[gx[k]] * ey[gy[k]]
        s += r * r
    return s


@njit(cache=True, nogil=True, fastmath=True)
def _normal_equations(gx, gy, pv, n, p, x0, y0, side, ex, ey, jtj, jtr):  # pragma: no cover
    """J^T J and J^T r of the model at p over the window's pixels, into jtj, jtr (fastmath:
    only finite inputs reach it; the sums vectorise)."""
    _profiles(x0, y0, side, p[2:4], p[4], ex, ey)
    s2 = p[4] * p[4]
    c2 = p[1] / s2
    c4 = p[1] / (s2 * p[4])
    a00 = a01 = a02 = a03 = a04 = a11 = a12 = a13 = a14 = 0.0
    a22 = a23 = a24 = a33 = a34 = a44 = 0.0
    r0 = r1 = r2 = r3 = r4 = 0.0
    for k in range(n):
        dx = x0 + gx[k] - p[2]
        dy = y0 + gy[k] - p[3]
        e = ex[gx[k]] * ey[gy[k]]
        g2 = c2 * e * dx
        g3 = c2 * e * dy
        g4 = c4 * e * (dx * dx + dy * dy)
        r = pv[k] - p[0] - p[1] * e
        a00 += 1.0
        a01 += e
        a02 += g2
        a03 += g3
        a04 += g4
        a11 += e * e
        a12 += e * g2
        a13 += e * g3
        a14 += e * g4
        a22 += g2 * g2
        a23 += g2 * g3
        a24 += g2 * g4
        a33 += g3 * g3
        a34 += g3 * g4
        a44 += g4 * g4
        r0 += r
        r1 += e * r
        r2 += g2 * r
        r3 += g3 * r
        r4 += g4 * r
    jtj[0, 0], jtj[0, 1], jtj[0, 2], jtj[0, 3], jtj[0, 4] = a00, a01, a02, a03, a04
    jtj[1, 1], jtj[1, 2], jtj[1, 3], jtj[1, 4] = a11, a12, a13, a14
    jtj[2, 2], jtj[2, 3], jtj[2, 4], jtj[3, 3], jtj[3, 4], jtj[4, 4] = a22, a23, a24, a33, a34, a44
    for i in range(5):
        for j in range(i):
            jtj[i, j] = jtj[j, i]
    jtr[0], jtr[1], jtr[2], jtr[3], jtr[4] = r0, r1, r2, r3, r4


@njit(cache=True, nogil=True)
def _fit_window(gx, gy, pv, n, p, x0, y0, side, max_iter, tol):  # pragma: no cover - numba
    """Levenberg-Marquardt on p = [b, A, cx, cy, s] in place; returns False if it diverged.

    Pixel k sits at column x0 + gx[k], row y0 + gy[k]; stops when the centre moves < tol px.
    """
    jtj = np.zeros((5, 5))
    a = np.zeros((5, 5))
    jtr = np.zeros(5)
    step = np.zeros(5)
    trial = np.zeros(5)
    ex = np.empty(side)
    ey = np.empty(side)
    lam = 1e-3
    cost = _sse(gx, gy, pv, n, p, x0, y0, side, ex, ey)
    if not math.isfinite(cost):
        return False
    for _ in range(max_iter):
        _normal_equations(gx, gy, pv, n, p, x0, y0, side, ex, ey, jtj, jtr)
        improved = False
        small = False
        for _try in range(8):
            a[:, :] = jtj
            for i in range(5):
                a[i, i] += lam * max(jtj[i, i], 1e-12)
            if not _solve5(a, jtr, step):
                lam *= 10.0
                continue
            for i in range(5):
                trial[i] = p[i] + step[i]
            if trial[4] <= 0.05:
                lam *= 10.0
                continue
            c = _sse(gx, gy, pv, n, trial, x0, y0, side, ex, ey)
            if math.isfinite(c) and c <= cost:
                small = abs(step[2]) < tol and abs(step[3]) < tol
                p[:] = trial
                cost = c
                lam = max(lam * 0.1, 1e-9)
                improved = True
                break
            lam *= 10.0
        if small or not improved:  # converged, or no step lowers the cost: at the minimum
            break
    for i in range(5):
        if not math.isfinite(p[i]):
            return False
    return True


@njit(cache=True, nogil=True)
def _render_kernel(height, width, params, ok, reach):  # pragma: no cover - numba
    """Sum of the fitted Gaussians (no backgrounds) of the ``ok`` columns, each drawn out to
    ``reach`` widths (separable: 2 (2R + 1) exponentials per column)."""
    model = np.zeros((height, width))
    for a in range(params.shape[0]):
        if not ok[a]:
            continue
        amp, s = params[a, 1], params[a, 4]
        r = int(math.ceil(reach * s))
        side = 2 * r + 1
        x0 = int(math.floor(params[a, 2] + 0.5)) - r
        y0 = int(math.floor(params[a, 3] + 0.5)) - r
        ex = np.empty(side)
        ey = np.empty(side)
        _profiles(x0, y0, side, params[a, 2:4], s, ex, ey)
        for v in range(side):
            y = y0 + v
            if y < 0 or y >= height:
                continue
            for u in range(side):
                x = x0 + u
                if 0 <= x < width:
                    model[y, x] += amp * ey[v] * ex[u]
    return model


@njit(cache=True, nogil=True)
def _refine_kernel(image, xs, ys, init, radius, sigma0, max_shift, min_sigma, saturation,
                   model, max_iter, tol, min_pixels, min_snr):  # pragma: no cover - numba
    """Fit every column; shift limit relative to the input ``xs, ys``.

    ``init`` (N, 5): starting [b, A, cx, cy, s] of a column from the pass before (its window
    is centred on cx, cy and its own Gaussian is added back to the data), or NaN in the first
    entry: start at the input position with width ``sigma0``, background and amplitude from
    the window's range. ``model`` (H, W), or (1, 1) for none: the other columns' fitted
    Gaussians, subtracted from the data. Returns (N, 6) fitted parameters and the residual
    RMS (NaN where rejected) and (N,) int8 status codes.
    """
    n = xs.shape[0]
    height, width = image.shape
    use_model = model.shape[0] == height and model.shape[1] == width
    side = 2 * radius + 1
    cap = side * side
    gx = np.empty(cap, dtype=np.int64)
    gy = np.empty(cap, dtype=np.int64)
    pv = np.empty(cap)
    ex = np.empty(side)
    ey = np.empty(side)
    out = np.full((n, 6), np.nan)
    status = np.zeros(n, dtype=np.int8)
    p = np.zeros(5)
    lim2 = (radius + 0.5) * (radius + 0.5)
    for a in range(n):
        guess = not math.isfinite(init[a, 0])
        cx0 = xs[a] if guess else init[a, 2]
        cy0 = ys[a] if guess else init[a, 3]
        x0 = int(math.floor(cx0 + 0.5)) - radius
        y0 = int(math.floor(cy0 + 0.5)) - radius
        if not guess:  # this column's own share of the model, added back below
            _profiles(x0, y0, side, init[a, 2:4], init[a, 4], ex, ey)
        m = 0
        vmax = -np.inf
        vmin = np.inf
        for v in range(side):
            y = y0 + v
            if y < 0 or y >= height:
                continue
            for u in range(side):
                x = x0 + u
                if x < 0 or x >= width:
                    continue
                if (x - cx0) * (x - cx0) + (y - cy0) * (y - cy0) > lim2:
                    continue
                val = float(image[y, x])
                if val >= saturation or not math.isfinite(val):
                    continue
                if use_model:
                    val -= model[y, x]
                    if not guess:
                        val += init[a, 1] * ey[v] * ex[u]
                gx[m] = u
                gy[m] = v
                pv[m] = val
                m += 1
                vmax = max(vmax, val)
                vmin = min(vmin, val)
        if m < min_pixels:
            status[a] = _FEW_PIXELS
            continue
        if guess:
            p[0] = vmin
            p[1] = vmax - vmin
            p[2] = cx0
            p[3] = cy0
            p[4] = sigma0
        else:
            p[:] = init[a]
        if p[1] <= 0.0:
            status[a] = _NO_PEAK
            continue
        if not _fit_window(gx, gy, pv, m, p, x0, y0, side, max_iter, tol):
            status[a] = _DIVERGED
            continue
        if p[1] <= 0.0:
            status[a] = _NO_PEAK
            continue
        s = abs(p[4])
        if s < min_sigma or s > radius:
            status[a] = _BAD_WIDTH
            continue
        mx = p[2] - xs[a]
        my = p[3] - ys[a]
        if mx * mx + my * my > max_shift * max_shift:
            status[a] = _MOVED
            continue
        rms = math.sqrt(_sse(gx, gy, pv, m, p, x0, y0, side, ex, ey) / (m - 5))
        if p[1] < min_snr * rms:
            status[a] = _FAINT
            continue
        out[a, :5] = p
        out[a, 4] = s
        out[a, 5] = rms
    return out, status


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def _validated(image: np.ndarray, xy: np.ndarray, lattice_px: float) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    img = np.asarray(image)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.number) or np.issubdtype(img.dtype, np.complexfloating):
        raise ValueError(f"image must be real-valued, got dtype {img.dtype}")
    pts = kernels.as_points(xy, "xy")
    if not (np.isscalar(lattice_px) and np.isfinite(lattice_px) and lattice_px > 0):
        raise ValueError(f"lattice_px must be a finite number > 0, got {lattice_px!r}")
    if img.dtype not in (np.float32, np.float64):
        img = img.astype(np.float64)
    return np.ascontiguousarray(img), np.ascontiguousarray(pts)


def _fit_columns(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, prev: np.ndarray,
                 radius: int, sigma0: float, max_shift: float,
                 model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_refine_kernel` over all columns, chunked over threads
    (:func:`~rewardscope.science.kernels.row_chunks`: each column's fit reads only the image
    and the model, so the result is exactly the one-call result). The columns are dealt out
    in turn: a fit's cost varies along the frame (a disordered region's fits run to their
    iteration cap), and contiguous blocks left one thread with twice the other's work."""
    def fit(sl: slice) -> tuple[np.ndarray, np.ndarray]:
        # contiguous copies: the kernel is compiled (and cached) for C-contiguous arrays
        c = np.ascontiguousarray
        return _refine_kernel(img, c(xs[sl]), c(ys[sl]), c(prev[sl]), radius, sigma0,
                              max_shift, MIN_SIGMA_PX, SATURATION, model, MAX_ITER, TOL_PX,
                              MIN_PIXELS, MIN_SNR)

    fit_k, status_k = kernels.row_chunks(fit, len(xs), strided=True)
    return fit_k, status_k.astype(np.int8)


def refine_columns(
    image: np.ndarray,
    xy: np.ndarray,
    lattice_px: float,
    *,
    window_frac: float = WINDOW_FRAC,
    max_shift_frac: float = MAX_SHIFT_FRAC,
    passes: int | None = None,
) -> Refinement:
    """Sub-pixel column positions by a 2-D Gaussian + background fit (module doc).

    Parameters
    ----------
    image : (H, W) array_like of float
        The frame, normalised to [0, 1] (:func:`rewardscope.science.atomfind.normalize_frame`;
        pixels at 1.0 are taken as saturated and left out). Columns are bright.
    xy : (N, 2) array_like of float
        Starting positions x, y in px (e.g. the LoG finder's), one per column.
    lattice_px : float
        Lattice spacing a in px (sets the window, the starting width and the shift limit).
    window_frac : float, optional
        Fit disk radius in lattice spacings (default WINDOW_FRAC = 0.35; at least 2 px).
    max_shift_frac : float, optional
        Largest accepted move from the input, lattice spacings (default MAX_SHIFT_FRAC = 0.15;
        at least MIN_SHIFT_PX px).
    passes : int, optional
        1 = independent fits; each further pass refits every column with its neighbours'
        Gaussians from the pass before subtracted (removes the pull of bright neighbours on
        dim columns). 1 to 4; default None: 2 when the columns are wide enough for their
        neighbours to pull (median first-pass width > PASS2_WIDTH_FRAC * a), else 1.

    Returns
    -------
    Refinement
        Refined positions (px), which ones were fitted, and the fitted amplitude, width (px)
        and background; empty arrays for no columns.

    Raises
    ------
    ValueError
        If ``image`` is not a non-empty real 2-D array, ``xy`` not (N, 2) finite,
        ``lattice_px``, ``window_frac`` or ``max_shift_frac`` not finite and > 0, or ``passes``
        not None or an integer from 1 to 4.
    """
    img, pts = _validated(image, xy, lattice_px)
    for name, v in (("window_frac", window_frac), ("max_shift_frac", max_shift_frac)):
        if not (np.isscalar(v) and np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if passes not in (None, 1, 2, 3, 4):
        raise ValueError(f"passes must be None or an integer from 1 to 4, got {passes!r}")
    n = pts.shape[0]
    if n == 0:
        e = np.zeros(0)
        return Refinement(xy=np.zeros((0, 2)), fitted=np.zeros(0, bool), amplitude=e,
                          sigma=e.copy(), background=e.copy(), snr=e.copy(),
                          status=np.zeros(0, np.int8))
    a = float(lattice_px)
    radius = max(2, int(round(window_frac * a)))
    sigma0 = float(np.clip(SIGMA_FRAC * a, 0.7, radius / 1.5))
    max_shift = max(MIN_SHIFT_PX, float(max_shift_frac) * a)
    xs, ys = pts[:, 0].copy(), pts[:, 1].copy()
    fit = np.full((n, 6), np.nan)
    status = np.full(n, _DIVERGED, dtype=np.int8)
    ok = np.zeros(n, dtype=bool)
    model = np.zeros((1, 1))
    n_passes = 2 if passes is None else int(passes)
    for k in range(n_passes):
        if k == 1 and passes is None and not (
                ok.any() and np.median(fit[ok, 4]) > PASS2_WIDTH_FRAC * a):
            break
        prev = np.where(ok[:, None], fit[:, :5], np.nan)
        if k > 0:
            model = _render_kernel(img.shape[0], img.shape[1], np.nan_to_num(prev), ok, REACH)
        fit_k, status_k = _fit_columns(img, xs, ys, prev, radius, sigma0, max_shift, model)
        keep = ok & (status_k != _OK)  # a valid earlier fit beats a failed refit
        fit = np.where(keep[:, None], fit, fit_k)
        status = np.where(keep, status, status_k).astype(np.int8)
        ok = status == _OK
    ok = status == _OK
    out = pts.copy()
    out[ok] = fit[ok, 2:4]
    return Refinement(xy=out, fitted=ok, amplitude=fit[:, 1].copy(), sigma=fit[:, 4].copy(),
                      background=fit[:, 0].copy(), snr=fit[:, 1] / fit[:, 5],
                      status=status.astype(np.int8))


def warmup() -> float:
    """Compile (or load from numba's cache) the fit kernel, for float32 and float64 frames.

    Returns
    -------
    float
        Seconds it took (for the start-up log).
    """
    t0 = time.perf_counter()
    yy, xx = np.mgrid[0:24, 0:24]
    img = 0.05 + 0.9 * np.exp(-((yy - 8.3) ** 2 + (xx - 9.6) ** 2) / 3.0)
    img += 0.4 * np.exp(-((yy - 15.2) ** 2 + (xx - 15.1) ** 2) / 3.0)
    xy = np.array([[9.0, 8.0], [15.0, 15.0], [0.0, 0.0]])
    for dtype in (np.float32, np.float64):
        refine_columns(img.astype(dtype), xy, 10.0)
    return time.perf_counter() - t0
