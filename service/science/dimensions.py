"""The search-space dimensions workflows declare: ``Real``, ``Integer``, ``Categorical`` and
their ``Space``, with scikit-optimize's semantics and without importing it.

Why: ``skopt.space`` imports scipy.stats and scikit-learn's utilities, and with them joblib,
narwhals and rich: ~0.4 s of a cold ``rewardscope analyze`` of ~2 s, for the few lines of
arithmetic the optimizer (:mod:`rewardscope.optimize.mobo`) asks of a dimension. These
classes do that arithmetic as skopt 0.10 does it, operation for operation, so every value is
the same (tested against skopt on random points of every kind of dimension):

* ``transform`` / ``inverse_transform`` under the transforms the optimizer uses: ``identity``
  and ``normalize`` (to [0, 1]; integers rounded; a log-uniform prior's logarithm normalised)
  for ``Real`` and ``Integer``; ``onehot`` (a two-valued category is one 0/1 column, the
  second category 1, read back at > 0.5), ``normalize`` (the category's index over
  ``n - 1``), ``label`` and ``identity`` for ``Categorical``;
* ``rvs``: random draws are skopt's own: skopt's twins of the dimensions are built and asked
  when a draw is wanted (a rare fallback of the optimizer), so the draws for a seed are the
  same.

A workflow may still declare skopt's classes (or skopt's shorthand, a ``(low, high)`` tuple
or a list of categories): :class:`Space` converts them (:func:`check_dimension`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["Categorical", "Dimension", "Integer", "Real", "Space", "check_dimension"]

_EPS = 1e-8  # skopt's Normalize tolerance outside [low, high]
_INT_DTYPES = (int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
               np.uint64)


def _normalize(x, low: float, high: float, is_int: bool) -> np.ndarray:
    """skopt's ``Normalize(low, high, is_int).transform``."""
    x = np.asarray(x)
    if is_int:
        if np.any(np.round(x) > high):
            raise ValueError(f"All integer values should be less than {high:f}")
        if np.any(np.round(x) < low):
            raise ValueError(f"All integer values should be greater than {low:f}")
    else:
        if np.any(x > high + _EPS):
            raise ValueError(f"All values should be less than {high:f}")
        if np.any(x < low - _EPS):
            raise ValueError(f"All values should be greater than {low:f}")
    if (high - low) == 0.0:
        return x * 0.0
    if is_int:
        return (np.round(x).astype(int) - low) / (high - low)
    return (x - low) / (high - low)


def _denormalize(xt, low: float, high: float, is_int: bool) -> np.ndarray:
    """skopt's ``Normalize(low, high, is_int).inverse_transform``."""
    xt = np.asarray(xt)
    if np.any(xt > 1.0 + _EPS):
        raise ValueError("All values should be less than 1.0")
    if np.any(xt < 0.0 - _EPS):
        raise ValueError("All values should be greater than 0.0")
    x = xt * (high - low) + low
    return np.round(x).astype(int) if is_int else x


class Dimension:
    """One search-space axis (base class); subclasses hold their bounds or categories."""

    prior: Any = None
    transform_: str = "identity"
    _name: str | None = None

    @property
    def name(self) -> str | None:
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        if not (isinstance(value, str) or value is None):
            raise ValueError("Dimension's name must be either string or None.")
        self._name = value

    @property
    def size(self) -> int:
        return 1

    @property
    def transformed_size(self) -> int:
        return 1

    def rvs(self, n_samples: int = 1, random_state=None):
        """Random values, drawn by skopt's twin of this dimension (same draws per seed)."""
        return self.skopt().rvs(n_samples=n_samples, random_state=random_state)

    def skopt(self):
        """This dimension as skopt's class (imports skopt.space)."""
        raise NotImplementedError


