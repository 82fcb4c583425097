"""Gaussian mixtures as the workflows fit them, and the rows statistics are fitted on.

Three workflows label things with a Gaussian mixture model (GMM): the domain workflow its
sites' PCA scores, the latent workflow the VAE latent means, the amorphous workflow its
standardised site descriptors. They share these choices, which live here once:

* fit on the *trusted* rows (patches wholly inside the frame, no mirror padding) when there
  are enough of them to pin the model down, else on every row (:func:`trusted_rows`);
* fit on at most a fixed, seeded random sample of those rows (:func:`fit_sample`): the
  statistics of a few thousand sites are those of all ~10^4 sites of a large frame, at a
  fraction of the cost, and one frame always gives the same answer;
* ``max_iter`` is a time budget, not a correctness bound, so scikit-learn's
  ``ConvergenceWarning`` is silenced; the number of components is clipped to the number of
  fitted rows (:func:`fit_gmm`);
* every row is labelled by the fitted model, components renumbered by decreasing size so a
  label id does not depend on the mixture's internal order (:func:`labels_by_size`), and the
  BIC is reported per fitted row so frames with different numbers of sites compare
  (:func:`mixture_labels`);
* the EM loop is scikit-learn's algorithm (k-means initialisation as scikit-learn's own
  ``KMeans`` computes it, same random draws from the same random state; the same M-step,
  E-step, stopping rule and choice among ``n_init`` starts) run as one ``numba`` kernel that
  releases the GIL (:data:`EM_ENGINE`): the fitted mixture is the one scikit-learn's
  ``GaussianMixture.fit`` gives, to rounding, at a fraction of the cost (measured ~10x on the
  workflows' 1000-3000 x 3-12 descriptors, where scikit-learn's per-iteration Python overhead
  dominates), and two evaluation threads fit side by side instead of taking turns on the GIL;
* that fit is returned as a :class:`Mixture`: ``GaussianMixture``'s fitted attributes, and
  its ``predict``, ``predict_proba``, ``score_samples``, ``score``, ``bic`` and ``aic``
  computed by the same numpy operations in the same order, so they equal scikit-learn's bit
  for bit, without importing scikit-learn (~0.5 s of a cold start). scikit-learn is imported
  only where it runs: the reference engine (``EM_ENGINE = "sklearn"``, float32 or unusual
  input, which returns scikit-learn's own ``GaussianMixture``) and the rare k-means start
  whose cluster empties.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

if TYPE_CHECKING:  # imported where used: scikit-learn costs ~0.5 s of a cold start
    from sklearn.mixture import GaussianMixture

__all__ = [
    "COVARIANCE_TYPES",
    "EM_ENGINE",
    "Mixture",
    "MixtureLabels",
    "fit_gmm",
    "fit_sample",
    "labels_by_size",
    "mixture_labels",
    "posterior",
    "trusted_rows",
    "warmup",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
EM_ENGINE = "numba"
"""Who runs the EM iterations of :func:`fit_gmm`: ``"numba"`` (the GIL-free kernel of this
module) or ``"sklearn"`` (``GaussianMixture.fit`` itself; the reference, and what float32 or
unusual input always gets). Benchmarks switch it to compare the two in one run."""
_FIT_FAILED = ("Fitting the mixture model failed because some components have ill-defined "
               "empirical covariance (for instance caused by singleton or collapsed samples). "
               "Try to decrease the number of components, increase reg_covar, or scale the "
               "input data.")


def trusted_rows(rows: np.ndarray, minimum: int) -> np.ndarray:
    """The trusted rows when there are at least ``minimum`` of them, else every row.

    Fitting statistics (PCA axes, mixture parameters) on rows whose patches needed mirror
    padding lets synthetic content shape the model; but a frame with almost no interior rows
    must still be analysed, so below ``minimum`` every row is used.

    Parameters
    ----------
    rows : (N,) array_like of bool
        True for the rows that may be trusted (e.g. patches wholly inside the frame).
    minimum : int
        Fewest trusted rows that are enough on their own.

    Returns
    -------
    (N,) ndarray of bool
        ``rows`` itself (as bool) or all True.
    """
    mask = np.asarray(rows, dtype=bool)
    return mask if int(mask.sum()) >= minimum else np.ones(mask.shape, dtype=bool)


def fit_sample(rows: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Indices of the True entries of ``rows``, or a fixed random ``limit`` of them.

    Fitting statistics (PCA axes, mixture parameters) on a few thousand rows costs a fraction
    of fitting on all ~10^4 sites of a large frame and gives the same model; the sample is
    seeded so one frame always gives the same answer.

    Parameters
    ----------
    rows : (N,) array_like of bool
        The eligible rows.
    limit : int
        Most indices returned.
    seed : int, optional
        Seed of the random sample (default 0).

    Returns
    -------
    ndarray of int
        Sorted indices into ``rows``: all eligible ones when there are at most ``limit``.
    """
    idx = np.flatnonzero(np.asarray(rows, bool))
    if idx.size <= limit:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))


