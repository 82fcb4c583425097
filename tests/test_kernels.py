"""Numba kernels against their plain-numpy references and against geometry with known answers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading

import numpy as np
import pytest
import references as R
from skimage.measure import perimeter as skimage_perimeter

from rewardscope.science import kernels as K


def square_lattice(n: int, a: float, origin: float = 0.0) -> np.ndarray:
    i, j = np.meshgrid(np.arange(n), np.arange(n))
    return np.c_[i.ravel() * a + origin, j.ravel() * a + origin].astype(np.float64)


def circle_points(r: float, n: int, span: float = 2 * np.pi, centre=(50.0, 60.0)) -> np.ndarray:
    t = np.linspace(0.0, span, n, endpoint=span < 2 * np.pi)
    return np.c_[centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)]


# Kernels called only from other kernels: numba compiles them into their callers, so their own
# dispatchers never record a signature.
INLINED_KERNELS = {"_reflect_index", "_symmetric_index", "_cumulative_length_kernel", "_label_at",
                   "_root", "_union", "_number_components", "_sweep", "_farthest",
                   "_cell_order"}

_SIGNATURES_SCRIPT = """
import json
from numba.core.dispatcher import Dispatcher
from rewardscope.science import kernels as K
def signatures():
    return {n: len(v.signatures) for n, v in vars(K).items() if isinstance(v, Dispatcher)}
