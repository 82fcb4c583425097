"""Laplacian-of-Gaussian (LoG) atom-column finder for the per-frame hot path.

Drop-in for ``skimage.feature.blob_log`` on 2-D frames (same columns, same thresholds, same
pruning rule), built so that the Bayesian optimiser can re-run it 10-30 times per frame with
different ``min_sigma``/``max_sigma``/``threshold``/``overlap`` almost for free:

* :class:`LoGScaleSpace` is built once per frame. It takes one forward FFT of the
  symmetrically padded image and then produces the scale-normalised response
  ``-sigma**2 * LoG_sigma(image)`` for any sigma with one inverse FFT, caching the result per
  (quantised) sigma. The transfer function is the exact DFT of the *sampled, truncated* 1-D
  kernels that ``scipy.ndimage.gaussian_laplace`` uses, and the padding reproduces its
  ``mode='reflect'`` border (numpy calls that mode ``'symmetric'``), so responses equal
  ``blob_log``'s cube to float rounding, borders included.
* numba kernels find the 3x3x3 local maxima of the (sigma, y, x) cube above threshold
  (``peak_local_max`` semantics: ties count as maxima, out-of-range neighbours are the edge
  value) and prune overlapping blobs on a spatial grid instead of all pairs.
* The maxima of each sigma ladder are cached too, sorted by response, so a re-run that only
  changes ``threshold`` or ``overlap`` is a prefix slice plus the pruning pass.

Pruning rule (the one place we deliberately differ from ``blob_log``): blobs are visited by
decreasing sigma, then decreasing response; a blob is dropped when its circle (radius
``sqrt(2) * sigma``) overlaps a *kept* blob's circle by more than ``overlap`` of the smaller
circle's area. ``blob_log`` applies the same pairwise rule but in hash-set order, so chains
(A kills B, B would kill C) resolve arbitrarily there, and on equal sigmas it drops the
*brighter* blob; here the result is order-independent and keeps the brighter one. Without
chains or ties the two agree exactly.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from functools import lru_cache

import numpy as np
import scipy.fft as sfft
from numba import njit

from rewardscope.science import kernels

__all__ = [
    "LoGScaleSpace",
    "atoms_xy",
    "find_atoms",
    "normalize_frame",
    "warmup",
]

TRUNCATE = 4.0
"""Kernel half-width in sigmas; scipy.ndimage's default, which blob_log inherits."""

SQRT2 = math.sqrt(2.0)
MAX_CACHED_LADDERS = 16
"""Sigma ladders whose cube maxima a scale space keeps (a few hundred kB each)."""


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def normalize_frame(
    pixels: np.ndarray, low_pct: float = 0.1, high_pct: float = 99.9, *, invert: bool = False
) -> np.ndarray:
    """Robustly rescale a raw frame to float32 in [0, 1].

    Why: raw frames arrive as uint8/uint16/float counts at varying dose, so a LoG threshold
    (which is in image-intensity units) only means the same thing across frames after this
    scaling; percentiles instead of min/max keep hot or dead pixels (cosmic rays, detector
    defects) from compressing the real contrast, and the clip keeps them from producing huge
    LoG responses. The ``low_pct`` percentile maps to 0, the ``high_pct`` one to 1, then the
    result is clipped. Non-finite pixels are ignored for the percentiles and set to 0.

    Parameters
    ----------
    pixels : (H, W) array_like
        The raw frame, detector counts (any real or integer dtype).
    low_pct, high_pct : float, optional
        Percentiles mapped to 0 and 1 (default 0.1 and 99.9), 0 <= low < high <= 100.
    invert : bool, optional
        Dark columns on a bright background (bright field, ABF): return ``1 - normalised``,
        so the columns are bright as the LoG finder expects (default False). Exactly the
        normalisation of the negated frame (the percentiles swap).

    Returns
    -------
    (H, W) ndarray of float32
        The normalised frame; all zeros for a constant frame (inverted or not: no contrast).

    Raises
    ------
    ValueError
        If ``pixels`` is not 2-D or the percentiles are out of order or range.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"`pixels` must be a 2-D array, got {arr.ndim}-D")
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError("`low_pct` and `high_pct` must satisfy 0 <= low_pct < high_pct <= 100")
    img = arr.astype(np.float32, copy=True)
    finite = np.isfinite(img)
    all_finite = bool(finite.all())
    values = img if all_finite else img[finite]
    if values.size == 0:
        return np.zeros(arr.shape, np.float32)
    lo, hi = np.percentile(values, [low_pct, high_pct])
    if not all_finite:
        img[~finite] = hi if invert else lo  # dark either way once normalised
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    img -= np.float32(lo)
    img *= np.float32(1.0 / (hi - lo))
    np.clip(img, 0.0, 1.0, out=img)
    if invert:
        np.subtract(np.float32(1.0), img, out=img)
    return img


def _as_float_image(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Validate a 2-D finite image and convert it like blob_log's ``img_as_float``.

    Integer images are scaled by their dtype range (blob_log parity); call
    :func:`normalize_frame` first for raw detector counts.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"`image` must be a 2-D array, got {arr.ndim}-D")
    if arr.size == 0:
        raise ValueError("`image` must not be empty")
    if arr.dtype == bool:
        arr = arr.astype(dtype)
    elif np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        arr = arr.astype(np.float64)
        arr = arr / info.max if info.min == 0 else np.maximum(arr / info.max, -1.0)
    elif not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"`image` must be a real-valued array, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(out).all():
        raise ValueError("`image` must be finite (no NaN or inf)")
    return out


def _kernel_radius(sigma: float) -> int:
    """Half-width in px of scipy's Gaussian kernels for ``sigma`` (truncate=4)."""
    return int(TRUNCATE * float(sigma) + 0.5)


