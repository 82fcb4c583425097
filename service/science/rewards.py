"""Physics-based rewards: pure functions with metadata, kept in an extensible registry.

A reward maps the *result* of one analysis (atom positions, walls, a mask, a fitted model)
to one float whose physical meaning is stated in :attr:`Reward.meaning`. Rewards take explicit
arrays and numbers only (no frames, sockets or config), validate their input with messages
that name the argument, and return a documented finite-or-infinite *worst* value on empty
input instead of NaN, so an analysis that found nothing can never look good.

Users add rewards by dotted path (``"mypkg.rewards:my_reward"``) in the TOML config; see
:func:`get_reward` and docs/REWARDS.md.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from rewardscope.science import kernels

__all__ = [
    "DIRECTIONS",
    "PENALTY",
    "REGISTRY",
    "Reward",
    "RewardLookupError",
    "cluster_separation",
    "count_quality",
    "evaluate",
    "expected_sites",
    "get_reward",
    "gmm_bic",
    "implausible_neighbours",
    "normalised_perimeter",
    "region_compactness",
    "register",
    "to_minimisation",
    "wall_curvature",
    "wall_length_per_segment",
    "wall_straightness",
]

DIRECTIONS = ("min", "max")
PENALTY = 1e6
"""Finite stand-in :func:`to_minimisation` returns for NaN or a worst-case infinity."""


@dataclass(frozen=True)
class Reward:
    """A named objective; ``direction`` says whether smaller ("min") or larger ("max") is better."""

    name: str
    direction: str
    meaning: str
    func: Callable[..., float]

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"reward {self.name!r}: direction must be 'min' or 'max', got {self.direction!r}"
            )
        if not callable(self.func):
            raise TypeError(f"reward {self.name!r}: func must be callable, got {self.func!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        return float(self.func(*args, **kwargs))


class RewardLookupError(LookupError):
    """A reward name or dotted path that cannot be resolved; the message names it."""


REGISTRY: dict[str, Reward] = {}


def register(name: str, direction: str, meaning: str) -> Callable[[Callable], Callable]:
    """Decorator: add ``func`` to :data:`REGISTRY` under ``name`` and return it unchanged.

    The :class:`Reward` is also attached as ``func.reward`` so that :func:`get_reward` finds it
    when a user module is loaded by path. Re-registering the same function (module reload) is
    allowed; taking a name already bound to another function is an error.
    """

    def deco(func: Callable) -> Callable:
        reward = Reward(name=name, direction=direction, meaning=meaning, func=func)
        old = REGISTRY.get(name)
        if old is not None and _qualname(old.func) != _qualname(func):
            raise ValueError(
                f"reward name {name!r} is already registered to {_qualname(old.func)}; "
                "pick another name"
            )
        REGISTRY[name] = reward
        func.reward = reward  # type: ignore[attr-defined]
        return func

    return deco


def _qualname(func: Callable) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _import_path(path: str) -> Any:
    """Resolve "pkg.mod:attr.sub" or "pkg.mod.attr" to the object; errors name the path."""
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        candidates = [(module_name, attr_path)]
    else:
        parts = path.split(".")
        candidates = [
            (".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)
        ]
    first_error: Exception | None = None
    for module_name, attr_path in candidates:
        if not module_name or not attr_path:
            break
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only a *missing* prefix means "try a shorter module"; a module that exists but
            # fails to import (its own missing dependency) is reported as is.
            missing = exc.name or ""
            if module_name == missing or module_name.startswith(missing + "."):
                first_error = first_error or exc
                continue
            raise RewardLookupError(
                f"cannot load reward {path!r}: importing {module_name!r} failed: {exc}"
            ) from exc
        except Exception as exc:
            raise RewardLookupError(
                f"cannot load reward {path!r}: importing {module_name!r} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            for attr in attr_path.split("."):
                obj = getattr(obj, attr)
        except AttributeError as exc:
            raise RewardLookupError(
                f"cannot load reward {path!r}: module {module_name!r} has no attribute "
                f"{attr_path!r}"
            ) from exc
        return obj
    raise RewardLookupError(
        f"cannot load reward {path!r}: no importable module in it "
        f"(expected 'package.module:function'): {first_error}"
    )


def _find_attr(obj: Any, attr: str) -> Any:
    """``attr`` on ``obj`` or on anything it wraps (functools.wraps / partial)."""
    seen: set[int] = set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        if attr in getattr(obj, "__dict__", {}):
            return obj.__dict__[attr]
        obj = getattr(obj, "__wrapped__", None) or getattr(obj, "func", None)
    return None


def get_reward(name_or_dotted_path: str) -> Reward:
    """A built-in by name, or a user reward by ``"pkg.module:func"`` / ``"pkg.module.func"``.

    The object at a path may be a :class:`Reward`, a function decorated with :func:`register`,
    or a plain callable that declares ``direction`` ("min"/"max") and optionally ``meaning`` as
    attributes (on itself or on what it wraps); its meaning defaults to its docstring's first
    line and its name is the path. A callable without a direction is refused rather than
    guessed, because minimising a "max" reward silently optimises the wrong thing.
    """
    if not isinstance(name_or_dotted_path, str) or not name_or_dotted_path.strip():
        raise RewardLookupError(f"reward must be a non-empty string, got {name_or_dotted_path!r}")
    key = name_or_dotted_path.strip()
    if key in REGISTRY:
        return REGISTRY[key]
    if "." not in key and ":" not in key:
        raise RewardLookupError(
            f"unknown reward {key!r}; built-ins: {', '.join(sorted(REGISTRY))}; "
            "user rewards are given as 'package.module:function'"
        )
    obj = _import_path(key)
    if isinstance(obj, Reward):
        return obj
    attached = _find_attr(obj, "reward")
    if isinstance(attached, Reward):
        return attached
    if not callable(obj):
        raise RewardLookupError(f"reward {key!r} resolves to {type(obj).__name__}, not a callable")
    direction = _find_attr(obj, "direction")
    if direction not in DIRECTIONS:
        raise RewardLookupError(
            f"reward {key!r} must declare direction 'min' or 'max' (got {direction!r}): "
            "decorate it with rewardscope.science.rewards.register(...) or set func.direction"
        )
    meaning = _find_attr(obj, "meaning") or (inspect.getdoc(obj) or "").split("\n")[0]
    return Reward(name=key, direction=direction, meaning=meaning or key, func=obj)


def to_minimisation(reward: Reward, value: float) -> float:
    """The objective the optimizer minimises: ``value`` for "min", ``-value`` for "max".

    NaN and a worst-case infinity map to :data:`PENALTY` (a best-case infinity to -PENALTY),
    so surrogate models never see non-finite objectives.
    """
    v = float(value)
    if reward.direction == "max":
        v = -v
    if math.isnan(v) or v == math.inf:
        return PENALTY
    if v == -math.inf:
        return -PENALTY
    return v


def evaluate(reward: Reward, context: Mapping[str, Any]) -> float:
    """Call ``reward`` with the keyword arguments it names, taken from ``context``.

    Lets a workflow keep one dict of analysis results (``n_found``, ``shape``, ``xy``,
    ``walls``, ``segments``, ``mask`` ...) and evaluate any configured reward on it.
    """
    params = inspect.signature(reward.func).parameters.values()
    kwargs: dict[str, Any] = {}
    missing = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in context:
            kwargs[p.name] = context[p.name]
        elif p.default is p.empty:
            missing.append(p.name)
    if missing:
        raise KeyError(f"reward {reward.name!r} needs {missing} but the analysis provides none")
    return reward(**kwargs)


# --------------------------------------------------------------------------------------------
# input helpers
# --------------------------------------------------------------------------------------------


def _shape2(shape: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in tuple(shape)[:2])
        ok = len(tuple(shape)) >= 2
    except (TypeError, ValueError):
        ok = False
    if not ok or h <= 0 or w <= 0:
        raise ValueError(f"shape must be (height, width) with positive sizes, got {shape!r}")
    return h, w


def _positive(value: float, name: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _walls(walls: Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(walls, np.ndarray) and walls.ndim == 2:
        raise ValueError(
            f"walls must be a list of (M_i, 2) ordered point arrays, got one {walls.shape} "
            "array; wrap a single wall as [points] (Hough segments belong to "
            "wall_length_per_segment)"
        )
    out = []
    for i, w in enumerate(walls):
        arr = np.asarray(w, dtype=np.float64)
        if arr.size == 0:
            continue
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"walls[{i}] must have shape (M, 2) as [x, y] rows, got {arr.shape}")
        out.append(arr)
    return out


# --------------------------------------------------------------------------------------------
# atoms
# --------------------------------------------------------------------------------------------


def expected_sites(shape: Sequence[int], lattice_px: float, sites_per_cell: float = 2) -> float:
    """Columns expected in a frame: area / cell area * visible columns per cell."""
    h, w = _shape2(shape)
    a = _positive(lattice_px, "lattice_px")
    return h * w * _positive(sites_per_cell, "sites_per_cell") / (a * a)


@register(
    "count_quality",
    "min",
    "relative error of the number of atomic columns found vs. the number the lattice implies",
)
def count_quality(
    n_found: int, shape: Sequence[int], lattice_px: float, sites_per_cell: float = 2
) -> float:
    """QC = |N_found - N_expected| / N_expected, N_expected = H*W*sites_per_cell / lattice_px^2.

    ``sites_per_cell`` = 2 for ABO3 [001] (A and B-O columns; O columns are dark in HAADF).
    No atoms found gives 1.0, not a special case.
    """
    n = float(n_found)
    if not (math.isfinite(n) and n >= 0 and n == int(n)):
        raise ValueError(f"n_found must be a non-negative integer, got {n_found!r}")
    expected = expected_sites(shape, lattice_px, sites_per_cell)
    return abs(n - expected) / expected


@register(
    "implausible_neighbours",
    "min",
    "fraction of atomic columns crowded closer to their 4 neighbours than the lattice allows",
)
def implausible_neighbours(
    xy: np.ndarray,
    shape: Sequence[int],
    lattice_px: float,
    sites_per_cell: float = 2,
    fraction: float = 0.8,
    k: int = 4,
) -> float:
    """ER: fraction of interior atoms whose k-NN distance sum is below ``fraction`` of ideal.

    Ideal spacing of the projected square lattice with ``sites_per_cell`` columns per a x a
    cell: d = a / sqrt(sites_per_cell), so for ABO3 [001] (A at corners, B at the centre)
    d = a/sqrt(2) and the ideal 4-NN sum is 4a/sqrt(2) = 2*sqrt(2)*a. The limit is
    ``fraction`` * k * d. Why 0.8 and not 0.5: a doubly detected column (twin at ~0 px) sums
    0 + 3d = 0.75 of ideal and a noise blob at an O site (a/2 from two A and two B) 2a = 0.71,
    so both escape a 0.5 limit (which only catches clusters of three or more). Their genuine
    neighbours stay at 1.0 (twin) or 0.93 (blob), and the perfect lattice is at 1.0, so 0.8
    flags exactly the spurious columns with ~20 % tolerance for distortion and position noise
    (Gaussian jitter of 0.14 d still flags nothing).

    Neighbours are searched among all atoms, but only atoms at least one lattice spacing from
    the frame border are judged (nearer ones may have true neighbours outside the frame).
    Fewer than k+1 atoms, or none in the interior -> 1.0 (worst: nothing to vouch for).
    """
    h, w = _shape2(shape)
    a = _positive(lattice_px, "lattice_px")
    f = _positive(fraction, "fraction")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    pts = np.asarray(xy, dtype=np.float64)
    if pts.size == 0:
        return 1.0
    sums = kernels.knn_distance_sums(pts, int(k))
    if pts.shape[0] < k + 1:
        return 1.0
    x, y = pts[:, 0], pts[:, 1]
    interior = (x >= a) & (y >= a) & (x <= w - 1 - a) & (y <= h - 1 - a)
    if not interior.any():
        return 1.0
    limit = f * k * a / math.sqrt(_positive(sites_per_cell, "sites_per_cell"))
    return float(np.mean(sums[interior] < limit))


# --------------------------------------------------------------------------------------------
# walls
# --------------------------------------------------------------------------------------------


@register(
    "wall_curvature",
    "min",
    "mean curvature (1/px) along detected domain walls; walls bend little to save wall energy",
)
def wall_curvature(walls: Sequence[np.ndarray], step: float = 5.0, smooth: int = 1) -> float:
    """R1: arc-length weighted mean curvature over walls given as ordered (M_i, 2) points.

    Each wall is resampled every ``step`` px and smoothed over ``smooth`` samples each side
    (see :func:`rewardscope.science.kernels.curvature_profile`); the defaults make a pixel staircase
    along a straight wall read < 0.01/px and an r = 40 px arc read 1/r within a few %.
    Walls shorter than two steps cannot show curvature and are skipped (otherwise splitting a
    wall into stubs would score 0). No measurable wall -> +inf (worst).
    """
    step = _positive(step, "step")
    total = 0.0
    weight = 0.0
    for pts in _walls(walls):
        prof = kernels.curvature_profile(pts, step=step, smooth=smooth)
        if prof.size:
            total += float(prof.sum())  # uniform samples: sum ~ length-weighted
            weight += prof.size
    return total / weight if weight else math.inf


@register(
    "wall_length_per_segment",
    "max",
    "mean wall segment length (px); long continuous walls rather than fragments",
)
def wall_length_per_segment(segments: np.ndarray) -> float:
    """R2 = total length of the [x0, y0, x1, y1] segments / their number; none -> 0.0 (worst)."""
    lengths = kernels.segment_lengths(segments)
    return float(lengths.mean()) if lengths.size else 0.0


@register(
    "wall_straightness",
    "max",
    "arc-length weighted mean chord/arc ratio of walls (1 = straight); curvature's twin",
)
def wall_straightness(walls: Sequence[np.ndarray]) -> float:
    """Mean chord-to-arc ratio over walls, weighted by arc length; no wall -> 0.0 (worst).

    Length weighting keeps short, trivially straight fragments from dominating. The paper
    reports the same Pareto optimum as :func:`wall_curvature` with this form.
    """
    total = 0.0
    weight = 0.0
    for pts in _walls(walls):
        arc = kernels.polyline_length(pts)
        if arc > 0:
            total += arc * kernels.chord_to_arc_ratio(pts)
            weight += arc
    return total / weight if weight else 0.0


# --------------------------------------------------------------------------------------------
# regions
# --------------------------------------------------------------------------------------------

_EIGHT = np.ones((3, 3), dtype=bool)


def _components(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Areas and Crofton perimeters of the 8-connected components with >= min_area pixels."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    if int(min_area) != min_area or min_area < 1:
        raise ValueError(f"min_area must be a positive integer, got {min_area!r}")
    labels, n = ndimage.label(m != 0, structure=_EIGHT)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    perims = kernels.label_perimeters(labels, n)[1:]
    keep = areas >= min_area
    return areas[keep], perims[keep]


@register(
    "region_compactness",
    "max",
    "area-weighted isoperimetric quotient 4*pi*A/P^2 of amorphous regions (1 = disk)",
)
def region_compactness(mask: np.ndarray, min_area: int = 1) -> float:
    """Area-weighted mean over 8-connected components of min(1, 4*pi*area/perimeter^2).

    The paper's area/perimeter^2 times 4*pi, so a disk scores ~1 and ragged regions less; the
    Crofton perimeter (:func:`rewardscope.science.kernels.mask_perimeter`) keeps the disk at ~1 on
    the pixel grid, and the clip at 1 absorbs few-pixel blobs whose perimeter is unresolved.
    Area weighting lets the large regions, which carry the physics, dominate speckle.
    Components smaller than ``min_area`` px are ignored; nothing left -> 0.0 (worst).
    """
    areas, perims = _components(mask, min_area)
    if areas.size == 0:
        return 0.0
    q = np.minimum(1.0, 4.0 * np.pi * areas / np.maximum(perims, 1e-12) ** 2)
    return float(np.sum(areas * q) / np.sum(areas))


@register(
    "normalised_perimeter",
    "min",
    "total boundary of amorphous regions over that of one disk of equal area (1 = one disk)",
)
def normalised_perimeter(mask: np.ndarray, min_area: int = 1) -> float:
    """P_total / (2*sqrt(pi*A_total)): dimensionless, >= ~1, = 1 for a single disk.

    Chosen over P / frame perimeter, which an empty mask would win (P = 0), and over per-region
    P/sqrt(A), which ignores fragmentation: n equal disks score sqrt(n), so the reward asks for
    few, smooth regions independently of frame size. Components smaller than ``min_area`` px
    are ignored; nothing left -> +inf (worst).
    """
    areas, perims = _components(mask, min_area)
    if areas.size == 0:
        return math.inf
    return float(np.sum(perims) / (2.0 * math.sqrt(math.pi * np.sum(areas))))


# --------------------------------------------------------------------------------------------
# clustering (pass-through until the latent rewards arrive)
# --------------------------------------------------------------------------------------------


@register(
    "gmm_bic",
    "min",
    "Bayesian information criterion of the descriptor mixture model, per descriptor",
)
def gmm_bic(bic: float, n_samples: int | None = None) -> float:
    """Pass-through of a fitted GMM's BIC, divided by ``n_samples`` when given so frames with
    different atom counts compare; NaN/inf (failed fit) -> +inf (worst)."""
    v = float(bic)
    if n_samples is not None:
        v /= _positive(n_samples, "n_samples")
    return v if math.isfinite(v) else math.inf


@register(
    "cluster_separation",
    "max",
    "silhouette-like separation of descriptor clusters in [-1, 1], computed upstream",
)
def cluster_separation(score: float) -> float:
    """Pass-through of a separation score (e.g. sklearn silhouette); NaN -> -1.0 (worst)."""
    v = float(score)
    return v if math.isfinite(v) else -1.0