def _check_covariance(covariance_type: str) -> str:
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, "
                         f"got {covariance_type!r}")
    return covariance_type


class NotFittedError(ValueError, AttributeError):
    """A :class:`Mixture` was used before its parameters were set (as scikit-learn's
    ``NotFittedError``, a ``ValueError`` and an ``AttributeError``)."""


class Mixture:
    """A Gaussian mixture fitted by :func:`fit_gmm`'s numba engine, without scikit-learn.

    It holds what a fitted scikit-learn ``GaussianMixture`` holds, under the same names
    (learned state ends in ``_``), and its ``predict``, ``predict_proba``, ``score_samples``,
    ``score``, ``bic`` and ``aic`` compute what ``GaussianMixture``'s do with the same
    parameters: the same numpy operations in the same order (log-determinants from the
    precision Cholesky factors, Mahalanobis terms by matmul, log-sum-exp with the maximum
    taken out and counted), so the results are equal bit for bit, not merely to rounding.
    Input is checked as scikit-learn checks it (2-D, at least one row, the fitted number of
    features, finite; the dtype is kept, object arrays become float64).

    Parameters
    ----------
    n_components : int
        Number of components.
    covariance_type : {"full", "tied", "diag", "spherical"}, optional
        Covariance parameterisation (default "full").
    tol, reg_covar, max_iter, n_init, random_state
        The fit's settings, kept as ``GaussianMixture`` keeps them.

    Attributes
    ----------
    weights_ : (k,) ndarray
        Component weights.
    means_ : (k, d) ndarray
        Component means.
    covariances_ : ndarray
        Covariances: (k, d, d) full, (d, d) tied, (k, d) diag, (k,) spherical.
    precisions_cholesky_ : ndarray
        Upper-triangular U with precision = U U^T, shaped as ``covariances_``.
    precisions_ : ndarray
        Precisions, shaped as ``covariances_`` (computed from ``precisions_cholesky_``).
    converged_ : bool
        Whether the best start reached ``tol``.
    n_iter_ : int
        EM iterations of the best start.
    lower_bound_ : float
        Final per-row log-likelihood of the best start.
    lower_bounds_ : list of float
        Per-row log-likelihood after each iteration of the best start.
    n_features_in_ : int
        Number of features of the fitted rows.
    """

    def __init__(self, n_components: int = 1, covariance_type: str = "full", *,
                 tol: float = 1e-3, reg_covar: float = 1e-6, max_iter: int = 100,
                 n_init: int = 1, random_state: int | None = None) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.random_state = random_state

    def __repr__(self) -> str:
        return (f"Mixture({self.n_components}, covariance_type={self.covariance_type!r}, "
                f"fitted={hasattr(self, 'precisions_cholesky_')})")

    def _set_parameters(self, params: tuple) -> None:
        """Set (weights, means, covariances, precision Cholesky factors) and derive the
        precisions from the factors, as ``GaussianMixture._set_parameters`` does."""
        self.weights_, self.means_, self.covariances_, self.precisions_cholesky_ = params
        chol = self.precisions_cholesky_
        if self.covariance_type == "full":
            self.precisions_ = np.empty_like(chol)
            for c in range(chol.shape[0]):
                factor = chol[c, :, :]
                self.precisions_[c, :, :] = factor @ factor.T
        elif self.covariance_type == "tied":
            self.precisions_ = chol @ chol.T
        else:
            self.precisions_ = chol**2

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """``x`` checked as scikit-learn's ``validate_data(reset=False)`` checks it."""
        if not hasattr(self, "precisions_cholesky_"):
            raise NotFittedError("This Mixture is not fitted yet")
        data = np.asarray(x)
        if data.dtype.kind == "O":
            data = data.astype(np.float64)
        elif data.dtype.kind not in "biuf":
            raise ValueError(f"X must be numeric, got dtype {data.dtype}")
        if data.ndim != 2:
            raise ValueError(f"Expected 2D array, got {data.ndim}D array instead")
        if data.shape[0] < 1:
            raise ValueError(f"Found array with 0 sample(s) (shape={data.shape}) while a "
                             "minimum of 1 is required")
        if data.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {data.shape[1]} features, but the mixture is expecting "
                             f"{self.n_features_in_} features as input.")
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise ValueError("Input X contains NaN or infinity.")
        return data

    def _log_det_cholesky(self, n_features: int) -> np.ndarray:
        """log det U of every component (= -1/2 log det covariance)."""
        chol = self.precisions_cholesky_
        kind = self.covariance_type
        if kind == "full":
            k = chol.shape[0]
            return np.sum(np.log(np.reshape(chol, (k, -1))[:, :: n_features + 1]), axis=1)
        if kind == "tied":
            return np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)))
        if kind == "diag":
            return np.sum(np.log(chol), axis=1)
        return n_features * np.log(chol)

    def _log_gaussian(self, x: np.ndarray) -> np.ndarray:
        """log N(x | mean, covariance) of every row and component, (N, k)."""
        n, d = x.shape
        means, chol = self.means_, self.precisions_cholesky_
        k = means.shape[0]
        log_det = self._log_det_cholesky(d)
        kind = self.covariance_type
        if kind in ("full", "tied"):
            quad = np.empty((n, k), dtype=x.dtype)
            for c in range(k):
                factor = chol[c, :, :] if kind == "full" else chol
                y = (x @ factor) - (means[c, :] @ factor)
                quad[:, c] = np.sum(np.square(y), axis=1)
        elif kind == "diag":
            prec = chol**2
            quad = (np.sum((means**2 * prec), axis=1) - 2.0 * (x @ (means * prec).T)
                    + (x**2 @ prec.T))
        else:
            prec = chol**2
            quad = (np.sum(means**2, axis=1) * prec - 2 * (x @ means.T * prec)
                    + np.outer(np.einsum("ij,ij->i", x, x), prec))
        return -0.5 * (d * math.log(2 * math.pi) + quad) + log_det

    def _weighted_log_prob(self, x: np.ndarray) -> np.ndarray:
        return self._log_gaussian(x) + np.log(self.weights_)

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        """Log-likelihood of every row of ``x``, (N,)."""
        return _logsumexp_rows(self._weighted_log_prob(self._rows(x)))

    def score(self, x: np.ndarray, y: object = None) -> float:
        """Mean log-likelihood of the rows of ``x``."""
        return float(np.mean(self.score_samples(x)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Most probable component of every row of ``x``, (N,) int."""
        return np.argmax(self._weighted_log_prob(self._rows(x)), axis=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Component probabilities of every row of ``x``, (N, k)."""
        weighted = self._weighted_log_prob(self._rows(x))
        norm = _logsumexp_rows(weighted)
        with np.errstate(under="ignore"):
            log_resp = weighted - norm[:, np.newaxis]
        return np.exp(log_resp)

    def _n_parameters(self) -> int:
        """Free parameters of the mixture."""
        d = self.means_.shape[1]
        k = self.n_components
        kind = self.covariance_type
        if kind == "full":
            cov_params = k * d * (d + 1) / 2.0
        elif kind == "diag":
            cov_params = k * d
        elif kind == "tied":
            cov_params = d * (d + 1) / 2.0
        else:
            cov_params = k
        return int(cov_params + d * k + k - 1)

    def bic(self, x: np.ndarray) -> float:
        """Bayesian information criterion on the rows of ``x`` (lower is better)."""
        n = np.asarray(x).shape[0]
        return -2 * self.score(x) * n + self._n_parameters() * math.log(n)

    def aic(self, x: np.ndarray) -> float:
        """Akaike information criterion on the rows of ``x`` (lower is better)."""
        n = np.asarray(x).shape[0]
        return -2 * self.score(x) * n + 2 * self._n_parameters()


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """log sum exp over each row of the 2-D ``a``, as scikit-learn's mixtures compute it:
    the row maximum taken out, the other terms' exponentials summed, divided by the number
    of maxima m, then log1p(s) + log(m) + max."""
    if a.dtype not in (np.float64, np.float32, np.float16):
        a = np.asarray(a, dtype=np.float64)
    top = np.max(a, axis=1, keepdims=True)
    at_top = a == top
    a = np.array(a, copy=True)
    a[at_top] = -np.inf
    m = np.sum(at_top.astype(a.dtype), axis=1, keepdims=True, dtype=a.dtype)
    shift = np.where(np.isfinite(top), top, 0)
    s = np.sum(np.exp(a - shift), axis=1, keepdims=True, dtype=a.dtype)
    s = np.where(s == 0, s, s / m)
    return np.squeeze(np.log1p(s) + np.log(m) + top, axis=1)


def fit_gmm(
    x: np.ndarray,
    n_components: int,
    covariance_type: str = "full",
    *,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-4,
) -> Mixture | GaussianMixture:
    """A Gaussian mixture fitted on every row of ``x``, without warnings.

    The numba engine (:data:`EM_ENGINE`, float64 finite 2-D rows) returns a :class:`Mixture`;
    the reference engine and other input a scikit-learn ``GaussianMixture`` (imported
    then). The two have the same fitted attributes and scoring methods.

    The workflows give the mixture a fixed iteration budget per candidate, so a fit that
    stops before ``tol`` is expected, not an error: scikit-learn's ``ConvergenceWarning`` is
    silenced.
    ``n_components`` is clipped to the number of rows (a mixture cannot have more components
    than points).

    Parameters
    ----------
    x : (N, d) array_like of float
        The rows to fit (descriptor units; the dtype is kept, so float32 fits in float32).
    n_components : int
        Number of mixture components (>= 1; clipped to N).
    covariance_type : {"full", "tied", "diag", "spherical"}, optional
        Covariance parameterisation (default "full").
    seed : int, optional
        ``random_state`` of the initialisation (default 0).
    n_init : int, optional
        Initialisations tried; the best likelihood wins (default 1).
    max_iter : int, optional
        EM iterations per initialisation (default 100).
    tol : float, optional
        Convergence threshold on the per-row log-likelihood gain (default 1e-3).
    reg_covar : float, optional
        Added to the covariance diagonals, in squared descriptor units (default 1e-4): a
        floor that keeps a collapsed component from scoring an unbounded likelihood.

    Returns
    -------
    Mixture or sklearn.mixture.GaussianMixture
        The fitted model.

    Raises
    ------
    ValueError
        If ``n_components`` < 1 or ``covariance_type`` is unknown; scikit-learn's own
        ``ValueError`` (or the same message) for degenerate data (e.g. ill-defined
        covariances).
    """
    if int(n_components) != n_components or n_components < 1:
        raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}")
    data = np.asarray(x)
    k = max(1, min(int(n_components), data.shape[0]))
    covariance_type = _check_covariance(covariance_type)
    if (EM_ENGINE == "numba" and data.dtype == np.float64 and data.ndim == 2
            and data.shape[0] >= 2 and data.shape[1] >= 1 and int(n_init) >= 1
            and int(max_iter) >= 1 and np.isfinite(data).all()):
        model = Mixture(k, covariance_type, random_state=seed, n_init=n_init,
                        max_iter=max_iter, tol=tol, reg_covar=reg_covar)
        _fit_numba(model, np.ascontiguousarray(data), seed)
        return model
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(k, covariance_type=covariance_type, random_state=seed,
                          n_init=n_init, max_iter=max_iter, tol=tol, reg_covar=reg_covar)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(data)
    return gmm


def _fit_numba(gmm: Mixture | GaussianMixture, data: np.ndarray, seed: int) -> None:
    """``gmm.fit(data)`` with the EM loop in :func:`_em_kernel` (see the module doc).

    ``gmm`` is an unfitted :class:`Mixture` (or scikit-learn ``GaussianMixture``: the same
    parameters, for comparison). Each start is initialised as scikit-learn does
    (``KMeans(n_init=1)`` labels drawn from one ``RandomState(seed)`` shared by the starts);
    the start with the highest final lower bound wins (the first on ties), and the fitted
    attributes are set through the model's ``_set_parameters``, so ``predict``,
    ``predict_proba``, ``bic`` and ``score`` behave as after scikit-learn's ``fit``.
    """
    n, d = data.shape
    k = int(gmm.n_components)
    kind = COVARIANCE_TYPES.index(gmm.covariance_type)
    rs, state = _seeded(seed)
    best = None
    for _ in range(int(gmm.n_init)):
        labels = _kmeans_labels(data, k, rs, state)
        state = None  # a later start begins where this one left the generator
        resp = np.zeros((n, k))
        resp[np.arange(n), labels] = 1.0
        out = _em_kernel(data, resp, kind, float(gmm.reg_covar), int(gmm.max_iter),
                         float(gmm.tol))
        if out[-1]:
            raise ValueError(_FIT_FAILED)
        if best is None or out[4] > best[4]:
            best = out
    assert best is not None
    weights, means, cov, prec_chol, lower, n_iter, converged, bounds, _ = best
    if kind == 0:
        params = (weights, means, cov, prec_chol)
    elif kind == 1:
        params = (weights, means, cov[0], prec_chol[0])
    elif kind == 2:
        params = (weights, means, np.diagonal(cov, axis1=1, axis2=2).copy(),
                  np.diagonal(prec_chol, axis1=1, axis2=2).copy())
    else:
        params = (weights, means, cov[:, 0, 0].copy(), prec_chol[:, 0, 0].copy())
    gmm._set_parameters(params)
    gmm.converged_ = bool(converged)
    gmm.n_iter_ = int(n_iter)
    gmm.lower_bound_ = float(lower)
    gmm.lower_bounds_ = [float(b) for b in bounds[:n_iter]]
    gmm.n_features_in_ = d


_LOCAL = threading.local()


@lru_cache(maxsize=64)
def _seed_state(seed: int) -> tuple:
    return np.random.RandomState(seed).get_state()


def _seeded(seed: int) -> tuple[np.random.RandomState, tuple]:
    """``RandomState(seed)`` and its state, without seeding one per fit: the legacy seeding
    takes ~0.15 ms of held GIL, a set_state of the cached state ~0.06 ms. The generator is
    this thread's own, reused: the caller draws from it before its next call."""
    state = _seed_state(int(seed))
    rs = getattr(_LOCAL, "rs", None)
    if rs is None:
        rs = _LOCAL.rs = np.random.RandomState(0)
    rs.set_state(state)
    return rs, state


def _kmeans_labels(data: np.ndarray, k: int, rs: np.random.RandomState,
                   state: tuple | None = None) -> np.ndarray:
    """``KMeans(k, n_init=1, random_state=rs).fit(data).labels_``, as scikit-learn computes it.

    The same steps and random draws: the data centred, k-means++ seeding (``2 + ln k`` local
    trials, squared distances ||x||^2 - 2 x.c + ||c||^2), then Lloyd iterations to strict
    convergence or a total squared centre shift <= 1e-4 x the mean feature variance, at most
    300, in :func:`_lloyd_kernel`. A cluster that empties (scikit-learn relocates it to a far
    point) hands the start back to scikit-learn's ``KMeans`` from the same random state
    (``state``: ``rs``'s state now, when the caller knows it; else it is read).
    """
    if state is None:
        state = rs.get_state()
    x = data - data.mean(axis=0)
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x)
    weight = np.ones(n)
    centers = np.empty((k, x.shape[1]))
    centre = rs.choice(n, p=weight / weight.sum())
    centers[0] = x[centre]
    closest = np.maximum(sq[centre] - 2.0 * (x @ x[centre]) + sq, 0.0)
    pot = closest.sum()
    trials = 2 + int(np.log(k))
    for c in range(1, k):
        ids = np.searchsorted(np.cumsum(closest), rs.uniform(size=trials) * pot)
        np.clip(ids, None, n - 1, out=ids)
        dist = np.maximum(sq[ids][:, None] - 2.0 * (x[ids] @ x.T) + sq[None, :], 0.0)
        np.minimum(closest, dist, out=dist)
        pots = dist.sum(axis=1)
        best = int(np.argmin(pots))
        pot, closest = pots[best], dist[best]
        centers[c] = x[ids[best]]
    tol = float(np.mean(np.var(x, axis=0))) * 1e-4
    labels, ok = _lloyd_kernel(x, centers, 300, tol)
    if ok:
        return labels
    from sklearn.cluster import KMeans  # rare: scikit-learn relocates the empty cluster
    from sklearn.exceptions import ConvergenceWarning

    rs.set_state(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=1, random_state=rs).fit(data).labels_


