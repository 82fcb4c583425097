"""Physics-based rewards: pure functions, each declared once in :data:`REGISTRY`.

A reward maps the *result* of one analysis (atom positions, walls, a mask, a fitted model)
to one float whose physical meaning is stated in :attr:`Reward.meaning`. Rewards take explicit
arrays and numbers only (no frames, sockets or config), validate their input with messages
that name the argument, and return a documented finite-or-infinite *worst* value on empty
input instead of NaN, so an analysis that found nothing can never look good.

One declaration per reward: the :class:`Reward` records at the bottom of this module (name,
direction, one line of meaning, unit scale for the knee, function) are the registry; workflows
name the rewards they optimise, and :func:`to_minimisation` is the one rule that turns a value
into an objective. The arguments a reward may ask for are listed in :data:`CONTEXT_ARGUMENTS`.
Users add rewards by dotted path (``"mypkg.rewards:my_reward"``) in the TOML config or with
:func:`register`; see :func:`get_reward` and docs/REWARDS.md.
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
    "CONTEXT_ARGUMENTS",
    "DIRECTIONS",
    "REGISTRY",
    "Reward",
    "RewardLookupError",
    "evaluate",
    "expected_sites",
    "get_reward",
    "objective_vector",
    "register",
    "to_minimisation",
] + [
    "cluster_separation", "count_quality", "domain_interior", "gmm_bic",
    "implausible_neighbours", "latent_aic", "latent_bgmm", "latent_bic", "latent_icl",
    "latent_loss", "latent_reconstruction", "latent_separability", "latent_variance",
    "normalised_perimeter", "order_contrast", "region_compactness", "wall_curvature",
    "wall_length_per_segment", "wall_span", "wall_straightness",
]

DIRECTIONS = ("min", "max")
VARIANCE_FLOOR = 1e-12  # keeps log10 finite for an exactly collapsed latent (latent_variance)

CONTEXT_ARGUMENTS: dict[str, str] = {
    "image": "(H, W) float32 frame, percentile-normalised to ~[0, 1]",
    "shape": "(H, W) of the frame, px",
    "lattice_px": "characteristic lattice spacing |a|, px: found in the frame (else the hint)",
    "cell_area_px": "area of the frame's unit cell |a x b|, px^2",
    "sites_per_cell": "visible atomic columns per unit cell (the config's ``motif``)",
    "xy": "(N, 2) float64 atom positions x, y in px: the evaluation's own atoms, else upstream",
    "n_found": "number of atoms in ``xy``",
    "labels": "(N,) int labels of the evaluation's labels output (-1 = not labelled), or None",
    "segments": "(S, 4) float64 wall segments [x0, y0, x1, y1], px, of the segments output",
    "walls": "list of (M_i, 2) ordered wall point chains, px, of the polylines output",
    "mask": "(H, W) bool of the evaluation's per-pixel mask output, or None",
}
"""What a reward function may ask for by argument name, besides every output key of the
evaluation (e.g. ``bic_per_site``) and every upstream output (e.g. ``atoms``). Missing
arguments without a default are an error naming them."""


@dataclass(frozen=True)
class Reward:
    """A named objective: one declaration of everything the engine needs to optimise it.

    Parameters
    ----------
    name : str
        Registry name, used in workflow declarations, configs, metrics and results.
    direction : {"min", "max"}
        Whether smaller or larger values are better.
    meaning : str
        One line of physical meaning, with units.
    func : callable
        The function; called with keyword arguments it names (see :data:`CONTEXT_ARGUMENTS`).
    scale : float, optional
        A fixed physical unit for the knee's normalisation (see ``optimize.knee``), e.g. 0.05
        for "5 % of the atoms"; 0 (default) = min-max over the front.
    """

    name: str
    direction: str
    meaning: str
    func: Callable[..., float]
    scale: float = 0.0

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"reward {self.name!r}: direction must be 'min' or 'max', got {self.direction!r}"
            )
        if not callable(self.func):
            raise TypeError(f"reward {self.name!r}: func must be callable, got {self.func!r}")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"reward {self.name!r}: scale must be >= 0, got {self.scale!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        return float(self.func(*args, **kwargs))

    def objective(self, value: float) -> float:
        """This reward's value as an objective to minimise; see :func:`to_minimisation`."""
        return to_minimisation(self, value)


class RewardLookupError(LookupError):
    """A reward name or dotted path that cannot be resolved; the message names it."""


REGISTRY: dict[str, Reward] = {}  # filled from BUILTIN at the bottom of this module


