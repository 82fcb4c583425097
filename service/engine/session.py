"""The session engine: per session, per workflow, a warm-started multi-objective search.

For each frame the configured workflows run in the order their declared needs impose (a
workflow that reads atoms runs after one that produces them). Each workflow has its own
:class:`~rewardscope.optimize.mobo.MultiObjectiveOptimizer`, kept across the session's frames:
the first frame is cold (``cold_budget`` evaluations, the workflow's default parameters first),
later frames re-evaluate the previous Pareto set and spend ``budget`` more (warm); when the
previous choice, re-evaluated first, moved no more than the search's typical calm-frame move,
the rest of the set keeps its values instead of being re-evaluated (:data:`REUSE_WITHIN_NOISE`).
The knee of each frame's front is the chosen analysis; the whole front is published with it.

The engine never names a workflow: what it merges into the result, which labels win and where
the time is booked all come from the workflows' declarations (``produces``, ``stage``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

from rewardscope.config import ConfigError, ServiceConfig
from rewardscope.engine import regions as regions_mod
from rewardscope.engine.analysis import Analysis
from rewardscope.optimize.mobo import MultiObjectiveOptimizer, run_frame
from rewardscope.plaindata import plain
from rewardscope.protocol import Frame
from rewardscope.science import atomfind
from rewardscope.science import lattice as lattice_mod
from rewardscope.science import rewards as rewards_mod
from rewardscope.science.threadlimits import pin_blas
from rewardscope.workflows import (
    ALIASES,
    ATOMS,
    FIELD,
    LABELS,
    MASK,
    PER_ATOM,
    PER_REGION,
    PER_WALL,
    POLYLINES,
    SCALAR,
    SEGMENTS,
    WORKFLOWS,
    Evaluation,
    FrameContext,
    Workflow,
    WorkflowLookupError,
    make_workflow,
    workflow_class,
)

log = logging.getLogger("rewardscope.engine")

FALLBACK_SPACING_PX = 12.0
"""``ctx.lattice_px`` on a frame with no lattice, no hint and none found earlier in the
session: it only sizes the search spaces of an analysis that claims no column."""
CONTRAST_DECISIVE_SKEW = 0.2
"""|skew| of the Bragg-filtered frame from which ``contrast = "auto"`` settles the session's
polarity (smaller: decided for this frame only, asked again on the next)."""

CONCURRENT_WAVES = True
"""Workflows that read nothing the others in their wave produce (:func:`chain_waves`; e.g.
``domains`` and ``amorphous``, which both read only the atoms) run side by side in threads;
their outputs are merged in chain order, so the result is the one-after-another result."""

REUSE_WITHIN_NOISE = True
"""Warm frames skip re-evaluating the previous front when its inputs are unchanged within
noise: the previous choice is re-evaluated first, and if its rewards moved no more than the
search's typical calm-frame move, the rest of the front keeps its values (they still count
toward the budget). See :func:`rewardscope.optimize.mobo.run_frame`."""

SCALE_STEP = 1.25
"""Lattice spacings within this factor of each other share a search (one magnification)."""


def scale_key(lattice_px: float) -> int:
    """The magnification bucket of a lattice spacing (px): log-spaced by :data:`SCALE_STEP`."""
    v = float(lattice_px)
    return int(round(math.log(v) / math.log(SCALE_STEP))) if v > 0 and math.isfinite(v) else 0


# ------------------------------------------------------------------------------ the chain


def _names(spec: str | Sequence[str]) -> list[str]:
    """Configured workflow names, aliases expanded, in the order given."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (str(i).strip() for i in items):
        for name in ALIASES.get(item, (item,)):
            if name and name not in out:
                out.append(name)
    if not out:
        raise WorkflowLookupError("no workflow configured")
    return out


