"""The slow loop of the latent analysis: train candidate models in the background, swap the best.

The fast loop (:class:`rewardscope.workflows.latent.LatentWorkflow`) encodes every frame with
the model in use and, while a trainer runs, offers each frame's image and key points to the
:class:`rewardscope.science.vae.ModelSlot`, whose ``sink`` hands them to the trainer.
:class:`LatentTrainer` runs the search in a separate *process* (spawned: a fresh interpreter,
one torch thread, nice +10), so training never competes with the analysis thread for the
GIL; round after round, the worker:

1. takes a snapshot of its bounded buffer and draws at most ``latent_max_train`` patches (a
   seeded sample) at each candidate's window;
2. trains the defaults at the middle, smallest and largest window first
   (:func:`cold_design`), then asks the engine's multi-objective optimizer
   (:class:`rewardscope.optimize.mobo.MultiObjectiveOptimizer`) for candidates in
   :data:`SPACE` (window, invariances, latent dimension, conditional on the sublattice
   one-hot or not, KL weight), each trained within the round's time budget
   (``latent_round_s``);
3. scores each with the latent rewards (:func:`score_model`): a diverged candidate (NaN loss)
   or a collapsed one (log10 product of the latent variances per dimension below
   ``latent_collapse_log10``) is rejected with a log line; the others are compared on
   :data:`OBJECTIVES`, ``latent_loss`` and ``latent_separability`` (the knee of their front,
   weighed by the rewards' registry scales), the model in use re-scored on the same patches
   among them;
4. when the knee is a new model, saves it as the checkpoint and sends its weights back; a
   light thread in the daemon rebuilds it and swaps it into the slot (one reference
   assignment: a frame in flight finishes with the model it started with, the next frame
   uses the new one).

A worker that dies is logged and restarted from the model in use; the fast loop keeps its
model meanwhile. On CUDA the worker caps torch's share of the GPU memory
(``latent_gpu_memory_frac``). :func:`select_model` / :func:`run_round` are the same search
run inline (offline ``rewardscope analyze``, :meth:`LatentTrainer.round`).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rewardscope.optimize.knee import knee_index
from rewardscope.optimize.mobo import MultiObjectiveOptimizer
from rewardscope.science import latentstats, rewards
from rewardscope.science.dimensions import Categorical, Integer, Real
from rewardscope.science.vae import (
    CheckpointError,
    FrameSample,
    LatentModel,
    ModelSlot,
    default_device,
    load_checkpoint,
    model_info,
    one_hot,
)
from rewardscope.workflows.base import single_thread
from rewardscope.workflows.latent import half_window, patches_at, used_rows

__all__ = ["OBJECTIVES", "SPACE", "Candidate", "LatentTrainer", "RoundStopped", "TrainSettings",
           "cold_design", "load_into_slot", "run_round", "score_model", "select_model",
           "training_set"]

log = logging.getLogger("rewardscope.trainer")

SPACE = (
    Integer(4, 8, name="window"),  # patch half-width, eighths of the key-point spacing
    Categorical(["none", "r", "t", "rt"], name="invariances"),
    Integer(1, 3, name="latent_dim"),
    Categorical(["no", "yes"], name="conditional"),
    Real(0.5, 4.0, prior="log-uniform", name="kl_weight"),
)
OBJECTIVES = ("latent_loss", "latent_separability")
"""Rewards the candidates are compared on: the optimizer's objectives and the knee of their
front (each in its registry direction, weighed by its registry ``scale``);
``latent_variance`` gates collapse before, the others (BIC, AIC, ICL, Bayesian GMM, MSE) are
reported. The whole-latent ICL is not an objective: its value per row depends on the latent
dimension (a d-dimensional density's log-likelihood grows with d, and with nearly collapsed
dimensions that standardisation stretches), so it does not compare models of different
``latent_dim``; ``latent_separability`` compares 1-D gains, whatever d and the window."""
DEFAULT_PARAMS = {"window": 6, "invariances": "none", "latent_dim": 2, "conditional": "yes",
                  "kl_weight": 1.0}


def cold_design() -> list[dict]:
    """The first candidates of a round, before the optimizer's own (Latin hypercube, then
    Bayesian) proposals: :data:`DEFAULT_PARAMS`, then the same at the smallest and the
    largest window of :data:`SPACE`, so that every round compares small and large windows
    (what a latent separates depends on the window more than on any other parameter).

    Returns
    -------
    list of dict
        Parameter sets, in the order they are trained.
    """
    win = SPACE[0]
    out = [dict(DEFAULT_PARAMS)]
    for w in (int(win.low), int(win.high)):
        if all(p["window"] != w for p in out):
            out.append({**DEFAULT_PARAMS, "window": w})
    return out


@dataclass
class TrainSettings:
    """The trainer's knobs (the ``latent_*`` config keys; see docs/OPERATIONS.md)."""

    round_s: float = 60.0
    candidates: int = 6
    epochs: int = 30
    hidden: int = 64
    sublattice: str = "all"
    max_train: int = 4096
    min_patches: int = 256
    collapse_log10: float = -2.0
    batch_size: int = 64
    seed: int = 0
    device: str | None = None
    gpu_memory_frac: float = 0.25

    @classmethod
    def from_config(cls, cfg: Any) -> TrainSettings:
        """From a :class:`rewardscope.config.ServiceConfig`."""
        return cls(round_s=cfg.latent_round_s, candidates=cfg.latent_candidates,
                   epochs=cfg.latent_epochs, hidden=cfg.latent_hidden,
                   sublattice=cfg.latent_sublattice, max_train=cfg.latent_max_train,
                   min_patches=cfg.latent_min_patches, collapse_log10=cfg.latent_collapse_log10,
                   seed=cfg.seed, gpu_memory_frac=cfg.latent_gpu_memory_frac)