def register(name: str, direction: str, meaning: str, scale: float = 0.0
             ) -> Callable[[Callable], Callable]:
    """Decorator for user modules: add ``func`` to :data:`REGISTRY` under ``name``.

    Built-in rewards are declared in :data:`BUILTIN`, not with this decorator. The
    :class:`Reward` is also attached as ``func.reward`` so that :func:`get_reward` finds it
    when a user module is loaded by dotted path. Re-registering the same function (module
    reload) is allowed; taking a name already bound to another function is an error.
    """

    def deco(func: Callable) -> Callable:
        reward = Reward(name=name, direction=direction, meaning=meaning, func=func, scale=scale)
        _add(reward)
        func.reward = reward  # type: ignore[attr-defined]
        return func

    return deco


def _add(reward: Reward) -> None:
    old = REGISTRY.get(reward.name)
    if old is not None and _qualname(old.func) != _qualname(reward.func):
        raise ValueError(
            f"reward name {reward.name!r} is already registered to {_qualname(old.func)}; "
            "pick another name"
        )
    REGISTRY[reward.name] = reward


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
    """The one rule turning a reward value into an objective the optimizer minimises.

    ``value`` for "min" rewards, ``-value`` for "max" ones. NaN (a failed evaluation) and any
    infinity (rewards return a documented worst value on empty input; a "best" infinity is
    not a measurement either) map to ``+inf``, which the optimizer treats as a failed
    candidate: worst in every objective, never on the Pareto front, never fed to the
    surrogate model.
    """
    v = float(value)
    if reward.direction == "max":
        v = -v
    return v if math.isfinite(v) else math.inf


def objective_vector(rewards: Sequence[Reward], values: Mapping[str, float]) -> np.ndarray:
    """Objectives (to minimise) of ``values`` for ``rewards`` in order; missing -> +inf."""
    return np.array([r.objective(values.get(r.name, math.nan)) for r in rewards], dtype=float)


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


def _cell_area(lattice_px: float, cell_area_px: float | None) -> float:
    """The unit cell's area, px^2: ``cell_area_px`` when given, else ``lattice_px`` squared."""
    if cell_area_px is None:
        a = _positive(lattice_px, "lattice_px")
        return a * a
    return _positive(cell_area_px, "cell_area_px")


def expected_sites(shape: Sequence[int], lattice_px: float, sites_per_cell: float = 2,
                   cell_area_px: float | None = None) -> float:
    """Atomic columns a frame should show: area / cell area * visible columns per cell.

    Parameters
    ----------
    shape : (int, int)
        Frame (H, W) in px.
    lattice_px : float
        Lattice spacing a in px; the cell is a x a unless ``cell_area_px`` is given.
    sites_per_cell : float, optional
        Visible columns per unit cell (default 2: A and B-O columns of ABO3 [001]; the
        config's ``motif``).
    cell_area_px : float, optional
        Area of the unit cell |a x b|, px^2, for any cell (rectangular, oblique); default
        ``lattice_px**2``.

    Returns
    -------
    float
        Expected number of columns.

    Raises
    ------
    ValueError
        If ``shape`` is not (height, width) with positive sizes, or ``lattice_px``,
        ``sites_per_cell`` or ``cell_area_px`` is not a positive finite number.
    """
    h, w = _shape2(shape)
    area = _cell_area(lattice_px, cell_area_px)
    return h * w * _positive(sites_per_cell, "sites_per_cell") / area


def count_quality(
    n_found: int, shape: Sequence[int], lattice_px: float, sites_per_cell: float = 2,
    cell_area_px: float | None = None,
) -> float:
    """QC: relative error of the number of columns found against what the lattice implies.

    QC = |N_found - N_expected| / N_expected with N_expected = H*W*sites_per_cell / A_cell,
    A_cell = |a x b| (``cell_area_px``; a^2 when not given); ``sites_per_cell`` = 2 for ABO3
    [001] (A and B-O columns; O columns are dark in HAADF).

    Parameters
    ----------
    n_found : int
        Columns found (>= 0).
    shape : (int, int)
        Frame (H, W) in px.
    lattice_px : float
        Lattice spacing a in px.
    sites_per_cell : float, optional
        Visible columns per unit cell (default 2).
    cell_area_px : float, optional
        Unit-cell area, px^2 (default ``lattice_px**2``).

    Returns
    -------
    float
        QC >= 0 (0 = the expected count); no atoms found gives 1.0, not a special case.

    Raises
    ------
    ValueError
        If ``n_found`` is not a non-negative integer, or as :func:`expected_sites`.
    """
    n = float(n_found)
    if not (math.isfinite(n) and n >= 0 and n == int(n)):
        raise ValueError(f"n_found must be a non-negative integer, got {n_found!r}")
    expected = expected_sites(shape, lattice_px, sites_per_cell, cell_area_px)
    return abs(n - expected) / expected