@njit(cache=True, nogil=True)
def _nearest_centres(X, centers, norms, labels):
    """Assign each row of ``X`` to its nearest centre (squared distance without the row's
    own norm, as scikit-learn's Lloyd step; first centre wins ties); ``norms`` is filled
    with the centres' squared norms."""
    n, d = X.shape
    k = centers.shape[0]
    for c in range(k):
        s = 0.0
        for j in range(d):
            s += centers[c, j] * centers[c, j]
        norms[c] = s
    for i in range(n):
        best, lab = 0.0, 0
        for c in range(k):
            dot = 0.0
            for j in range(d):
                dot += X[i, j] * centers[c, j]
            v = norms[c] - 2.0 * dot
            if c == 0 or v < best:
                best, lab = v, c
        labels[i] = lab


@njit(cache=True, nogil=True)
def _lloyd_kernel(X, centers, max_iter, tol):
    """scikit-learn's ``_kmeans_single_lloyd`` (dense, unit weights) from ``centers``;
    returns (labels, False) as soon as a cluster empties."""
    n, d = X.shape
    k = centers.shape[0]
    labels = np.full(n, -1, np.int32)
    old = labels.copy()
    new = np.empty((k, d))
    counts = np.empty(k)
    norms = np.empty(k)
    strict = False
    for _ in range(max_iter):
        _nearest_centres(X, centers, norms, labels)
        new[:] = 0.0
        counts[:] = 0.0
        for i in range(n):
            lab = labels[i]
            counts[lab] += 1.0
            for j in range(d):
                new[lab, j] += X[i, j]
        shift = 0.0
        for c in range(k):
            if counts[c] == 0.0:
                return labels, False
            for j in range(d):
                v = new[c, j] / counts[c]
                shift += (v - centers[c, j]) ** 2
                centers[c, j] = v
        same = True
        for i in range(n):
            if labels[i] != old[i]:
                same = False
                break
        if same:
            strict = True
            break
        if shift <= tol:
            break
        old[:] = labels
    if not strict:  # labels of the final centres
        _nearest_centres(X, centers, norms, labels)
    return labels, True


