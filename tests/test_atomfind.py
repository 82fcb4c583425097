"""LoG atom finder: numba kernels vs numpy/scipy references, parity with skimage's blob_log."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.feature import blob_log
from skimage.feature.blob import _blob_overlap, _prune_blobs

from rewardscope.science import atomfind
from rewardscope.science.atomfind import (
    LoGScaleSpace,
    _overlap_fraction,
    _prune_sorted,
    _slice_maxima,
    atoms_xy,
    find_atoms,
    normalize_frame,
    warmup,
)
from rewardscope.science.scoring import match_points

SPACING = 12.0
COLUMN_SIGMA = 1.3
LOG_PARAMS = dict(min_sigma=1.0, max_sigma=3.0, num_sigma=5, threshold=0.1, overlap=0.5)


def lattice_image(
    n: int = 256, spacing: float = SPACING, sigma: float = COLUMN_SIGMA,
    angle_deg: float = 7.0, offset: tuple[float, float] = (0.31, 0.17),
) -> tuple[np.ndarray, np.ndarray]:
    """Square lattice of Gaussian columns, checkerboard peaks 1.0 / 0.55; returns (img, xy)."""
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    k = int(n / spacing) + 2
    ij = np.stack(np.meshgrid(np.arange(-k, k + 1), np.arange(-k, k + 1)), -1).reshape(-1, 2)
    xy = (ij * spacing) @ rot.T + n / 2 + np.asarray(offset)
    amp = np.where(ij.sum(1) % 2 == 0, 1.0, 0.55)
    near = np.all((xy > -4 * sigma) & (xy < n - 1 + 4 * sigma), axis=1)
    xy, amp = xy[near], amp[near]
    img = np.zeros((n, n))
    r = int(math.ceil(4 * sigma))
    for (x, y), a in zip(xy, amp, strict=True):
        x0, y0 = int(round(x)), int(round(y))
        ys = np.arange(max(y0 - r, 0), min(y0 + r + 1, n))
        xs = np.arange(max(x0 - r, 0), min(x0 + r + 1, n))
        if ys.size and xs.size:
            g = np.exp(-((ys[:, None] - y) ** 2 + (xs[None, :] - x) ** 2) / (2 * sigma**2))
            img[np.ix_(ys, xs)] += a * g
    inside = np.all((xy >= 0) & (xy <= n - 1), axis=1)
    return img, xy[inside]


@pytest.fixture(scope="module")
def lattice() -> tuple[np.ndarray, np.ndarray]:
    return lattice_image()


# ------------------------------------------------------------------------------------------
# Scale space
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_response_equals_gaussian_laplace_including_borders(dtype, tol):
    img = np.random.default_rng(0).random((37, 53))
    space = LoGScaleSpace(img, max_sigma=1.0, dtype=dtype, sigma_quantum=None)
    for sigma in (0.7, 1.3, 2.55, 9.0, 20.0):  # the large ones force re-padding past the image
        ref = -ndi.gaussian_laplace(img, sigma) * sigma**2
        got = space.response(sigma)
        assert got.dtype == dtype and got.shape == img.shape
        np.testing.assert_allclose(got, ref, atol=tol)
    assert space.n_forward_fft >= 2  # grew its padding, kept working


def test_cache_reuse_counts_no_new_fft(lattice):
    img, _ = lattice
    space = LoGScaleSpace(img, max_sigma=3.0)
    first = find_atoms(img, scale_space=space, **LOG_PARAMS)
    counts = (space.n_forward_fft, space.n_inverse_fft)
    assert counts == (1, 5)
    # optimiser re-runs: new threshold / overlap, same sigmas -> zero FFT work
    find_atoms(None, scale_space=space, **{**LOG_PARAMS, "threshold": 0.2, "overlap": 0.1})
    again = find_atoms(None, scale_space=space, **LOG_PARAMS)
    assert (space.n_forward_fft, space.n_inverse_fft) == counts
    np.testing.assert_array_equal(first, again)
    # sigmas within the 0.01 px quantum share work; one genuinely new sigma costs one FFT
    assert space.quantize(1.5021) == space.quantize(1.4988) == pytest.approx(1.50)
    find_atoms(None, scale_space=space, min_sigma=1.002, max_sigma=3.5, num_sigma=6)
    assert space.n_inverse_fft == counts[1] + 1
    assert space.fft_count == space.n_forward_fft + space.n_inverse_fft


def test_threshold_reruns_reuse_cached_maxima(lattice):
    img, _ = lattice
    space = LoGScaleSpace(img, max_sigma=3.0)
    run = lambda **kw: find_atoms(None, scale_space=space, **{**LOG_PARAMS, **kw})  # noqa: E731
    run(threshold=0.1)
    assert space.n_maxima_scans == 1
    for thr, ov in ((0.2, 0.5), (0.15, 0.1), (0.1, 0.9)):  # higher threshold: prefix slice
        got = run(threshold=thr, overlap=ov)
        np.testing.assert_array_equal(got, find_atoms(img, **{**LOG_PARAMS, "threshold": thr,
                                                                "overlap": ov}))
    assert space.n_maxima_scans == 1
    low = run(threshold=0.05)  # lower than ever asked: one new scan, same answer as fresh
    assert space.n_maxima_scans == 2
    np.testing.assert_array_equal(low, find_atoms(img, **{**LOG_PARAMS, "threshold": 0.05}))
    run(threshold=0.05, num_sigma=6)  # new ladder: new scan
    assert space.n_maxima_scans == 3


def test_cache_is_bounded_lru():
    img = np.random.default_rng(1).random((32, 32))
    space = LoGScaleSpace(img, cache_bytes=3 * img.size * 4)
    for s in (1.0, 1.1, 1.2, 1.3):
        space.response(s)
    assert len(space._cache) == 3
    space.response(1.1)  # still cached
    assert space.n_inverse_fft == 4
    space.response(1.0)  # evicted first
    assert space.n_inverse_fft == 5


def test_responses_are_read_only(lattice):
    space = LoGScaleSpace(lattice[0])
    with pytest.raises(ValueError):
        space.response(1.3)[0, 0] = 1.0


# ------------------------------------------------------------------------------------------
# numba kernels vs references
# ------------------------------------------------------------------------------------------


def reference_maxima(cube: np.ndarray, thr: float, by: int, bx: int) -> set[tuple[int, int, int]]:
    """peak_local_max semantics on an (S, H, W) cube: 3x3x3, mode='nearest', ties count."""
    mask = (cube == ndi.maximum_filter(cube, size=3, mode="nearest")) & (cube > thr)
    if by:
        mask[:, :by] = mask[:, -by:] = False
    if bx:
        mask[:, :, :bx] = mask[:, :, -bx:] = False
    return set(map(tuple, np.argwhere(mask).tolist()))


def kernel_maxima(cube: np.ndarray, thr: float, by: int, bx: int) -> set[tuple[int, int, int]]:
    s = len(cube)
    out = set()
    for k in range(s):
        ys, xs = _slice_maxima(cube[max(k - 1, 0)], cube[k], cube[min(k + 1, s - 1)],
                               cube.dtype.type(thr), by, bx)
        out.update((k, int(y), int(x)) for y, x in zip(ys, xs, strict=True))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_slice_maxima_matches_maximum_filter(seed):
    rng = np.random.default_rng(seed)
    s, h, w = int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(1, 40))
    cube = rng.random((s, h, w)).astype(np.float32)
    if seed % 2:  # coarse values create plateaus and ties
        cube = np.round(cube * 4).astype(np.float32) / 4
    thr = float(rng.uniform(-0.1, 0.6))
    by, bx = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    assert kernel_maxima(cube, thr, by, bx) == reference_maxima(cube, thr, by, bx)


def test_slice_maxima_grows_past_initial_capacity():
    cube = np.ones((1, 64, 64), np.float32)  # one big plateau: every pixel is a maximum
    assert len(kernel_maxima(cube, 0.5, 0, 0)) == 64 * 64


def test_overlap_fraction_matches_skimage():
    rng = np.random.default_rng(2)
    for _ in range(500):
        b1 = np.r_[rng.uniform(0, 6, 2), rng.uniform(0.5, 3)]
        b2 = np.r_[rng.uniform(0, 6, 2), rng.choice([b1[2], rng.uniform(0.5, 3)])]
        ref = _blob_overlap(b1.copy(), b2.copy())
        got = _overlap_fraction(b1[0] - b2[0], b1[1] - b2[1], b1[2], b2[2])
        assert got == pytest.approx(ref, abs=1e-9)


def reference_prune(blobs: np.ndarray, overlap: float) -> np.ndarray:
    """O(N^2) greedy: visit in the given order, drop if overlapping a kept blob too much."""
    keep = np.zeros(len(blobs), bool)
    for i, b in enumerate(blobs):
        keep[i] = not any(_blob_overlap(b.copy(), blobs[j].copy()) > overlap
                          for j in np.flatnonzero(keep))
    return keep


def random_blobs(rng: np.random.Generator, n: int, extent: float) -> np.ndarray:
    b = np.column_stack([rng.uniform(0, extent, (n, 2)), rng.choice([1.0, 1.5, 2.0, 3.0], n)])
    return b[np.lexsort((np.arange(n), -b[:, 2]))]  # priority order: largest sigma first


@pytest.mark.parametrize("seed, overlap", [(0, 0.5), (1, 0.0), (2, 0.9), (3, 0.3)])
def test_prune_matches_reference(seed, overlap):
    rng = np.random.default_rng(seed)
    blobs = random_blobs(rng, 300, 80.0)
    got = _prune_sorted(blobs[:, 0].copy(), blobs[:, 1].copy(), blobs[:, 2].copy(), overlap)
    np.testing.assert_array_equal(got, reference_prune(blobs, overlap))


def test_prune_handles_empty_and_far_apart_points():
    e = np.empty(0)
    assert _prune_sorted(e, e, e, 0.5).size == 0
    ys = np.array([0.0, 1e6, 0.5])  # huge extent: grid must stay small
    keep = _prune_sorted(ys, np.array([0.0, 1e6, 0.0]), np.array([2.0, 2.0, 1.0]), 0.5)
    np.testing.assert_array_equal(keep, [True, True, False])


def test_prune_agrees_with_skimage_when_no_chains():
    rng = np.random.default_rng(4)
    n = 0
    for _ in range(40):
        blobs = random_blobs(rng, 40, 60.0)
        blobs[:, 2] += rng.uniform(0, 0.01, len(blobs))  # distinct sigmas: no tie rule
        blobs = blobs[np.argsort(-blobs[:, 2], kind="stable")]
        conflicts = np.array([[i != j and _blob_overlap(a.copy(), b.copy()) > 0.5
                               for j, b in enumerate(blobs)] for i, a in enumerate(blobs)])
        if conflicts.sum(1).max() > 1:  # keep only chain-free configurations
            continue
        n += 1
        ours = blobs[_prune_sorted(*(blobs[:, c].copy() for c in range(3)), 0.5)]
        theirs = _prune_blobs(blobs.copy(), 0.5)
        assert sorted(map(tuple, ours)) == sorted(map(tuple, theirs))
    assert n >= 5


# ------------------------------------------------------------------------------------------
# Parity with blob_log and accuracy on lattices
# ------------------------------------------------------------------------------------------


def assert_same_detections(
    ours: np.ndarray, theirs: np.ndarray, tol: float = 0.5, sigma_atol: float = 0.006
) -> None:
    """1:1 in position within ``tol`` px; sigmas equal up to the 0.01 px quantum."""
    m = match_points(ours[:, :2], theirs[:, :2], tol)
    assert m.tp == len(ours) == len(theirs)
    np.testing.assert_allclose(ours[m.pairs[:, 0], 2], theirs[m.pairs[:, 1], 2], atol=sigma_atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_blob_log_on_clean_lattice(lattice, dtype):
    img, truth = lattice
    img = img.astype(dtype)
    ours = find_atoms(img, **LOG_PARAMS)
    theirs = blob_log(img, **LOG_PARAMS)
    assert ours.shape[1] == 3 and ours.dtype == np.float64
    assert_same_detections(ours, theirs)
    tol = 0.25 * SPACING
    for blobs in (ours, theirs):
        assert match_points(blobs[:, 1::-1], truth, tol).f1 >= 0.98
    # strongest first, like peak_local_max
    space = LoGScaleSpace(img)
    vals = [space.response(s)[int(y), int(x)] for y, x, s in ours]
    assert np.all(np.diff(vals) <= 1e-6)


@pytest.mark.parametrize("kw", [
    dict(threshold=None, threshold_rel=0.3),
    dict(threshold=0.05, exclude_border=5),
    dict(threshold=0.05, exclude_border=(3, 9)),
    dict(threshold=0.02, log_scale=True, num_sigma=7, overlap=0.2),
    dict(min_sigma=1.3, max_sigma=1.3, num_sigma=1, threshold=0.05),
    dict(min_sigma=0.7, max_sigma=6.0, num_sigma=12, threshold=0.05, overlap=0.9),
])
def test_matches_blob_log_parameter_variants(kw):
    img, _ = lattice_image(n=128, angle_deg=21.0, offset=(0.37, 0.11))
    params = {**LOG_PARAMS, **kw}
    # Unquantised sigmas: snapping to 0.01 px may flip the best sigma of a near-tie.
    exact = LoGScaleSpace(img, dtype=np.float64, sigma_quantum=None)
    ours = find_atoms(img, scale_space=exact, **params)
    assert_same_detections(ours, blob_log(img, **params), sigma_atol=1e-9)


def test_rotated_lattice_accuracy_and_subpixel():
    img, truth = lattice_image(n=192, angle_deg=33.0, offset=(0.4, 0.45))
    plain = find_atoms(img, **LOG_PARAMS)
    fine = find_atoms(img, subpixel=True, **LOG_PARAMS)
    np.testing.assert_array_equal(plain[:, 2], fine[:, 2])
    assert np.abs(plain[:, :2] - fine[:, :2]).max() <= 0.5
    m_plain = match_points(atoms_xy(plain), truth, 0.25 * SPACING)
    m_fine = match_points(atoms_xy(fine), truth, 0.25 * SPACING)
    assert m_plain.f1 >= 0.98 and m_fine.f1 >= 0.98
    assert m_fine.rmse < 0.5 * m_plain.rmse


def test_noisy_frame_sanity():
    rng = np.random.default_rng(5)
    img, truth = lattice_image(n=256, angle_deg=12.0)
    counts = rng.poisson(40.0 * (img + 0.05)).astype(np.uint16)  # ~40 e-/px at peak
    image = normalize_frame(counts)
    blobs = find_atoms(image, min_sigma=1.0, max_sigma=2.5, num_sigma=4, threshold=0.1)
    assert np.isfinite(blobs).all()
    assert np.all((blobs[:, :2] >= 0) & (blobs[:, :2] <= 255))
    m = match_points(atoms_xy(blobs), truth, 0.25 * SPACING)
    assert m.f1 >= 0.9
    assert m.rmse < 1.0


def test_no_detections_returns_empty_table(lattice):
    assert find_atoms(lattice[0], threshold=1e3).shape == (0, 3)
    assert find_atoms(np.full((20, 20), 0.7), threshold=None).shape == (0, 3)
    assert atoms_xy(np.empty((0, 3))).shape == (0, 2)


def test_atoms_xy_swaps_to_x_y_float32():
    xy = atoms_xy(np.array([[3.0, 7.0, 1.2], [4.5, 1.0, 2.0]]))
    assert xy.dtype == np.float32
    np.testing.assert_array_equal(xy, [[7.0, 3.0], [1.0, 4.5]])


# ------------------------------------------------------------------------------------------
# normalize_frame, validation, warmup
# ------------------------------------------------------------------------------------------


def test_normalize_frame_is_dose_and_dtype_invariant(lattice):
    img, _ = lattice
    a = normalize_frame((img * 1000 + 50).astype(np.uint16))
    b = normalize_frame((img * 10).astype(np.float64))
    assert a.dtype == b.dtype == np.float32
    assert a.min() == 0.0 and a.max() == 1.0
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_normalize_frame_robust_to_hot_pixels_nan_and_constant():
    img = np.random.default_rng(6).random((100, 100)).astype(np.float32)
    hot = img.copy()
    hot[5, 5] = 1e6
    hot[6, 6] = np.nan
    out = normalize_frame(hot)
    assert np.isfinite(out).all() and out[5, 5] == 1.0 and out[6, 6] == 0.0
    assert out.mean() == pytest.approx(normalize_frame(img).mean(), abs=0.01)
    assert not normalize_frame(np.full((8, 8), 3.0)).any()
    with pytest.raises(ValueError, match="`pixels` must be a 2-D"):
        normalize_frame(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("image, kw, exc, msg", [
    (np.zeros((4, 4, 3)), {}, ValueError, "`image` must be a 2-D array, got 3-D"),
    (np.zeros(5), {}, ValueError, "`image` must be a 2-D array, got 1-D"),
    (np.zeros((0, 4)), {}, ValueError, "`image` must not be empty"),
    (np.array([[1.0, np.nan]]), {}, ValueError, "`image` must be finite"),
    (np.zeros((2, 2), complex), {}, TypeError, "`image` must be a real-valued"),
    (np.zeros((8, 8)), {"min_sigma": 0}, ValueError, "`min_sigma` must be finite and > 0"),
    (np.zeros((8, 8)), {"min_sigma": -1.0}, ValueError, "`min_sigma` must be finite and > 0"),
    (np.zeros((8, 8)), {"min_sigma": (1, 2)}, TypeError, "`min_sigma` must be a real scalar"),
    (np.zeros((8, 8)), {"max_sigma": float("inf")}, ValueError, "`max_sigma` must be finite"),
    (np.zeros((8, 8)), {"min_sigma": 3.0, "max_sigma": 2.0}, ValueError,
     r"`max_sigma` \(2.0\) must be >= `min_sigma` \(3.0\)"),
    (np.zeros((8, 8)), {"num_sigma": 0}, ValueError, "`num_sigma` must be an integer >= 1"),
    (np.zeros((8, 8)), {"num_sigma": 2.5}, ValueError, "`num_sigma` must be an integer >= 1"),
    (np.zeros((8, 8)), {"overlap": 1.5}, ValueError, r"`overlap` must be in \[0, 1\]"),
    (np.zeros((8, 8)), {"overlap": -0.1}, ValueError, r"`overlap` must be in \[0, 1\]"),
    (np.zeros((8, 8)), {"threshold": float("nan")}, ValueError,
     "`threshold` must be a finite scalar or None"),
    (np.zeros((8, 8)), {"exclude_border": True}, ValueError, "`exclude_border` cannot be True"),
    (np.zeros((8, 8)), {"exclude_border": -2}, ValueError, "`exclude_border` cannot be negative"),
    (np.zeros((8, 8)), {"exclude_border": (1, 2, 3)}, ValueError, "one entry per image axis"),
    (None, {}, ValueError, "`image` is required"),
])
def test_input_validation_messages(image, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        find_atoms(image, **kw)


def test_scale_space_validation():
    with pytest.raises(ValueError, match="`dtype` must be float32 or float64"):
        LoGScaleSpace(np.zeros((4, 4)), dtype=np.float16)
    with pytest.raises(ValueError, match="`sigma_quantum` must be finite and > 0"):
        LoGScaleSpace(np.zeros((4, 4)), sigma_quantum=0.0)
    space = LoGScaleSpace(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="does not match `scale_space`"):
        find_atoms(np.zeros((5, 4)), scale_space=space)


def test_integer_images_are_scaled_like_img_as_float(lattice):
    img, _ = lattice
    u8 = np.round(img / img.max() * 255).astype(np.uint8)
    # 8-bit rounding makes exactly tied neighbour pixels; which twin survives pruning is a
    # rounding-level coin flip (module doc), so allow the one-pixel swap.
    assert_same_detections(find_atoms(u8, **LOG_PARAMS), blob_log(u8, **LOG_PARAMS), tol=1.0)


def test_warmup_compiles_both_dtypes_once():
    """``warmup`` leaves the LoG kernels compiled for float32 and float64 frames, and a second
    call compiles nothing (signatures counted, not seconds: a timing bound is noise on a
    shared 2-core host)."""
    assert warmup() >= 0.0
    compiled = {name: list(getattr(atomfind, name).signatures)
                for name in ("_slice_maxima", "_prune_sorted")}
    assert len(compiled["_slice_maxima"]) >= 2 and compiled["_prune_sorted"]
    dtypes = {str(sig[0].dtype) for sig in compiled["_slice_maxima"]}
    assert {"float32", "float64"} <= dtypes
    warmup()
    assert {name: list(getattr(atomfind, name).signatures) for name in compiled} == compiled
    assert atomfind.find_atoms(np.zeros((8, 8))).shape == (0, 3)