class _Numeric(Dimension):
    """Shared by ``Real`` and ``Integer``: bounds, prior, base, transform."""

    _is_int = False

    def __init__(self, low, high, prior: str = "uniform", base: float = 10,
                 transform: str | None = None, name: str | None = None, dtype=None) -> None:
        if high <= low:
            raise ValueError(f"the lower bound {low} has to be less than the upper bound "
                             f"{high}")
        if prior not in ("uniform", "log-uniform"):
            raise ValueError(f"prior should be 'uniform' or 'log-uniform' got {prior}")
        if prior == "log-uniform" and low * high <= 0:
            raise ValueError("search space should not contain 0 when using log-uniform prior")
        self.low, self.high, self.prior, self.base = low, high, prior, base
        self.log_base = np.log10(base)
        self.name = name
        self.dtype = dtype
        self.set_transformer("identity" if transform is None else transform)

    def set_transformer(self, transform: str = "identity") -> None:
        if transform not in ("normalize", "identity"):
            raise ValueError(f"transform should be 'normalize' or 'identity' got {transform}")
        self.transform_ = transform

    def _log_bounds(self) -> tuple[float, float]:
        return (np.log10(self.low) / self.log_base, np.log10(self.high) / self.log_base)

    def _log(self, x) -> np.ndarray:
        return np.log10(np.asarray(x, dtype=float)) / np.log10(self.base)

    def _warp(self, x):
        """The transform before the dtype handling of ``inverse_transform``."""
        if self.transform_ == "normalize":
            if self.prior == "uniform":
                return _normalize(x, float(self.low), float(self.high), self._is_int)
            lo, hi = self._log_bounds()
            return _normalize(self._log(x), float(lo), float(hi), False)
        return x if self.prior == "uniform" else self._log(x)

    def _unwarp(self, xt):
        if self.transform_ == "normalize":
            if self.prior == "uniform":
                return _denormalize(xt, float(self.low), float(self.high), self._is_int)
            lo, hi = self._log_bounds()
            return self.base ** np.asarray(_denormalize(xt, float(lo), float(hi), False),
                                           dtype=float)
        return xt if self.prior == "uniform" else self.base ** np.asarray(xt, dtype=float)

    def transform(self, x):
        return self._warp(x)

    def inverse_transform(self, xt):
        """Values back from the transformed space: clipped to [low, high], cast to ``dtype``
        (integers rounded first); Python numbers when ``dtype`` is Python's own type."""
        inv = self._unwarp(xt)
        if isinstance(inv, list):
            inv = np.array(inv)
        inv = np.clip(inv, self.low, self.high)
        value = (np.round(inv) if self._is_int else inv).astype(self.dtype)
        python = int if self._is_int else float
        if self.dtype is python or self.dtype == python.__name__:
            return getattr(value, "tolist", lambda: value)()
        return value

    @property
    def bounds(self) -> tuple:
        return (self.low, self.high)

    @property
    def is_constant(self) -> bool:
        return self.low == self.high

    def __contains__(self, point) -> bool:
        if isinstance(point, list):
            point = np.array(point)
        return self.low <= point <= self.high

    def distance(self, a, b):
        if not (a in self and b in self):
            raise RuntimeError(f"Can only compute distance for values within the space, not "
                               f"{a} and {b}.")
        return abs(a - b)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(low={self.low}, high={self.high}, prior='{self.prior}'"
                f", transform='{self.transform_}')")

    def skopt(self):
        from skopt import space  # noqa: PLC0415 - only to draw random points

        cls = getattr(space, type(self).__name__)
        return cls(self.low, self.high, prior=self.prior, base=self.base,
                   transform=self.transform_, name=self.name, dtype=self.dtype)


class Real(_Numeric):
    """A real-valued axis in [low, high] (skopt's ``Real``)."""

    def __init__(self, low, high, prior: str = "uniform", base: float = 10,
                 transform: str | None = None, name: str | None = None, dtype=float) -> None:
        if isinstance(dtype, str) and dtype not in ("float", "float16", "float32", "float64"):
            raise ValueError(f"dtype must be 'float', 'float16', 'float32' or 'float64' got "
                             f"{dtype}")
        if isinstance(dtype, type) and not np.issubdtype(dtype, np.floating):
            raise ValueError(f"dtype must be a np.floating subtype; got {dtype}")
        super().__init__(low, high, prior, base, transform, name, dtype)

    @property
    def transformed_bounds(self) -> tuple:
        if self.transform_ == "normalize":
            return 0.0, 1.0
        if self.prior == "uniform":
            return self.low, self.high
        return np.log10(self.low), np.log10(self.high)

    def __eq__(self, other) -> bool:
        return (type(self) is type(other) and np.allclose([self.low], [other.low])
                and np.allclose([self.high], [other.high]) and self.prior == other.prior
                and self.transform_ == other.transform_)

    __hash__ = None  # type: ignore[assignment]