def implausible_neighbours(
    xy: np.ndarray,
    shape: Sequence[int],
    lattice_px: float,
    sites_per_cell: float = 2,
    fraction: float = 0.8,
    k: int = 4,
    cell_area_px: float | None = None,
) -> float:
    """ER: fraction of interior atoms crowded closer to their k neighbours than the lattice allows.

    An atom is implausible when its k-NN distance sum is below ``fraction`` of the ideal one.
    Ideal column spacing with ``sites_per_cell`` columns per cell of area A:
    d = sqrt(A / sites_per_cell), so for ABO3 [001] (A at the corners of the a x a cell, B at
    the centre) d = a/sqrt(2) and the ideal 4-NN sum is 4a/sqrt(2) = 2*sqrt(2)*a. The limit
    is ``fraction`` * k * d. Why 0.8 and not 0.5: a doubly detected column (twin at ~0 px)
    sums 0 + 3d = 0.75 of ideal and a noise blob at an O site (a/2 from two A and two B) 2a =
    0.71, so both escape a 0.5 limit (which only catches clusters of three or more). Their
    genuine neighbours stay at 1.0 (twin) or 0.93 (blob), and the perfect lattice is at 1.0,
    so 0.8 flags exactly the spurious columns with ~20 % tolerance for distortion and
    position noise (Gaussian jitter of 0.14 d still flags nothing). Neighbours are searched
    among all atoms, but only atoms at least one lattice spacing from the frame border are
    judged (nearer ones may have true neighbours outside the frame).

    Parameters
    ----------
    xy : (N, 2) array_like of float
        Atom positions x, y in px.
    shape : (int, int)
        Frame (H, W) in px.
    lattice_px : float
        Lattice spacing a in px (also the border margin).
    sites_per_cell : float, optional
        Visible columns per unit cell (default 2).
    fraction : float, optional
        Share of the ideal k-NN sum below which an atom is implausible (default 0.8).
    k : int, optional
        Neighbours summed (default 4).
    cell_area_px : float, optional
        Unit-cell area |a x b|, px^2 (default ``lattice_px**2``).

    Returns
    -------
    float
        ER in [0, 1]; 1.0 (worst: nothing to vouch for) for fewer than k+1 atoms or none in
        the interior.

    Raises
    ------
    ValueError
        If ``shape``, ``lattice_px``, ``fraction``, ``sites_per_cell``, ``cell_area_px`` or
        ``k`` is out of range (the message names it), or ``xy`` is not (N, 2) finite.
    """
    h, w = _shape2(shape)
    a = _positive(lattice_px, "lattice_px")
    area = _cell_area(a, cell_area_px)
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
    limit = f * k * math.sqrt(area / _positive(sites_per_cell, "sites_per_cell"))
    return float(np.mean(sums[interior] < limit))


# --------------------------------------------------------------------------------------------
# walls
# --------------------------------------------------------------------------------------------


def wall_curvature(walls: Sequence[np.ndarray], step: float = 5.0, smooth: int = 1) -> float:
    """R1: arc-length weighted mean curvature of the walls; domain walls bend little.

    Each wall is resampled every ``step`` and smoothed over ``smooth`` samples each side
    (see :func:`rewardscope.science.kernels.curvature_profile`); the defaults make a pixel
    staircase along a straight wall read < 0.01/px and an r = 40 px arc read 1/r within a few
    %. Walls shorter than two steps cannot show curvature and are skipped (otherwise splitting
    a wall into stubs would score 0).

    Parameters
    ----------
    walls : sequence of (M_i, 2) array_like of float
        Ordered wall points x, y in px, one array per wall.
    step : float, optional
        Arc-length sampling step, px (default 5).
    smooth : int, optional
        Moving-average half-width, samples (default 1).

    Returns
    -------
    float
        Mean curvature in 1/px; +inf (worst) when no wall is measurable.

    Raises
    ------
    ValueError
        If ``walls`` is one (M, 2) array instead of a list of them, or a wall is not (M, 2).
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


def wall_length_per_segment(segments: np.ndarray) -> float:
    """R2: mean length of the wall segments; long continuous walls rather than fragments.

    Parameters
    ----------
    segments : (S, 4) array_like of float
        Wall segments [x0, y0, x1, y1] in px.

    Returns
    -------
    float
        Total length / number of segments, px; 0.0 (worst) for no segment.

    Raises
    ------
    ValueError
        If ``segments`` is not (S, 4) finite.
    """
    lengths = kernels.segment_lengths(segments)
    return float(lengths.mean()) if lengths.size else 0.0


def wall_straightness(walls: Sequence[np.ndarray]) -> float:
    """Mean chord-to-arc ratio of the walls, weighted by arc length: curvature's twin.

    Length weighting keeps short, trivially straight fragments from dominating. The paper
    reports the same Pareto optimum as :func:`wall_curvature` with this form.

    Parameters
    ----------
    walls : sequence of (M_i, 2) array_like of float
        Ordered wall points x, y in px, one array per wall.

    Returns
    -------
    float
        Ratio in [0, 1] (1 = straight); 0.0 (worst) for no wall.

    Raises
    ------
    ValueError
        As :func:`wall_curvature`.
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
    fg = m != 0
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        return np.zeros(0), np.zeros(0)
    # the regions' bounding box only: labels keep their raster order, and the perimeter
    # kernel counts the array border as boundary, as the frame border
    fg = fg[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    labels, n = ndimage.label(fg, structure=_EIGHT)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    perims = kernels.label_perimeters(labels, n)[1:]
    keep = areas >= min_area
    return areas[keep], perims[keep]


def _evidence(n_significant: int | None) -> int | None:
    """``n_significant`` validated: None (unknown) or a non-negative integer."""
    if n_significant is None:
        return None
    try:
        n = int(n_significant)
        ok = n == n_significant and n >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"n_significant must be None or a non-negative integer, got {n_significant!r}"
        )
    return n


