"""Shared fitting helpers: trusted rows, mixtures, correlation PCA, sites and fingerprints."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fresh import run_fresh

from rewardscope.science import descriptors, mixtures


def two_blobs(n_big: int = 300, n_small: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.0, 1.0, (n_big, 3)), rng.normal(6.0, 1.0, (n_small, 3))])


def test_trusted_rows_fall_back_to_all_rows_below_the_minimum():
    rows = np.zeros(10, bool)
    rows[:4] = True
    np.testing.assert_array_equal(mixtures.trusted_rows(rows, 4), rows)
    assert mixtures.trusted_rows(rows, 5).all()
    assert mixtures.trusted_rows([], 1).shape == (0,)


def test_labels_by_size_numbers_the_largest_cluster_zero():
    raw = np.array([2, 2, 2, 0, 1, 1, 0, 2, 1])  # sizes: 0 -> 2, 1 -> 3, 2 -> 4
    got = mixtures.labels_by_size(raw, 3)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, [0, 0, 0, 2, 1, 1, 2, 0, 1])
    np.testing.assert_array_equal(mixtures.labels_by_size([1, 0], 2), [1, 0])  # tie: kept


def test_mixture_labels_fit_the_trusted_rows_and_label_every_row():
    x = two_blobs()
    trusted = np.ones(len(x), bool)
    trusted[-20:] = False  # e.g. mirror-padded edge patches
    fit = mixtures.mixture_labels(x, 2, "full", fit_rows=trusted)
    assert fit.fit.shape == (len(x) - 20, 3) and fit.labels.shape == (len(x),)
    assert np.all(fit.labels[:300] == 0) and np.all(fit.labels[300:] == 1)  # largest is 0
    assert fit.bic_per_row == pytest.approx(fit.model.bic(fit.fit) / len(fit.fit))
    assert fit.icl_per_row >= fit.bic_per_row  # ICL adds the (non-negative) entropy
    few = np.zeros(len(x), bool)
    few[:5] = True  # not enough to pin down 2 components: every row is fitted
    assert len(mixtures.mixture_labels(x, 2, fit_rows=few).fit) == len(x)
    sampled = mixtures.mixture_labels(x, 2, max_fit_rows=50, seed=3)
    assert len(sampled.fit) == 50
    np.testing.assert_array_equal(sampled.fit, x[mixtures.fit_sample(np.ones(len(x)), 50, 3)])


def test_fit_gmm_clips_components_and_is_quiet():
    x = two_blobs(6, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ConvergenceWarning would fail the test
        gmm = mixtures.fit_gmm(x, 20, "diag", max_iter=1)
    assert gmm.n_components == len(x)


@pytest.mark.parametrize("kwargs, message", [
    ({"covariance_type": "round"}, "covariance_type must be one of"),
    ({"n_components": 0}, "n_components must be an integer >= 1"),
    ({"fit_rows": np.ones(3, bool)}, r"fit_rows must have shape \(400,\)"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = {"n_components": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        mixtures.mixture_labels(two_blobs(), **args)


def test_standardised_pca_uses_trusted_rows_and_tolerates_constant_columns():
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.normal(0, 5, 200), rng.normal(0, 0.1, 200), np.full(200, 7.0)])
    scores = descriptors.standardised_pca(x, np.ones(200, bool), 2)
    assert scores.shape == (200, 2) and np.all(np.isfinite(scores))
    z = descriptors.standardise_columns(x)
    np.testing.assert_allclose(z[:, :2].std(axis=0), 1.0)
    assert np.all(z[:, 2] == 0.0)  # constant column: centred, not blown up
    too_few = np.zeros(200, bool)
    too_few[:3] = True  # <= k + 2 trusted rows: all rows define the axes
    np.testing.assert_array_equal(descriptors.standardised_pca(x, too_few, 2), scores)


def test_sublattices_prefer_known_sites_of_the_same_atoms():
    img = np.zeros((32, 32), np.float32)
    xy = np.array([[5.0, 5.0], [10.0, 12.0], [20.0, 20.0]])
    img[5, 5] = img[20, 20] = 1.0
    known = np.array([1, 0, 1])
    np.testing.assert_array_equal(descriptors.sublattices(img, xy, known), known)
    assert descriptors.sublattices(img, xy, known).dtype == np.int8
    classified = descriptors.classify_sublattices(img, xy)
    np.testing.assert_array_equal(descriptors.sublattices(img, xy, known[:2]), classified)
    np.testing.assert_array_equal(descriptors.sublattices(img, xy, None), classified)


def test_fingerprint_follows_the_content():
    xy = np.arange(12.0).reshape(6, 2)
    assert descriptors.fingerprint(xy) == descriptors.fingerprint(xy.copy())
    assert descriptors.fingerprint(xy) != descriptors.fingerprint(xy[1:])
    assert descriptors.fingerprint(xy) != descriptors.fingerprint(xy + 0.5)
    assert descriptors.fingerprint(np.zeros((0, 2))) == (0, 0.0, 0.0)


@pytest.mark.parametrize("covariance_type", mixtures.COVARIANCE_TYPES)
@pytest.mark.parametrize("n_init", [1, 2])
def test_numba_em_fits_the_mixture_scikit_learn_fits(monkeypatch, covariance_type, n_init):
    """The GIL-free EM kernel is scikit-learn's algorithm: same k-means start, same
    iterations, same model (to rounding), whichever engine runs it."""
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(0.0, 1.0, (250, 4)), rng.normal(3.0, 0.6, (120, 4)),
                        rng.normal(-2.5, 1.5, (80, 4))]) @ rng.normal(size=(4, 4))
    monkeypatch.setattr(mixtures, "EM_ENGINE", "sklearn")
    ref = mixtures.fit_gmm(x, 3, covariance_type, seed=3, n_init=n_init)
    monkeypatch.setattr(mixtures, "EM_ENGINE", "numba")
    got = mixtures.fit_gmm(x, 3, covariance_type, seed=3, n_init=n_init)
    assert got.n_iter_ == ref.n_iter_ and got.converged_ == ref.converged_
    assert got.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-9)
    assert got.bic(x) == pytest.approx(ref.bic(x), rel=1e-9)
    np.testing.assert_allclose(got.predict_proba(x), ref.predict_proba(x), atol=1e-7)
    np.testing.assert_array_equal(got.predict(x), ref.predict(x))


def test_numba_kmeans_start_is_scikit_learns():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(3)
    for trial in range(20):
        k = 1 + trial % 4
        x = rng.normal(size=(200 + 37 * trial, 1 + trial % 6))
        x += rng.integers(0, k, len(x))[:, None] * 2.0
        ref = KMeans(k, n_init=1, random_state=np.random.RandomState(trial)).fit(x).labels_
        np.testing.assert_array_equal(
            mixtures._kmeans_labels(x, k, np.random.RandomState(trial)), ref)


def test_numba_em_reports_a_collapsed_component_as_scikit_learn_does(monkeypatch):
    x = np.zeros((40, 2))
    x[:20] = 1.0  # two points repeated: zero covariance without regularisation
    for engine in ("sklearn", "numba"):
        monkeypatch.setattr(mixtures, "EM_ENGINE", engine)
        with pytest.raises(ValueError, match="ill-defined empirical covariance"):
            mixtures.fit_gmm(x, 2, "full", reg_covar=0.0)


@pytest.mark.parametrize("covariance_type", mixtures.COVARIANCE_TYPES)
def test_posterior_is_predict_proba(covariance_type):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0.0, 1.0, (200, 3)), rng.normal(2.5, 0.7, (90, 3))])
    gmm = mixtures.fit_gmm(x, 3, covariance_type, seed=1)
    np.testing.assert_allclose(mixtures.posterior(gmm, x), gmm.predict_proba(x), atol=1e-10)
    fit = mixtures.mixture_labels(x, 3, covariance_type)
    np.testing.assert_array_equal(
        fit.labels, mixtures.labels_by_size(fit.model.predict(x), fit.model.n_components))
    x32 = x.astype(np.float32)  # not the kernel's dtype: scikit-learn answers
    np.testing.assert_allclose(mixtures.posterior(gmm, x32), gmm.predict_proba(x32))


def test_pca_axes_are_scikit_learns_randomized_svd():
    """``pca_scores`` computes scikit-learn's randomized SVD itself (without its validation
    overhead): the same singular values and axes, bit for bit, for both matrix shapes
    (more rows than columns and fewer, where scikit-learn transposes) and both dtypes."""
    from sklearn.utils.extmath import randomized_svd

    from rewardscope.science.descriptors import _randomized_axes

    rng = np.random.default_rng(4)
    for shape in [(1000, 625), (300, 625), (50, 81), (13, 40)]:
        for dtype in (np.float32, np.float64):
            m = rng.normal(size=shape).astype(dtype)
            m -= m.mean(axis=0)
            k = min(12, min(shape) - 1)
            _, s_ref, vt_ref = randomized_svd(m, k, n_oversamples=6, n_iter=2, random_state=3)
            s, vt = _randomized_axes(m, k, 3)
            np.testing.assert_array_equal(s, s_ref)
            np.testing.assert_array_equal(vt, vt_ref)


def _blobs(d: int, k: int, seed: int) -> np.ndarray:
    """k correlated blobs of different sizes and spreads in d dimensions."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(2.5 * c, 0.5 + 0.4 * c, (60 + 40 * c, d)) for c in range(k)])
    return x @ rng.normal(size=(d, d)) if d > 1 else x


