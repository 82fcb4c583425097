"""Exact hypervolume (all objectives minimised) w.r.t. a reference point, for 1-3 objectives.

2-D is a sort + sweep, O(n log n). 3-D is the dimension sweep of Fonseca, Paquete and
López-Ibáñez (2006): visit points by increasing third objective and keep the 2-D front of
the (f1, f2) projections seen so far; the volume is the sum of 2-D areas times the z-gaps.
Our 2-D front update is a linear insert, so 3-D is O(n^2) — ample for per-frame fronts of
tens to hundreds of points. Points that do not strictly dominate the reference point, and
non-finite rows, contribute nothing and are dropped first.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _hv2d_nb(P: np.ndarray, rx: float, ry: float) -> float:
    order = np.argsort(P[:, 0], kind="mergesort")
    best_y = ry
    hv = 0.0
    for k in range(order.shape[0]):
        i = order[k]
        y = P[i, 1]
        if y < best_y:
            hv += (rx - P[i, 0]) * (best_y - y)
            best_y = y
    return hv


@njit(cache=True, nogil=True)
def _hv3d_nb(P: np.ndarray, ref: np.ndarray) -> float:
    n = P.shape[0]
    order = np.argsort(P[:, 2], kind="mergesort")
    fx = np.empty(n + 1)  # 2-D front of (f1, f2): x ascending, y strictly descending
    fy = np.empty(n + 1)
    m = 0
    vol = 0.0
    area = 0.0
    for k in range(n):
        i = order[k]
        px = P[i, 0]
        py = P[i, 1]
        # first front index with fx >= px
        start = 0
        while start < m and fx[start] < px:
            start += 1
        dominated = start > 0 and fy[start - 1] <= py
        if not dominated and start < m and fx[start] == px and fy[start] <= py:
            dominated = True
        if not dominated:
            end = start
            while end < m and fy[end] >= py:
                end += 1
            removed = end - start
            if removed == 0:  # shift right by one to make room
                for j in range(m, start, -1):
                    fx[j] = fx[j - 1]
                    fy[j] = fy[j - 1]
                m += 1
            else:  # overwrite slot `start`, close the gap of removed-1
                shift = removed - 1
                if shift > 0:
                    for j in range(start + 1, m - shift):
                        fx[j] = fx[j + shift]
                        fy[j] = fy[j + shift]
                m -= shift
            fx[start] = px
            fy[start] = py
            area = 0.0
            for j in range(m):
                right = fx[j + 1] if j + 1 < m else ref[0]
                area += (right - fx[j]) * (ref[1] - fy[j])
        z_next = P[order[k + 1], 2] if k + 1 < n else ref[2]
        vol += area * (z_next - P[i, 2])
    return vol


def _prepare(Y, ref) -> tuple[np.ndarray, np.ndarray]:
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[None, :] if Y.size else Y.reshape(0, np.asarray(ref).size)
    ref = np.asarray(ref, dtype=np.float64).ravel()
    if Y.ndim != 2 or Y.shape[1] != ref.size:
        raise ValueError(f"Y has shape {Y.shape}, reference point has {ref.size} entries")
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference point must be finite")
    keep = np.all(np.isfinite(Y), axis=1) & np.all(Y < ref, axis=1)
    return np.ascontiguousarray(Y[keep]), ref


def hypervolume(Y, ref) -> float:
    """Exact hypervolume dominated by rows of `Y` and bounded by `ref` (1-3 objectives)."""
    P, ref = _prepare(Y, ref)
    d = ref.size
    if d > 3:
        raise ValueError(
            f"exact hypervolume is implemented for 1-3 objectives, got {d}; "
            "use hypervolume_reference for small sets or reduce the objectives"
        )
    if P.shape[0] == 0:
        return 0.0
    if d == 1:
        return float(ref[0] - P[:, 0].min())
    if d == 2:
        return float(_hv2d_nb(P, ref[0], ref[1]))
    return float(_hv3d_nb(P, ref))