@dataclass
class Candidate:
    """One trained candidate: its parameters, model, rewards and verdict.

    ``status``: ``"ok"``, ``"diverged"`` (NaN loss), ``"collapsed"`` (latent variance below
    the threshold), ``"too_few"`` (not enough patches at its window), ``"in_use"`` (the model
    in use, re-scored); ``chosen`` marks the knee.
    """

    params: dict
    model: LatentModel | None
    rewards: dict = field(default_factory=dict)
    status: str = "ok"
    train_s: float = 0.0
    chosen: bool = False

    def as_dict(self) -> dict:
        """Plain data for vae-select.json and logs."""
        return {"id": None if self.model is None else self.model.name, "params": self.params,
                "rewards": {k: float(v) for k, v in self.rewards.items()},
                "status": self.status, "train_s": round(self.train_s, 3),
                "chosen": self.chosen}


def _invariances(code: str) -> tuple[str, ...]:
    return () if code == "none" else tuple(code)


def training_set(samples: Sequence[FrameSample], window: int, sublattice: str, limit: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Patches (wholly inside their frames) at ``window`` from buffered samples.

    Parameters
    ----------
    samples : sequence of FrameSample
        The buffer's snapshot.
    window : int
        Patch half-width in eighths of the samples' key-point spacing.
    sublattice : {"all", "A", "B"}
        Key points used.
    limit : int
        Most patches returned (a seeded sample over all frames).
    seed : int, optional
        Seed of that sample.

    Returns
    -------
    patches : (N, p, p) ndarray of float32
    sites : (N,) ndarray of int8
    half : int
        Patch half-width, px.
    """
    spacing = float(np.median([s.spacing_px for s in samples])) if samples else 12.0
    half = half_window(window, spacing)
    ps, ss = [], []
    for s in samples:
        rows = used_rows(s.sites, sublattice)
        p, inside = patches_at(s.image, np.asarray(s.keypoints)[rows], half)
        ps.append(p[inside])
        ss.append(np.asarray(s.sites)[rows][inside])
    if not ps:
        return np.zeros((0, 2 * half + 1, 2 * half + 1), np.float32), np.zeros(0, np.int8), half
    patches, sites = np.concatenate(ps), np.concatenate(ss).astype(np.int8)
    if len(patches) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(patches), limit, replace=False))
        patches, sites = patches[pick], sites[pick]
    return patches, sites, half


class RoundStopped(Exception):  # noqa: N818 - a signal, not an error
    """The stop signal came while a candidate was being scored: the round ends unscored."""


def score_model(model: LatentModel, patches: np.ndarray, sites: np.ndarray,
                seed: int = 0, stop: Callable[[], bool] | None = None,
                collapse_log10: float | None = None) -> dict[str, float]:
    """The latent rewards of a trained model on ``patches`` (see docs/REWARDS.md).

    Parameters
    ----------
    model : LatentModel
        A trained model.
    patches : (N, p, p) ndarray of float
        Patches at the model's size.
    sites : (N,) ndarray of int
        Their sublattice (for a conditional model's one-hot).
    seed : int, optional
        Seed of the subsets the mixtures are fitted on.
    stop : callable, optional
        Checked between the scoring steps and between the mixtures of the grid (scoring can
        take tens of seconds on a busy machine): when it returns True, :class:`RoundStopped`
        is raised.
    collapse_log10 : float, optional
        When given and the latent is collapsed (log10 product of the latent variances per
        dimension below it), the mixture rewards (BIC, AIC, ICL, Bayesian GMM) are not
        fitted: they get their worst values (a collapsed model is rejected before it is
        compared). None (default): always fitted.

    Returns
    -------
    dict
        ``latent_loss``, ``latent_reconstruction``, ``latent_variance``, ``latent_bic``,
        ``latent_aic``, ``latent_icl``, ``latent_bgmm``, ``latent_separability``, plus
        ``k_bic`` (components of the best BIC); worst values (+inf / -inf) when the model or
        latent is degenerate. The mixtures run with one BLAS/OpenMP thread.

    Raises
    ------
    RoundStopped
        When ``stop()`` returned True.
    """
    def check() -> None:
        if stop is not None and stop():
            raise RoundStopped

    c = one_hot(sites, model.c_dim) if model.conditional else None
    z, _ = model.encode(patches, c)
    check()
    out = {"latent_loss": rewards.latent_loss(model.loss_per_pixel(patches, c)),
           "latent_reconstruction": rewards.latent_reconstruction(
               model.reconstruction_error(patches, c)),
           "latent_variance": rewards.latent_variance(z)}
    check()
    if collapse_log10 is not None and _collapsed(out, model.latent_dim, collapse_log10):
        out.update({"latent_bic": rewards.latent_bic(math.nan),  # worst values, not fitted
                    "latent_aic": rewards.latent_aic(math.nan),
                    "latent_icl": rewards.latent_icl(math.nan),
                    "latent_bgmm": rewards.latent_bgmm(math.nan),
                    "latent_separability": rewards.latent_separability(math.nan)})
        out["k_bic"] = 0.0
        return out
    with single_thread():  # small mixtures: BLAS/OpenMP threads only add contention
        crit = latentstats.gmm_criteria(z, seed=seed, stop=stop)
        check()
        out.update({"latent_bic": rewards.latent_bic(crit["bic"]),
                    "latent_aic": rewards.latent_aic(crit["aic"]),
                    "latent_icl": rewards.latent_icl(crit["icl"])})
        out["latent_bgmm"] = rewards.latent_bgmm(latentstats.bgmm_score(z, seed=seed))
        check()
        out["latent_separability"] = rewards.latent_separability(
            latentstats.class_separability(z, seed=seed))
    out["k_bic"] = float(crit["k_bic"])
    return out


def _worst_rewards() -> dict[str, float]:
    """Each objective's worst value (a candidate that was not scored)."""
    return {r: math.inf if rewards.get_reward(r).direction == "min" else -math.inf
            for r in OBJECTIVES}


def _collapsed(rw: dict, latent_dim: int, threshold: float) -> bool:
    v = rw.get("latent_variance", -math.inf)
    return not math.isfinite(v) or v / max(1, latent_dim) < threshold


def select_model(samples: Sequence[FrameSample], settings: TrainSettings,
                 current: LatentModel | None = None, stop: Callable[[], bool] | None = None,
                 on_candidate: Callable[[Candidate], None] | None = None
                 ) -> tuple[Candidate | None, list[Candidate]]:
    """One search round: train and score candidates, return the knee and every candidate.

    The first ``settings.candidates`` of :func:`cold_design` then the optimizer's proposals
    (Latin hypercube, then Bayesian on :data:`OBJECTIVES`) are trained; the accepted ones
    (and the model in use) are compared by the knee of their :data:`OBJECTIVES` front, each
    objective in its registry unit (``scale``).

    Parameters
    ----------
    samples : sequence of FrameSample
        Training material (a snapshot of the buffer).
    settings : TrainSettings
        Budget and knobs.
    current : LatentModel, optional
        The model in use: re-scored on the same patches and compared with the candidates.
    stop : callable, optional
        Checked between candidates, epochs and scoring steps; True ends the round early
        (stopped while scoring: nothing is chosen).
    on_candidate : callable, optional
        Called with each candidate once scored (logs, tests).

    Returns
    -------
    best : Candidate or None
        The knee of the accepted candidates (may be the model in use, status ``in_use``);
        None when every candidate was rejected.
    candidates : list of Candidate
        All of them, the chosen one marked.
    """
    t_start = time.perf_counter()
    cold = cold_design()
    opt = MultiObjectiveOptimizer(list(SPACE), len(OBJECTIVES), seed=settings.seed,
                                  n_initial=max(2, min(5, settings.candidates - len(cold))))
    names = [d.name for d in SPACE]
    opt.enqueue([[p[n] for n in names] for p in cold])
    out: list[Candidate] = []
    sets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    device = settings.device or default_device()

    def stopped() -> bool:
        return (time.perf_counter() - t_start >= settings.round_s) or (
            stop is not None and stop())

    for _ in range(settings.candidates):
        if stopped():
            break
        x = opt.ask(1)[0]
        params = {n: (v.item() if hasattr(v, "item") else v) for n, v in zip(names, x,
                                                                            strict=True)}
        window = int(params["window"])
        if window not in sets:
            p, s, _ = training_set(samples, window, settings.sublattice, settings.max_train,
                                   settings.seed)
            sets[window] = (p, s)
        patches, sites = sets[window]
        cand = Candidate(params=params, model=None)
        if len(patches) < max(16, settings.min_patches // 4):
            cand.status = "too_few"
            cand.rewards = _worst_rewards()
        else:
            conditional = params["conditional"] == "yes" and bool(np.any(sites >= 0))
            model = LatentModel(patches.shape[1], int(params["latent_dim"]),
                                _invariances(params["invariances"]), (settings.hidden,),
                                device=device, seed=settings.seed, c_dim=2 if conditional else 0,
                                kl_weight=float(params["kl_weight"]))
            c = one_hot(sites, 2) if conditional else None
            left = settings.round_s - (time.perf_counter() - t_start)
            hist = model.fit(patches, settings.epochs, settings.batch_size, c=c,
                             deadline_s=max(1.0, left), stop=stop)
            cand.model, cand.train_s = model, hist.seconds
            if hist.diverged:
                cand.status = "diverged"
                cand.rewards = _worst_rewards()
            else:
                try:
                    cand.rewards = score_model(model, patches, sites, settings.seed, stop,
                                               settings.collapse_log10)
                except RoundStopped:
                    log.info("latent round stopped while scoring %s: nothing chosen", model.name)
                    return None, out
                if _collapsed(cand.rewards, model.latent_dim, settings.collapse_log10):
                    cand.status = "collapsed"
            if cand.status != "ok":
                log.warning("latent candidate %s rejected: %s (latent_variance %.2f, loss %s)",
                            model.name, cand.status,
                            cand.rewards.get("latent_variance", math.nan),
                            cand.rewards.get("latent_loss"))
        y = [rewards.to_minimisation(rewards.get_reward(r), cand.rewards.get(r, math.nan))
             if cand.status == "ok" else math.nan for r in OBJECTIVES]
        opt.tell([x], [y])
        out.append(cand)
        if on_candidate is not None:
            on_candidate(cand)
    if current is not None and current.trained:
        window = _window_of(current, samples)
        if window is not None and window in sets:
            patches, sites = sets[window]
            cur = Candidate(params={"id": current.name}, model=current, status="in_use")
            try:
                cur.rewards = score_model(current, patches, sites, settings.seed, stop)
            except RoundStopped:
                log.info("latent round stopped while re-scoring the model in use: "
                         "nothing chosen")
                return None, out
            out.append(cur)
    ok = [c for c in out if c.status in ("ok", "in_use")
          and all(math.isfinite(c.rewards.get(r, math.nan)) for r in OBJECTIVES)]
    if not ok:
        return None, out
    Y = np.array([[rewards.to_minimisation(rewards.get_reward(r), c.rewards[r])
                   for r in OBJECTIVES] for c in ok])
    scale = [rewards.get_reward(r).scale for r in OBJECTIVES]
    best = ok[int(knee_index(Y, scale=scale))]
    best.chosen = True
    return best, out


def _window_of(model: LatentModel, samples: Sequence[FrameSample]) -> int | None:
    """The window parameter that gives ``model``'s patch size on these samples, if any."""
    spacing = float(np.median([s.spacing_px for s in samples])) if samples else 12.0
    for w in range(int(SPACE[0].low), int(SPACE[0].high) + 1):
        if 2 * half_window(w, spacing) + 1 == model.patch_px:
            return w
    return None


def load_into_slot(path: str | Path, slot: ModelSlot, device: str | None = None) -> dict | None:
    """Load a checkpoint into ``slot`` as the model in use; a bad file is reported, not raised.

    Parameters
    ----------
    path : str or Path
        The checkpoint (a missing file is not an error: nothing is loaded).
    slot : ModelSlot
        Where the model goes.
    device : str, optional
        Torch device (default: :func:`rewardscope.science.vae.default_device`).

    Returns
    -------
    dict or None
        The model's info when loaded; None when there was no file or it was unusable (logged
        at ERROR with the reason).
    """
    p = Path(path)
    if not p.is_file():
        return None
    try:
        model, info = load_checkpoint(p, device=device)
    except CheckpointError as exc:
        log.error("latent checkpoint not loaded, starting without it: %s", exc)
        return None
    info = {**info, "id": model.name, "source": "checkpoint"}
    slot.swap(model, info)
    log.info("latent model %s loaded from %s", model.name, p)
    return info


def run_round(samples: Sequence[FrameSample], settings: TrainSettings,
              current: LatentModel | None = None, checkpoint: str | Path | None = None,
              stop: Callable[[], bool] | None = None
              ) -> tuple[Candidate | None, list[Candidate], dict | None]:
    """One search round and, when its knee is a new model, that model's info and checkpoint.

    Parameters
    ----------
    samples : sequence of FrameSample
        Training material.
    settings : TrainSettings
        Budget and knobs.
    current : LatentModel, optional
        The model in use (re-scored among the candidates).
    checkpoint : str or Path, optional
        Where a new model is saved (a failed save is logged, not raised).
    stop : callable, optional
        As :func:`select_model`.

    Returns
    -------
    best : Candidate or None
        As :func:`select_model`.
    candidates : list of Candidate
        Every candidate.
    info : dict or None
        The new model's info (:func:`rewardscope.science.vae.model_info`) when it should be
        swapped in; None when the model in use stays.
    """
    best, cands = select_model(samples, settings, current=current, stop=stop)
    if best is None or best.status == "in_use" or best.model is None:
        return best, cands, None
    info = model_info(best.model, best.rewards, sublattice=settings.sublattice,
                      params=best.params,
                      spacing_px=float(np.median([s.spacing_px for s in samples])))
    if checkpoint is not None:
        try:
            best.model.save(checkpoint, info)
        except OSError as exc:
            log.error("latent checkpoint not saved to %s: %s", checkpoint, exc)
    return best, cands, info


# ------------------------------------------------------------------------------ the process


class _OutboxHandler(logging.Handler):
    """Logging in the worker process: records travel to the daemon, which logs them."""

    def __init__(self, outbox: Any) -> None:
        super().__init__()
        self.outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record) if record.exc_info else record.getMessage()
            clean = logging.makeLogRecord({**record.__dict__, "msg": msg, "args": None,
                                           "exc_info": None, "exc_text": None})
            self.outbox.put(("log", clean))
        except Exception:  # noqa: BLE001 - logging must never end the worker
            self.handleError(record)


def _model_blob(model: LatentModel, info: dict) -> dict:
    """What crosses the process boundary for a model: config, weights as numpy, info."""
    return {"config": model.config, "info": dict(info),
            "state": {k: v.numpy() for k, v in model.state_dict().items()},
            "n_patches": int(model.history_.n_patches),
            "train_s": float(model.history_.seconds)}


def _model_from_blob(blob: dict, device: str | None = None) -> LatentModel:
    """A :class:`LatentModel` rebuilt from :func:`_model_blob` (weights loaded)."""
    import torch  # noqa: PLC0415 - torch is loaded by vae already; local for clarity

    cfg = blob["config"]
    model = LatentModel(int(cfg["patch_px"]), int(cfg["latent_dim"]), tuple(cfg["invariances"]),
                        tuple(cfg["hidden"]), device=device, seed=int(cfg.get("seed", 0)),
                        c_dim=int(cfg.get("c_dim", 0)),
                        kl_weight=float(cfg.get("kl_weight", 1.0)))
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in blob["state"].items()})
    model.history_.n_patches = int(blob.get("n_patches", 0))
    model.history_.seconds = float(blob.get("train_s", 0.0))
    return model


