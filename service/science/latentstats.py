"""Statistics of a VAE latent distribution: the inputs of the latent rewards, and KDE labels.

Slautin et al. and Barakati et al. (section III) score a trained model by its latent
distribution: Gaussian mixtures with 2..10 components fitted by grid on a density-filtered
latent (points where a kernel density estimate is above a fraction of its maximum: the
cluster cores, not the wall sites between them), on equal-size subsets so that windows of
different size (and frames with different numbers of key points) compare; the best BIC, AIC
and ICL (BIC + 2 x entropy of the responsibilities) over the grid; and a Bayesian-GMM score
whose entropy term penalises overlapping components. Paper 000 section III labels sites by the
peaks of a KDE of the second latent (:func:`kde_peak_labels`).

All functions are pure numpy/scipy/scikit-learn on arrays; sizes are in rows (patches).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from scipy.signal import find_peaks
from scipy.stats import gaussian_kde
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture, GaussianMixture

__all__ = ["DENSITY_FRACTION", "K_RANGE", "SUBSET_ROWS", "LatentCriteria", "bgmm_score",
           "bimodal_dimension", "class_separability", "density_filter", "gmm_criteria",
           "kde_classes", "kde_peak_labels", "standardise"]

DENSITY_FRACTION = 0.1  # keep latent points whose KDE is above this fraction of its maximum
SUBSET_ROWS = 400  # equal-size subsets: every candidate is scored on this many rows
K_RANGE = tuple(range(2, 11))  # components 2..10, by grid
PEAK_PROMINENCE = 0.05  # KDE peaks must stand this fraction of the maximum above the valley
DIM_K_RANGE = (1, 2, 3, 4)  # 1-D mixtures tried per latent dimension by bimodal_dimension
DIM_MAX_ROWS = 2000  # bimodal_dimension looks at a seeded sample of at most this many rows


def _finite_rows(z: np.ndarray, name: str = "latent") -> np.ndarray:
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d), got {arr.shape}")
    return arr[np.all(np.isfinite(arr), axis=1)]


def standardise(z: np.ndarray) -> np.ndarray:
    """Finite rows of ``z`` with each column centred and divided by its standard deviation
    (columns with zero spread are only centred): the latent in units of its own spread, so
    mixture criteria measure cluster structure, not the scale a model happened to learn.

    Parameters
    ----------
    z : (N, d) array_like of float
        Latent means (rows with NaN/inf are dropped).

    Returns
    -------
    (M, d) ndarray of float64

    Raises
    ------
    ValueError
        If ``z`` is not 2-D.
    """
    x = _finite_rows(z)
    if len(x) == 0:
        return x
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def density_filter(z: np.ndarray, fraction: float = DENSITY_FRACTION,
                   max_rows: int = 2000, seed: int = 0) -> np.ndarray:
    """The rows of ``z`` where a Gaussian KDE of ``z`` is at least ``fraction`` of its maximum.

    Parameters
    ----------
    z : (N, d) array_like of float
        Latent means (rows with NaN/inf are dropped first).
    fraction : float, optional
        Density threshold as a fraction of the largest density at a row (0..1; default 0.1).
    max_rows : int, optional
        The KDE is built on at most this many rows (a seeded sample; default 2000).
    seed : int, optional
        Seed of that sample.

    Returns
    -------
    (M, d) ndarray of float64
        The kept rows (all of them when the KDE is singular, e.g. a collapsed latent).

    Raises
    ------
    ValueError
        If ``z`` is not 2-D or ``fraction`` is not in [0, 1].
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    x = _finite_rows(z)
    if len(x) <= x.shape[1] + 1:
        return x
    rng = np.random.default_rng(seed)
    base = x if len(x) <= max_rows else x[rng.choice(len(x), max_rows, replace=False)]
    try:
        dens = gaussian_kde(base.T)(x.T)
    except (np.linalg.LinAlgError, ValueError):
        return x
    return x[dens >= float(fraction) * dens.max()]


class LatentCriteria(dict):
    """Best-over-k mixture criteria of a latent (a dict): ``bic``, ``aic``, ``icl`` (per row,
    lower = better), ``k_bic``, ``k_aic``, ``k_icl`` (the component count reaching each),
    ``icl_by_k`` (k -> ICL per row of every fitted k) and ``n_rows`` (rows fitted). NaN
    values mean the latent could not be fitted."""


