"""Plain data: numpy values as plain Python objects for the wire, JSON and hashing. A leaf
module (it imports numpy only) so the protocol, storage and the engine share one conversion."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """``value`` as a plain Python object: numpy scalars -> int/float/bool/str, arrays -> lists.

    Why: optimizer points, parameters and result headers are compared, hashed and serialised
    (msgpack, JSON); numpy scalars hash like Python numbers but serialise differently.

    Parameters
    ----------
    value : any
        A numpy scalar or array, or anything else (returned unchanged).

    Returns
    -------
    any
        The plain equivalent.
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def as_float(value: Any) -> float:
    """``value`` as a float when it is a real number, else NaN.

    Why: columns of numbers (rewards, header fields) are stored as float64 with NaN for
    "absent"; a missing entry (None), a string or a structure must not abort an export, and a
    numpy scalar (``np.float32`` is not a Python ``float``) must not be mistaken for absent.

    Parameters
    ----------
    value : any
        A Python or numpy real number (bool included), or anything else.

    Returns
    -------
    float
        ``float(value)``, or NaN.
    """
    return float(value) if isinstance(value, numbers.Real) else math.nan
