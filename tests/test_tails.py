"""Upper tails computed as scipy.stats computes them (rewardscope.science.tails), bit for bit,
and the modules that use them loading without scipy.stats."""

from __future__ import annotations

import math

import numpy as np
from fresh import run_fresh

from rewardscope.science import tails


def _same_float(a: float, b: float) -> bool:
    """Equal bit for bit (nan equal to nan, -0.0 not equal to 0.0)."""
    return (np.isnan(a) and np.isnan(b)) or (a == b and np.signbit(a) == np.signbit(b))


def test_chi2_tail_is_scipy_stats_bit_for_bit():
    """homogeneity_test's chi-squared tail is scipy.stats.chi2.logsf, computed without
    importing scipy.stats: equal over both sides of the median, the tails and the edges."""
    from scipy import special, stats

    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, -1e-300, -1.0, 5e-324, 1e-300, 1e-10, 0.5, 1.0, 2.0, 3.0, 10.0, 100.0,
             1e3, 1e4, 1e6, 1e300, np.inf, -np.inf, np.nan]
    for dof in (1, 2, 3, 4, 6, 10, 20, 38, 100, 1000, 10_000, 0, -2):
        median = float(2 * special.gammaincinv(dof / 2, 0.5)) if dof > 0 else 1.0
        grid = edges + [median, np.nextafter(median, 0.0), np.nextafter(median, np.inf)]
        grid += list(rng.exponential(abs(dof) + 1.0, 60))
        grid += list(rng.uniform(0.0, 50.0 * (abs(dof) + 1), 20))
        for q in grid:
            got, ref = tails.chi2_logsf(float(q), dof), float(stats.chi2.logsf(q, dof))
            assert _same_float(got, ref), (q, dof, got, ref)


def test_normal_and_binomial_tails_are_scipy_stats_bit_for_bit():
    """The domain and flagged-group significances use scipy.stats' norm.logsf and
    binom.logsf, computed without importing scipy.stats: equal over the inputs they get and
    the edges of the support."""
    from scipy import stats

    rng = np.random.default_rng(0)
    for z in [0.0, -0.0, 5e-324, 1e-300, 0.1, 1.0, 5.0, 8.0, 37.0, 38.5, 40.0, 1e3, 1e10,
              1e300, -1.0, -40.0, math.inf, -math.inf, math.nan, *rng.exponential(5.0, 300)]:
        got, ref = tails.norm_logsf(float(z)), float(stats.norm.logsf(z))
        assert _same_float(got, ref), (z, got, ref)
    for m in (0, 1, 2, 3, 5, 10, 50, 200, 1000, 10**6):
        for p in (0.0, 1e-6, 0.01, 0.1, 0.3, 0.5, 0.9, 0.999, 1.0, 1.5, -0.1, math.nan):
            ks = {-5, -1, 0, 1, 2, m // 2, m - 1, m, m + 1, 2 * m}
            for k in sorted(ks | {int(v) for v in rng.integers(0, m + 1, 8)}):
                got, ref = tails.binom_logsf(k, m, p), float(stats.binom.logsf(k, m, p))
                assert _same_float(got, ref), (k, m, p, got, ref)
    for k, m, p in [(2.5, 10, 0.3), (math.nan, 10, 0.3), (math.inf, 10, 0.3),
                    (-math.inf, 10, 0.3), (3, 10.5, 0.3), (3, -1, 0.3), (3, math.inf, 0.3)]:
        got, ref = tails.binom_logsf(k, m, p), float(stats.binom.logsf(k, m, p))
        assert _same_float(got, ref), (k, m, p, got, ref)


def test_region_significances_do_not_import_scipy_stats():
    """scipy.stats costs ~0.4 s of a cold start: the regions and the domain tests compute
    their tails without it."""
    code = (
        "import numpy as np\n"
        "from rewardscope.engine import regions\n"
        "from rewardscope.science import domaintests, tails\n"
        "g = np.arange(40) * 6.0\n"
        "c = np.stack([a.ravel() for a in np.meshgrid(g, g)], axis=1)\n"
        "p = np.array([0.35, 0.35]) + np.random.default_rng(0).normal(0.0, 0.2, c.shape)\n"
        "inside = (c[:, 0] >= 60) & (c[:, 0] <= 120) & (c[:, 1] >= 90) & (c[:, 1] <= 132)\n"
        "p[inside] *= -1.0\n"
        "assert len(regions.domain_candidates(c, p, 6.0, 40.0)) == 1\n"
        "share = np.zeros(len(c))\n"
        "share[inside] = 1.0\n"
        "assert len(regions.instability_candidates(c, share, 6.0)) == 1\n"
        "assert tails.chi2_logsf(30.0, 10) < 0\n"
    )
    run_fresh(code)