class Integer(_Numeric):
    """An integer axis in [low, high] (skopt's ``Integer``)."""

    _is_int = True

    def __init__(self, low, high, prior: str = "uniform", base: float = 10,
                 transform: str | None = None, name: str | None = None,
                 dtype=np.int64) -> None:
        if isinstance(dtype, str) and dtype not in ("int", "int8", "int16", "int32", "int64",
                                                    "uint8", "uint16", "uint32", "uint64"):
            raise ValueError(f"dtype must be an integer type name, but got {dtype}")
        if isinstance(dtype, type) and dtype not in _INT_DTYPES:
            raise ValueError(f"dtype must be int or a numpy integer type, but got {dtype}")
        super().__init__(low, high, prior, base, transform, name, dtype)

    @property
    def transformed_bounds(self) -> tuple:
        return (0.0, 1.0) if self.transform_ == "normalize" else (self.low, self.high)

    def __eq__(self, other) -> bool:
        return (type(self) is type(other) and np.allclose([self.low], [other.low])
                and np.allclose([self.high], [other.high]))

    __hash__ = None  # type: ignore[assignment]


class Categorical(Dimension):
    """An axis of named choices (skopt's ``Categorical``; default transform one-hot)."""

    def __init__(self, categories: Iterable, prior=None, transform: str | None = None,
                 name: str | None = None) -> None:
        self.categories = tuple(categories)
        self.name = name
        self.prior = prior
        n = len(self.categories)
        self.prior_ = np.tile(1.0 / n, n) if prior is None else prior
        self.set_transformer("onehot" if transform is None else transform)

    def set_transformer(self, transform: str = "onehot") -> None:
        if transform not in ("identity", "onehot", "string", "normalize", "label"):
            raise ValueError("Expected transform to be 'identity', 'string', 'label' or "
                             f"'onehot' got {transform}")
        self.transform_ = transform
        # one-hot and label codes: a category's position (skopt's mapping_)
        self._index = {v: i for i, v in enumerate(self.categories)}
        arr = np.asarray(self.categories)
        if arr.dtype == object:  # skopt's LabelEncoder: first occurrence of each value
            self._labels = dict(self._index)
        else:
            _, first = np.unique(arr, return_index=True)
            self._labels = {arr[i]: j for j, i in enumerate(sorted(first))}
        self._unlabels = {j: v for v, j in self._labels.items()}

    @property
    def transformed_size(self) -> int:
        if self.transform_ == "onehot":
            n = len(self.categories)
            return n if n != 2 else 1
        return 1

    def transform(self, x):
        t = self.transform_
        if t == "onehot":
            codes = np.array([self._index[v] for v in x], dtype=np.int64)
            n = len(self.categories)
            if n <= 2:  # one 0/1 column (scikit-learn's binary LabelBinarizer)
                return (codes == 1).astype(np.int64).reshape(-1, 1)
            out = np.zeros((len(codes), n), dtype=np.int64)
            out[np.arange(len(codes)), codes] = 1
            return out
        if t in ("label", "normalize"):
            codes = [self._labels[v] for v in np.asarray(x)]
            if t == "label":
                return codes
            return _normalize(codes, 0.0, float(len(self.categories) - 1), True)
        if t == "string":
            return [str(v) for v in x]
        return x

    def inverse_transform(self, xt):
        t = self.transform_
        if t == "onehot":
            xt = np.asarray(xt)
            n = len(self.categories)
            if n == 1:
                idx = np.zeros(len(xt), dtype=np.int64)
            elif n == 2:
                idx = np.array(xt > 0.5, dtype=int).ravel()
            else:
                idx = np.clip(xt.argmax(axis=1), 0, n - 1)
            inv = [self.categories[i] for i in idx]
        elif t in ("label", "normalize"):
            if t == "normalize":
                xt = _denormalize(xt, 0.0, float(len(self.categories) - 1), True)
            xt = [xt] if isinstance(xt, (float, np.float64)) else np.asarray(xt)
            inv = [self._unlabels[int(np.round(i))] for i in xt]
        elif t == "string":
            kind = type(self.categories[0]) if self.categories else str
            inv = [kind(v) for v in xt]
        else:
            inv = xt
        return np.array(inv) if isinstance(inv, list) else inv

    @property
    def bounds(self) -> tuple:
        return self.categories

    @property
    def is_constant(self) -> bool:
        return len(self.categories) <= 1

    @property
    def transformed_bounds(self):
        if self.transformed_size == 1:
            return 0.0, 1.0
        return [(0.0, 1.0) for _ in range(self.transformed_size)]

    def __contains__(self, point) -> bool:
        return point in self.categories

    def distance(self, a, b) -> int:
        if not (a in self and b in self):
            raise RuntimeError(f"Can only compute distance for values within the space, not "
                               f"{a} and {b}.")
        return 1 if a != b else 0

    def __eq__(self, other) -> bool:
        return (type(self) is type(other) and self.categories == other.categories
                and np.allclose(self.prior_, other.prior_))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Categorical(categories={self.categories}, prior={self.prior})"

    def skopt(self):
        from skopt.space import Categorical as SkoptCategorical  # noqa: PLC0415

        return SkoptCategorical(self.categories, prior=self.prior, transform=self.transform_,
                                name=self.name)