def _as_sklearn(model: mixtures.Mixture):
    """scikit-learn's GaussianMixture holding ``model``'s parameters (set through its own
    ``_set_parameters``, as after its ``fit``)."""
    from sklearn.mixture import GaussianMixture

    ref = GaussianMixture(model.n_components, covariance_type=model.covariance_type)
    ref._set_parameters((model.weights_, model.means_, model.covariances_,
                         model.precisions_cholesky_))
    ref.converged_, ref.n_iter_, ref.lower_bound_ = (model.converged_, model.n_iter_,
                                                     model.lower_bound_)
    ref.n_features_in_ = model.n_features_in_
    return ref


@pytest.mark.parametrize("covariance_type", mixtures.COVARIANCE_TYPES)
@pytest.mark.parametrize("d, k, seed", [(1, 2, 0), (1, 4, 1), (3, 3, 2), (3, 2, 3), (12, 2, 4),
                                        (12, 4, 5)])
def test_mixture_scores_as_scikit_learn_does_bit_for_bit(covariance_type, d, k, seed):
    """The numba engine's Mixture answers exactly (not to rounding) what scikit-learn's
    GaussianMixture answers with the same parameters: the workflows' BIC, labels and
    posteriors feed rewards and decisions."""
    x = _blobs(d, k, seed)
    got = mixtures.fit_gmm(x, k, covariance_type, seed=seed, n_init=2, reg_covar=1e-4)
    assert isinstance(got, mixtures.Mixture)
    ref = _as_sklearn(got)
    np.testing.assert_array_equal(got.precisions_, ref.precisions_)
    assert got._n_parameters() == ref._n_parameters()
    rng = np.random.default_rng(seed + 100)
    far = rng.normal(0.0, 40.0, (64, d))  # far rows: responsibilities that underflow
    for rows in (x, far, x[::3], np.asfortranarray(far), far.astype(np.float32),
                 np.round(far).astype(np.int64), x[:1]):
        for method in ("score_samples", "predict", "predict_proba"):
            a, b = getattr(got, method)(rows), getattr(ref, method)(rows)
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b, err_msg=f"{method} {rows.dtype}")
        for method in ("score", "bic", "aic"):
            assert getattr(got, method)(rows) == getattr(ref, method)(rows), method
    fit = mixtures.mixture_labels(x, k, covariance_type, seed=seed)
    assert isinstance(fit.model, mixtures.Mixture)
    sk = _as_sklearn(fit.model)
    assert fit.bic_per_row == float(sk.bic(fit.fit)) / fit.fit.shape[0]
    tau = sk.predict_proba(fit.fit)
    assert fit.icl_per_row == ((float(sk.bic(fit.fit))
                                - float(np.sum(tau * np.log(np.clip(tau, 1e-300, None)))))
                               / fit.fit.shape[0])


