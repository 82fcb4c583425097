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
  (:func:`mixture_labels`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

__all__ = [
    "COVARIANCE_TYPES",
    "MixtureLabels",
    "fit_gmm",
    "fit_sample",
    "labels_by_size",
    "mixture_labels",
    "trusted_rows",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


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
) -> GaussianMixture:
    """A scikit-learn ``GaussianMixture`` fitted on every row of ``x``, without warnings.

    The workflows give the mixture a fixed iteration budget per candidate, so a fit that
    stops before ``tol`` is expected, not an error: ``ConvergenceWarning`` is silenced.
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
    sklearn.mixture.GaussianMixture
        The fitted model.

    Raises
    ------
    ValueError
        If ``n_components`` < 1 or ``covariance_type`` is unknown; scikit-learn's own
        ``ValueError`` for degenerate data (e.g. ill-defined covariances).
    """
    if int(n_components) != n_components or n_components < 1:
        raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}")
    data = np.asarray(x)
    k = max(1, min(int(n_components), data.shape[0]))
    gmm = GaussianMixture(k, covariance_type=_check_covariance(covariance_type),
                          random_state=seed, n_init=n_init, max_iter=max_iter, tol=tol,
                          reg_covar=reg_covar)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(data)
    return gmm


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
    model : sklearn.mixture.GaussianMixture
        The fitted mixture.
    fit : (M, d) ndarray
        The rows it was fitted on.
    """

    labels: np.ndarray
    model: GaussianMixture
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
    return MixtureLabels(labels=labels_by_size(gmm.predict(data), gmm.n_components),
                         model=gmm, fit=fit)