@njit(cache=True, nogil=True)
def _m_step(X, resp, kind, reg, w, mu, cov):
    """scikit-learn's ``_estimate_gaussian_parameters``: counts (+10 eps), means and the
    covariances of type ``kind`` (0 full, 1 tied, 2 diag, 3 spherical), every type stored
    as (k, d, d) matrices (diagonal ones for 2 and 3, copies of one for 1)."""
    n, d = X.shape
    k = resp.shape[1]
    eps10 = 10.0 * 2.220446049250313e-16
    for c in range(k):
        s = 0.0
        for i in range(n):
            s += resp[i, c]
        w[c] = s + eps10
        for j in range(d):
            s = 0.0
            for i in range(n):
                s += resp[i, c] * X[i, j]
            mu[c, j] = s / w[c]
    cov[:] = 0.0
    if kind == 0:
        diff = np.empty(d)
        for c in range(k):
            for i in range(n):
                r = resp[i, c]
                if r == 0.0:
                    continue
                for a in range(d):
                    diff[a] = X[i, a] - mu[c, a]
                for a in range(d):
                    ra = r * diff[a]
                    for b in range(a + 1):
                        cov[c, a, b] += ra * diff[b]
            for a in range(d):
                for b in range(a + 1):
                    v = cov[c, a, b] / w[c]
                    cov[c, a, b] = v
                    cov[c, b, a] = v
                cov[c, a, a] += reg
    elif kind == 1:
        total = 0.0
        for c in range(k):
            total += w[c]
        for a in range(d):
            for b in range(a + 1):
                s = 0.0
                for i in range(n):
                    s += X[i, a] * X[i, b]
                m = 0.0
                for c in range(k):
                    m += w[c] * mu[c, a] * mu[c, b]
                v = (s - m) / total
                for c in range(k):
                    cov[c, a, b] = v
                    cov[c, b, a] = v
        for c in range(k):
            for a in range(d):
                cov[c, a, a] += reg
    else:
        for c in range(k):
            mean_var = 0.0
            for j in range(d):
                s = 0.0
                for i in range(n):
                    s += resp[i, c] * X[i, j] * X[i, j]
                v = s / w[c] - mu[c, j] * mu[c, j] + reg
                cov[c, j, j] = v
                mean_var += v
            if kind == 3:
                for j in range(d):
                    cov[c, j, j] = mean_var / d