def _judged_empty(empty: bool, n_significant: int | None) -> bool | None:
    """How the significance evidence judges a mask, before its shape is looked at.

    True: the mask is empty and nothing in the frame is significant, the right answer (best
    value). False: the mask is empty although something is significant, or marks regions
    although nothing is (worst value). None: no verdict (the shape decides; also whenever
    ``n_significant`` is None, the evidence-free behaviour).
    """
    n = _evidence(n_significant)
    if n is None:
        return False if empty else None
    if n == 0:
        return empty
    return False if empty else None


def region_compactness(mask: np.ndarray, min_area: int = 1,
                       n_significant: int | None = None) -> float:
    """Area-weighted isoperimetric quotient of the regions: compact, smooth amorphous regions.

    Mean over 8-connected components of min(1, 4*pi*area/perimeter^2): the paper's
    area/perimeter^2 times 4*pi, so a disk scores ~1 and ragged regions less; the Crofton
    perimeter (:func:`rewardscope.science.kernels.mask_perimeter`) keeps the disk at ~1 on the
    pixel grid, and the clip at 1 absorbs few-pixel blobs whose perimeter is unresolved.
    Area weighting lets the large regions, which carry the physics, dominate speckle.

    Parameters
    ----------
    mask : (H, W) array_like of bool
        The regions.
    min_area : int, optional
        Components smaller than this many px are ignored (default 1).
    n_significant : int, optional
        Sites of the frame whose disorder departs significantly from the crystal's own null
        (the amorphous workflow's FDR-controlled count). 0 = nothing to find: an empty mask
        is then the right answer and scores 1.0 (best), any region 0.0 (worst). None
        (default): no evidence given.

    Returns
    -------
    float
        Quotient in [0, 1]; 0.0 (worst) when nothing is left, unless ``n_significant`` is 0
        (see there).

    Raises
    ------
    ValueError
        If ``mask`` is not 2-D, ``min_area`` not a positive integer or ``n_significant``
        not None or a non-negative integer.
    """
    areas, perims = _components(mask, min_area)
    verdict = _judged_empty(areas.size == 0, n_significant)
    if verdict is not None:
        return 1.0 if verdict else 0.0
    q = np.minimum(1.0, 4.0 * np.pi * areas / np.maximum(perims, 1e-12) ** 2)
    return float(np.sum(areas * q) / np.sum(areas))


def normalised_perimeter(mask: np.ndarray, min_area: int = 1,
                         n_significant: int | None = None) -> float:
    """Total boundary of the regions over that of one disk of equal area: few, smooth regions.

    P_total / (2*sqrt(pi*A_total)). Chosen over P / frame perimeter, which an empty mask would
    win (P = 0), and over per-region P/sqrt(A), which ignores fragmentation: n equal disks
    score sqrt(n), so the reward asks for few, smooth regions independently of frame size.

    Parameters
    ----------
    mask : (H, W) array_like of bool
        The regions.
    min_area : int, optional
        Components smaller than this many px are ignored (default 1).
    n_significant : int, optional
        As for :func:`region_compactness`: 0 = nothing to find, so an empty mask scores 1.0
        (best: no boundary to add to the ideal single disk's) and any region +inf (worst).
        None (default): no evidence given.

    Returns
    -------
    float
        Dimensionless ratio, >= ~1, = 1 for a single disk; +inf (worst) when nothing is left,
        unless ``n_significant`` is 0 (see there).

    Raises
    ------
    ValueError
        If ``mask`` is not 2-D, ``min_area`` not a positive integer or ``n_significant``
        not None or a non-negative integer.
    """
    areas, perims = _components(mask, min_area)
    verdict = _judged_empty(areas.size == 0, n_significant)
    if verdict is not None:
        return 1.0 if verdict else math.inf
    return float(np.sum(perims) / (2.0 * math.sqrt(math.pi * np.sum(areas))))