@lru_cache(maxsize=64)
def _resolve(spec: tuple[str, ...]) -> tuple[str, ...]:
    names = _names(list(spec))
    classes = {n: workflow_class(n) for n in names}

    def produced(kind: str) -> bool:
        return any(o.kind == kind for c in classes.values() for o in c.produces)

    # Add a registered producer for every need left open (and for the producers' own needs).
    open_needs = [(n, kind) for n in names for kind in classes[n].needs]
    while open_needs:
        n, kind = open_needs.pop(0)
        if produced(kind):
            continue
        for reg in WORKFLOWS:
            cls = workflow_class(reg)
            if reg not in classes and any(o.kind == kind for o in cls.produces):
                names.insert(0, reg)
                classes[reg] = cls
                open_needs += [(reg, k) for k in cls.needs]
                break
        else:
            raise WorkflowLookupError(f"workflow {n!r} needs {kind!r} and no registered "
                                      "workflow produces it")
    # Order: stable topological sort, a producer before every workflow that needs its kind.
    ordered: list[str] = []
    pending = list(names)
    while pending:
        for n in pending:
            others = [m for m in pending if m != n]
            if not any(o.kind in classes[n].needs for m in others for o in classes[m].produces):
                ordered.append(n)
                pending.remove(n)
                break
        else:
            raise WorkflowLookupError(f"workflows {pending} need each other's outputs")
    seen: dict[str, str] = {}
    for n in ordered:
        wf_name = classes[n].name
        if wf_name in seen:
            raise WorkflowLookupError(f"workflows {seen[wf_name]!r} and {n!r} share the name "
                                      f"{wf_name!r}")
        seen[wf_name] = n
    return tuple(ordered)