@njit(cache=True, nogil=True)
def _precision_cholesky(cov, kind, out) -> bool:
    """``out[c]`` = inverse of the lower Cholesky factor of ``cov[c]``, transposed (upper
    triangular: precision = U U^T, as scikit-learn's ``precisions_cholesky_``); False when a
    covariance is not positive definite (scikit-learn raises then)."""
    k, d, _ = cov.shape
    out[:] = 0.0
    L = np.zeros((d, d))
    for c in range(k):
        if kind >= 2:
            for j in range(d):
                v = cov[c, j, j]
                if not v > 0.0:
                    return False
                out[c, j, j] = 1.0 / math.sqrt(v)
            continue
        L[:] = 0.0
        for j in range(d):
            s = cov[c, j, j]
            for p in range(j):
                s -= L[j, p] * L[j, p]
            if not s > 0.0:
                return False
            L[j, j] = math.sqrt(s)
            for i in range(j + 1, d):
                t = cov[c, i, j]
                for p in range(j):
                    t -= L[i, p] * L[j, p]
                L[i, j] = t / L[j, j]
        for col in range(d):  # M = L^-1 (lower) by forward substitution; out = M^T
            out[c, col, col] = 1.0 / L[col, col]
            for i in range(col + 1, d):
                t = 0.0
                for p in range(col, i):
                    t -= L[i, p] * out[c, col, p]
                out[c, col, i] = t / L[i, i]
    return True