# --------------------------------------------------------------------------------------------
# clustering
# --------------------------------------------------------------------------------------------


def gmm_bic(bic: float, n_samples: int | None = None) -> float:
    """A fitted GMM's BIC, per descriptor so frames with different atom counts compare.

    Parameters
    ----------
    bic : float
        BIC of the mixture.
    n_samples : int, optional
        Rows it was fitted on; None = ``bic`` is already per row.

    Returns
    -------
    float
        BIC (per row); +inf (worst) for NaN/inf (a failed fit).
    """
    v = float(bic)
    if n_samples is not None:
        v /= _positive(n_samples, "n_samples")
    return v if math.isfinite(v) else math.inf


def cluster_separation(score: float) -> float:
    """Pass-through of a cluster-separation score computed upstream (e.g. a silhouette).

    Parameters
    ----------
    score : float
        Separation in [-1, 1].

    Returns
    -------
    float
        ``score``; -1.0 (worst) for NaN.
    """
    v = float(score)
    return v if math.isfinite(v) else -1.0


# --------------------------------------------------------------------------------------------
# wall geometry in the frame (domains)
# --------------------------------------------------------------------------------------------


def frame_chords(segments: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Length of the frame's chord along each segment's infinite line: the longest wall possible.

    The frame covers [-0.5, W - 0.5] x [-0.5, H - 0.5] (pixel centres at integers);
    Liang-Barsky clipping.

    Parameters
    ----------
    segments : (S, 4) array_like of float
        Segments [x0, y0, x1, y1] in px.
    shape : (int, int)
        Frame (H, W) in px.

    Returns
    -------
    (S,) ndarray of float64
        Chord lengths in px; 0 for degenerate (zero-length) segments.
    """
    seg = np.asarray(segments, dtype=np.float64).reshape(-1, 4)
    h, w = shape
    p0, d = seg[:, :2], seg[:, 2:] - seg[:, :2]
    t0 = np.full(len(seg), -np.inf)
    t1 = np.full(len(seg), np.inf)
    for axis, hi in ((0, w - 0.5), (1, h - 0.5)):
        dd, pp = d[:, axis], p0[:, axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            ta, tb = (-0.5 - pp) / dd, (hi - pp) / dd
        moving = dd != 0
        t0 = np.where(moving, np.maximum(t0, np.minimum(ta, tb)), t0)
        t1 = np.where(moving, np.minimum(t1, np.maximum(ta, tb)), t1)
    span = np.where(np.isfinite(t1 - t0), np.maximum(t1 - t0, 0.0), 0.0)
    return span * np.hypot(d[:, 0], d[:, 1])


def wall_span(segments: np.ndarray, shape: tuple[int, int]) -> float:
    """R2 made independent of where a wall meets the frame: the fraction of the frame it spans.

    The paper's R2 (:func:`wall_length_per_segment`, total length per segment) rewards
    continuity, but also position: a diagonal wall near a frame corner is short however
    continuous it is, so a labelling that shifts a wall one site row toward the frame centre,
    or an artefact along the frame diagonal, scores better. Dividing each segment by the
    longest segment its line allows (:func:`frame_chords`) keeps the continuity (fragments
    still score low) and drops the geometry.

    Parameters
    ----------
    segments : (S, 4) array_like of float
        Wall segments [x0, y0, x1, y1] in px.
    shape : (int, int)
        Frame (H, W) in px.

    Returns
    -------
    float
        Mean over segments of length / chord, in [0, 1]; 0.0 (worst) for no segment.
    """
    seg = np.asarray(segments, dtype=np.float64).reshape(-1, 4)
    if len(seg) == 0:
        return 0.0
    chord = frame_chords(seg, shape)
    frac = kernels.segment_lengths(seg) / np.maximum(chord, 1e-9)
    return float(np.mean(np.clip(frac, 0.0, 1.0)))


def wall_site_mask(labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Sites on a wall: those with a differently labelled neighbour.

    Parameters
    ----------
    labels : (n,) ndarray of int
        Label of each site.
    pairs : (m, 2) ndarray of int
        Neighbour pairs (indices into ``labels``).

    Returns
    -------
    (n,) ndarray of bool
        True for wall sites.
    """
    mask = np.zeros(len(labels), dtype=bool)
    if len(pairs):
        mask[pairs[labels[pairs[:, 0]] != labels[pairs[:, 1]]].ravel()] = True
    return mask


def domain_interior(labels: np.ndarray, pairs: np.ndarray, enough: float = 0.5) -> float:
    """Every cluster must be a domain with an interior: min over clusters of its interior share.

    Parsimony with a physical reading: every variant the mixture claims must own domains with
    an interior. Curvature and wall length alone cannot see a cluster that is one or two site
    rows wide: it is bounded by two perfectly straight, frame-long walls, so a spurious extra
    component that picks out the columns along a true wall (or along the frame edge, where
    patches are mirror-padded) scores as well as the true labelling. Such a cluster, like a
    salt-and-pepper one, has (almost) no interior and scores ~0. Saturating at ``enough``
    (a domain five lattice spacings wide has f = 0.6 with 8-neighbour contacts) makes every
    real domain score 1, so this reward does not prefer wide domains over narrow ones and
    does not trade against the other rewards once the clusters are real. (The domain workflow
    absorbs clusters below its ABSORB_BELOW before scoring.)

    Parameters
    ----------
    labels : (n,) array_like of int
        Label of each labelled site.
    pairs : (m, 2) array_like of int
        Neighbour pairs of the sites (within 1.5 lattice spacings).
    enough : float, optional
        Interior fraction that counts as a full domain (default 0.5).

    Returns
    -------
    float
        min over clusters c of min(1, f_c / ``enough``), f_c = fraction of c's sites with no
        differently labelled neighbour; in [0, 1], 0.0 for no sites.
    """
    lab = np.asarray(labels).ravel()
    if lab.size == 0:
        return 0.0
    code = np.unique(lab, return_inverse=True)[1]
    frac = interior_fractions(code, np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
    return float(min(1.0, np.min(frac) / enough))


def interior_fractions(labels: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Fraction of each label's sites with no differently labelled neighbour (its interior).

    Parameters
    ----------
    labels : (n,) ndarray of int
        Label of each site, >= 0.
    near : (m, 2) ndarray of int
        Neighbour pairs (indices into ``labels``).

    Returns
    -------
    (max label + 1,) ndarray of float64
        Interior fraction per label; NaN for absent labels.
    """
    k = int(labels.max()) + 1 if labels.size else 0
    wall = wall_site_mask(labels, near)
    total = np.bincount(labels, minlength=k).astype(np.float64)
    bulk = np.bincount(labels, weights=~wall, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return bulk / total


# --------------------------------------------------------------------------------------------
# disorder (amorphous regions)
# --------------------------------------------------------------------------------------------


def order_contrast(score: np.ndarray, labels: np.ndarray,
                   n_significant: int | None = None) -> float:
    """Share of the site disorder score's variance that the amorphous mask explains.

    The shape rewards are blind to *what* a mask covers; this says whether it covers the
    disordered sites. Otsu's between-class variance over the total:
    eta = w0 * w1 * (mu1 - mu0)^2 / var.

    Parameters
    ----------
    score : (N,) array_like of float
        Disorder score of each site.
    labels : (N,) array_like of int
        Nonzero = inside the mask.
    n_significant : int, optional
        As for :func:`region_compactness`: 0 = no site departs significantly from the
        crystal, so the score's variance is noise that no mask should explain: no labelled
        site scores 1.0 (best), any labelled site 0.0 (worst). None (default): no evidence.

    Returns
    -------
    float
        eta in [0, 1]: 0 when the mask is empty, covers everything or does not follow the
        score (also for no sites or no score variance: worst); 1 when every masked site is
        more disordered than every other by a constant; with ``n_significant`` = 0, see there.

    Raises
    ------
    ValueError
        If ``score`` and ``labels`` differ in length, or ``n_significant`` is not None or a
        non-negative integer.
    """
    s = np.asarray(score, dtype=np.float64).ravel()
    lab = np.asarray(labels).ravel() != 0
    if s.size != lab.size:
        raise ValueError(f"score ({s.size}) and labels ({lab.size}) must have the same length")
    if _evidence(n_significant) == 0:
        return 0.0 if lab.any() else 1.0
    var = float(s.var()) if s.size else 0.0
    if s.size == 0 or not var > 0 or lab.all() or not lab.any():
        return 0.0
    w1 = lab.mean()
    diff = s[lab].mean() - s[~lab].mean()
    return float(w1 * (1.0 - w1) * diff * diff / var)


# --------------------------------------------------------------------------------------------
# latent representations (VAE)
# --------------------------------------------------------------------------------------------


def latent_bic(bic: float, n_samples: int | None = None) -> float:
    """BIC of the mixture on the VAE latent means: latent-space parsimony.

    Parameters
    ----------
    bic : float
        BIC of the mixture.
    n_samples : int, optional
        Rows it was fitted on; None = ``bic`` is already per row.

    Returns
    -------
    float
        BIC (per row); +inf (worst) for NaN/inf.
    """
    return gmm_bic(bic, n_samples)


def latent_variance(latent: np.ndarray) -> float:
    """log10 of the product of the latent-mean variances: very negative = a collapsed latent.

    BIC prefers a collapsed latent; this must be maximised alongside it (Slautin et al.,
    eq. 2, taken as log10 so the optimizer sees a well-scaled number).

    Parameters
    ----------
    latent : (N, d) array_like of float
        Latent means, one row per patch (rows with NaN/inf are dropped).

    Returns
    -------
    float
        sum_i log10 Var(z_i), Var floored at VARIANCE_FLOOR; -inf (worst) for fewer than 2
        rows or no columns: no spread is measurable.

    Raises
    ------
    ValueError
        If ``latent`` is not 2-D.
    """
    z = np.asarray(latent, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"latent must have shape (N, d), got {z.shape}")
    z = z[np.all(np.isfinite(z), axis=1)]
    if z.shape[0] < 2 or z.shape[1] == 0:
        return -math.inf
    return float(np.sum(np.log10(np.maximum(z.var(axis=0), VARIANCE_FLOOR))))


def latent_reconstruction(error: float) -> float:
    """How much of the patches the latent keeps: the VAE's reconstruction error.

    Parameters
    ----------
    error : float
        Mean squared error per pixel of [0, 1] patches.

    Returns
    -------
    float
        ``error``; +inf (worst) for NaN.
    """
    v = float(error)
    return v if not math.isnan(v) else math.inf


def _criterion(value: float) -> float:
    v = float(value)
    return v if math.isfinite(v) else math.inf


def latent_loss(loss_per_pixel: float) -> float:
    """The VAE's negative ELBO per pixel: Bernoulli reconstruction loss plus KL, per pixel.

    The KL is divided by the patch's pixels with the reconstruction term, so models on
    windows of different size compare (:meth:`rewardscope.science.vae.LatentModel.
    loss_per_pixel`).

    Parameters
    ----------
    loss_per_pixel : float
        nats per pixel.

    Returns
    -------
    float
        ``loss_per_pixel``; +inf (worst) for NaN/inf (a diverged model).
    """
    return _criterion(loss_per_pixel)


def latent_aic(aic: float) -> float:
    """AIC per row of the best Gaussian mixture (2..10 components) on the density-filtered
    latent (:func:`rewardscope.science.latentstats.gmm_criteria`).

    Parameters
    ----------
    aic : float
        AIC per row.

    Returns
    -------
    float
        ``aic``; +inf (worst) for NaN/inf (too few rows, failed fit).
    """
    return _criterion(aic)


def latent_icl(icl: float) -> float:
    """ICL per row (BIC + 2 x entropy of the responsibilities) of the best mixture on the
    latent: parsimony that also penalises overlapping clusters.

    Parameters
    ----------
    icl : float
        ICL per row.

    Returns
    -------
    float
        ``icl``; +inf (worst) for NaN/inf.
    """
    return _criterion(icl)


def latent_bgmm(score: float) -> float:
    """Bayesian-GMM score of the latent: -mean log-likelihood + 2 x mean responsibility
    entropy (:func:`rewardscope.science.latentstats.bgmm_score`).

    Parameters
    ----------
    score : float
        nats per row.

    Returns
    -------
    float
        ``score``; +inf (worst) for NaN/inf.
    """
    return _criterion(score)


def latent_separability(gain: float) -> float:
    """How clearly the latent splits into classes along one dimension: the largest 1-D ICL
    gain over the latent's columns, ICL(1 component) - best ICL(1..4 components), per row
    (:func:`rewardscope.science.latentstats.class_separability`).

    Each column is standardised and scored on an equal-size, density-filtered subset, so the
    value does not depend on the latent's scale, the number of patches or the window: models
    on different windows compare. It tracks what the latent classes
    (:func:`rewardscope.science.latentstats.kde_classes`, taken along that column) can
    separate, which the reconstruction loss and the whole-latent ICL do not.

    Parameters
    ----------
    gain : float
        nats per row (>= 0; 0 = no column shows two or more classes).

    Returns
    -------
    float
        ``gain``; -inf (worst) for NaN/inf (no column could be fitted).
    """
    v = float(gain)
    return v if math.isfinite(v) else -math.inf


# --------------------------------------------------------------------------------------------
# the registry: every built-in reward, declared once
# --------------------------------------------------------------------------------------------

BUILTIN: tuple[Reward, ...] = (
    Reward(
        "count_quality", "min",
        "relative error of the number of atomic columns found vs. the number the lattice "
        "implies",
        count_quality, scale=0.05,
    ),
    Reward(
        "implausible_neighbours", "min",
        "fraction of atomic columns crowded closer to their 4 neighbours than the lattice "
        "allows",
        implausible_neighbours, scale=0.05,
    ),
    Reward(
        "wall_curvature", "min",
        "mean curvature (1/px) along detected domain walls; walls bend little to save wall "
        "energy",
        wall_curvature, scale=0.01,
    ),
    Reward(
        "wall_length_per_segment", "max",
        "mean wall segment length (px); long continuous walls rather than fragments",
        wall_length_per_segment,
    ),
    Reward(
        "wall_straightness", "max",
        "arc-length weighted mean chord/arc ratio of walls (1 = straight); curvature's twin",
        wall_straightness,
    ),
    Reward(
        "wall_span", "max",
        "mean fraction of the frame each wall segment spans along its own line (1 = crosses "
        "it)",
        wall_span,
    ),
    Reward(
        "domain_interior", "max",
        "every cluster is a domain with an interior: min over clusters of interior fraction /"
        " 0.5",
        domain_interior,
    ),
    Reward(
        "region_compactness", "max",
        "area-weighted isoperimetric quotient 4*pi*A/P^2 of amorphous regions (1 = disk)",
        region_compactness, scale=0.1,
    ),
    Reward(
        "normalised_perimeter", "min",
        "total boundary of amorphous regions over that of one disk of equal area (1 = one "
        "disk)",
        normalised_perimeter, scale=0.1,
    ),
    Reward(
        "order_contrast", "max",
        "share of the site disorder-score variance explained by the amorphous mask (0..1)",
        order_contrast, scale=0.1,
    ),
    Reward(
        "gmm_bic", "min",
        "Bayesian information criterion of the descriptor mixture model, per descriptor",
        gmm_bic,
    ),
    Reward(
        "cluster_separation", "max",
        "silhouette-like separation of descriptor clusters in [-1, 1], computed upstream",
        cluster_separation,
    ),
    Reward(
        "latent_bic", "min",
        "BIC per patch of a Gaussian mixture on the VAE latent means (parsimony)",
        latent_bic,
    ),
    Reward(
        "latent_variance", "max",
        "log10 product of latent-mean variances; very negative = collapsed latent",
        latent_variance,
    ),
    Reward(
        "latent_reconstruction", "min",
        "VAE reconstruction error, mean squared per pixel of [0, 1] patches",
        latent_reconstruction,
    ),
    Reward(
        "latent_loss", "min",
        "VAE negative ELBO per pixel (reconstruction + KL, both per pixel: windows compare)",
        latent_loss, scale=0.05,
    ),
    Reward(
        "latent_aic", "min",
        "AIC per row of the best GMM (2..10 components) on the density-filtered latent",
        latent_aic,
    ),
    Reward(
        "latent_icl", "min",
        "ICL per row (BIC + 2 x responsibility entropy) of the best GMM on the latent",
        latent_icl,
    ),
    Reward(
        "latent_bgmm", "min",
        "Bayesian-GMM score of the latent: -log-likelihood + 2 x entropy per row (overlap)",
        latent_bgmm,
    ),
    Reward(
        "latent_separability", "max",
        "largest 1-D ICL gain (1 vs 1..4 components) over the latent's columns, per row: "
        "how clearly the latent splits into classes",
        latent_separability, scale=math.log(2.0),
    ),
)
"""Scales: count_quality and implausible_neighbours are both fractions of the atoms, one common
unit for the knee (5 %); the three region rewards use 0.1, a tenth of their useful range (so a
hair's edge on two of them cannot outweigh a region missed on the third); wall_curvature's is
0.01 /px (a wall bent to a 100 px radius), so the ~1e-4 /px pixel staircase of a straight wall,
or the 0 of "one domain, no walls", cannot decide a knee on its own (and that 0 is only given
where the frame's homogeneity test did not reject one domain: elsewhere a no-wall candidate
fails, see domains.REJECTED_NULL_REWARDS); the others are normalised over the front. The slow
loop's knee (:func:`rewardscope.live.trainer.select_model`) weighs latent_separability in bits
per patch (ln 2 nats: the information of a balanced two-class label) against latent_loss in
units of 0.05 nats/pixel, about five times the loss differences between windows 4 and 8 of
the same frame (<= 0.011 nats/pixel, either way, on PFM-like frames), so the loss decides only
between latents that separate about equally well, or vetoes a model that explains its patches
far worse (docs/REWARDS.md)."""

for _reward in BUILTIN:
    _add(_reward)
del _reward
