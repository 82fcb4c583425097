"""Upper-tail log probabilities of the normal, binomial and chi-squared laws, as
``scipy.stats`` computes them, without importing ``scipy.stats``.

Why: ``import scipy.stats`` costs ~0.25 s (with scikit-learn, which imports it too, ~0.5 s)
of a cold ``rewardscope analyze``, for three one-line tails. Each function here calls the
``scipy.special`` routine ``scipy.stats`` itself calls and handles arguments outside the
support as it does, so the values are the same bit for bit (tested against ``scipy.stats``
over both sides of the median, the tails and the edges). ``binom_logsf`` uses scipy's
private Boost binomial tail ``_binom_sf``, the one ``scipy.stats.binom`` calls (the public
``bdtrc`` is another algorithm): a scipy release that moves it fails that test.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special
from scipy.special import _ufuncs

__all__ = ["binom_logsf", "chi2_logsf", "norm_logsf"]


def norm_logsf(z: float) -> float:
    """log P(Z > z), Z standard normal: the value ``scipy.stats.norm.logsf(z)`` returns,
    computed as it computes it (``log_ndtr(-z)``; 0 at z = -inf, -inf at +inf, nan for nan)."""
    x = np.asarray([z], dtype=np.float64)
    if np.isnan(x[0]):
        return math.nan
    if x[0] == -math.inf:
        return 0.0
    if x[0] == math.inf:
        return -math.inf
    return float(special.log_ndtr(-x)[0])


def binom_logsf(k: float, n: int, p: float) -> float:
    """log P(X > k), X ~ Bin(n, p): the value ``scipy.stats.binom.logsf(k, n, p)`` returns,
    computed as it computes it (log of scipy.special's Boost binomial tail ``_binom_sf`` at
    floor(k); 0 for k < 0, -inf for k >= n, nan for nan k or invalid n, p)."""
    kk = np.asarray([k])
    nn = np.asarray([n])
    pp = np.asarray([p])
    valid = bool((nn[0] >= 0) & (nn[0] == np.round(nn[0])) & (pp[0] >= 0) & (pp[0] <= 1))
    if not valid or np.isnan(kk[0]):
        return math.nan
    if kk[0] < 0:
        return 0.0
    if not kk[0] < nn[0]:
        return -math.inf
    with np.errstate(divide="ignore"):
        return float(np.log(_ufuncs._binom_sf(np.floor(kk), nn, pp))[0])


def chi2_logsf(x: float, dof: int) -> float:
    """log P(X > x) for X ~ chi-squared with ``dof`` degrees of freedom: the value
    ``scipy.stats.chi2.logsf(x, dof)`` returns, computed as it computes it.

    Above the median (``2 gammaincinv(dof/2, 1/2)``) log of the upper tail ``chdtrc``, else
    log1p of minus the lower tail ``chdtr``; 0 for x <= 0, -inf for x = +inf, nan for nan x
    or dof <= 0 (scipy.stats' handling outside the support).
    """
    xs = np.asarray([x], dtype=np.float64)
    df = np.asarray([dof])
    if np.isnan(xs[0]) or not df[0] > 0:
        return math.nan
    if xs[0] <= 0.0:
        return 0.0
    if xs[0] == math.inf:
        return -math.inf
    median = 2 * special.gammaincinv(df / 2, 0.5)
    with np.errstate(divide="ignore"):
        if xs[0] > median[0]:
            return float(np.log(special.chdtrc(df, xs))[0])
        return float(np.log1p(-special.chdtr(df, xs))[0])
