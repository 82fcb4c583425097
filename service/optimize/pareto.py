"""Pareto dominance for minimised objectives.

The numba kernels are what the optimiser calls on every ask/tell; the plain-numpy
`*_reference` versions are kept (and tested against) because they are short enough to be
obviously correct. Convention: `p` dominates `q` iff `p <= q` everywhere and `p < q`
somewhere, so duplicated points never dominate each other and share a rank.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def _as_2d(Y) -> np.ndarray:
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2:
        raise ValueError(f"expected a 2-D (n_points, n_objectives) array, got shape {Y.shape}")
    return np.ascontiguousarray(Y)


@njit(cache=True)
def _dominates(Y: np.ndarray, p: int, q: int) -> bool:
    strictly = False
    for k in range(Y.shape[1]):
        if Y[p, k] > Y[q, k]:
            return False
        if Y[p, k] < Y[q, k]:
            strictly = True
    return strictly


@njit(cache=True, nogil=True)
def _non_dominated_mask_nb(Y: np.ndarray) -> np.ndarray:
    n = Y.shape[0]
    mask = np.ones(n, dtype=np.bool_)
    for i in range(n):
        if not mask[i]:
            continue
        for j in range(n):
            if i != j and _dominates(Y, j, i):
                mask[i] = False
                break
    return mask


@njit(cache=True, nogil=True)
def _non_dominated_sort_nb(Y: np.ndarray) -> np.ndarray:
    # Deb et al. (2002) fast non-dominated sort, dense domination matrix: O(m n^2).
    n = Y.shape[0]
    dominated_by = np.zeros(n, dtype=np.int64)  # how many points dominate i
    dom = np.zeros((n, n), dtype=np.bool_)  # dom[i, j]: i dominates j
    for i in range(n):
        for j in range(i + 1, n):
            if _dominates(Y, i, j):
                dom[i, j] = True
                dominated_by[j] += 1
            elif _dominates(Y, j, i):
                dom[j, i] = True
                dominated_by[i] += 1
    rank = np.full(n, -1, dtype=np.int64)
    current = np.empty(n, dtype=np.int64)
    nxt = np.empty(n, dtype=np.int64)
    n_cur = 0
    for i in range(n):
        if dominated_by[i] == 0:
            rank[i] = 0
            current[n_cur] = i
            n_cur += 1
    r = 0
    while n_cur > 0:
        n_nxt = 0
        for a in range(n_cur):
            i = current[a]
            for j in range(n):
                if dom[i, j]:
                    dominated_by[j] -= 1
                    if dominated_by[j] == 0:
                        rank[j] = r + 1
                        nxt[n_nxt] = j
                        n_nxt += 1
        r += 1
        current, nxt = nxt, current
        n_cur = n_nxt
    return rank


def non_dominated_mask(Y) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `Y` (n_points, n_objectives), minimised."""
    Y = _as_2d(Y)
    if Y.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return _non_dominated_mask_nb(Y)


def non_dominated_sort(Y) -> np.ndarray:
    """Front index per row (0 = Pareto front, 1 = front once 0 is removed, ...)."""
    Y = _as_2d(Y)
    if Y.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return _non_dominated_sort_nb(Y)
