"""The session engine: per session, per workflow, a warm-started multi-objective search.

For each frame the configured workflows run in the order their declared needs impose (a
workflow that reads atoms runs after one that produces them). Each workflow has its own
:class:`~rewardscope.optimize.mobo.MultiObjectiveOptimizer`, kept across the session's frames:
the first frame is cold (``cold_budget`` evaluations, the workflow's default parameters first),
later frames re-evaluate the previous Pareto set and spend ``budget`` more (warm). The knee of
each frame's front is the chosen analysis; the whole front is published with it.

The engine never names a workflow: what it merges into the result, which labels win and where
the time is booked all come from the workflows' declarations (``produces``, ``stage``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from rewardscope.config import ConfigError, ServiceConfig
from rewardscope.engine.analysis import Analysis
from rewardscope.optimize.mobo import MultiObjectiveOptimizer, run_frame
from rewardscope.plaindata import plain
from rewardscope.protocol import Frame
from rewardscope.science import atomfind
from rewardscope.science import rewards as rewards_mod
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
        self.on_evaluation = on_evaluation
        names = list(reward_names or workflow.rewards)
        if not names:
            raise ConfigError(f"workflow {workflow.name!r} declares no rewards to optimise")
        self.objectives = [rewards_mod.get_reward(n) for n in names]
        self.optimizer = MultiObjectiveOptimizer(list(workflow.space), len(self.objectives),
                                                 seed=seed, n_initial=5)
        self.frames = 0
        self.lattice_px = float(getattr(workflow, "lattice_px", 0.0) or 0.0)

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
               workers: int = 1) -> tuple[Evaluation, dict, list[dict], Any]:
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
                       workers=workers if wf.thread_safe else 1)
        self.frames += 1
        pareto = []
        for x in fs.pareto_X:
            key = tuple(plain(v) for v in x)
            ev = evaluated.get(key)
            if ev is not None:
                pareto.append({"workflow": wf.name, "params": dict(zip(names, key, strict=True)),
                               "rewards": ev.rewards})
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
        if chosen is None:  # the knee is from this frame, so this is only a safety net
            chosen = wf.evaluate(ctx, dict(zip(names, key, strict=True)))
        return chosen, dict(zip(names, key, strict=True)), pareto, fs


# ------------------------------------------------------------------------------ merging


class _Merged:
    """The frame's result, filled workflow by workflow from their declared outputs."""

    def __init__(self) -> None:
        self.atoms: np.ndarray | None = None
        self.labels: np.ndarray | None = None
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
                    self.labels = lab
                if o.name:
                    self.arrays[o.name] = lab
            elif o.kind == SEGMENTS:
                self.walls += [list(map(float, w)) for w in v]
            elif o.kind == MASK:
                self.arrays[o.published] = np.asarray(v)
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
        return Analysis(atoms=atoms, labels=labels, walls=self.walls, arrays=self.arrays,
                        scalars=self.scalars, **kw)


# ------------------------------------------------------------------------------ the engine


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
        check_settings(settings)  # fail at session start, not mid-frame

    def _search_for(self, spec: str, lattice_px: float) -> WorkflowSearch:
        if spec not in self.searches:
            wf = make_workflow(spec, lattice_px)
            self.searches[spec] = WorkflowSearch(
                wf, seed=self._seed + len(self.searches), on_evaluation=self.on_evaluation,
                reward_names=self._reward_names.get(wf.name))
        return self.searches[spec]

    def process(self, frame: Frame, settings: ServiceConfig) -> Analysis:
        lattice = frame.header.lattice_px or settings.lattice_px
        return self.analyse(frame.pixels, lattice, settings,
                            pixel_size_m=frame.header.pixel_size_m)

    def analyse(self, pixels: np.ndarray, lattice_px: float, settings: ServiceConfig, *,
                pixel_size_m: float | None = None) -> Analysis:
        """Run the configured chain of workflows on one frame (also used offline)."""
        t_start = time.perf_counter()
        chain = resolve_chain(settings.workflow)
        ctx = FrameContext(image=atomfind.normalize_frame(pixels), lattice_px=float(lattice_px),
                           pixel_size_m=pixel_size_m)
        timings: dict[str, float] = {}
        params: dict[str, dict] = {}
        rewards: dict[str, float] = {}
        pareto: list[dict] = []
        hypervolume: dict[str, float] = {}
        merged = _Merged()
        n_eval, opt_s, warm = 0, 0.0, False
        cold = any(self._search_for(spec, lattice_px).frames == 0 for spec in chain)
        frame_deadline = settings.cold_deadline_s if cold else settings.deadline_s
        for i, spec in enumerate(chain):
            search = self._search_for(spec, lattice_px)
            wf = search.workflow
            budget = settings.cold_budget if search.frames == 0 else settings.budget
            left = frame_deadline - (time.perf_counter() - t_start)
            deadline = max(0.05, left / (len(chain) - i))
            t0 = time.perf_counter()
            chosen, p, front, fs = search.search(ctx, budget, deadline, settings.knee,
                                                 settings.workers())
            chosen.output.update(wf.finalize(ctx, chosen))
            own = time.perf_counter() - t0 - fs.optimizer_s
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
        timings["optimizer"] = opt_s
        self.frames_processed += 1
        return merged.analysis(params=params, rewards=rewards, pareto=pareto,
                               n_evaluations=n_eval, warm_started=warm, timings=timings,
                               optimizer_s=opt_s, hypervolume=hypervolume)

    def state_dict(self) -> dict:
        """Plain-data optimizer state for checkpoints (no pickle)."""
        return {"session": self.session, "frames_processed": self.frames_processed,
                "searches": {spec: {"frames": s.frames, "lattice_px": s.lattice_px,
                                    "optimizer": s.optimizer.state_dict()}
                             for spec, s in self.searches.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore optimizers from :meth:`state_dict`, so a restarted service starts warm."""
        self.frames_processed = int(state.get("frames_processed", 0))
        for spec, s in state.get("searches", {}).items():
            search = self._search_for(spec, float(s.get("lattice_px", 12.0)))
            search.optimizer = MultiObjectiveOptimizer.from_state_dict(
                list(search.workflow.space), s["optimizer"])
            search.frames = int(s.get("frames", 0))