@njit(cache=True, nogil=True)
def _e_step(Xt, w, mu, U, log_resp) -> float:
    """scikit-learn's ``_e_step`` on the transposed data ``Xt`` (d, n): log responsibilities
    into ``log_resp`` (n, k); returns the mean log-likelihood per row (log-sum-exp over the
    components). Row-contiguous inner loops, so the compiler vectorises them."""
    d, n = Xt.shape
    k = w.shape[0]
    const = d * math.log(2.0 * math.pi)
    diff = np.empty((d, n))
    y = np.empty((d, n))
    for c in range(k):
        log_det = math.log(w[c])
        for j in range(d):
            log_det += math.log(U[c, j, j])
        for a in range(d):
            m = mu[c, a]
            for i in range(n):
                diff[a, i] = Xt[a, i] - m
        y[:] = 0.0
        for a in range(d):  # y = (x - mu) U, row by row of the upper-triangular U
            for j in range(a, d):
                u = U[c, a, j]
                if u != 0.0:
                    for i in range(n):
                        y[j, i] += diff[a, i] * u
        for i in range(n):
            q = 0.0
            for j in range(d):
                q += y[j, i] * y[j, i]
            log_resp[i, c] = -0.5 * (const + q) + log_det
    total = 0.0
    for i in range(n):
        top = log_resp[i, 0]
        for c in range(1, k):
            if log_resp[i, c] > top:
                top = log_resp[i, c]
        s = 0.0
        for c in range(k):
            s += math.exp(log_resp[i, c] - top)
        lse = top + math.log(s)
        for c in range(k):
            log_resp[i, c] -= lse
        total += lse
    return total / n