before = signatures()
K.warmup()
print(json.dumps([before, signatures()]))
"""


def test_warmup_compiles_everything() -> None:
    """In a fresh interpreter (here earlier tests have compiled kernels already), ``warmup``
    leaves every numba kernel with a compiled (or cache-loaded) signature, so the service's
    first frame pays no JIT; a kernel added without a warmup call fails here."""
    run = subprocess.run([sys.executable, "-c", _SIGNATURES_SCRIPT], capture_output=True,
                         text=True, timeout=280)
    assert run.returncode == 0, run.stderr
    before, after = json.loads(run.stdout.strip().splitlines()[-1])
    assert not any(before.values())  # nothing is compiled at import
    assert set(INLINED_KERNELS) <= set(after)
    missed = sorted(n for n, count in after.items() if count == 0 and n not in INLINED_KERNELS)
    assert len(after) > len(INLINED_KERNELS) and missed == []


# --- knn ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 6, 50, 400])
@pytest.mark.parametrize("k", [1, 4, 6])
def test_knn_matches_reference_on_random_points(n: int, k: int) -> None:
    xy = np.random.default_rng(n * 10 + k).uniform(0, 100, (n, 2))
    got = K.knn_distance_sums(xy, k)
    want = R.knn_distance_sums_reference(xy, k)
    assert got.shape == (n,) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12)  # inf == inf when N <= k


def test_knn_small_n_is_inf_and_k0_is_zero() -> None:
    xy = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert np.all(np.isinf(K.knn_distance_sums(xy, 4)))
    np.testing.assert_array_equal(K.knn_distance_sums(xy, 1), [5.0, 5.0])
    np.testing.assert_array_equal(K.knn_distance_sums(xy, 0), [0.0, 0.0])


@pytest.mark.parametrize(
    "xy",
    [
        np.zeros((7, 2)),  # all coincident: one cell
        np.c_[np.arange(30.0), np.zeros(30)],  # collinear: zero-height bounding box
        np.c_[np.arange(30.0) * 100, np.arange(30.0) * 1e-7],  # needle-shaped cloud
        np.r_[  # two distant clusters: the ring search has to walk far
            np.random.default_rng(1).uniform(0, 5, (20, 2)),
            np.random.default_rng(2).uniform(0, 5, (3, 2)) + 1000,
        ],
        np.random.default_rng(3).integers(0, 6, (60, 2)).astype(float),  # many duplicates
        np.r_[square_lattice(8, 10.0), [[0.0, 0.0], [70.0, 70.0], [0.0, 70.0]]],  # border dups
    ],
)
def test_knn_matches_reference_on_degenerate_clouds(xy: np.ndarray) -> None:
    np.testing.assert_allclose(K.knn_distance_sums(xy, 4), R.knn_distance_sums_reference(xy, 4))


def test_knn_large_cloud_matches_reference() -> None:
    xy = np.random.default_rng(5).uniform(0, 512, (2000, 2))
    np.testing.assert_allclose(K.knn_distance_sums(xy), R.knn_distance_sums_reference(xy))


def test_knn_square_lattice_gives_4a_inside() -> None:
    a = 7.5
    xy = square_lattice(12, a, origin=3.0)
    sums = K.knn_distance_sums(xy, 4)
    inner = (xy.min(axis=1) > 3.0) & (xy.max(axis=1) < 3.0 + 11 * a)
    np.testing.assert_allclose(sums[inner], 4 * a, rtol=1e-12)
    assert np.all(sums[~inner] > 4 * a)  # edges reach past missing neighbours


def test_knn_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="xy"):
        K.knn_distance_sums(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        K.knn_distance_sums(np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="k"):
        K.knn_distance_sums(np.zeros((3, 2)), -1)


# --- patches --------------------------------------------------------------------------------


def test_patches_equal_slicing_for_interior_atoms() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(64, 80)).astype(np.float32)
    xy = np.c_[rng.uniform(6, 73, 40), rng.uniform(4, 59, 40)]
    patches = K.extract_patches(image, xy, 3, 5)
    assert patches.shape == (40, 7, 11) and patches.dtype == np.float32
    valid = K.patches_valid(xy, image.shape, 3, 5)
    assert valid.all()
    for p, (x, y) in zip(patches, xy, strict=True):
        r, c = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
        np.testing.assert_array_equal(p, image[r - 3 : r + 4, c - 5 : c + 6])


def test_patches_at_edges_use_numpy_reflect_padding() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(20, 30))
    xy = np.array([[0.0, 0.0], [29.0, 19.0], [0.4, 19.4], [29.49, 0.2], [15.0, 1.0]])
    hh, hw = 4, 6
    padded = np.pad(image, ((hh, hh), (hw, hw)), mode="reflect").astype(np.float32)
    patches = K.extract_patches(image, xy, hh, hw)
    for p, (x, y) in zip(patches, xy, strict=True):
        r, c = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
        np.testing.assert_array_equal(p, padded[r : r + 2 * hh + 1, c : c + 2 * hw + 1])
    assert not K.patches_valid(xy, image.shape, hh, hw).any()


def test_patches_match_reference_including_far_outside_and_tiny_frames() -> None:
    rng = np.random.default_rng(2)
    for shape in [(1, 1), (1, 5), (3, 2), (17, 23)]:
        image = rng.normal(size=shape)
        xy = rng.uniform(-40, 60, (25, 2))
        got = K.extract_patches(image, xy, 5, 3)
        np.testing.assert_array_equal(got, R.extract_patches_reference(image, xy, 5, 3))


def test_patches_empty_rounding_and_validation() -> None:
    image = np.arange(25, dtype=np.float32).reshape(5, 5)
    assert K.extract_patches(image, np.zeros((0, 2)), 1, 2).shape == (0, 3, 5)
    # 1.5 rounds up to 2, 2.49 down to 2: both centre on pixel (2, 2).
    np.testing.assert_array_equal(K.extract_patches(image, [[1.5, 2.49]], 0, 0)[:, 0, 0], [12])
    with pytest.raises(ValueError, match="half_h"):
        K.extract_patches(image, [[1.0, 1.0]], -1, 1)
    with pytest.raises(ValueError, match="image"):
        K.extract_patches(np.zeros(5), [[1.0, 1.0]], 1, 1)


def test_subpixel_patches_match_reference_inside_and_beyond_edges() -> None:
    rng = np.random.default_rng(3)
    for shape in [(2, 3), (17, 23), (64, 48)]:
        image = rng.normal(size=shape).astype(np.float32)
        xy = rng.uniform(-10, 70, (40, 2))
        got = K.subpixel_patches(image, xy, 4, 6)
        np.testing.assert_allclose(got, R.subpixel_patches_reference(image, xy, 4, 6),
                                   atol=1e-5)
    # integer centres: plain slicing
    image = rng.normal(size=(30, 30)).astype(np.float32)
    np.testing.assert_array_equal(K.subpixel_patches(image, [[10.0, 12.0]], 2, 3)[0],
                                  image[10:15, 7:14])
    assert K.subpixel_patches(image, np.zeros((0, 2)), 2, 2).shape == (0, 5, 5)


def test_subpixel_patches_inside_the_frame_are_the_bilinear_formula_bit_for_bit() -> None:
    """Patches whose columns lie inside the frame take the contiguous (vectorised) path: the
    same float32 arithmetic per pixel as the mirrored path, so a patch is identical whichever
    path made it (here: the formula in numpy float32; patches crossing a row or column edge
    mixed in)."""
    rng = np.random.default_rng(8)
    image = rng.random((96, 80)).astype(np.float32)
    xy = np.vstack([rng.uniform(12, 66, (30, 2)), rng.uniform(-3, 5, (10, 2)),
                    [[77.5, 40.2], [40.3, 94.7]]])
    hh, hw = 4, 6
    got = K.subpixel_patches(image, xy, hh, hw)
    f32 = np.float32
    for a, (x, y) in enumerate(xy):
        bx, by = int(np.floor(x)), int(np.floor(y))
        if not (bx - hw >= 0 and bx + hw + 1 < image.shape[1]
                and by - hh >= 0 and by + hh + 1 < image.shape[0]):
            continue
        fx, fy = f32(x - bx), f32(y - by)
        gx, gy = f32(1.0) - fx, f32(1.0) - fy
        rows = image[by - hh: by + hh + 2, bx - hw: bx + hw + 2]
        top = rows[:-1, :-1] * gx + rows[:-1, 1:] * fx
        bot = rows[1:, :-1] * gx + rows[1:, 1:] * fx
        np.testing.assert_array_equal(got[a], top * gy + bot * fy)
    np.testing.assert_allclose(got, R.subpixel_patches_reference(image, xy, hh, hw), atol=1e-5)


def test_zscore_rows_vector_sums_equal_the_sequential_ones() -> None:
    """The kernel's reassociated (vectorised) float64 sums give the z-scores of strictly
    sequential sums, bit for bit, on a simulated frame's blurred patches (169 to 1369
    pixels) and on uniform noise."""
    from rewardscope.science import atomfind, descriptors
    from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

    def sequential(x: np.ndarray) -> np.ndarray:  # the kernel's arithmetic, in order
        out = np.empty_like(x)
        for i, row in enumerate(x.astype(np.float64)):
            mean = 0.0
            for v in row:
                mean += v
            mean /= row.size
            var = 0.0
            for v in row:
                var += (v - mean) * (v - mean)
            sd = np.sqrt(var / row.size)
            out[i] = (row - mean) * (1.0 / sd if sd > 0 else 1.0)
        return out

    f = PerovskiteSimulator(SimConfig(shape=(384, 384), lattice_px=12.0, noise_sigma=0.15,
                                      seed=3, amorphous_regions=2)).frame(0)
    img = atomfind.normalize_frame(f.pixels)
    rng = np.random.default_rng(5)
    for blur, w in ((0.0, 6), (1.0, 12), (0.5, 18)):
        p = K.subpixel_patches(descriptors._blurred(img, blur), f.truth.atoms, w, w)
        x = p.reshape(len(p), -1)[rng.choice(len(p), 60, replace=False)]
        np.testing.assert_array_equal(K.zscore_rows(x), sequential(x))
    x = rng.random((40, 700)).astype(np.float32)
    np.testing.assert_array_equal(K.zscore_rows(x), sequential(x))


def test_zscore_rows_match_reference() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 2.0, size=(50, 37)).astype(np.float32)
    x[3] = 5.0  # constant row -> zeros
    got = K.zscore_rows(x)
    np.testing.assert_allclose(got, R.zscore_rows_reference(x), atol=1e-5)
    assert not got[3].any() and got.dtype == np.float32
    assert K.zscore_rows(np.zeros((0, 4))).shape == (0, 4)


# --- wall rasters and segment merging --------------------------------------------------------


def test_draw_segments_matches_skimage_lines() -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(-5, 70, (60, 2))
    q = rng.uniform(-5, 70, (60, 2))
    got = K.draw_segments((64, 64), p, q)
    ref = R.draw_segments_reference((64, 64), p, q)
    # Same endpoints, same pixel count per line; ties on exact half steps may differ.
    assert abs(int(got.sum()) - int(ref.sum())) <= 0.02 * ref.sum()
    assert (got & ref).sum() >= 0.95 * ref.sum()
    axis = K.draw_segments((10, 10), [[1.0, 2.0], [3.0, 0.0]], [[8.0, 2.0], [3.0, 9.0]])
    assert axis[2, 1:9].all() and axis[0:10, 3].all() and axis.sum() == 8 + 10 - 1
    with pytest.raises(ValueError, match="same length"):
        K.draw_segments((5, 5), [[0.0, 0.0]], np.zeros((0, 2)))


def test_collinear_pairs_match_reference() -> None:
    rng = np.random.default_rng(5)
    seg = rng.uniform(0, 100, (80, 4))
    # plus a chain of pieces along one line (these must link)
    seg = np.vstack([seg, [[0, 50, 20, 50], [24, 50.5, 40, 50], [41, 49.8, 70, 50.2]]])
    got = K.collinear_pairs(seg, math.radians(5), 3.0, 10.0)
    ref = R.collinear_pairs_reference(seg, math.radians(5), 3.0, 10.0)
    assert {tuple(x) for x in got} == {tuple(x) for x in ref}
    assert {(80, 81), (81, 82)} <= {tuple(x) for x in got}
    assert K.collinear_pairs(np.zeros((0, 4)), 0.1, 1.0, 1.0).shape == (0, 2)


# --- polylines ------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 0.3, np.pi / 2, 2.5])
def test_curvature_of_straight_lines_is_zero(angle: float) -> None:
    s = np.sort(np.random.default_rng(0).uniform(0, 200, 50))  # non-uniform spacing
    pts = np.c_[10 + s * np.cos(angle), 20 + s * np.sin(angle)]
    for step, smooth in [(None, 0), (3.0, 0), (5.0, 2)]:
        assert K.polyline_curvature(pts, step, smooth) < 1e-9


@pytest.mark.parametrize("r", [5.0, 20.0, 80.0])
@pytest.mark.parametrize("span", [np.pi, 2 * np.pi])
def test_curvature_of_circles_is_one_over_r(r: float, span: float) -> None:
    pts = circle_points(r, 64, span)
    assert K.polyline_curvature(pts) == pytest.approx(1 / r, rel=0.05)
    step = 2 * np.pi * r / 40  # resampled: 40 samples per turn
    assert K.polyline_curvature(pts, step=step) == pytest.approx(1 / r, rel=0.05)


def test_curvature_of_pixel_staircases_with_coarse_step() -> None:
    s = np.arange(0.0, 200.0)
    line = np.unique(np.rint(np.c_[s * np.cos(0.35), s * np.sin(0.35)]), axis=0)
    assert K.polyline_curvature(line) > 0.1  # raw staircase jitter reads as curvature ...
    assert K.polyline_curvature(line, step=5.0, smooth=1) < 0.01  # ... coarse sampling not
    t = np.linspace(0, np.pi, 400)
    arc = K._dedupe(np.rint(np.c_[100 + 40 * np.cos(t), 100 + 40 * np.sin(t)]))
    assert K.polyline_curvature(arc, step=5.0, smooth=1) == pytest.approx(1 / 40, rel=0.05)


@pytest.mark.parametrize("seed", range(4))
def test_curvature_profile_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pts = np.cumsum(rng.normal(size=(rng.integers(3, 60), 2)), axis=0)
    pts[5:7] = pts[4]  # consecutive duplicates are dropped by both
    for step, smooth in [(None, 0), (None, 2), (0.7, 0), (2.0, 1), (50.0, 0)]:
        np.testing.assert_allclose(
            K.curvature_profile(pts, step, smooth),
            R.curvature_profile_reference(pts, step, smooth),
            rtol=1e-9,
            atol=1e-12,
        )


def test_curvature_degenerate_inputs() -> None:
    for pts in [np.zeros((0, 2)), np.ones((1, 2)), np.ones((5, 2)), [[0.0, 0.0], [3.0, 1.0]]]:
        assert K.polyline_curvature(pts) == 0.0
        assert K.curvature_profile(pts).size == 0
    hairpin = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # U-turn: clipped, not inf
    assert K.polyline_curvature(hairpin) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="step"):
        K.polyline_curvature(circle_points(5, 10), step=0)


def test_chord_to_arc_ratio() -> None:
    assert K.chord_to_arc_ratio(np.c_[np.arange(10.0), 2 * np.arange(10.0)]) == pytest.approx(1)
    semi = circle_points(30, 2000, np.pi)
    assert K.chord_to_arc_ratio(semi) == pytest.approx(2 / np.pi, rel=1e-4)
    closed = np.r_[circle_points(30, 100), circle_points(30, 100)[:1]]
    assert K.chord_to_arc_ratio(closed) == pytest.approx(0.0, abs=1e-12)
    for pts in [np.zeros((0, 2)), np.ones((1, 2)), np.ones((4, 2))]:
        assert K.chord_to_arc_ratio(pts) == 1.0


def test_segment_lengths() -> None:
    seg = np.random.default_rng(0).uniform(-50, 50, (30, 4))
    want = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1])
    np.testing.assert_allclose(K.segment_lengths(seg), want)
    assert K.segment_lengths(np.zeros((0, 4))).shape == (0,)
    assert K.segment_lengths([]).shape == (0,)
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        K.segment_lengths(np.zeros((3, 2)))


def test_polyline_length() -> None:
    assert K.polyline_length([[0.0, 0.0], [3.0, 4.0], [3.0, 10.0]]) == pytest.approx(11.0)
    assert K.polyline_length(np.zeros((1, 2))) == 0.0


# --- masks ----------------------------------------------------------------------------------


def disk(r: float, size: int = 0) -> np.ndarray:
    size = size or int(2 * r + 11)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    return (yy - c) ** 2 + (xx - c) ** 2 <= r * r


def test_square_perimeter() -> None:
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:25, 10:30] = True
    assert K.mask_perimeter(mask, "edges") == 80.0
    assert K.mask_perimeter(mask) == pytest.approx(80.0, rel=0.08)  # Crofton: ~7 % short
    assert K.mask_area(mask) == 400.0
    full = np.ones((7, 9), dtype=bool)  # the frame border counts as boundary
    assert K.mask_perimeter(full, "edges") == 2 * (7 + 9)


@pytest.mark.parametrize("r", [10.0, 40.0])
def test_disk_perimeter(r: float) -> None:
    mask = disk(r)
    assert K.mask_perimeter(mask) == pytest.approx(2 * np.pi * r, rel=0.05 if r < 20 else 0.015)
    assert K.mask_perimeter(mask, "edges") == pytest.approx(8 * r, rel=0.05)  # 4/pi too long
    assert K.mask_perimeter(mask) == pytest.approx(skimage_perimeter(mask), rel=0.15)
    compactness = 4 * np.pi * K.mask_area(mask) / K.mask_perimeter(mask) ** 2
    assert compactness == pytest.approx(1.0, abs=0.08 if r < 20 else 0.03)


def test_mask_empty_and_errors() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    assert K.mask_perimeter(empty) == 0.0 and K.mask_area(empty) == 0.0
    with pytest.raises(ValueError, match="method"):
        K.mask_perimeter(empty, "marching")
    with pytest.raises(ValueError, match="2-D"):
        K.mask_perimeter(np.zeros(8))


@pytest.mark.parametrize("method", ["crofton", "edges"])
def test_label_perimeters_match_reference_and_single_masks(method: str) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, (31, 27))
    got = K.label_perimeters(labels, 5, method)
    np.testing.assert_allclose(got, R.label_perimeters_reference(labels, 5, method))
    for lab in range(1, 6):
        assert got[lab] == pytest.approx(K.mask_perimeter(labels == lab, method))
    assert K.label_perimeters(labels, method=method).shape == (6,)
    with pytest.raises(ValueError, match="n_labels"):
        K.label_perimeters(labels, 2)


def test_large_disk_perimeter() -> None:
    mask = disk(400, 1024)
    assert K.mask_perimeter(mask) == pytest.approx(2 * math.pi * 400, rel=0.01)


def test_row_chunks_concatenate_to_the_one_call_result() -> None:
    """Chunks on threads, in order, whatever the thread count; small inputs run as one call."""
    from rewardscope.science import kernels as k

    seen = []

    def fn(rows: slice):
        seen.append(rows)
        x = np.arange(rows.start, rows.stop, dtype=float)
        return x * 2.0, (x % 3).astype(np.int8)

    saved = k.ROW_THREADS
    try:
        k.ROW_THREADS = 2
        a, b = k.row_chunks(fn, 2000, min_rows=500)
        assert len(seen) == 2 and np.array_equal(a, np.arange(2000) * 2.0)
        assert b.dtype == np.int8 and np.array_equal(b, np.arange(2000) % 3)
        seen.clear()
        k.row_chunks(fn, 900, min_rows=500)
        assert seen == [slice(0, 900)]

        def outer(rows: slice):  # a chunk that chunks again: runs inline on a row thread
            return k.row_chunks(fn, rows.stop - rows.start, min_rows=100)

        done = []
        t = threading.Thread(target=lambda: done.append(k.row_chunks(outer, 2000, 500)))
        t.start()
        t.join(30)
        assert not t.is_alive() and len(done[0][0]) == 2000
    finally:
        k.ROW_THREADS = saved


def test_column_fits_on_threads_are_the_one_call_fits() -> None:
    from rewardscope.science import kernels as k
    from rewardscope.science.refine import refine_columns

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:280, 0:280]
    centres = np.stack(np.meshgrid(np.arange(6, 274, 8.0), np.arange(6, 274, 8.0)), -1)
    centres = centres.reshape(-1, 2) + rng.normal(0, 0.3, (centres.size // 2, 2))
    img = np.full((280, 280), 0.05)
    for x, y in centres:
        img += 0.8 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2 ** 2))
    img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 0.99)
    start = centres + rng.normal(0, 0.4, centres.shape)
    saved = k.ROW_THREADS
    try:
        k.ROW_THREADS = 1
        one = refine_columns(img, start, 8.0)
        k.ROW_THREADS = 2
        two = refine_columns(img, start, 8.0)
    finally:
        k.ROW_THREADS = saved
    assert len(start) >= 2 * 512  # enough columns for two chunks
    assert np.array_equal(one.xy, two.xy) and np.array_equal(one.status, two.status)
    assert one.fitted.mean() > 0.9


def test_any_within_is_the_kd_tree_answer() -> None:
    """Equal to cKDTree's distance_upper_bound query on random and lattice points (points at
    exactly the radius: not within), queries far outside, one point, widely spread points
    (the grid coarsens), and validation naming the bad argument."""
    rng = np.random.default_rng(12)
    for trial in range(120):
        scale = float(rng.choice([1.0, 10.0, 100.0, 1e5]))
        p = rng.random((int(rng.integers(1, 200)), 2)) * scale
        if trial % 3 == 0:
            p = np.round(p)  # ties: lattice points at exactly the radius
        q = np.vstack([rng.random((int(rng.integers(1, 200)), 2)) * 1.6 * scale - 0.3 * scale,
                       p[:5] + float(rng.choice([0.0, 1.0, 3.0]))])
        radius = 1.0 if trial % 3 == 0 else float(rng.choice([0.01, 0.05, 0.3])) * scale
        np.testing.assert_array_equal(K.any_within(p, q, radius),
                                      R.any_within_reference(p, q, radius))
    assert K.any_within(np.zeros((0, 2)), [[0.0, 0.0]], 1.0).tolist() == [False]
    assert K.any_within([[0.0, 0.0]], np.zeros((0, 2)), 1.0).shape == (0,)
    with pytest.raises(ValueError, match="radius"):
        K.any_within([[0.0, 0.0]], [[0.0, 0.0]], 0.0)
    with pytest.raises(ValueError, match="queries"):
        K.any_within([[0.0, 0.0]], [[np.nan, 0.0]], 1.0)


def test_nearest_within_matches_brute_force_and_a_kd_tree() -> None:
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(11)
    for shape, step, offset, reach in [((37, 53), 1, 0.0, 4.5), ((64, 48), 3, 1.0, 7.0),
                                       ((20, 20), 2, 0.5, 0.0), ((9, 31), 4, 1.5, 100.0)]:
        xy = rng.uniform(-5, 60, (30, 2))
        owner, dist = K.nearest_within(xy, shape, reach, step=step, offset=offset)
        ref_owner, ref_dist = R.nearest_within_reference(xy, shape, reach, step, offset)
        np.testing.assert_array_equal(owner, ref_owner)
        np.testing.assert_allclose(dist, ref_dist)
        gy, gx = np.mgrid[0:owner.shape[0], 0:owner.shape[1]] * float(step) + offset
        d, i = cKDTree(xy).query(np.stack([gx.ravel(), gy.ravel()], 1),
                                 distance_upper_bound=np.nextafter(reach, np.inf))
        np.testing.assert_array_equal(owner.ravel(), np.where(np.isfinite(d), i, -1))
    # ties keep the first site; no sites: nobody owns anything
    owner, _ = K.nearest_within([[2.0, 0.0], [0.0, 2.0]], (1, 1), 3.0)
    assert owner[0, 0] == 0
    owner, dist = K.nearest_within(np.zeros((0, 2)), (4, 5), 2.0, step=2)
    assert owner.shape == (2, 3) and (owner == -1).all() and np.isinf(dist).all()
    for bad, match in [({"reach": -1.0}, "reach"), ({"step": 0}, "step"),
                       ({"shape": (0, 4)}, "shape")]:
        kw = {"xy": [[1.0, 1.0]], "shape": (4, 4), "reach": 1.0, **bad}
        with pytest.raises(ValueError, match=match):
            K.nearest_within(**kw)
    with pytest.raises(ValueError, match="xy"):
        K.nearest_within([[np.nan, 1.0]], (4, 4), 1.0)


def test_gaussian_blur_is_scipys_to_the_last_bit() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(5)
    for shape in [(1, 9), (5, 7), (40, 3), (600, 130)]:
        image = rng.normal(size=shape).astype(np.float32)
        for sigma in [0.3, 0.5, 1.25, 2.0, 6.0]:
            np.testing.assert_array_equal(K.gaussian_blur(image, sigma),
                                          ndimage.gaussian_filter(image, sigma, mode="reflect"))
    image = rng.normal(size=(8, 8)).astype(np.float32)
    np.testing.assert_array_equal(K.gaussian_blur(image, 0.0), image)
    with pytest.raises(ValueError, match="sigma"):
        K.gaussian_blur(image, -1.0)
    with pytest.raises(ValueError, match="image"):
        K.gaussian_blur(np.zeros(5), 1.0)


def test_row_median_is_numpys_nanmedian() -> None:
    rng = np.random.default_rng(9)
    for n, k in [(1, 1), (50, 4), (300, 9)]:
        vals = rng.normal(size=(n, k, 2))
        vals[::7] = np.round(vals[::7], 1)  # ties
        valid = rng.random((n, k)) < 0.7
        valid[:, 0] = True
        ref = np.nanmedian(np.where(valid[..., None], vals, np.nan), axis=1)
        np.testing.assert_array_equal(K.row_median(vals, valid), ref)
        np.testing.assert_array_equal(K.row_median(vals[..., 0], valid), ref[:, 0])
    vals = np.array([[1.0, np.nan, 3.0], [2.0, 5.0, 7.0]])
    got = K.row_median(vals, np.array([[True, True, True], [False, False, False]]))
    np.testing.assert_array_equal(got, [2.0, np.nan])
    with pytest.raises(ValueError, match="valid"):
        K.row_median(np.zeros((3, 4)), np.ones((3, 5), bool))


def _graph_cases():
    rng = np.random.default_rng(7)
    yield 1, np.zeros((0, 2), np.int64)
    yield 5, np.zeros((0, 2), np.int64)
    yield 4, np.array([[0, 0], [3, 3], [1, 2], [2, 1], [1, 2]])  # self-loops and repeats
    for _ in range(40):
        n = int(rng.integers(2, 300))
        m = int(rng.integers(0, 2 * n))
        yield n, rng.integers(0, n, size=(m, 2))


def test_edge_components_match_scipy() -> None:
    for n, edges in _graph_cases():
        got_n, got = K.edge_components(n, edges)
        ref_n, ref = R.edge_components_reference(n, edges)
        assert got_n == ref_n
        np.testing.assert_array_equal(got, ref)
        assert got.dtype == np.int32


def _forest_inputs(pts: np.ndarray, link: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import cKDTree

    pairs = cKDTree(pts).query_pairs(link, output_type="ndarray")
    d = np.hypot(*(pts[pairs[:, 0]] - pts[pairs[:, 1]]).T) if len(pairs) else np.zeros(0)
    return pairs, np.maximum(d, 1e-6)


def test_spanning_forest_matches_scipy_on_ties_and_random_points() -> None:
    """The same kept edges and the same longest paths as scipy's minimum spanning tree and
    Dijkstra sweeps. Lattice midpoints (the wall points of real candidates) are full of equal
    lengths, where only the same tie order gives the same tree; duplicates give zero-length
    links."""
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(25):
        g = square_lattice(int(rng.integers(2, 12)), 12.0)
        keep = rng.random(len(g)) < rng.uniform(0.3, 1.0)
        pts = np.concatenate([g[keep], g[keep][:3]])  # duplicates
        cases.append((pts[rng.permutation(len(pts))] / 2.0, 2.5 * 6.0))
    for _ in range(25):
        pts = rng.uniform(0, 200, size=(int(rng.integers(2, 400)), 2))
        cases.append((pts, float(rng.uniform(5, 30))))
    for pts, link in cases:
        pairs, w = _forest_inputs(pts, link)
        for min_size in (1, 2, 4):
            forest, paths = K.spanning_forest(len(pts), pairs, w, min_size)
            ref_forest, ref_paths = R.spanning_forest_reference(len(pts), pairs, w, min_size)
            np.testing.assert_array_equal(forest, ref_forest)
            assert len(paths) == len(ref_paths)
            for p, q in zip(paths, ref_paths, strict=True):
                np.testing.assert_array_equal(p, q)


def test_graph_kernels_name_bad_arguments() -> None:
    with pytest.raises(ValueError, match="edges"):
        K.edge_components(3, np.array([[0, 3]]))
    with pytest.raises(ValueError, match="edges"):
        K.edge_components(3, np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="n must be"):
        K.edge_components(-1, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="weights"):
        K.spanning_forest(3, np.array([[0, 1]]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="weights"):
        K.spanning_forest(3, np.array([[0, 1]]), np.array([0.0]))
    assert K.spanning_forest(0, np.zeros((0, 2)), np.zeros(0))[1] == []
