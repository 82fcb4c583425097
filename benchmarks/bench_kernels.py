"""Every numba kernel vs its plain-numpy reference twin (``tests/references.py``), same inputs.

The references are the specification the kernels are tested against (slow and obvious on
purpose); here they are the baseline. Inputs are the sizes a 384² frame (``--scale 1``) gives:
~2,000 atom columns, 11x11 patches, a few hundred wall segments. Columns: the reference's and
the kernel's best time of ``--repeat`` calls (the kernel called once before, so no compile
time), the ratio reference / kernel, and whether the outputs agree (``max abs diff`` for floats,
``equal`` for integers and booleans).

    python -m benchmarks kernels [-- --scale 2 --repeat 5]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rewardscope.optimize import hypervolume, pareto
from rewardscope.science import kernels

TESTS = Path(__file__).resolve().parent.parent / "tests"


def _references():
    """``tests/references.py`` (the numpy twins), imported from the checkout."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import references

    return references


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls, s, and the last result."""
    best, out = math.inf, None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _agreement(a: Any, b: Any) -> str:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        with np.errstate(invalid="ignore"):
            both_inf = np.isinf(a) & np.isinf(b)
            d = np.where(both_inf, 0.0, np.abs(a.astype(float) - b.astype(float)))
        return f"max abs diff {float(np.nanmax(d)) if d.size else 0.0:.1e}"
    return "equal" if np.array_equal(a, b) else f"{int(np.sum(a != b))} differ"


def cases(scale: float = 1.0, seed: int = 0) -> list[tuple[str, str, Callable, Callable]]:
    """(kernel, input description, reference thunk, kernel thunk) for each kernel.

    ``scale`` multiplies the frame side (1 = a 384² frame with ~2,000 columns).
    """
    R = _references()
    rng = np.random.default_rng(seed)
    side = int(384 * scale)
    n_atoms = int(2000 * scale * scale)
    image = rng.random((side, side)).astype(np.float32)
    xy = rng.uniform(8, side - 8, (n_atoms, 2))
    labels = (np.add.outer(np.arange(side), np.arange(side)) // max(side // 3, 1) % 3 + 1)
    t = np.linspace(0, 3 * np.pi, int(400 * scale))
    curve = np.stack([t * 20, 30 * np.sin(t)], axis=1)
    n_seg = int(300 * scale)
    p0 = rng.uniform(0, side, (n_seg, 2))
    ang = rng.choice([0.0, np.pi / 2], n_seg) + rng.normal(0, 0.02, n_seg)
    p1 = p0 + 12 * np.stack([np.cos(ang), np.sin(ang)], 1)
    segs = np.concatenate([p0, p1], axis=1)
    rows = rng.random((n_atoms, 121))
    front = rng.random((int(400 * scale), 2))
    hv_pts = rng.random((24, 3))
    hv_ref = np.full(3, 1.1)
    # a wall candidate's graphs: site pairs (about 2 per site) and the wall points' links
    site_pairs = rng.integers(0, n_atoms // 2, (n_atoms, 2))
    gy, gx = np.mgrid[0: side // 12, 0: side // 12]
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1) * 12.0 + 6.0
    wall_pts = grid[rng.random(len(grid)) < 0.15]  # sparse, ties-heavy lattice points
    from scipy.spatial import cKDTree

    links = cKDTree(wall_pts).query_pairs(30.0, output_type="ndarray")
    lengths = np.maximum(np.hypot(*(wall_pts[links[:, 0]] - wall_pts[links[:, 1]]).T), 1e-6)

    def forest(fn):  # kept edges and every path, one integer array to compare
        edges, paths = fn(len(wall_pts), links, lengths, 4)
        return np.concatenate([edges.ravel(), *paths]) if paths else edges.ravel()

    return [
        ("knn_distance_sums", f"{n_atoms} points, k=4",
         lambda: R.knn_distance_sums_reference(xy, 4), lambda: kernels.knn_distance_sums(xy, 4)),
        ("extract_patches", f"{n_atoms} x 11x11 from {side}²",
         lambda: R.extract_patches_reference(image, xy, 5, 5),
         lambda: kernels.extract_patches(image, xy, 5, 5)),
        ("subpixel_patches", f"{n_atoms} x 11x11 from {side}²",
         lambda: R.subpixel_patches_reference(image, xy, 5, 5),
         lambda: kernels.subpixel_patches(image, xy, 5, 5)),
        ("zscore_rows", f"{n_atoms} x 121",
         lambda: R.zscore_rows_reference(rows), lambda: kernels.zscore_rows(rows)),
        ("label_perimeters", f"{side}², 3 labels",
         lambda: R.label_perimeters_reference(labels, 3),
         lambda: kernels.label_perimeters(labels, 3)),
        ("curvature_profile", f"{len(curve)}-point polyline, smooth 2",
         lambda: R.curvature_profile_reference(curve, None, 2),
         lambda: kernels.curvature_profile(curve, None, 2)),
        ("draw_segments", f"{n_seg} segments on {side}²",
         lambda: R.draw_segments_reference((side, side), p0, p1),
         lambda: kernels.draw_segments((side, side), p0, p1)),
        ("collinear_pairs", f"{n_seg} segments",
         lambda: R.collinear_pairs_reference(segs, 0.1, 2.0, 6.0),
         lambda: kernels.collinear_pairs(segs, 0.1, 2.0, 6.0)),
        ("edge_components", f"{n_atoms // 2} nodes, {n_atoms} edges",
         lambda: R.edge_components_reference(n_atoms // 2, site_pairs)[1],
         lambda: kernels.edge_components(n_atoms // 2, site_pairs)[1]),
        ("spanning_forest", f"{len(wall_pts)} points, {len(links)} links",
         lambda: forest(R.spanning_forest_reference), lambda: forest(kernels.spanning_forest)),
        ("non_dominated_mask", f"{len(front)} x 2",
         lambda: R.non_dominated_mask_reference(front), lambda: pareto.non_dominated_mask(front)),
        ("non_dominated_sort", f"{len(front)} x 2",
         lambda: R.non_dominated_sort_reference(front), lambda: pareto.non_dominated_sort(front)),
        ("hypervolume", "24 x 3",
         lambda: R.hypervolume_reference(hv_pts, hv_ref),
         lambda: hypervolume(hv_pts, hv_ref)),
    ]


def run(scale: float = 1.0, repeat: int = 3) -> list[dict[str, Any]]:
    """One row per kernel: reference_s, numba_s, ratio (reference / numba), agree."""
    kernels.warmup()
    rows = []
    for name, what, ref, ours in cases(scale):
        ours()  # load/compile before timing
        t_ref, out_ref = best_time(ref, repeat)
        t_ours, out = best_time(ours, repeat)
        rows.append({"kernel": name, "input": what, "reference_s": t_ref, "numba_s": t_ours,
                     "ratio": t_ref / t_ours if t_ours > 0 else math.inf,
                     "agree": _agreement(out_ref, out)})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'kernel':<20} {'input':<30} {'numpy s':>9} {'numba s':>9} {'x':>7}  agree")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['kernel']:<20} {r['input']:<30} {r['reference_s']:>9.4f} "
                     f"{r['numba_s']:>9.5f} {r['ratio']:>7.1f}  {r['agree']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks kernels", description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="frame side / 384")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    print(format_table(run(args.scale, args.repeat)))
    print("x = numpy reference time / numba kernel time, same inputs, same run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