@njit(cache=True, nogil=True)
def _em_kernel(X, resp, kind, reg, max_iter, tol):
    """One start of scikit-learn's EM from the responsibilities ``resp`` (k-means labels).

    Returns (weights, means, covariances (k, d, d), precision Cholesky factors (k, d, d),
    final lower bound, iterations, converged, lower bound per iteration, failed)."""
    n, d = X.shape
    k = resp.shape[1]
    w = np.empty(k)
    mu = np.empty((k, d))
    cov = np.empty((k, d, d))
    U = np.empty((k, d, d))
    bounds = np.full(max_iter, np.nan)
    _m_step(X, resp, kind, reg, w, mu, cov)
    for c in range(k):
        w[c] /= n
    if not _precision_cholesky(cov, kind, U):
        return w, mu, cov, U, -np.inf, 0, False, bounds, True
    log_resp = np.empty((n, k))
    Xt = np.ascontiguousarray(X.T)
    lower = -np.inf
    converged = False
    n_iter = 0
    for it in range(1, max_iter + 1):
        prev = lower
        lower = _e_step(Xt, w, mu, U, log_resp)
        for i in range(n):
            for c in range(k):
                resp[i, c] = math.exp(log_resp[i, c])
        _m_step(X, resp, kind, reg, w, mu, cov)
        total = 0.0
        for c in range(k):
            total += w[c]
        for c in range(k):
            w[c] /= total
        if not _precision_cholesky(cov, kind, U):
            return w, mu, cov, U, lower, it, False, bounds, True
        bounds[it - 1] = lower
        n_iter = it
        if abs(lower - prev) < tol:
            converged = True
            break
    return w, mu, cov, U, lower, n_iter, converged, bounds, False


def posterior(gmm: Mixture | GaussianMixture, x: np.ndarray) -> np.ndarray:
    """``gmm.predict_proba(x)``: every row's component probabilities, (N, k).

    For a fitted mixture and float64 rows it is the numba E-step of :func:`fit_gmm`'s kernel
    (GIL-free, no input validation: ~20x less than scikit-learn's on the workflows' sizes);
    other input goes to ``predict_proba`` itself. Rounding aside, the two agree.

    Parameters
    ----------
    gmm : Mixture or sklearn.mixture.GaussianMixture
        A fitted mixture (e.g. from :func:`fit_gmm`).
    x : (N, d) array_like of float
        Rows in the units the mixture was fitted in.

    Returns
    -------
    (N, k) ndarray of float64
        Posterior probabilities, rows summing to 1.
    """
    log_resp = _log_resp(gmm, x)
    return gmm.predict_proba(x) if log_resp is None else np.exp(log_resp)


def _log_resp(gmm: Mixture | GaussianMixture, x: np.ndarray) -> np.ndarray | None:
    """Log responsibilities of ``x`` under the fitted ``gmm`` by the numba E-step, or None
    where that path does not apply (then the model's own methods are used)."""
    data = np.asarray(x)
    prec = getattr(gmm, "precisions_cholesky_", None)
    if (prec is None or data.dtype != np.float64 or data.ndim != 2 or data.shape[0] == 0
            or data.shape[1] != gmm.means_.shape[1] or not np.isfinite(data).all()):
        return None
    k, d = gmm.means_.shape
    kind = gmm.covariance_type
    if kind == "full":
        U = np.ascontiguousarray(prec, dtype=np.float64)
    elif kind == "tied":
        U = np.ascontiguousarray(np.broadcast_to(prec, (k, d, d)), dtype=np.float64)
    elif kind == "diag":
        U = np.zeros((k, d, d))
        U[:, np.arange(d), np.arange(d)] = prec
    else:
        U = np.zeros((k, d, d))
        U[:, np.arange(d), np.arange(d)] = np.asarray(prec, dtype=np.float64)[:, None]
    log_resp = np.empty((data.shape[0], k))
    _e_step(np.ascontiguousarray(data.T), np.asarray(gmm.weights_, dtype=np.float64),
            np.ascontiguousarray(gmm.means_, dtype=np.float64), U, log_resp)
    return log_resp