def gmm_criteria(z: np.ndarray, k_range: tuple[int, ...] = K_RANGE,
                 n_rows: int = SUBSET_ROWS, fraction: float = DENSITY_FRACTION,
                 seed: int = 0, stop: Callable[[], bool] | None = None) -> LatentCriteria:
    """Mixture criteria on a density-filtered, equal-size subset of the latent, by grid over k.

    The latent is first standardised (:func:`standardise`): per-row BIC and ICL of a density
    carry the log-determinant of its covariance, which would otherwise reward a model for
    shrinking its latent (collapse is gated separately, by ``latent_variance``). For each k in
    ``k_range`` a full-covariance GMM is fitted on the same ``n_rows`` rows
    (drawn with replacement when fewer are left after the filter, so every candidate is
    scored on the same number of rows); BIC = -2 log L + p log n, AIC = -2 log L + 2 p,
    ICL = BIC + 2 sum_i H(tau_i) (the responsibilities' entropy); each divided by n. The
    best value of each over k is returned with its k.

    Parameters
    ----------
    z : (N, d) array_like of float
        Latent means.
    k_range : tuple of int, optional
        Component counts tried (default 2..10).
    n_rows : int, optional
        Rows of the subset (default SUBSET_ROWS).
    fraction : float, optional
        KDE threshold of :func:`density_filter`.
    seed : int, optional
        Seed of the subset and the fits.
    stop : callable, optional
        Checked before each fit; when it returns True the grid ends early and the criteria
        hold the component counts fitted so far (NaN if none): the caller discards them.

    Returns
    -------
    LatentCriteria
        NaN criteria when fewer than 2 * max(k_range) rows are finite.

    Raises
    ------
    ValueError
        If ``z`` is not 2-D, ``k_range`` is empty or holds a k < 1, or ``n_rows`` < 2.
    """
    ks = tuple(int(k) for k in k_range)
    if not ks or min(ks) < 1:
        raise ValueError(f"k_range must hold component counts >= 1, got {k_range!r}")
    if int(n_rows) < 2:
        raise ValueError(f"n_rows must be >= 2, got {n_rows!r}")
    out = LatentCriteria(bic=math.nan, aic=math.nan, icl=math.nan, k_bic=0, k_aic=0, k_icl=0,
                         icl_by_k={}, n_rows=0)
    x = density_filter(standardise(z), fraction, seed=seed)
    if len(x) < 2 * max(ks):
        return out
    rng = np.random.default_rng(seed)
    x = x[rng.choice(len(x), int(n_rows), replace=len(x) < int(n_rows))]
    n = len(x)
    out["n_rows"] = n
    for k in ks:
        if stop is not None and stop():
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gm = GaussianMixture(k, covariance_type="full", random_state=seed,
                                     reg_covar=1e-4, max_iter=200).fit(x)
        except (ValueError, np.linalg.LinAlgError):
            continue
        bic, aic = gm.bic(x) / n, gm.aic(x) / n
        tau = gm.predict_proba(x)
        ent = float(-np.sum(tau * np.log(np.clip(tau, 1e-300, None)))) / n
        out["icl_by_k"][k] = float(bic + 2.0 * ent)
        for name, v in (("bic", bic), ("aic", aic), ("icl", bic + 2.0 * ent)):
            if math.isfinite(v) and not (v >= out[name]):  # NaN-safe "better or first"
                out[name], out[f"k_{name}"] = float(v), k
    return out


def bgmm_score(z: np.ndarray, max_components: int = 10, n_rows: int = SUBSET_ROWS,
               fraction: float = DENSITY_FRACTION, seed: int = 0) -> float:
    """Bayesian-GMM score of the latent: -mean log-likelihood + 2 x mean responsibility
    entropy, per row, of a Dirichlet-process mixture (up to ``max_components``) on the
    standardised (:func:`standardise`), density-filtered, equal-size subset. Lower =
    compact, well separated clusters; the entropy term is the overlap penalty.

    Parameters
    ----------
    z : (N, d) array_like of float
        Latent means.
    max_components : int, optional
        Upper bound on the components (default 10).
    n_rows, fraction, seed
        As :func:`gmm_criteria`.

    Returns
    -------
    float
        The score (nats per row); NaN when fewer than 2 * max_components rows are finite or
        the fit fails.

    Raises
    ------
    ValueError
        If ``z`` is not 2-D or ``max_components`` < 1.
    """
    if int(max_components) < 1:
        raise ValueError(f"max_components must be >= 1, got {max_components!r}")
    x = density_filter(standardise(z), fraction, seed=seed)
    if len(x) < 2 * int(max_components):
        return math.nan
    rng = np.random.default_rng(seed)
    x = x[rng.choice(len(x), int(n_rows), replace=len(x) < int(n_rows))]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            bg = BayesianGaussianMixture(
                n_components=int(max_components),
                weight_concentration_prior_type="dirichlet_process",
                covariance_type="full", reg_covar=1e-4, max_iter=200, random_state=seed).fit(x)
    except (ValueError, np.linalg.LinAlgError):
        return math.nan
    tau = bg.predict_proba(x)
    ent = float(-np.mean(np.sum(tau * np.log(np.clip(tau, 1e-300, None)), axis=1)))
    return float(-bg.score(x) + 2.0 * ent)