def check_dimension(dim) -> Dimension:
    """``dim`` as one of this module's dimensions: itself, a converted skopt dimension, or
    skopt's shorthand (``(low, high[, prior])`` tuple, list of categories) read by skopt."""
    if isinstance(dim, Dimension):
        return dim
    space = sys.modules.get("skopt.space.space")
    if space is None or not isinstance(dim, space.Dimension):
        from skopt.space import check_dimension as skopt_check  # noqa: PLC0415

        dim = skopt_check(dim)
    kind = type(dim).__name__
    if kind == "Categorical":
        return Categorical(dim.categories, prior=dim.prior, transform=dim.transform_,
                           name=dim.name)
    if kind in ("Real", "Integer"):
        cls = Real if kind == "Real" else Integer
        return cls(dim.low, dim.high, prior=dim.prior, base=dim.base,
                   transform=dim.transform_, name=dim.name, dtype=dim.dtype)
    raise ValueError(f"unsupported dimension {dim!r}: use Real, Integer or Categorical")


def _transpose(columns: Sequence) -> list[list]:
    return [[col[i] for col in columns] for i in range(len(columns[0]))]


class Space:
    """A search space: a list of dimensions (skopt's ``Space``, without constraints)."""

    def __init__(self, dimensions: Iterable) -> None:
        self.dimensions = [check_dimension(d) for d in dimensions]

    def __iter__(self):
        return iter(self.dimensions)

    def __contains__(self, point) -> bool:
        return all(v in d for v, d in zip(point, self.dimensions, strict=False))

    def __eq__(self, other) -> bool:
        return all(a == b for a, b in zip(self.dimensions, other.dimensions, strict=False))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Space([{}])".format(",\n       ".join(map(str, self.dimensions)))

    @property
    def n_dims(self) -> int:
        return len(self.dimensions)

    @property
    def transformed_n_dims(self) -> int:
        return sum(d.transformed_size for d in self.dimensions)

    @property
    def dimension_names(self) -> list[str]:
        return [f"X_{i}" if d.name is None else d.name for i, d in enumerate(self.dimensions)]

    @property
    def bounds(self) -> list:
        return [d.bounds for d in self.dimensions]

    @property
    def transformed_bounds(self) -> list:
        out = []
        for d in self.dimensions:
            b = d.transformed_bounds
            out.extend(b if d.transformed_size > 1 else [b])
        return out

    @property
    def is_real(self) -> bool:
        return all(isinstance(d, Real) for d in self.dimensions)

    @property
    def is_categorical(self) -> bool:
        return all(isinstance(d, Categorical) for d in self.dimensions)

    def set_transformer(self, transform: str | list[str]) -> None:
        for j, d in enumerate(self.dimensions):
            d.set_transformer(transform[j] if isinstance(transform, list) else transform)

    def transform(self, x: Sequence[Sequence]) -> np.ndarray:
        """Points (rows of values) to the transformed space, one row each."""
        cols = [self.dimensions[j].transform([row[j] for row in x]) for j in range(self.n_dims)]
        return np.hstack([np.asarray(c).reshape((len(x), -1)) for c in cols])

    def inverse_transform(self, xt) -> list[list]:
        """Transformed rows back to points (lists of values)."""
        xt = np.asarray(xt)
        cols, start = [], 0
        for d in self.dimensions:
            size = d.transformed_size
            cols.append(d.inverse_transform(xt[:, start] if size == 1
                                            else xt[:, start:start + size]))
            start += size
        return _transpose(cols)

    def rvs(self, n_samples: int = 1, random_state=None) -> list[list]:
        """Random points, drawn by skopt's twin of this space (same draws per seed)."""
        from skopt.space import Space as SkoptSpace  # noqa: PLC0415 - rare: the fallback

        return SkoptSpace([d.skopt() for d in self.dimensions]).rvs(n_samples, random_state)