def labels_by_size(raw: np.ndarray, n_components: int) -> np.ndarray:
    """Component ids renumbered by decreasing size: the largest cluster is 0.

    A mixture's internal component order depends on its initialisation; renumbering makes
    label ids comparable between candidates and frames (the largest domain is always 0).
    Ties keep the mixture's order.

    Parameters
    ----------
    raw : (N,) array_like of int
        Component ids in [0, n_components).
    n_components : int
        Number of components of the mixture.

    Returns
    -------
    (N,) ndarray of int16
        The renumbered labels.
    """
    raw = np.asarray(raw)
    order = np.argsort(-np.bincount(raw, minlength=n_components), kind="stable")
    remap = np.empty(n_components, dtype=np.int16)
    remap[order] = np.arange(n_components, dtype=np.int16)
    return remap[raw]


@dataclass(frozen=True, eq=False)
class MixtureLabels:
    """What :func:`mixture_labels` found: every row's label and the fit behind it.

    Attributes
    ----------
    labels : (N,) ndarray of int16
        Label of every row, renumbered by decreasing cluster size.
    model : Mixture or sklearn.mixture.GaussianMixture
        The fitted mixture (see :func:`fit_gmm`).
    fit : (M, d) ndarray
        The rows it was fitted on.
    """

    labels: np.ndarray
    model: Mixture | GaussianMixture
    fit: np.ndarray

    @property
    def bic_per_row(self) -> float:
        """BIC of the mixture on the fitted rows, divided by their number (frames compare)."""
        return float(self.model.bic(self.fit)) / self.fit.shape[0]

    @property
    def icl_per_row(self) -> float:
        """ICL per fitted row: BIC plus the assignment entropy -sum tau log tau of the
        fitted rows, divided by their number.

        The integrated completed likelihood favours well separated clusters (Biernacki et al.
        2000), as in Slautin et al.'s latent rewards.
        """
        tau = self.model.predict_proba(self.fit)
        entropy = float(-np.sum(tau * np.log(np.clip(tau, 1e-300, None))))
        return (float(self.model.bic(self.fit)) + entropy) / self.fit.shape[0]


def mixture_labels(
    x: np.ndarray,
    n_components: int,
    covariance_type: str = "full",
    *,
    fit_rows: np.ndarray | None = None,
    min_fit_rows: int | None = None,
    max_fit_rows: int | None = None,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-4,
) -> MixtureLabels:
    """Label every row of ``x`` by a GMM fitted on its trusted rows (see the module doc).

    Parameters
    ----------
    x : (N, d) array_like of float
        Descriptors, one row per site (descriptor units).
    n_components : int
        Number of mixture components (>= 1; clipped to the number of fitted rows).
    covariance_type : {"full", "tied", "diag", "spherical"}, optional
        Covariance parameterisation (default "full").
    fit_rows : (N,) array_like of bool, optional
        Trusted rows (default: all).
    min_fit_rows : int, optional
        Fewest trusted rows fitted on their own, else every row is fitted (default
        ``max(10, 3 * n_components) + 1``: enough rows to pin down the components).
    max_fit_rows : int, optional
        Most rows fitted: a fixed ``seed``-ed sample beyond that (default: no limit).
    seed, n_init, max_iter, tol, reg_covar
        As in :func:`fit_gmm`.

    Returns
    -------
    MixtureLabels
        Labels of every row (int16, largest cluster 0), the model and its fitted rows.

    Raises
    ------
    ValueError
        As :func:`fit_gmm`, or if ``fit_rows`` does not have one entry per row of ``x``.
    """
    data = np.asarray(x)
    if fit_rows is None:
        rows = np.ones(data.shape[0], dtype=bool)
    else:
        rows = np.asarray(fit_rows, dtype=bool)
        if rows.shape != (data.shape[0],):
            raise ValueError(f"fit_rows must have shape ({data.shape[0]},), got {rows.shape}")
    if min_fit_rows is None:
        min_fit_rows = max(10, 3 * int(n_components)) + 1
    rows = trusted_rows(rows, min_fit_rows)
    if max_fit_rows is None:
        fit = data[rows]
    else:
        fit = data[fit_sample(rows, max_fit_rows, seed)]
    gmm = fit_gmm(fit, n_components, covariance_type, seed=seed, n_init=n_init,
                  max_iter=max_iter, tol=tol, reg_covar=reg_covar)
    log_resp = _log_resp(gmm, data)
    raw = gmm.predict(data) if log_resp is None else np.argmax(log_resp, axis=1)
    return MixtureLabels(labels=labels_by_size(raw, gmm.n_components), model=gmm, fit=fit)


def warmup() -> None:
    """Compile (or load from numba's cache) the EM and k-means kernels on tiny inputs, so the
    first frame that fits a mixture does not pay for it."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 1.0, (12, 2)), rng.normal(4.0, 1.0, (12, 2))])
    for covariance_type in COVARIANCE_TYPES:
        _fit_numba(Mixture(2, covariance_type=covariance_type, max_iter=3), x, 0)