def test_mixture_checks_rows_as_scikit_learn_does():
    x = _blobs(3, 2, 0)
    got = mixtures.fit_gmm(x, 2)
    for bad in (np.zeros(3), np.zeros((0, 3)), np.zeros((4, 2)),
                np.array([[0.0, np.nan, 1.0]]), np.array([[0.0, np.inf, 1.0]])):
        with pytest.raises(ValueError):
            got.predict(bad)
    with pytest.raises(ValueError, match="not fitted"):
        mixtures.Mixture(2).predict(x)
    np.testing.assert_array_equal(got.predict(x.tolist()), got.predict(x))


def test_fit_gmm_engines_return_their_models(monkeypatch):
    from sklearn.mixture import GaussianMixture

    x = _blobs(3, 2, 1)
    numba = mixtures.fit_gmm(x, 2, "tied", seed=4, n_init=2, max_iter=50, tol=1e-4,
                             reg_covar=1e-3)
    assert type(numba) is mixtures.Mixture
    assert (numba.n_components, numba.covariance_type, numba.n_init, numba.max_iter,
            numba.tol, numba.reg_covar, numba.random_state) == (2, "tied", 2, 50, 1e-4,
                                                                 1e-3, 4)
    assert numba.n_features_in_ == 3 and isinstance(numba.converged_, bool)
    assert numba.n_iter_ == len(numba.lower_bounds_) >= 1
    assert numba.lower_bound_ == numba.lower_bounds_[-1]
    assert isinstance(mixtures.fit_gmm(x.astype(np.float32), 2), GaussianMixture)
    monkeypatch.setattr(mixtures, "EM_ENGINE", "sklearn")
    assert isinstance(mixtures.fit_gmm(x, 2), GaussianMixture)


def test_analysis_path_does_not_import_scikit_learn_or_scipy_stats():
    """scikit-learn and scipy.stats cost ~0.55 s of a cold start: a mixture fitted, scored
    and used for labels by the numba engine must not import them."""
    code = (
        "import numpy as np\n"
        "import rewardscope.science.mixtures as m\n"
        "rng = np.random.default_rng(0)\n"
        "x = np.concatenate([rng.normal(0, 1, (80, 3)), rng.normal(4, 1, (40, 3))])\n"
        "for cov in m.COVARIANCE_TYPES:\n"
        "    g = m.fit_gmm(x, 2, cov)\n"
        "    g.bic(x), g.predict(x), g.predict_proba(x), m.posterior(g, x)\n"
        "    m.mixture_labels(x, 2, cov, max_fit_rows=60).bic_per_row\n"
        "m.warmup()\n"
    )
    run_fresh(code)