def resolve_chain(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The workflows a configured ``workflow`` value runs, in execution order.

    ``spec`` is a registry name, an alias (``"all"``), a dotted path ``"pkg.mod:Class"``, or a
    list (or comma-separated string) of those. Producers of declared needs are added from the
    registry when missing. Raises :class:`~rewardscope.workflows.WorkflowLookupError`.
    """
    return _resolve(tuple(_names(spec)))


def chain_waves(workflows: Sequence[Any]) -> list[int]:
    """Sizes of the consecutive groups ("waves") of a chain that may run side by side.

    A workflow joins the current wave unless it needs (``needs``) an output kind that a
    member of the wave produces (``produces``); then it starts the next wave. Members see the
    same frame context as one after another would give them: a need is always met by an
    earlier wave. ``atoms, domains, amorphous`` -> ``[1, 2]``.

    Parameters
    ----------
    workflows : sequence of Workflow classes or instances
        The chain in execution order.

    Returns
    -------
    list of int
        Wave sizes, summing to ``len(workflows)``.
    """
    waves: list[int] = []
    made: set[str] = set()  # output kinds the current wave produces
    for wf in workflows:
        if not waves or made & set(wf.needs):
            waves.append(0)
            made = set()
        waves[-1] += 1
        made |= {o.kind for o in wf.produces}
    return waves


def check_settings(cfg: ServiceConfig) -> None:
    """Refuse, naming the key, a ``workflow`` or ``rewards`` setting that cannot run."""
    try:
        chain = resolve_chain(cfg.workflow)
    except WorkflowLookupError as exc:
        raise ConfigError(f"workflow: {exc}") from None
    names = {workflow_class(n).name for n in chain}
    for wf_name, reward_names in (cfg.rewards or {}).items():
        if wf_name not in names and wf_name not in WORKFLOWS:
            raise ConfigError(f"rewards: no workflow {wf_name!r} in the chain "
                              f"({', '.join(sorted(names))})")
        try:
            for r in reward_names or ():
                rewards_mod.get_reward(r)
        except rewards_mod.RewardLookupError as exc:
            raise ConfigError(f"rewards.{wf_name}: {exc}") from None


# ------------------------------------------------------------------------------ rewards


def reward_context(ctx: FrameContext, wf: Workflow, ev: Evaluation) -> dict[str, Any]:
    """Everything a reward function may ask for by argument name.

    The names of :data:`rewardscope.science.rewards.CONTEXT_ARGUMENTS`, found by output kind,
    plus every upstream output and every output key of ``ev`` by its own key.
    """
    out = ev.output
    by_kind: dict[str, Any] = {}
    for o in wf.produces:
        if o.key in out:
            by_kind.setdefault(o.kind, out[o.key])
    atoms = by_kind.get(ATOMS, ctx.atoms)
    xy = np.zeros((0, 2)) if atoms is None else np.asarray(atoms, dtype=np.float64).reshape(-1, 2)
    context = {
        **ctx.upstream, **out,
        "image": ctx.image, "shape": ctx.shape, "lattice_px": ctx.lattice_px,
        "cell_area_px": ctx.cell_area_px, "sites_per_cell": ctx.columns_per_cell,
        "xy": xy, "n_found": len(xy), "labels": by_kind.get(LABELS),
        "segments": np.asarray(by_kind.get(SEGMENTS, []), dtype=np.float64).reshape(-1, 4),
        "walls": by_kind.get(POLYLINES, []), "mask": by_kind.get(MASK),
    }
    return context


class WorkflowSearch:
    """One workflow's optimizer state within a session.

    ``objectives`` are the rewards optimised: the workflow's declared ones, or those the config
    names for it. A reward the workflow already computed is read from its evaluation, any
    other is evaluated on the evaluation's outputs by argument name (see
    :func:`reward_context`).
    """

    def __init__(self, workflow: Workflow, seed: int,
                 on_evaluation: Callable[[str], None] | None = None,
                 reward_names: Sequence[str] | None = None) -> None:
        self.workflow = workflow
        self.seed = seed
        self.on_evaluation = on_evaluation
        names = list(reward_names or workflow.rewards)
        if not names:
            raise ConfigError(f"workflow {workflow.name!r} declares no rewards to optimise")
        self.objectives = [rewards_mod.get_reward(n) for n in names]
        self._optimizer: MultiObjectiveOptimizer | None = None  # made when first needed
        self._optimizer_lock = threading.Lock()
        self.frames = 0
        self.lattice_px = float(getattr(workflow, "lattice_px", 0.0) or 0.0)
        self.front_: list[Evaluation] = []  # the last frame's Pareto-optimal evaluations
        self.chosen_: tuple | None = None  # the last frame's chosen parameters (values)
        self._rewards_of: dict[tuple, dict] = {}  # the last frame's rewards per candidate

    @property
    def optimizer(self) -> MultiObjectiveOptimizer:
        """The search's optimizer, made on first use: in the wave member's own thread, and
        never for a search a regime replaced (~15-30 ms each, on a cold frame's serial path)."""
        if self._optimizer is None:
            with self._optimizer_lock:
                if self._optimizer is None:
                    self._optimizer = MultiObjectiveOptimizer(
                        list(self.workflow.space), len(self.objectives), seed=self.seed,
                        n_initial=5)
        return self._optimizer

    @optimizer.setter
    def optimizer(self, value: MultiObjectiveOptimizer) -> None:
        self._optimizer = value

    def _knee_scale(self) -> np.ndarray | None:
        scale = np.array([r.scale for r in self.objectives], dtype=float)
        return scale if np.any(scale > 0) else None

    def _vector(self, ctx: FrameContext, ev: Evaluation) -> np.ndarray:
        context = None
        for r in self.objectives:
            if r.name not in ev.rewards:
                context = context or reward_context(ctx, self.workflow, ev)
                ev.rewards[r.name] = float(rewards_mod.evaluate(r, context))
        return rewards_mod.objective_vector(self.objectives, ev.rewards)

    def search(self, ctx: FrameContext, budget: int, deadline_s: float, knee: str,
               workers: int = 1, patience: int = 0) -> tuple[Evaluation, dict, list[dict], Any]:
        wf = self.workflow
        names = wf.param_names()
        evaluated: dict[tuple, Evaluation] = {}

        def objective(x: list) -> np.ndarray:
            params = {n: plain(v) for n, v in zip(names, x, strict=True)}
            ev = wf.evaluate(ctx, params)
            evaluated[tuple(params[n] for n in names)] = ev
            if self.on_evaluation is not None:
                self.on_evaluation(wf.name)
            return self._vector(ctx, ev)

        wf.prepare(ctx)
        if self.frames == 0:
            self.optimizer.enqueue([[p[n] for n in names] for p in wf.initial_points(ctx)])
        fs = run_frame(objective, self.optimizer, budget=budget, deadline_s=deadline_s,
                       workers=workers if wf.thread_safe else 1, reuse=REUSE_WITHIN_NOISE,
                       anchor=self.chosen_, patience=patience, knee=knee,
                       knee_scale=self._knee_scale())
        self.frames += 1
        # rewards of this frame's candidates: evaluated, or kept from the last frame (reused)
        reused = {k: self._rewards_of[k] for k in (tuple(plain(v) for v in x)
                                                   for x in fs.reused_X)
                  if k in self._rewards_of}
        self._rewards_of = {**reused, **{k: ev.rewards for k, ev in evaluated.items()}}
        pareto = []
        self.front_ = []
        for x in fs.pareto_X:
            key = tuple(plain(v) for v in x)
            ev = evaluated.get(key)
            if ev is not None:
                pareto.append({"workflow": wf.name, "params": dict(zip(names, key, strict=True)),
                               "rewards": ev.rewards})
                self.front_.append(ev)
            elif key in reused:  # its outputs belong to the last frame: rewards only
                pareto.append({"workflow": wf.name, "params": dict(zip(names, key, strict=True)),
                               "rewards": reused[key]})
        if fs.knee_x is None:
            # No candidate scored finitely (e.g. no amorphous region anywhere: every mask is
            # empty): that is an answer, not a failure. Report the first candidate's output.
            if not evaluated:
                raise RuntimeError(f"workflow '{wf.name}' evaluated nothing in its deadline")
            key, chosen = next(iter(evaluated.items()))
            return chosen, dict(zip(names, key, strict=True)), [], fs
        knee_x = self.optimizer.knee(knee, self._knee_scale())[0]
        key = tuple(plain(v) for v in knee_x)
        chosen = evaluated.get(key)
        if chosen is None:  # a reused candidate (or a safety net): its outputs on this frame
            chosen = wf.evaluate(ctx, dict(zip(names, key, strict=True)))
            self._vector(ctx, chosen)
            if self.on_evaluation is not None:
                self.on_evaluation(wf.name)
            fs = dataclasses.replace(fs, n_evaluations=fs.n_evaluations + 1)
            self.front_.append(chosen)
            self._rewards_of[key] = chosen.rewards
            params = dict(zip(names, key, strict=True))
            for entry in pareto:  # the front lists what this frame measured for it
                if entry["params"] == params:
                    entry["rewards"] = chosen.rewards
        self.chosen_ = key
        return chosen, dict(zip(names, key, strict=True)), pareto, fs


# ------------------------------------------------------------------------------ merging


def label_instability(chosen: Any, others: Sequence[Any]) -> np.ndarray | None:
    """Per atom, the share of ``others`` (label arrays of the other Pareto-optimal candidates,
    row-aligned with ``chosen``) that label it differently from ``chosen``, after each
    other's label ids are matched to the chosen ones by overlap (Hungarian assignment on the
    contingency table: label ids are arbitrary). NaN where ``chosen`` labels nothing (-1);
    None when there is no other candidate to compare with."""
    from scipy.optimize import linear_sum_assignment

    ref = np.asarray(chosen).astype(np.int64).ravel()
    comps = [np.asarray(o).astype(np.int64).ravel() for o in others
             if o is not None and np.shape(o) == ref.shape]
    if not comps or not len(ref):
        return None
    ok = ref >= 0
    differ = np.zeros(len(ref))
    for lab in comps:
        both = ok & (lab >= 0)
        mapped = np.full(len(ref), -2)
        if both.any():
            a, b = ref[both], lab[both]
            na, nb = int(a.max()) + 1, int(b.max()) + 1
            if na * nb > 1 << 20:  # ids far from 0..k: compact them first
                a_ids, a = np.unique(a, return_inverse=True)
                b_ids, b = np.unique(b, return_inverse=True)
                na, nb = len(a_ids), len(b_ids)
            else:
                a_ids, b_ids = np.arange(na), np.arange(nb)
            table = np.bincount(b * na + a, minlength=na * nb).reshape(nb, na)
            # ids absent from both arrays are empty rows/columns: matched to them, an id
            # overlaps nothing, as when it is left unmatched (both count as differing)
            rows, cols = linear_sum_assignment(-table)
            lut = np.full(nb, -2)  # other's id (by index) -> chosen's id, -2: none
            lut[rows] = a_ids[cols]
            mapped[both] = lut[b]
        differ += mapped != ref
    frac = differ / len(comps)
    frac[~ok] = np.nan
    return frac


def cleared_labels(atoms: np.ndarray, labels: np.ndarray,
                   masks: Sequence[np.ndarray]) -> np.ndarray:
    """``labels`` with -1 for every atom whose pixel (x, y rounded, clipped to the frame) is set
    in one of ``masks`` (the ``clears_labels`` masks: no lattice there to label).

    Parameters
    ----------
    atoms : (N, 2) ndarray of float
        Atom positions x, y, px.
    labels : (N,) ndarray of int
        Their labels, -1 = none.
    masks : sequence of (H, W) ndarray of bool
        Where labels mean nothing.

    Returns
    -------
    (N,) ndarray of int16
        A copy with the atoms inside any mask set to -1 (``labels`` itself when no mask
        applies).
    """
    hits = None
    for mask in masks:
        m = np.asarray(mask, dtype=bool)
        if m.ndim != 2 or not m.any() or len(atoms) != len(labels) or not len(atoms):
            continue
        col = np.clip(np.rint(atoms[:, 0]), 0, m.shape[1] - 1).astype(np.intp)
        row = np.clip(np.rint(atoms[:, 1]), 0, m.shape[0] - 1).astype(np.intp)
        inside = m[row, col]
        hits = inside if hits is None else hits | inside
    if hits is None or not hits.any():
        return labels
    out = np.array(labels, dtype=np.int16, copy=True)
    out[hits] = -1
    return out


class _Merged:
    """The frame's result, filled workflow by workflow from their declared outputs."""

    def __init__(self) -> None:
        self.atoms: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.labels_by = ""  # the workflow whose labels are the result's
        self.clearing: list[tuple[str, np.ndarray]] = []  # (workflow, mask) that clear labels
        self.walls: list = []
        self.arrays: dict[str, np.ndarray] = {}
        self.scalars: dict[str, Any] = {}

    def add(self, wf: Workflow, out: dict[str, Any]) -> None:
        for o in wf.produces:
            if o.key not in out:
                continue
            v = out[o.key]
            if o.kind == ATOMS:
                if self.atoms is None:
                    self.atoms = np.asarray(v, dtype=np.float32).reshape(-1, 2)
            elif o.kind == LABELS:
                lab = np.asarray(v, dtype=np.int16)
                if self.labels is None:
                    self.labels, self.labels_by = lab, wf.name
                if o.name:
                    self.arrays[o.name] = lab
            elif o.kind == SEGMENTS:
                self.walls += [list(map(float, w)) for w in v]
            elif o.kind == MASK:
                self.arrays[o.published] = np.asarray(v)
                if o.clears_labels:
                    self.clearing.append((wf.name, np.asarray(v)))
            elif o.kind in (PER_ATOM, FIELD, PER_WALL, PER_REGION):
                arr = np.asarray(v)
                self.arrays[o.published] = arr.astype(np.float32) \
                    if arr.dtype == np.float64 else arr
            elif o.kind == SCALAR:
                if v is not None and v != "":
                    self.scalars[o.published] = plain(v)
            # POLYLINES feed rewards only: the result carries walls as segments

    def analysis(self, **kw: Any) -> Analysis:
        atoms = self.atoms if self.atoms is not None else np.zeros((0, 2), np.float32)
        labels = self.labels if self.labels is not None else np.full(len(atoms), -1, np.int16)
        labels = cleared_labels(atoms, labels, [m for by, m in self.clearing
                                                if by != self.labels_by])
        return Analysis(atoms=atoms, labels=labels, walls=self.walls, arrays=self.arrays,
                        scalars=self.scalars, **kw)


# ------------------------------------------------------------------------------ the engine


def _beside(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` in a thread of its own, started now; its result (or exception) comes
    from the returned future."""
    fut: Future = Future()

    def run() -> None:
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the result
                fut.set_exception(exc)

    threading.Thread(target=run, name="beside", daemon=True).start()
    return fut


class SessionEngine:
    """Per-session engine: workflows x optimizers; see the module docstring."""

    def __init__(self, session: str, settings: ServiceConfig,
                 on_evaluation: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.on_evaluation = on_evaluation  # e.g. a progress bar tick, called per evaluation
        self.searches: dict[str, WorkflowSearch] = {}
        self.frames_processed = 0
        self._seed = settings.seed
        self._reward_names: dict[str, list[str]] = dict(settings.rewards or {})
        self.lattice: lattice_mod.Lattice | None = None  # the last cell found this session
        self._contrast: tuple[str, float] | None = None  # auto's settled (polarity, skew)
        self._hints_reported: set[float] = set()
        self.regions = regions_mod.RegionState()  # visited places, polarization states seen
        check_settings(settings)  # fail at session start, not mid-frame
        pin_blas()  # the analysis runs its own threads: BLAS pools only contend with them

    def _search_for(self, spec: str, lattice_px: float, regime: str = "") -> WorkflowSearch:
        """The session's search for ``spec`` at this magnification (and regime).

        Searches are kept per magnification (lattice spacings within a factor SCALE_STEP share
        one): a microscope that zooms within a session (the closed loop does, every few
        frames) must not warm-start a search whose pixel-sized parameters and whose front
        belong to another magnification; going back to an earlier magnification is warm again.
        A workflow that names a ``regime`` per frame (:meth:`Workflow.regime`) gets one search
        per regime too, ``spec@scale#regime``, over :meth:`Workflow.for_regime`'s space and
        with the seed of the base search ``spec@scale`` (whose workflow names the regime).
        """
        key = f"{spec}@{scale_key(lattice_px)}"
        if regime:
            base = self._search_for(spec, lattice_px)
            key = f"{key}#{regime}"
        if key not in self.searches:
            if regime:
                wf, seed = base.workflow.for_regime(regime), base.seed
            else:
                wf = make_workflow(spec, lattice_px)
                seed = self._seed + sum("#" not in k for k in self.searches)
            search = WorkflowSearch(
                wf, seed=seed, on_evaluation=self.on_evaluation,
                reward_names=self._reward_names.get(wf.name))
            search.lattice_px = float(lattice_px)
            self.searches[key] = search
        return self.searches[key]

    def _frames_at(self, spec: str, lattice_px: float) -> int:
        """Frames searched for ``spec`` at this magnification, over all its regimes."""
        base = self._search_for(spec, lattice_px)
        head = f"{spec}@{scale_key(lattice_px)}#"
        return base.frames + sum(s.frames for k, s in self.searches.items() if k.startswith(head))

    def process(self, frame: Frame, settings: ServiceConfig) -> Analysis:
        hint = frame.header.lattice_px or settings.lattice_px or None
        h = frame.header
        rotation = (h.meta or {}).get("scan_rotation_rad", 0.0)
        return self.analyse(frame.pixels, hint, settings, pixel_size_m=h.pixel_size_m,
                            origin_m=h.origin_m, scan_rotation_rad=rotation)

    def visited(self, place: dict | str | None = None, *,
                center_px: Sequence[float] | None = None,
                center_m: Sequence[float] | None = None) -> dict:
        """Record a released or scanned suggestion (the suggestion, its id, or its centre in
        px or instrument metres): later suggestions near it score less (see
        :mod:`rewardscope.engine.regions`). Raises KeyError for an unknown id, ValueError for
        a place that is not two finite numbers; nothing changes then."""
        return self.regions.visit(place, center_px=center_px, center_m=center_m)

    def _hint(self, lattice_px: float | None, settings: ServiceConfig,
              pixel_size_m: float | None) -> float | None:
        """The lattice hint in px: the one given, else the material's lattice constant over
        the frame's pixel size, else None."""
        if lattice_px is not None and np.isfinite(lattice_px) and lattice_px > 0:
            return float(lattice_px)
        c = settings.lattice_constant_m
        if c and pixel_size_m is not None and np.isfinite(pixel_size_m) and pixel_size_m > 0:
            return float(c) / float(pixel_size_m)
        return None

    def _contrast_of(self, image: np.ndarray, lat: lattice_mod.Lattice | None,
                     mode: str) -> dict[str, Any]:
        """Column polarity for this frame: the configured one, or ``auto``'s from the skew of
        the Bragg-filtered frame (settled for the session once decisive)."""
        if mode in ("bright", "dark"):
            return {"mode": mode, "polarity": mode}
        if self._contrast is not None:
            polarity, skew = self._contrast
            return {"mode": "auto", "polarity": polarity, "skew": round(skew, 3)}
        if lat is None:  # nothing periodic to judge: HAADF's convention, asked again later
            return {"mode": "auto", "polarity": "bright", "skew": None}
        skew = lattice_mod.contrast_skew(image, lat)
        polarity = "dark" if skew < 0 else "bright"
        if abs(skew) >= CONTRAST_DECISIVE_SKEW:
            self._contrast = (polarity, skew)
            log.info("session %s: %s columns (contrast auto, Bragg-filtered skew %.2f)",
                     self.session, polarity, skew)
        return {"mode": "auto", "polarity": polarity, "skew": round(skew, 3)}

    def _find_lattice(self, image: np.ndarray, hint: float | None
                      ) -> tuple[lattice_mod.Lattice | None, dict[str, Any] | None]:
        """The frame's cell (the session's last one helps keep the vectors' directions) and
        its result field, with the hint's verdict; a contradicted hint is logged once."""
        if min(image.shape) < lattice_mod.MIN_SIDE_PX:  # too small to hold any lattice
            return None, None
        lat = lattice_mod.find_lattice(image, previous=self.lattice)
        if lat is None:
            return None, None
        field = lat.as_dict()
        if hint is not None:
            agrees = lattice_mod.hint_agrees(lat, hint)
            field.update(hint_px=round(hint, 4), hint_agrees=agrees)
            if not agrees and round(hint, 2) not in self._hints_reported:
                self._hints_reported.add(round(hint, 2))
                la, lb = lat.lengths
                log.warning("session %s: lattice hint %.2f px disagrees with the frame's cell "
                            "(|a| %.2f px, |b| %.2f px, %.1f deg); using the frame's",
                            self.session, hint, la, lb, lat.angle_deg)
        return lat, field

    def analyse(self, pixels: np.ndarray, lattice_px: float | None, settings: ServiceConfig,
                *, pixel_size_m: float | None = None,
                origin_m: Sequence[float] | None = None,
                scan_rotation_rad: float = 0.0) -> Analysis:
        """Run the configured chain of workflows on one frame (also used offline).

        ``lattice_px`` is a hint (None or 0: none): the cell is found in the frame first
        (:func:`rewardscope.science.lattice.find_lattice`), and a hint more than 10 % off is
        reported in the result's ``lattice`` field and not used. ``pixel_size_m`` (m),
        ``origin_m`` (m, instrument position of pixel (0, 0)) and ``scan_rotation_rad`` (rad)
        put the suggested regions (``Analysis.regions``) in instrument coordinates.
        """
        t_start = time.perf_counter()
        chain = resolve_chain(settings.workflow)
        image = atomfind.normalize_frame(pixels)
        hint = self._hint(lattice_px, settings, pixel_size_m)
        lat, lattice_field = self._find_lattice(image, hint)
        contrast = self._contrast_of(image, lat, settings.contrast)
        if contrast["polarity"] == "dark":
            np.subtract(np.float32(1.0), image, out=image)  # == normalize_frame(invert=True)
        spacing = lat.spacing if lat is not None else (
            hint or (self.lattice.spacing if self.lattice is not None else FALLBACK_SPACING_PX))
        ctx = FrameContext(image=image, lattice_px=float(spacing), pixel_size_m=pixel_size_m,
                           lattice=lat, no_lattice=lat is None,
                           columns_per_cell=settings.columns_per_cell())
        lattice_s = time.perf_counter() - t_start
        lattice_px = ctx.lattice_px
        timings: dict[str, float] = {}
        params: dict[str, dict] = {}
        rewards: dict[str, float] = {}
        pareto: list[dict] = []
        hypervolume: dict[str, float] = {}
        merged = _Merged()
        unstable: list[np.ndarray] = []  # per atom: share of the front disagreeing, per labels
        n_eval, opt_s, warm = 0, 0.0, False
        refined: Future | None = None  # the cell refined on the atoms, beside later waves
        cold = any(self._frames_at(spec, lattice_px) == 0 for spec in chain)
        frame_deadline = settings.cold_deadline_s if cold else settings.deadline_s
        done = 0
        for wave in chain_waves([self._search_for(spec, lattice_px).workflow for spec in chain]):
            specs = chain[done:done + wave]
            # a wave's members run side by side, so each may take the wave's whole share
            left = frame_deadline - (time.perf_counter() - t_start)
            deadline = max(0.05, left * wave / (len(chain) - done))
            done += wave

            def run(spec: str, deadline: float = deadline) -> tuple:
                t0 = time.perf_counter()
                search = self._search_for(spec, lattice_px)
                # the frame's regime (e.g. whether it has the atoms for the atom routes) is
                # judged in the member's own thread: at 1024^2 it is ~50 ms of site finding
                regime = search.workflow.regime(ctx)
                if regime:  # this frame's kind has a search of its own
                    search = self._search_for(spec, lattice_px, regime)
                budget = settings.cold_budget if search.frames == 0 else settings.budget
                chosen, p, front, fs = search.search(ctx, budget, deadline, settings.knee,
                                                     settings.workers(), settings.patience)
                chosen.output.update(search.workflow.finalize(ctx, chosen))
                return search, chosen, p, front, fs, time.perf_counter() - t0

            # each member keeps its evaluation threads (measured: halving them changes each
            # search's batches, hence its answers, and is no faster)
            if len(specs) == 1 or not CONCURRENT_WAVES:
                results = [run(s) for s in specs]
            else:
                with ThreadPoolExecutor(len(specs), thread_name_prefix="wave") as pool:
                    results = list(pool.map(run, specs))
            # merged in chain order whatever finished first: the result is the sequential one
            # (stage times are each member's own: side by side they may sum past the frame's)
            for search, chosen, p, front, fs, took in results:
                wf = search.workflow
                own = took - fs.optimizer_s
                for k, v in chosen.timings.items():
                    timings[k] = timings.get(k, 0.0) + float(v)
                timings[wf.stage] = timings.get(wf.stage, 0.0) + own
                params[wf.name], pareto = p, pareto + front
                rewards.update({k: float(v) for k, v in chosen.rewards.items()})
                n_eval += fs.n_evaluations
                opt_s += fs.optimizer_s
                warm = warm or fs.warm_started
                if np.isfinite(fs.hypervolume):
                    hypervolume[wf.name] = float(fs.hypervolume)
                for o in wf.produces:
                    if o.key in chosen.output:
                        ctx.upstream[o.key] = chosen.output[o.key]
                        if o.kind == ATOMS and ctx.atoms is None:
                            ctx.atoms = np.asarray(chosen.output[o.key], dtype=np.float64)
                merged.add(wf, chosen.output)
                for o in wf.produces:
                    if o.kind == LABELS and o.key in chosen.output and ctx.atoms is not None:
                        frac = label_instability(chosen.output[o.key],
                                                 [ev.output.get(o.key) for ev in search.front_
                                                  if ev is not chosen])
                        if frac is not None and len(frac) == len(ctx.atoms):
                            unstable.append(frac)
            if refined is None and lat is not None and ctx.atoms is not None and len(ctx.atoms):
                # the cell's refinement reads only the cell and the atoms: it runs beside the
                # waves still to come (at 1024² ~50 ms that ended the frame on its own)
                refined = _beside(lattice_mod.refine_lattice, lat, ctx.atoms)
        timings["optimizer"] = opt_s
        t0 = time.perf_counter()
        if lat is not None:  # refined on the columns found, kept for the next frame
            if ctx.atoms is not None and len(ctx.atoms):
                lat = (refined.result() if refined is not None
                       else lattice_mod.refine_lattice(lat, ctx.atoms))
                lattice_field.update({k: v for k, v in lat.as_dict().items()
                                      if k in ("a", "b", "a_px", "b_px", "angle_deg",
                                               "n_pairs")})
            self.lattice = lat
        merged.scalars["lattice"] = lattice_field
        merged.scalars["contrast"] = contrast
        timings["lattice"] = lattice_s + time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            rotation = float(scan_rotation_rad or 0.0)
        except (TypeError, ValueError):
            rotation = 0.0
        geo = regions_mod.FrameGeometry(
            shape=(int(image.shape[0]), int(image.shape[1])),
            pixel_size_m=pixel_size_m,
            origin_m=None if origin_m is None else (float(origin_m[0]), float(origin_m[1])),
            rotation_rad=rotation if np.isfinite(rotation) else 0.0)
        suggestions = regions_mod.suggest(
            walls=merged.walls, arrays=merged.arrays, scalars=merged.scalars, geo=geo,
            spacing_px=lat.spacing if lat is not None else lattice_px, settings=settings,
            state=self.regions,
            instability=None if not unstable or ctx.atoms is None
            else (ctx.atoms, np.max(np.vstack(unstable), axis=0)),
            atoms=ctx.atoms)
        timings["regions"] = time.perf_counter() - t0
        self.frames_processed += 1
        return merged.analysis(params=params, rewards=rewards, pareto=pareto,
                               n_evaluations=n_eval, warm_started=warm, timings=timings,
                               optimizer_s=opt_s, hypervolume=hypervolume,
                               regions=suggestions)

    def state_dict(self) -> dict:
        """Plain-data optimizer state for checkpoints (no pickle)."""
        return {"session": self.session, "frames_processed": self.frames_processed,
                "searches": {spec: {"frames": s.frames, "lattice_px": s.lattice_px,
                                    "optimizer": s.optimizer.state_dict()}
                             for spec, s in self.searches.items()},
                "lattice": None if self.lattice is None else self.lattice.as_dict(),
                "contrast": None if self._contrast is None else list(self._contrast),
                "regions": self.regions.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore optimizers from :meth:`state_dict`, so a restarted service starts warm."""
        self.frames_processed = int(state.get("frames_processed", 0))
        lat = state.get("lattice")
        if lat:
            self.lattice = lattice_mod.Lattice(a=tuple(map(float, lat["a"])),
                                               b=tuple(map(float, lat["b"])),
                                               snr=float(lat.get("snr", 0.0)))
        self.regions = regions_mod.RegionState.from_state_dict(state.get("regions"))
        if state.get("contrast"):
            polarity, skew = state["contrast"]
            self._contrast = (str(polarity), float(skew))
        for key, s in state.get("searches", {}).items():
            spec, _, scale = key.partition("@")
            search = self._search_for(spec, float(s.get("lattice_px", 12.0)),
                                      scale.partition("#")[2])
            search.optimizer = MultiObjectiveOptimizer.from_state_dict(
                list(search.workflow.space), s["optimizer"])
            search.frames = int(s.get("frames", 0))