def _worker_main(settings: TrainSettings, inbox: Any, outbox: Any, stop_evt: Any,
                 wake_evt: Any, checkpoint: str | None, current: dict | None,
                 interval_s: float, bounds: tuple[int, int], log_level: int) -> None:
    """The trainer process: buffer the frames it is sent, run rounds, send new models back.

    Runs with one torch thread and a lower scheduling priority (nice +10), so the daemon's
    analysis thread keeps its core; logs travel back to the daemon over ``outbox``.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_OutboxHandler(outbox))
    root.setLevel(log_level)
    import os  # noqa: PLC0415

    import torch  # noqa: PLC0415

    torch.set_num_threads(1)
    try:
        os.nice(10)
    except OSError:
        pass
    device = settings.device or default_device()
    if device == "cuda":
        try:
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, max(0.01, settings.gpu_memory_frac)))
        except Exception as exc:  # noqa: BLE001 - a GPU quirk must not end the slow loop
            log.warning("latent trainer: GPU memory cap not set: %s", exc)
    buffer = ModelSlot(*bounds)
    model = None
    outbox.put(("ready", os.getpid()))
    if current is not None:
        try:
            model = _model_from_blob(current, device)
        except Exception as exc:  # noqa: BLE001 - an unusable start model: search without it
            log.warning("latent trainer: model in use not reloaded in the worker: %s", exc)

    def drain(block_s: float = 0.0) -> None:
        got = 0
        while True:
            try:
                sample = inbox.get(timeout=block_s) if block_s and not got else inbox.get_nowait()
            except queue.Empty:
                break
            buffer.offer(sample)
            got += 1
        if got:
            outbox.put(("status", {"buffer_frames": len(buffer.samples()),
                                   "buffer_keypoints": buffer.n_keypoints(),
                                   "received": buffer.offered_}))

    def stopped() -> bool:  # checked between epochs: keep the inbox moving while training
        drain()
        return stop_evt.is_set()

    next_round = 0.0
    while not stop_evt.is_set():
        drain(0.5)
        if buffer.n_keypoints() < settings.min_patches:
            continue
        if time.monotonic() < next_round and not wake_evt.is_set():
            continue
        wake_evt.clear()
        try:
            best, cands, info = run_round(buffer.samples(), settings, model, checkpoint, stopped)
        except Exception:  # noqa: BLE001 - the slow loop reports and keeps going
            log.exception("latent trainer round failed")
            next_round = time.monotonic() + interval_s
            continue
        if info is not None and best is not None and best.model is not None:
            model = best.model
            outbox.put(("swap", _model_blob(model, info)))
        outbox.put(("round", {"candidates": [c.as_dict() for c in cands],
                              "rejected": sum(c.status in ("diverged", "collapsed")
                                              for c in cands)}))
        next_round = time.monotonic() + interval_s


class LatentTrainer:
    """The background slow loop, in its own process; see the module docstring.

    :meth:`start` spawns a worker process (``multiprocessing`` spawn context: a fresh
    interpreter, one torch thread, nice +10) and a light thread in this process. The fast
    loop's slot hands each offered frame (image and key points, by reference) to a bounded
    queue (``queue_frames``; ``put_nowait``: when the worker lags, the frame is not sent and
    counted in ``dropped_``; the pickling runs in the queue's feeder thread, never in the
    analysis thread). The worker buffers them (bounded as the slot: ``max_frames`` /
    ``max_keypoints``), runs :func:`run_round` every ``interval_s`` once it holds
    ``min_patches`` key points, saves the new model's checkpoint and sends back its weights
    (numpy arrays) and info. The light thread rebuilds the model here and swaps it into the
    slot (one reference assignment), relays the worker's log records and, when the worker
    dies, logs it and starts a new one from the model in use (at most ``max_restarts``
    times; then the slow loop is off and the fast loop keeps its model).

    Parameters
    ----------
    slot : ModelSlot
        The fast loop's slot (the trainer sets ``slot.collect`` and ``slot.sink`` while it
        runs).
    settings : TrainSettings
        Budget and knobs.
    checkpoint : str or Path, optional
        Where the model in use is saved after each swap (None: not saved).
    interval_s : float, optional
        Pause between rounds, s (default 5).
    on_swap : callable, optional
        Called with the new model's info after each swap (metrics).
    queue_frames : int, optional
        Frames in flight to the worker (default 4).
    max_restarts : int, optional
        Times a dead worker is restarted (default 5).

    Attributes
    ----------
    rounds_ : int
        Search rounds completed.
    rejected_ : int
        Candidates rejected (diverged or collapsed).
    last_round_ : list of dict
        The last round's candidates (plain data).
    restarts_ : int
        Worker restarts after a death.
    dropped_ : int
        Frames not sent because the queue to the worker was full.
    buffer_ : dict
        The worker's buffer: ``buffer_frames``, ``buffer_keypoints``, ``received``.
    """

    def __init__(self, slot: ModelSlot, settings: TrainSettings,
                 checkpoint: str | Path | None = None, interval_s: float = 5.0,
                 on_swap: Callable[[dict], None] | None = None, queue_frames: int = 4,
                 max_restarts: int = 5) -> None:
        self.slot = slot
        self.settings = settings
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.interval_s = float(interval_s)
        self.on_swap = on_swap
        self.queue_frames = max(1, int(queue_frames))
        self.max_restarts = int(max_restarts)
        self.rounds_ = 0
        self.rejected_ = 0
        self.restarts_ = 0
        self.dropped_ = 0
        self.last_round_: list[dict] = []
        self.buffer_: dict = {"buffer_frames": 0, "buffer_keypoints": 0, "received": 0}
        self._mp = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._inbox: Any = None
        self._outbox: Any = None
        self._stop_evt: Any = None
        self._wake_evt: Any = None
        self._stopping = threading.Event()
        self._ready = threading.Event()  # the worker finished its imports and setup
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LatentTrainer:
        """Spawn the worker and the light thread (idempotent); start the slot's collection."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stopping.clear()
        self._spawn()
        self.slot.sink = self._send
        self.slot.collect = True
        self._thread = threading.Thread(target=self._relay, name="latent-trainer-relay",
                                        daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> None:
        """A fresh worker with fresh queues (a killed worker may hold a queue's lock)."""
        self._inbox = self._mp.Queue(maxsize=self.queue_frames)
        self._outbox = self._mp.Queue()
        self._stop_evt = self._mp.Event()
        self._wake_evt = self._mp.Event()
        self._ready.clear()
        cur = self.slot.current()
        blob = None if cur is None else _model_blob(cur.model, cur.info)
        self._proc = self._mp.Process(
            target=_worker_main, name="latent-trainer", daemon=True,
            args=(self.settings, self._inbox, self._outbox, self._stop_evt, self._wake_evt,
                  None if self.checkpoint is None else str(self.checkpoint), blob,
                  self.interval_s, (self.slot.max_frames, self.slot.max_keypoints),
                  logging.getLogger().getEffectiveLevel()))
        self._proc.start()
        log.info("latent trainer process started (pid %s)", self._proc.pid)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker (between epochs; killed after ``timeout`` s) and the light thread."""
        self.slot.collect = False
        self.slot.sink = None
        self._stopping.set()
        if self._stop_evt is not None:
            self._stop_evt.set()
        proc = self._proc
        if proc is not None:
            if not self._ready.is_set():  # still importing: holds nothing, no need to wait
                proc.terminate()
            proc.join(timeout)
            if proc.is_alive():
                log.warning("latent trainer process did not stop in %.0f s: killed", timeout)
                proc.kill()
                proc.join(5.0)
        if self._thread is not None:
            self._thread.join(10.0)
        self._close_queues()

    def _close_queues(self) -> None:
        for q in (self._inbox, self._outbox):
            if q is not None:
                q.cancel_join_thread()  # never wait on a dead reader at exit
                q.close()

    @property
    def alive(self) -> bool:
        """True while the worker process runs."""
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        """The worker process's id (None before :meth:`start`)."""
        return None if self._proc is None else self._proc.pid

    def wake(self) -> None:
        """Start the next round now instead of after the pause."""
        if self._wake_evt is not None:
            self._wake_evt.set()

    def status(self) -> dict:
        """Plain data for status messages: the model in use, the worker's buffer, rounds,
        rejections, restarts, frames not sent."""
        return {**self.slot.status(), **self.buffer_, "rounds": self.rounds_,
                "rejected": self.rejected_, "restarts": self.restarts_,
                "dropped": self.dropped_, "training": self.alive}

    # ------------------------------------------------------------------ fast-loop side
    def _send(self, sample: FrameSample) -> None:
        """The slot's sink (analysis thread): never blocks, never raises."""
        try:
            self._inbox.put_nowait(sample)
        except queue.Full:
            self.dropped_ += 1
        except (ValueError, OSError, AttributeError):  # queue closed while restarting
            self.dropped_ += 1

    # ------------------------------------------------------------------ the light thread
    def _relay(self) -> None:
        while True:
            outbox, proc = self._outbox, self._proc
            try:
                msg = outbox.get(timeout=0.25)
            except queue.Empty:
                msg = None
            except (EOFError, OSError, ValueError):
                msg = None
            if msg is not None:
                try:
                    self._handle(msg)
                except Exception:  # noqa: BLE001 - a bad message never ends the relay
                    log.exception("latent trainer: message from the worker not applied")
                continue
            if self._stopping.is_set():
                if proc is None or not proc.is_alive():
                    return
                continue
            if proc is not None and not proc.is_alive():
                self._restart(proc.exitcode)
                if self._proc is proc:  # not restarted: the slow loop is off
                    return

    def _restart(self, exitcode: int | None) -> None:
        cur = self.slot.current()
        kept = None if cur is None else cur.info.get("id")
        if self.restarts_ >= self.max_restarts:
            log.error("latent trainer process died (exit code %s) %d times: slow loop off, "
                      "the fast loop keeps model %s", exitcode, self.restarts_ + 1, kept)
            self.slot.collect = False
            self.slot.sink = None
            return
        self.restarts_ += 1
        log.error("latent trainer process died (exit code %s): restarting (%d/%d); the fast "
                  "loop keeps model %s", exitcode, self.restarts_, self.max_restarts, kept)
        self._close_queues()
        time.sleep(min(10.0, 0.5 * 2 ** (self.restarts_ - 1)))
        if not self._stopping.is_set():
            self._spawn()

    def _handle(self, msg: tuple) -> None:
        kind, body = msg
        if kind == "ready":
            self._ready.set()
        elif kind == "log":
            logger = logging.getLogger(body.name)
            if logger.isEnabledFor(body.levelno):
                logger.handle(body)
        elif kind == "status":
            self.buffer_ = dict(body)
        elif kind == "swap":
            model = _model_from_blob(body)
            entry = self.slot.swap(model, body["info"])
            rw = entry.info.get("rewards", {})
            log.info("latent model swapped in: %s (loss %.4f, separability %.3f, %d patches, "
                     "%.1f s)", model.name, rw.get("latent_loss", math.nan),
                     rw.get("latent_separability", math.nan), entry.info.get("n_patches", 0),
                     entry.info.get("train_s", math.nan))
            if self.on_swap is not None:
                self.on_swap(entry.info)
        elif kind == "round":
            self.rounds_ += 1
            self.rejected_ += int(body["rejected"])
            self.last_round_ = list(body["candidates"])

    # ------------------------------------------------------------------ inline
    def round(self) -> Candidate | None:
        """One search round run here, inline, on the slot's own buffer (tests, offline use):
        swaps and saves a better model.

        Returns
        -------
        Candidate or None
            The chosen candidate (None when all were rejected or the buffer was empty).
        """
        samples = self.slot.samples()
        if not samples:
            return None
        cur = self.slot.current()
        best, cands, info = run_round(samples, self.settings,
                                      current=None if cur is None else cur.model,
                                      checkpoint=self.checkpoint)
        self.rounds_ += 1
        self.rejected_ += sum(c.status in ("diverged", "collapsed") for c in cands)
        self.last_round_ = [c.as_dict() for c in cands]
        if info is None or best is None or best.model is None:
            log.info("latent round %d: model in use kept (%s)", self.rounds_,
                     None if cur is None else cur.info.get("id"))
            return best
        entry = self.slot.swap(best.model, info)
        log.info("latent model swapped in: %s (loss %.4f, separability %.3f, %d patches, %.1f s)",
                 best.model.name, best.rewards["latent_loss"],
                 best.rewards["latent_separability"],
                 info["n_patches"], info["train_s"])
        if self.on_swap is not None:
            self.on_swap(entry.info)
        return best
