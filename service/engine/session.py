"""The reward-driven engine: per session, per workflow, a warm-started multi-objective search.

For each frame the configured chain of workflows runs in order (atoms first, since domains and
amorphous regions are read off the atoms it chose). Each workflow has its own
:class:`~rewardscope.optimize.mobo.MultiObjectiveOptimizer`, kept across the session's frames:
the first frame is cold (``cold_budget`` evaluations, the workflow's default parameters first),
later frames re-evaluate the previous Pareto set and spend ``budget`` more (warm). The knee of
each frame's front is the chosen analysis; the whole front is published with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rewardscope.config import ServiceConfig
from rewardscope.engine.analysis import Analysis
from rewardscope.optimize.mobo import MultiObjectiveOptimizer, run_frame
from rewardscope.protocol import Frame
from rewardscope.science import atomfind
from rewardscope.science import rewards as rewards_mod
from rewardscope.workflows import WORKFLOW_CHAINS, make_workflow
from rewardscope.workflows.base import Evaluation, FrameContext, Workflow

STAGE_OF = {"atoms": "atoms", "domains": "cluster", "amorphous": "cluster", "latent": "cluster"}


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def reward_context(ctx: FrameContext, ev: Evaluation) -> dict[str, Any]:
    """Everything a reward function may ask for by argument name (see rewards.evaluate)."""
    out = ev.output
    atoms = out.get("atoms", ctx.atoms)
    xy = np.zeros((0, 2)) if atoms is None else np.asarray(atoms, dtype=np.float64)
    walls = out.get("walls", [])
    return {"xy": xy, "n_found": len(xy), "shape": ctx.shape, "lattice_px": ctx.lattice_px,
            "image": ctx.image, "labels": out.get("labels"),
            "segments": np.asarray(walls, dtype=np.float64).reshape(-1, 4),
            "walls": out.get("wall_points", []), "mask": out.get("amorphous_mask"),
            **{k: v for k, v in out.items() if k not in ("atoms", "walls")}}


def configured_rewards(workflow: Workflow, names: list[str] | None) -> list[rewards_mod.Reward]:
    """The objectives to optimise: the workflow's own, or those the config names (built-ins or
    'package.module:function' user rewards)."""
    if not names:
        return []
    return [rewards_mod.get_reward(n) for n in names]


class WorkflowSearch:
    """One workflow's optimizer state within a session, plus the per-frame evaluation cache.

    ``objectives`` (from the config) replace the workflow's declared rewards: a reward the
    workflow already computed is read from its evaluation, any other is evaluated on the
    evaluation's outputs by argument name.
    """

    def __init__(self, workflow: Workflow, seed: int,
                 on_evaluation: Callable[[str], None] | None = None,
                 objectives: list[rewards_mod.Reward] | None = None) -> None:
        self.workflow = workflow
        self.on_evaluation = on_evaluation
        self.objectives = objectives or []
        n_obj = len(self.objectives) or len(workflow.rewards)
        self.optimizer = MultiObjectiveOptimizer(workflow.space, n_obj, seed=seed, n_initial=5)
        self.frames = 0
        self.lattice_px = float(getattr(workflow, "lattice_px", 0.0) or 0.0)

    def _knee_scale(self) -> np.ndarray | None:
        if self.objectives:
            return None
        return np.array([spec.scale for spec in self.workflow.rewards], dtype=float)

    def _vector(self, ctx: FrameContext, ev: Evaluation) -> np.ndarray:
        if not self.objectives:
            return self.workflow.objective_vector(ev)
        context = None
        vals = []
        for r in self.objectives:
            if r.name not in ev.rewards:
                context = context or reward_context(ctx, ev)
                ev.rewards[r.name] = float(rewards_mod.evaluate(r, context))
            vals.append(rewards_mod.to_minimisation(r, ev.rewards[r.name]))
        return np.asarray(vals, dtype=float)

    def search(self, ctx: FrameContext, budget: int, deadline_s: float, knee: str,
               workers: int = 1) -> tuple[Evaluation, dict, list[dict], Any]:
        wf = self.workflow
        names = wf.param_names()
        evaluated: dict[tuple, Evaluation] = {}

        def objective(x: list) -> np.ndarray:
            params = {n: _plain(v) for n, v in zip(names, x, strict=True)}
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
            key = tuple(_plain(v) for v in x)
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
        key = tuple(_plain(v) for v in knee_x)
        chosen = evaluated.get(key)
        if chosen is None:  # the knee is from this frame, so this is only a safety net
            chosen = wf.evaluate(ctx, dict(zip(names, key, strict=True)))
        return chosen, dict(zip(names, key, strict=True)), pareto, fs


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
        for wf_name, names in self._reward_names.items():  # fail at session start, not mid-frame
            configured_rewards(make_workflow(wf_name, settings.lattice_px), names)

    def _search_for(self, name: str, lattice_px: float) -> WorkflowSearch:
        if name not in self.searches:
            wf = make_workflow(name, lattice_px)
            self.searches[name] = WorkflowSearch(
                wf, seed=self._seed + len(self.searches), on_evaluation=self.on_evaluation,
                objectives=configured_rewards(wf, self._reward_names.get(name)))
        return self.searches[name]

    def process(self, frame: Frame, settings: ServiceConfig) -> Analysis:
        lattice = frame.header.lattice_px or settings.lattice_px
        return self.analyse(frame.pixels, lattice, settings)

    def analyse(self, pixels: np.ndarray, lattice_px: float, settings: ServiceConfig
                ) -> Analysis:
        """Run the configured chain of workflows on one frame (also used offline)."""
        t_start = time.perf_counter()
        chain = WORKFLOW_CHAINS[settings.workflow]
        ctx = FrameContext(image=atomfind.normalize_frame(pixels), lattice_px=float(lattice_px))
        timings: dict[str, float] = {}
        params: dict[str, dict] = {}
        rewards: dict[str, float] = {}
        pareto: list[dict] = []
        out: dict[str, Any] = {}
        n_eval, opt_s, warm, hv = 0, 0.0, False, 0.0
        cold = any(self._search_for(name, lattice_px).frames == 0 for name in chain)
        frame_deadline = settings.cold_deadline_s if cold else settings.deadline_s
        for i, name in enumerate(chain):
            search = self._search_for(name, lattice_px)
            budget = settings.cold_budget if search.frames == 0 else settings.budget
            left = frame_deadline - (time.perf_counter() - t_start)
            deadline = max(0.05, left / (len(chain) - i))
            t0 = time.perf_counter()
            chosen, p, front, fs = search.search(ctx, budget, deadline, settings.knee,
                                                 settings.workers())
            stage = STAGE_OF.get(name, name)
            timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - t0
                                                         - fs.optimizer_s)
            for k, v in chosen.output.get("timings", {}).items():
                timings[k] = timings.get(k, 0.0) + float(v)
            params[name], pareto = p, pareto + front
            rewards.update({k: float(v) for k, v in chosen.rewards.items()})
            n_eval += fs.n_evaluations
            opt_s += fs.optimizer_s
            warm = warm or fs.warm_started
            if np.isfinite(fs.hypervolume):
                hv += fs.hypervolume
            if name == "atoms":
                ctx.atoms = np.asarray(chosen.output["atoms"], dtype=np.float64)
            out[name] = chosen.output
        timings["optimizer"] = opt_s
        self.frames_processed += 1
        return self._assemble(ctx, out, params, rewards, pareto, n_eval, warm, timings, opt_s,
                              hv)

    @staticmethod
    def _assemble(ctx: FrameContext, out: dict, params: dict, rewards: dict, pareto: list,
                  n_eval: int, warm: bool, timings: dict, opt_s: float, hv: float) -> Analysis:
        atoms = np.asarray(out["atoms"]["atoms"], dtype=np.float32).reshape(-1, 2)
        labels = np.full(len(atoms), -1, dtype=np.int16)
        arrays: dict[str, np.ndarray] = {}
        walls: list = []
        if "amorphous" in out:
            arrays["amorphous_mask"] = np.asarray(out["amorphous"]["amorphous_mask"], bool)
            arrays["amorphous_labels"] = np.asarray(out["amorphous"]["labels"], np.int16)
            labels = arrays["amorphous_labels"].copy()
        model = None
        if "latent" in out:
            labels = np.asarray(out["latent"]["labels"], dtype=np.int16)
            arrays["latent"] = np.asarray(out["latent"]["latent"], dtype=np.float32)
            model = str(out["latent"].get("model") or "") or None
        if "domains" in out:
            labels = np.asarray(out["domains"]["labels"], dtype=np.int16)
            walls = [list(map(float, w)) for w in out["domains"].get("walls", [])]
        return Analysis(atoms=atoms, labels=labels, walls=walls, params=params,
                        rewards=rewards, pareto=pareto, n_evaluations=n_eval,
                        warm_started=warm, arrays=arrays, timings=timings, optimizer_s=opt_s,
                        hypervolume=hv, model=model)

    def state_dict(self) -> dict:
        """Plain-data optimizer state for checkpoints (no pickle)."""
        return {"session": self.session, "frames_processed": self.frames_processed,
                "searches": {name: {"frames": s.frames, "lattice_px": s.lattice_px,
                                    "optimizer": s.optimizer.state_dict()}
                             for name, s in self.searches.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore optimizers from :meth:`state_dict`, so a restarted service starts warm."""
        self.frames_processed = int(state.get("frames_processed", 0))
        for name, s in state.get("searches", {}).items():
            wf = make_workflow(name, float(s.get("lattice_px", 12.0)))
            search = WorkflowSearch(wf, seed=self._seed, on_evaluation=self.on_evaluation,
                                    objectives=configured_rewards(
                                        wf, self._reward_names.get(name)))
            search.optimizer = MultiObjectiveOptimizer.from_state_dict(wf.space, s["optimizer"])
            search.frames = int(s.get("frames", 0))
            self.searches[name] = search