def _gaussian_kernels_1d(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Sampled 1-D Gaussian and its 2nd derivative exactly as scipy.ndimage builds them."""
    radius = _kernel_radius(sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    s2 = sigma * sigma
    phi = np.exp(-0.5 / s2 * x * x)
    phi /= phi.sum()
    return phi, phi * (x * x / (s2 * s2) - 1.0 / s2)


def _circular_transfer(kernel: np.ndarray, n: int, half: bool) -> np.ndarray:
    """Real DFT (length n, or n//2+1 if ``half``) of a centred symmetric kernel wrapped on n."""
    r = kernel.size // 2
    buf = np.zeros(n, np.float64)
    buf[: r + 1] = kernel[r:]
    if r:
        buf[n - r :] = kernel[:r]
    spec = np.fft.rfft(buf) if half else np.fft.fft(buf)
    return spec.real  # symmetric kernel -> real spectrum


@lru_cache(maxsize=512)
def _axis_transfers(sigma: float, n: int, half: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_circular_transfer` of the Gaussian and of its 2nd derivative times -sigma²,
    along one axis of n samples; read-only, cached: a live session asks the same few dozen
    (sigma, n) every frame, and these small transforms are Python-bound (they held the GIL
    that the other evaluation threads were waiting for)."""
    g, d2 = _gaussian_kernels_1d(sigma)
    out = (_circular_transfer(g, n, half), _circular_transfer(d2, n, half) * (-sigma * sigma))
    for a in out:
        a.flags.writeable = False
    return out


# --------------------------------------------------------------------------------------------
# Scale space
# --------------------------------------------------------------------------------------------


class LoGScaleSpace:
    """Scale-normalised LoG responses of one frame, computed by FFT and cached per sigma.

    Every optimizer candidate of a frame asks for a few sigmas; computing each response once
    (one forward FFT per frame, one inverse per sigma) makes a candidate cost milliseconds.
    ``response(sigma)`` returns ``-sigma**2 * gaussian_laplace(image, sigma)`` (bright blobs
    give positive peaks of about half their amplitude at sigma = blob sigma), identical to
    one slice of ``blob_log``'s cube. Thread-safe: several optimizer candidates of one frame
    may read it at once (responses are computed under a lock, the cube scans outside it).

    Parameters
    ----------
    image : (H, W) array_like
        The frame; integer images are scaled like ``img_as_float`` (call
        :func:`normalize_frame` first for raw counts).
    max_sigma : float, optional
        Largest sigma expected, px (default 8): it only sizes the initial padding; a larger
        sigma later re-pads (one more forward FFT) and keeps the cache, since responses do not
        depend on the pad.
    dtype : {numpy.float32, numpy.float64}, optional
        Working precision (default float32).
    sigma_quantum : float or None, optional
        Sigmas are rounded to this many px so nearby optimiser proposals share work (default
        0.01; None: no rounding).
    workers : int or None, optional
        ``scipy.fft`` workers (default -1: all cores).
    cache_bytes : int, optional
        LRU bound of the response cache, bytes (default 512 MiB).

    Attributes
    ----------
    shape : (int, int)
        Frame (H, W) in px.
    is_constant : bool
        True for a constant frame (no blobs).
    n_forward_fft, n_inverse_fft, n_maxima_scans : int
        FFT work done and cube scans (see :meth:`maxima`).

    Raises
    ------
    ValueError
        If ``dtype`` is not float32/float64, ``max_sigma`` or ``sigma_quantum`` is not finite
        and > 0, or ``image`` is not a non-empty, finite 2-D array.
    TypeError
        If ``image`` is not real-valued, or ``max_sigma`` / ``sigma_quantum`` not a scalar.
    """

    def __init__(
        self,
        image: np.ndarray,
        *,
        max_sigma: float = 8.0,
        dtype: type[np.floating] = np.float32,
        sigma_quantum: float | None = 0.01,
        workers: int | None = -1,
        cache_bytes: int = 512 * 2**20,
    ) -> None:
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"`dtype` must be float32 or float64, got {dt}")
        _check_positive("max_sigma", max_sigma)
        if sigma_quantum is not None:
            _check_positive("sigma_quantum", sigma_quantum)
        self._image = _as_float_image(image, dt)
        self.dtype = dt
        self.shape: tuple[int, int] = self._image.shape
        self.sigma_quantum = None if sigma_quantum is None else float(sigma_quantum)
        self.workers = workers
        self.is_constant = bool(self._image.min() == self._image.max())
        entry = self._image.nbytes
        self._max_entries = max(1, int(cache_bytes) // entry)
        self._cache: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._extrema: dict[Hashable, tuple[float, float]] = {}
        self._peaks: OrderedDict[Hashable, tuple] = OrderedDict()
        self._lock = threading.RLock()
        self._pad = -1
        self._spec: np.ndarray | None = None
        self._padded_shape = (0, 0)
        self.n_forward_fft = 0
        self.n_inverse_fft = 0
        self.n_maxima_scans = 0
        self._ensure_pad(_kernel_radius(max_sigma))

    # -- public -------------------------------------------------------------------------------

    @property
    def fft_count(self) -> int:
        """Total FFTs (forward + inverse) this scale space has performed."""
        return self.n_forward_fft + self.n_inverse_fft

    @property
    def image(self) -> np.ndarray:
        """The float image the responses are computed from (read-only view)."""
        view = self._image.view()
        view.flags.writeable = False
        return view

    def quantize(self, sigma: float) -> float:
        """The sigma actually used for a requested ``sigma``.

        Parameters
        ----------
        sigma : float
            Requested sigma, px.

        Returns
        -------
        float
            ``sigma`` rounded to ``sigma_quantum`` px.
        """
        return self._sigma_of(self._key(sigma))

    def response(self, sigma: float) -> np.ndarray:
        """Scale-normalised LoG response at ``quantize(sigma)``, computed once and cached.

        Parameters
        ----------
        sigma : float
            Gaussian sigma, px.

        Returns
        -------
        (H, W) ndarray
            Read-only response, in image-intensity units.
        """
        _check_positive("sigma", sigma)
        key = self._key(sigma)
        with self._lock:  # the FFT is multi-threaded already: nothing lost by serialising it
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            resp = self._compute(self._sigma_of(key))
            self._cache[key] = resp
            while len(self._cache) > self._max_entries:
                old, _ = self._cache.popitem(last=False)
                self._extrema.pop(old, None)
            return resp

    def extrema(self, sigma: float) -> tuple[float, float]:
        """Minimum and maximum of ``response(sigma)``, cached (for ``threshold=None`` and
        ``threshold_rel``).

        Parameters
        ----------
        sigma : float
            Gaussian sigma, px.

        Returns
        -------
        (float, float)
            (min, max) in image-intensity units.
        """
        key = self._key(sigma)
        with self._lock:
            ext = self._extrema.get(key)
            if ext is None:
                r = self.response(sigma)
                ext = (float(r.min()), float(r.max()))
                self._extrema[key] = ext
            return ext

    def maxima(
        self, sigmas: np.ndarray, threshold: float, border: tuple[int, int] = (0, 0)
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Local maxima of the (sigma, y, x) cube above ``threshold``, strongest first.

        The list is cached per sigma ladder and border at the lowest threshold asked so far; since
        it is sorted by value, any higher threshold is a prefix of it, so optimiser re-runs that
        only change threshold or overlap skip the cube scan entirely.

        Parameters
        ----------
        sigmas : (S,) array_like of float
            Sigma ladder, px (quantised values).
        threshold : float
            Least response kept, image-intensity units.
        border : (int, int), optional
            Rows and columns at the frame edge excluded, px (default (0, 0)).

        Returns
        -------
        y, x, k : ndarray of int
            Row, column (px) and index into ``sigmas`` of each maximum.
        value : ndarray
            Its response.
        """
        thr = self.dtype.type(threshold)
        key = (tuple(self._key(s) for s in sigmas), tuple(border))
        with self._lock:
            hit = self._peaks.get(key)
            if hit is not None and hit[0] <= thr:
                self._peaks.move_to_end(key)
        if hit is None or hit[0] > thr:
            peaks = _cube_maxima([self.response(s) for s in sigmas], thr, *border)
            hit = (thr, peaks, -peaks[3])
            with self._lock:
                self.n_maxima_scans += 1
                old = self._peaks.get(key)
                if old is None or old[0] > thr:  # another thread may have scanned lower
                    self._peaks[key] = hit
                    self._peaks.move_to_end(key)
                while len(self._peaks) > MAX_CACHED_LADDERS:
                    self._peaks.popitem(last=False)
        _, peaks, neg = hit
        n = int(np.searchsorted(neg, -thr, side="left"))  # count of value > thr
        return tuple(a[:n] for a in peaks)

    def clear_cache(self) -> None:
        """Drop cached responses and maxima (keeps the forward spectrum)."""
        with self._lock:
            self._cache.clear()
            self._extrema.clear()
            self._peaks.clear()

    # -- internals ----------------------------------------------------------------------------

    def _key(self, sigma: float) -> Hashable:
        q = self.sigma_quantum
        if q is None:
            return float(sigma)
        return max(1, int(round(float(sigma) / q)))

    def _sigma_of(self, key: Hashable) -> float:
        q = self.sigma_quantum
        return float(key) if q is None else key * q

    def _ensure_pad(self, radius: int) -> None:
        """(Re)build the padded spectrum if kernels of ``radius`` px would wrap around."""
        if radius <= self._pad:
            return
        h, w = self.shape
        hp = sfft.next_fast_len(h + 2 * radius)
        wp = sfft.next_fast_len(w + 2 * radius, real=True)
        widths = ((radius, hp - h - radius), (radius, wp - w - radius))
        padded = np.pad(self._image, widths, mode="symmetric")  # == ndimage mode='reflect'
        self._spec = sfft.rfft2(padded, workers=self.workers)
        self._pad = radius
        self._padded_shape = (hp, wp)
        self.n_forward_fft += 1

    def _transfer(self, sigma: float) -> np.ndarray:
        """-sigma^2 * (d2y gx + gy d2x) in the rfft2 domain, as the working dtype."""
        hp, wp = self._padded_shape
        dt = self.dtype
        gy, d2y = _axis_transfers(float(sigma), hp, False)
        gx, d2x = _axis_transfers(float(sigma), wp, True)
        gy, gx = gy.astype(dt), gx.astype(dt)
        t = np.multiply.outer(d2y.astype(dt), gx)
        t += np.multiply.outer(gy, d2x.astype(dt))
        return t

    def _compute(self, sigma: float) -> np.ndarray:
        self._ensure_pad(_kernel_radius(sigma))
        hp, wp = self._padded_shape
        out = sfft.irfft2(self._spec * self._transfer(sigma), s=(hp, wp), workers=self.workers)
        self.n_inverse_fft += 1
        p = self._pad
        h, w = self.shape
        resp = np.ascontiguousarray(out[p : p + h, p : p + w], dtype=self.dtype)
        resp.flags.writeable = False
        return resp


# --------------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _slice_maxima(prev, cur, nxt, threshold, border_y, border_x):  # pragma: no cover - numba
    """(y, x) of pixels of ``cur`` above ``threshold`` that are >= all 26 cube neighbours.

    ``prev``/``nxt`` are the adjacent sigma slices (pass ``cur`` itself at the ends, which is
    peak_local_max's mode='nearest'); spatial neighbours outside the image are clamped the
    same way. Pixels within ``border_y``/``border_x`` of the edge are skipped. The cheapest,
    most often failing tests (same row of ``cur``) come first.
    """
    h, w = cur.shape
    cap = 1024
    ys = np.empty(cap, np.int64)
    xs = np.empty(cap, np.int64)
    n = 0
    for y in range(border_y, h - border_y):
        ya = max(y - 1, 0)
        yb = min(y + 1, h - 1)
        c0, ca, cb = cur[y], cur[ya], cur[yb]
        p0, pa, pb = prev[y], prev[ya], prev[yb]
        n0, na, nb = nxt[y], nxt[ya], nxt[yb]
        for x in range(border_x, w - border_x):
            v = c0[x]
            if not v > threshold:
                continue
            xa = max(x - 1, 0)
            xb = min(x + 1, w - 1)
            if c0[xa] > v or c0[xb] > v:
                continue
            if ca[xa] > v or ca[x] > v or ca[xb] > v or cb[xa] > v or cb[x] > v or cb[xb] > v:
                continue
            if p0[x] > v or n0[x] > v or p0[xa] > v or p0[xb] > v or n0[xa] > v or n0[xb] > v:
                continue
            if pa[xa] > v or pa[x] > v or pa[xb] > v or pb[xa] > v or pb[x] > v or pb[xb] > v:
                continue
            if na[xa] > v or na[x] > v or na[xb] > v or nb[xa] > v or nb[x] > v or nb[xb] > v:
                continue
            if n == cap:
                cap *= 2
                ys2 = np.empty(cap, np.int64)
                xs2 = np.empty(cap, np.int64)
                ys2[:n] = ys[:n]
                xs2[:n] = xs[:n]
                ys, xs = ys2, xs2
            ys[n] = y
            xs[n] = x
            n += 1
    return ys[:n].copy(), xs[:n].copy()


@njit(cache=True, nogil=True)
def _overlap_fraction(dy, dx, s1, s2):  # pragma: no cover - numba
    """Overlap area of circles r = sqrt(2)*sigma over the smaller circle's area (blob_log)."""
    big = max(s1, s2)
    if big <= 0.0:
        return 0.0
    r1 = s1 / big
    r2 = s2 / big
    d = math.sqrt(dy * dy + dx * dx) / (big * SQRT2)
    if d > r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return 1.0
    c1 = min(max((d * d + r1 * r1 - r2 * r2) / (2.0 * d * r1), -1.0), 1.0)
    c2 = min(max((d * d + r2 * r2 - r1 * r1) / (2.0 * d * r2), -1.0), 1.0)
    a = -d + r2 + r1
    b = d - r2 + r1
    c = d + r2 - r1
    e = d + r2 + r1
    area = r1 * r1 * math.acos(c1) + r2 * r2 * math.acos(c2) - 0.5 * math.sqrt(abs(a * b * c * e))
    rmin = min(r1, r2)
    return area / (math.pi * rmin * rmin)


@njit(cache=True, nogil=True)
def _prune_sorted(ys, xs, sigmas, overlap):  # pragma: no cover - numba
    """Keep-mask for blobs given in priority order (largest sigma, then strongest, first).

    Each blob is dropped if it overlaps an already-kept blob by more than ``overlap``. Only
    blobs in the 3x3 neighbouring grid cells are compared; the cell is at least the largest
    possible interaction distance 2*sqrt(2)*max(sigma), so no overlapping pair is missed.
    """
    n = ys.size
    keep = np.zeros(n, np.bool_)
    if n == 0:
        return keep
    ymin, ymax = ys.min(), ys.max()
    xmin, xmax = xs.min(), xs.max()
    extent = max(ymax - ymin, xmax - xmin)
    cell = max(2.0 * SQRT2 * sigmas.max(), extent / 1024.0, 1e-9)
    ny = int((ymax - ymin) / cell) + 1
    nx = int((xmax - xmin) / cell) + 1
    gy = np.empty(n, np.int64)
    gx = np.empty(n, np.int64)
    start = np.zeros(ny * nx + 1, np.int64)
    for i in range(n):
        gy[i] = min(int((ys[i] - ymin) / cell), ny - 1)
        gx[i] = min(int((xs[i] - xmin) / cell), nx - 1)
        start[gy[i] * nx + gx[i] + 1] += 1
    for c in range(ny * nx):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    members = np.empty(n, np.int64)
    for i in range(n):
        c = gy[i] * nx + gx[i]
        members[fill[c]] = i
        fill[c] += 1
    for i in range(n):
        dropped = False
        for cy in range(max(gy[i] - 1, 0), min(gy[i] + 1, ny - 1) + 1):
            for cx in range(max(gx[i] - 1, 0), min(gx[i] + 1, nx - 1) + 1):
                c = cy * nx + cx
                for k in range(start[c], start[c + 1]):
                    j = members[k]
                    if keep[j]:
                        f = _overlap_fraction(ys[i] - ys[j], xs[i] - xs[j], sigmas[i], sigmas[j])
                        if f > overlap:
                            dropped = True
                            break
                if dropped:
                    break
            if dropped:
                break
        keep[i] = not dropped
    return keep


# --------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------


def _check_positive(name: str, value: float) -> None:
    if not np.isscalar(value) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a real scalar (isotropic sigma only), got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"`{name}` must be finite and > 0, got {value!r}")


def _border_widths(exclude_border: bool | int | tuple[int, int]) -> tuple[int, int]:
    """blob_log's ``exclude_border`` as (rows, cols) widths in px."""
    if exclude_border is True:
        raise ValueError("`exclude_border` cannot be True")
    if exclude_border is False:
        return 0, 0
    if isinstance(exclude_border, (int, np.integer)):
        widths = (int(exclude_border),) * 2
    elif isinstance(exclude_border, tuple):
        if len(exclude_border) != 2:
            raise ValueError("`exclude_border` tuple must have one entry per image axis (2)")
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                   for v in exclude_border):
            raise ValueError("`exclude_border`, when a tuple, must contain only ints")
        widths = (int(exclude_border[0]), int(exclude_border[1]))
    else:
        raise ValueError(f"Unsupported value ({exclude_border!r}) for `exclude_border`")
    if min(widths) < 0:
        raise ValueError("`exclude_border` cannot be negative")
    return widths


def _validate_params(
    min_sigma: float, max_sigma: float, num_sigma: int, threshold: float | None,
    threshold_rel: float | None, overlap: float,
) -> None:
    _check_positive("min_sigma", min_sigma)
    _check_positive("max_sigma", max_sigma)
    if max_sigma < min_sigma:
        raise ValueError(f"`max_sigma` ({max_sigma}) must be >= `min_sigma` ({min_sigma})")
    if isinstance(num_sigma, bool) or not isinstance(num_sigma, (int, np.integer)) \
            or num_sigma < 1:
        raise ValueError(f"`num_sigma` must be an integer >= 1, got {num_sigma!r}")
    for name, val in (("threshold", threshold), ("threshold_rel", threshold_rel)):
        if val is not None and not (np.isscalar(val) and math.isfinite(float(val))):
            raise ValueError(f"`{name}` must be a finite scalar or None, got {val!r}")
    if not (np.isscalar(overlap) and 0.0 <= float(overlap) <= 1.0):
        raise ValueError(f"`overlap` must be in [0, 1], got {overlap!r}")


def _sigma_list(
    space: LoGScaleSpace, min_sigma: float, max_sigma: float, num_sigma: int, log_scale: bool
) -> np.ndarray:
    """blob_log's sigma ladder, snapped to the scale space's quantum, duplicates removed."""
    if log_scale:
        raw = np.logspace(np.log10(min_sigma), np.log10(max_sigma), num_sigma)
    else:
        raw = np.linspace(min_sigma, max_sigma, num_sigma)
    return np.unique([space.quantize(s) for s in raw])


def _threshold(
    space: LoGScaleSpace, sigmas: np.ndarray, threshold: float | None,
    threshold_rel: float | None,
) -> float:
    """Absolute cube threshold: peak_local_max's max(threshold_abs, rel * cube max)."""
    if threshold is None:
        thr = min(space.extrema(s)[0] for s in sigmas)
    else:
        thr = float(threshold)
    if threshold_rel is not None:
        thr = max(thr, float(threshold_rel) * max(space.extrema(s)[1] for s in sigmas))
    return thr


def _subpixel(resp: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis parabola vertex through the 3 response samples around each peak (<= 0.5 px)."""
    h, w = resp.shape
    yi, xi = y.astype(np.int64), x.astype(np.int64)

    def r(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        # the samples, then float64 (exact from float32): not a float64 copy of the frame
        return resp[rows, cols].astype(np.float64)

    def offset(lo: np.ndarray, mid: np.ndarray, hi: np.ndarray) -> np.ndarray:
        curv = lo - 2.0 * mid + hi
        ok = curv < 0
        off = np.zeros_like(mid)
        off[ok] = 0.5 * (lo[ok] - hi[ok]) / curv[ok]
        return np.clip(off, -0.5, 0.5)

    inner_x = (xi > 0) & (xi < w - 1)
    inner_y = (yi > 0) & (yi < h - 1)
    xl, xh = np.clip(xi - 1, 0, w - 1), np.clip(xi + 1, 0, w - 1)
    yl, yh = np.clip(yi - 1, 0, h - 1), np.clip(yi + 1, 0, h - 1)
    mid = r(yi, xi)
    dx = np.where(inner_x, offset(r(yi, xl), mid, r(yi, xh)), 0.0)
    dy = np.where(inner_y, offset(r(yl, xi), mid, r(yh, xi)), 0.0)
    return y + dy, x + dx


def find_atoms(
    image: np.ndarray | None,
    *,
    min_sigma: float = 1.0,
    max_sigma: float = 3.0,
    num_sigma: int = 5,
    threshold: float | None = 0.1,
    overlap: float = 0.5,
    exclude_border: bool | int | tuple[int, int] = False,
    log_scale: bool = False,
    threshold_rel: float | None = None,
    subpixel: bool = False,
    scale_space: LoGScaleSpace | None = None,
) -> np.ndarray:
    """Detect bright blobs (atom columns) by Laplacian of Gaussian, as ``blob_log`` does.

    A drop-in for ``skimage.feature.blob_log`` on 2-D frames with scalar sigmas (same
    parameters, same output), fast enough to run for every optimizer candidate: pass a
    :class:`LoGScaleSpace` of the same frame as ``scale_space`` to reuse its cached responses
    across calls (``image`` may then be None). Differences from blob_log: sigmas are snapped
    to the scale space's ``sigma_quantum`` (0.01 px) and the returned sigma is the snapped one;
    overlap pruning is order-independent (module doc); ``subpixel=True`` refines y, x with a
    parabola fit (off by default for parity).

    Parameters
    ----------
    image : (H, W) array_like or None
        The frame (None when ``scale_space`` is given).
    min_sigma, max_sigma : float, optional
        Sigma range, px (radius ~ sqrt(2) * sigma; defaults 1 and 3).
    num_sigma : int, optional
        Sigmas in the ladder (default 5).
    threshold : float or None, optional
        Absolute bound on the scale-normalised response, image-intensity units: about half a
        blob's peak amplitude, so ~0.1 on a :func:`normalize_frame` image finds columns
        brighter than ~0.2 (default 0.1).
    overlap : float, optional
        Blobs overlapping by more than this area fraction are pruned, the smaller one goes
        (default 0.5).
    exclude_border : bool, int or (int, int), optional
        Frame border excluded, px (default False = none).
    log_scale : bool, optional
        Log-spaced sigma ladder (default False).
    threshold_rel : float or None, optional
        Threshold relative to the cube's maximum, as in blob_log (default None).
    subpixel : bool, optional
        Parabola-refine y, x (default False).
    scale_space : LoGScaleSpace, optional
        Cached responses of this frame.

    Returns
    -------
    (N, 3) ndarray of float64
        Rows ``(y, x, sigma)`` in px, ordered by decreasing response.

    Raises
    ------
    ValueError
        For a parameter out of range (the message names it), a missing ``image`` without
        ``scale_space``, or an ``image`` whose shape does not match ``scale_space``.
    TypeError
        If a sigma is not a real scalar.
    """
    _validate_params(min_sigma, max_sigma, num_sigma, threshold, threshold_rel, overlap)
    by, bx = _border_widths(exclude_border)
    if scale_space is None:
        if image is None:
            raise ValueError("`image` is required when no `scale_space` is given")
        scale_space = LoGScaleSpace(image, max_sigma=max_sigma)
    elif image is not None and np.shape(image) != scale_space.shape:
        raise ValueError(
            f"`image` shape {np.shape(image)} does not match `scale_space` {scale_space.shape}"
        )
    if scale_space.is_constant:
        return np.empty((0, 3), np.float64)

    sigmas = _sigma_list(scale_space, min_sigma, max_sigma, num_sigma, log_scale)
    thr = _threshold(scale_space, sigmas, threshold, threshold_rel)
    y, x, k, v = scale_space.maxima(sigmas, thr, (by, bx))
    blobs = _prune(y, x, k, v, sigmas, float(overlap))
    if subpixel and len(blobs):
        _refine(blobs, scale_space)
    return blobs


def _cube_maxima(
    responses: list[np.ndarray], thr: np.floating, by: int, bx: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(y, x, sigma index, response) of the cube's local maxima, in peak_local_max order."""
    n = len(responses)

    def scan(slices: slice) -> tuple[np.ndarray, ...]:
        ys, xs, ks, vals = [], [], [], []
        for k in range(slices.start, slices.stop):
            cur = responses[k]
            y, x = _slice_maxima(responses[max(k - 1, 0)], cur, responses[min(k + 1, n - 1)],
                                 thr, by, bx)
            ys.append(y)
            xs.append(x)
            ks.append(np.full(y.size, k, np.int64))
            vals.append(cur[y, x])
        return tuple(np.concatenate(a) for a in (ys, xs, ks, vals))

    # slices are independent (nogil kernel): split over threads from 512² frames up (below,
    # a thread hand-off costs more than a slice scan)
    if responses[0].size >= 1 << 18:
        y, x, k, v = kernels.row_chunks(scan, n, min_rows=1)
    else:
        y, x, k, v = scan(slice(0, n))
    # strongest first; ties in C order of blob_log's (y, x, sigma) cube
    order = np.lexsort((k, x, y, -v))
    return y[order], x[order], k[order], v[order]


def _prune(
    y: np.ndarray, x: np.ndarray, k: np.ndarray, v: np.ndarray, sigmas: np.ndarray,
    overlap: float,
) -> np.ndarray:
    """Overlap pruning of peaks given strongest first; returns (N, 3) (y, x, sigma) rows."""
    if y.size == 0:
        return np.empty((0, 3), np.float64)
    prio = np.lexsort((np.arange(y.size), -k))  # largest sigma first, then given order
    keep = np.zeros(y.size, bool)
    keep[prio] = _prune_sorted(
        y[prio].astype(np.float64), x[prio].astype(np.float64), sigmas[k[prio]], overlap
    )
    return np.column_stack([y[keep], x[keep], sigmas[k[keep]]]).astype(np.float64)


def _refine(blobs: np.ndarray, space: LoGScaleSpace) -> None:
    """Sub-pixel y, x in place, from the response at each blob's own sigma."""
    for s in np.unique(blobs[:, 2]):
        sel = blobs[:, 2] == s
        blobs[sel, 0], blobs[sel, 1] = _subpixel(space.response(s), blobs[sel, 0], blobs[sel, 1])


def atoms_xy(blobs: np.ndarray) -> np.ndarray:
    """Atom positions in the x, y order every other module uses, from :func:`find_atoms` rows.

    Parameters
    ----------
    blobs : (N, 3) array_like of float
        Rows ``(y, x, sigma)`` in px.

    Returns
    -------
    (N, 2) ndarray of float32
        Positions ``x = column, y = row`` in px.
    """
    b = np.asarray(blobs, dtype=np.float64).reshape(-1, 3)
    return np.ascontiguousarray(b[:, [1, 0]], dtype=np.float32)


def warmup() -> float:
    """Compile (or load from numba's cache) every kernel, for float32 and float64 frames.

    Call once at service start so the first real frame does not pay JIT compilation.

    Returns
    -------
    float
        Seconds it took (for the start-up log).
    """
    t0 = time.perf_counter()
    yy, xx = np.mgrid[0:24, 0:24]
    img = np.exp(-((yy - 8.0) ** 2 + (xx - 9.0) ** 2) / 3.0)
    img += 0.8 * np.exp(-((yy - 10.0) ** 2 + (xx - 11.0) ** 2) / 3.0)
    for dtype in (np.float32, np.float64):
        space = LoGScaleSpace(img, max_sigma=2.5, dtype=dtype)
        find_atoms(None, min_sigma=1.0, max_sigma=2.5, num_sigma=4, threshold=0.01,
                   overlap=0.1, scale_space=space)
        find_atoms(None, min_sigma=1.0, max_sigma=2.5, num_sigma=4, threshold=1e9,
                   scale_space=space)
    return time.perf_counter() - t0
