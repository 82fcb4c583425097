"""Knee of a Pareto front: the single trade-off the live service reports per frame.

Each objective is rescaled to [0, 1] over the non-dominated rows so that rewards with
different units weigh equally; the knee is the point closest to the ideal (0, ..., 0).
Chebyshev distance favours balanced trade-offs (no objective left far behind); Euclidean is
the usual compromise-programming choice.

``scale`` (per objective, optional) replaces the front's range by a fixed physical unit where
one exists (> 0): LoG*'s two rewards are both fractions of the atoms, so 1 % miscounted and
1 % implausible weigh the same whatever the front's extent. Min-max scaling alone lets one
extreme point (a detector that finds half the atoms) shrink a real 10 % count error to
nothing next to a 1 % neighbour error.
"""

from __future__ import annotations

import numpy as np

from rewardscope.optimize.pareto import non_dominated_mask

_METHODS = ("euclidean", "chebyshev")


def normalise_front(Y, scale=None) -> np.ndarray:
    """Per-objective scaling to the ideal point: divide by ``scale`` where given (> 0), else
    by the range over the front; a constant objective maps to 0 (no zero division)."""
    Y = np.asarray(Y, dtype=np.float64)
    lo = Y.min(axis=0)
    span = Y.max(axis=0) - lo
    if scale is not None:
        fixed = np.broadcast_to(np.asarray(scale, np.float64), span.shape)
        span = np.where(fixed > 0, fixed, span)
    span = np.where(span > 0, span, 1.0)
    return (Y - lo) / span


def knee_index(Y, method: str = "euclidean", scale=None) -> int:
    """Row index into `Y` of the knee of its Pareto front (ties -> lowest index).

    Dominated and non-finite rows are ignored, so passing all observations is fine.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n_points, n_objectives) array, got {Y.shape}")
    finite = np.flatnonzero(np.all(np.isfinite(Y), axis=1))
    if finite.size == 0:
        raise ValueError("no finite rows to choose a knee from")
    front = finite[non_dominated_mask(Y[finite])]
    Z = normalise_front(Y[front], scale)
    if method == "euclidean":
        dist = np.sqrt(np.sum(Z * Z, axis=1))
    else:
        dist = np.max(Z, axis=1)
    return int(front[int(np.argmin(dist))])