def kde_peak_labels(values: np.ndarray, prominence: float = PEAK_PROMINENCE,
                    grid: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Sites labelled by the peaks of a 1-D KDE (paper 000 section III, on z2).

    The KDE (Scott's bandwidth) is evaluated on ``grid`` points spanning the values; its
    peaks that stand ``prominence`` x max density above their surroundings are the classes,
    and each value takes the nearest peak (rows with NaN get -1).

    Parameters
    ----------
    values : (N,) array_like of float
        One latent coordinate per site.
    prominence : float, optional
        Minimal peak prominence as a fraction of the maximum density (default 0.05).
    grid : int, optional
        Evaluation points of the KDE (default 512).

    Returns
    -------
    labels : (N,) ndarray of int16
        Index of the nearest peak (peaks in increasing order), -1 for NaN rows; all 0 when
        the density has one peak or cannot be estimated.
    peaks : (P,) ndarray of float64
        Peak positions, latent units.

    Raises
    ------
    ValueError
        If ``values`` is not 1-D.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    ok = np.isfinite(v)
    labels = np.full(len(v), -1, np.int16)
    x = v[ok]
    if len(x) < 3 or np.ptp(x) <= 0:
        labels[ok] = 0
        return labels, (np.array([float(np.mean(x))]) if len(x) else np.zeros(0))
    try:
        kde = gaussian_kde(x)
    except (np.linalg.LinAlgError, ValueError):
        labels[ok] = 0
        return labels, np.array([float(np.median(x))])
    pad = 3.0 * float(kde.factor) * float(np.std(x))
    g = np.linspace(x.min() - pad, x.max() + pad, int(grid))
    d = kde(g)
    idx, _ = find_peaks(np.concatenate([[0.0], d, [0.0]]),
                        prominence=float(prominence) * float(d.max()))
    peaks = g[np.clip(idx - 1, 0, len(g) - 1)]
    if len(peaks) == 0:
        peaks = np.array([g[int(np.argmax(d))]])
    labels[ok] = np.argmin(np.abs(x[:, None] - peaks[None, :]), axis=1).astype(np.int16)
    return labels, peaks


def bimodal_dimension(z: np.ndarray, k_range: tuple[int, ...] = DIM_K_RANGE,
                      n_rows: int = SUBSET_ROWS, fraction: float = DENSITY_FRACTION,
                      seed: int = 0) -> tuple[int | None, np.ndarray]:
    """The latent dimension whose values carry the most evidence of classes, by 1-D ICL.

    For each column of ``z`` (a seeded sample of at most DIM_MAX_ROWS rows), 1-D Gaussian
    mixtures with ``k_range`` components are scored by :func:`gmm_criteria`
    (density-filtered, equal-size subset); the column's evidence is
    the ICL of one component minus the best ICL over ``k_range`` (nats per row, >= 0; the
    difference does not depend on the column's scale). The column with the largest evidence
    is returned; None when no column prefers two or more components ("nothing here").

    Parameters
    ----------
    z : (N, d) array_like of float
        Latent means (rows with NaN/inf are dropped).
    k_range : tuple of int, optional
        Component counts tried; must include 1 (default 1..4).
    n_rows, fraction, seed
        As :func:`gmm_criteria`.

    Returns
    -------
    dim : int or None
        Column index, or None.
    evidence : (d,) ndarray of float64
        ICL(k = 1) - min ICL per column, nats per row (NaN where the column cannot be fitted).

    Raises
    ------
    ValueError
        If ``z`` is not 2-D or ``k_range`` does not include 1.
    """
    ks = tuple(int(k) for k in k_range)
    if 1 not in ks:
        raise ValueError(f"k_range must include 1, got {k_range!r}")
    x = _finite_rows(z)
    if len(x) > DIM_MAX_ROWS:  # the choice needs no more rows than the fits use
        x = x[np.random.default_rng(seed).choice(len(x), DIM_MAX_ROWS, replace=False)]
    evidence = np.full(x.shape[1], np.nan)
    best: tuple[float, int] | None = None
    for j in range(x.shape[1]):
        crit = gmm_criteria(x[:, j:j + 1], ks, n_rows, fraction, seed)
        one = crit["icl_by_k"].get(1, math.nan)
        if not (math.isfinite(one) and math.isfinite(crit["icl"])):
            continue
        evidence[j] = one - crit["icl"]
        if crit["k_icl"] >= 2 and (best is None or evidence[j] > best[0]):
            best = (float(evidence[j]), j)
    return (None if best is None else best[1]), evidence


def class_separability(z: np.ndarray, k_range: tuple[int, ...] = DIM_K_RANGE,
                       n_rows: int = SUBSET_ROWS, fraction: float = DENSITY_FRACTION,
                       seed: int = 0) -> float:
    """How clearly the latent splits into classes along one dimension: the largest 1-D ICL
    gain over the latent's columns (:func:`bimodal_dimension`'s evidence).

    Each column is standardised, density-filtered and scored on an equal-size subset of
    ``n_rows`` rows, so the value (nats per row) does not depend on the scale a model
    learned, on the number of patches, or on the window the patches were cut at: models on
    different windows compare. 0 when no column prefers two or more components (one class:
    "nothing here"); the :func:`kde_classes` of the latent are taken along the column that
    reaches it.

    Parameters
    ----------
    z : (N, d) array_like of float
        Latent means (rows with NaN/inf are dropped).
    k_range, n_rows, fraction, seed
        As :func:`bimodal_dimension`.

    Returns
    -------
    float
        max over columns of ICL(k = 1) - min_k ICL(k), nats per row (>= 0); NaN when no
        column can be fitted (too few finite rows, no columns).

    Raises
    ------
    ValueError
        If ``z`` is not 2-D or ``k_range`` does not include 1.
    """
    _, evidence = bimodal_dimension(z, k_range, n_rows, fraction, seed)
    finite = evidence[np.isfinite(evidence)]
    return float(max(0.0, finite.max())) if finite.size else math.nan


def kde_classes(z: np.ndarray, prominence: float = PEAK_PROMINENCE, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Classes of latent rows: the KDE peaks (:func:`kde_peak_labels`) of the latent
    dimension chosen by :func:`bimodal_dimension` (paper 000 section III labels by a KDE of
    z2; here the column is the one the 1-D ICL finds most multimodal, and the number of
    classes is the number of peaks, not fixed).

    Parameters
    ----------
    z : (N, d) array_like of float
        Latent means; rows with NaN/inf get -1.
    prominence : float, optional
        As :func:`kde_peak_labels`.
    seed : int, optional
        As :func:`gmm_criteria`.

    Returns
    -------
    labels : (N,) ndarray of int16
        Nearest peak per row (peaks in increasing order); all 0 (one class) when no
        dimension shows classes, -1 for non-finite rows.
    peaks : (P,) ndarray of float64
        Peak positions on the chosen dimension, latent units (one when nothing was found).
    dim : int or None
        The chosen column (None: no dimension prefers two or more components).

    Raises
    ------
    ValueError
        If ``z`` is not 2-D.
    """
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"latent must have shape (N, d), got {arr.shape}")
    ok = np.all(np.isfinite(arr), axis=1)
    labels = np.full(len(arr), -1, np.int16)
    dim = bimodal_dimension(arr[ok], seed=seed)[0] if ok.sum() > 2 and arr.shape[1] else None
    if dim is None:
        labels[ok] = 0
        centre = np.median(arr[ok], axis=0) if ok.any() and arr.shape[1] else np.zeros(1)
        return labels, np.atleast_1d(np.asarray(centre, np.float64)[:1]), None
    lab, peaks = kde_peak_labels(arr[ok, dim], prominence)
    labels[ok] = lab
    return labels, peaks, dim
