"""Per-frame multi-objective Bayesian optimisation (ParEGO), warm-started across frames.

Algorithm: ParEGO — J. Knowles, "ParEGO: a hybrid algorithm with on-line landscape
approximation for expensive multiobjective optimization problems", IEEE Trans. Evol. Comput.
10(1):50-66, 2006. Every proposal draws a weight vector from the simplex lattice
(s = 10 for 2 objectives, 4 for 3, 3 beyond), scalarises the objectives — each rescaled to
[0, 1] over the observations — with the augmented Chebyshev function
``max_j(w_j f_j) + rho * sum_j(w_j f_j)``, rho = 0.05, fits a GP to the scalar and maximises
expected improvement. The raw X, Y are kept here, so a new weight vector simply
re-scalarises all observations.

Why not `skopt.Optimizer` per ask: skopt has no multi-objective mode, and its GP path refits
the kernel hyperparameters with L-BFGS restarts on every `tell` (measured here at up to 3 s
per ask). Instead the space is skopt's, reimplemented without importing it
(:mod:`rewardscope.science.dimensions`: normalisation, one-hot categoricals; its LHS design
is reproduced in :func:`maximin_lhs`), and the hyperparameters of C * Matern-5/2(ARD) +
White are fitted by scikit-learn's GP likelihood, written out here (:data:`GP_FIT`) —
only every `refit_every` tells, warm-started from the last theta (also across frames), with
a capped L-BFGS. Between refits the kernel is fixed, so the posterior is computed here in
numpy: one Cholesky factor and one candidate cross-covariance serve every weight vector of
a batch (per weight: a triangular solve and a mat-vec), and EI is maximised over
`n_candidates` points (uniform plus Gaussian perturbations of the current Pareto set,
snapped to valid integer/categorical values) — skopt's ``acq_optimizer="sampling"`` done
once per batch. BLAS is pinned to one thread inside ask/tell (tiny matrices; threaded BLAS
on a busy host measured ~3x slower). Measured: ~4 ms per ask between refits, ~80 ms per
refit, vs ~1.5 s per ask for skopt's default GP Optimizer (benchmarks/bench_optimizer.py).

Frames (warm start): `new_frame()` hands back the previous Pareto set to re-evaluate first
and ages all older observations. Forgetting rule: an observation of age a (frames) gets
noise standard deviation ``NOISE0 * forgetting**a`` in standardised-objective units (added
on the GP diagonal); once that exceeds 1 — the prior spread, i.e. no information left — it
is dropped. Jump rule: once the re-evaluations are told, the move
``median_i max_j |y_new - y_old|_ij / range_j(previous frame)`` is compared with the running
typical move (EMA over calm frames, starting at 0.1, floored at 0.02). If it exceeds
``explore_jump`` times that, the scene changed: older frames are dropped, `n_initial` LHS
points are queued and EI's xi rises from 0.01 to 0.1 for the rest of the frame.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import cho_solve, cholesky, solve_triangular
from scipy.optimize import minimize
from scipy.spatial.distance import cdist
from scipy.special import ndtr

from rewardscope.optimize.hypervolume import hypervolume as _hypervolume
from rewardscope.optimize.knee import knee_index, normalise_front
from rewardscope.optimize.pareto import non_dominated_mask
from rewardscope.plaindata import plain
from rewardscope.science.dimensions import Categorical, Integer, Real, Space
from rewardscope.science.threadlimits import pin_blas

RHO = 0.05  # augmented Chebyshev term (Knowles 2006)
NOISE0 = 0.03  # observation noise sd of a current-frame point, standardised units
XI = 0.01  # EI exploration margin, standardised units
XI_JUMP = 0.1  # ... after a detected jump
TYPICAL_MOVE0 = 0.1  # prior frame-to-frame move, fraction of objective range
TYPICAL_MOVE_FLOOR = 0.02  # a static scene must not make noise look like a jump
REUSE_MOVE = 1.0  # re-evaluation skip: anchor move <= this x the typical move (run_frame)
LOCAL_FRACTION = 0.25  # share of EI candidates perturbed around the Pareto set
LOCAL_SIGMAS = (0.02, 0.05, 0.15)  # perturbation scales in the unit-cube space
LBFGS_MAXITER = 40  # per hyperparameter refit
GP_FIT = "numpy"  # hyperparameter likelihood: "numpy" (_neg_log_marginal_likelihood) or "sklearn"
LHS_ITERATIONS = 200  # maximin LHS designs tried for the cold start (scored at once)
LHS_ITERATIONS_JUMP = 20  # ... for the re-exploration after a jump, inside a live frame
_INT_MAX = np.iinfo(np.int32).max


def simplex_lattice(n_objectives: int, s: int | None = None) -> np.ndarray:
    """All weight vectors with entries in {0, 1/s, ..., 1} summing to 1 (Knowles' set)."""
    if s is None:
        s = {1: 1, 2: 10, 3: 4}.get(n_objectives, 3)
    rows = [c for c in itertools.product(range(s + 1), repeat=n_objectives) if sum(c) == s]
    return np.array(rows, dtype=np.float64) / s


def _normalised_space(dimensions: Sequence) -> Space:
    """``Space(skopt.utils.normalize_dimensions(dimensions))`` on copies: every dimension
    mapped to [0, 1] (categories one-hot), what a GP wants."""
    space = Space(copy.deepcopy(list(dimensions)))
    for dim in space.dimensions:
        dim.set_transformer("onehot" if isinstance(dim, Categorical) else "normalize")
    return Space(space.dimensions)


def _key(x: Sequence) -> tuple:
    return tuple(plain(v) for v in x)


@dataclass
class FrameSearch:
    """What one frame's search produced; `X`, `Y` are this frame's evaluations in order.

    `hypervolume` uses this frame's padded nadir as reference (monitoring only); recompute
    with a fixed reference to compare frames or runs."""

    X: list[list]
    Y: np.ndarray
    pareto_X: list[list]
    pareto_Y: np.ndarray
    knee_x: list | None
    knee_y: np.ndarray | None
    n_evaluations: int
    evaluation_s: float
    optimizer_s: float
    warm_started: bool
    hypervolume: float
    reused_X: list[list] = field(default_factory=list)  # re-evaluations skipped (run_frame)


class MultiObjectiveOptimizer:
    """ParEGO over a search space with per-frame warm start; see the module docstring."""

    def __init__(
        self,
        space: list,
        n_objectives: int,
        *,
        n_initial: int = 6,
        seed: int = 0,
        n_candidates: int = 2000,
        refit_every: int = 5,
        forgetting: float = 2.0,
        explore_jump: float = 3.0,
        max_reevaluate: int = 8,
        max_observations: int = 300,
    ) -> None:
        if n_objectives < 1:
            raise ValueError("n_objectives must be >= 1")
        # our matrices are tiny: threaded BLAS on a busy host was measured 3x slower (wall)
        pin_blas()
        self.dimensions = copy.deepcopy(list(space))
        self.space = _normalised_space(self.dimensions)
        self.names = [d.name for d in self.space.dimensions]
        self.n_objectives = int(n_objectives)
        self.n_initial = int(n_initial)
        self.seed = int(seed)
        self.n_candidates = int(n_candidates)
        self.refit_every = max(1, int(refit_every))
        self.forgetting = float(forgetting)
        self.explore_jump = float(explore_jump)
        self.max_reevaluate = int(max_reevaluate)
        self.max_observations = int(max_observations)
        self.weights = simplex_lattice(self.n_objectives)

        self._rng = np.random.default_rng(seed)
        d = self.space.transformed_n_dims
        # C * Matern-5/2(ARD) + White: theta and its bounds in log space, in the order of
        # scikit-learn's kernel ``C(1, (0.01, 1000)) * Matern(ones(d), [(0.01, 100)] * d,
        # nu=2.5) + WhiteKernel(1e-4, (1e-6, 1))`` (:meth:`_sklearn_kernel`)
        self._theta0 = np.log(np.r_[1.0, np.ones(d), 1e-4])
        self._bounds = np.log(np.array([(0.01, 1000.0)] + [(0.01, 100.0)] * d + [(1e-6, 1.0)]))
        self._theta: np.ndarray | None = None
        self._tells_since_fit = 0

        self._X: list[list] = []
        self._Xt = np.zeros((0, d))
        self._Y = np.zeros((0, self.n_objectives))
        self._frame_of = np.zeros(0, dtype=np.int64)
        self._frame = 0
        self._init_queue: list[list] = self._initial_design(self.n_initial)
        self._pending: set[tuple] = set()
        self._reeval: dict[tuple, np.ndarray] = {}
        self._reeval_new: dict[tuple, np.ndarray] = {}
        self._reeval_span = np.ones(self.n_objectives)  # objective ranges of that frame
        self._assessed_moves: dict[tuple, float] = {}  # per point, once the jump rule ran
        self._typical_move = TYPICAL_MOVE0
        self._xi = XI
        self.stats: dict = {
            "overhead_s": 0.0,
            "n_asks": 0,
            "n_ask_calls": 0,
            "n_tells": 0,
            "n_hyperfits": 0,
            "hyperfit_s": 0.0,
            "last_ask_s": 0.0,
            "frame": 0,
            "warm": False,
            "jump": False,
            "n_jumps": 0,
            "last_move": None,
        }

    # ------------------------------------------------------------------ public API

    def ask(self, n: int = 1) -> list[list]:
        """`n` distinct points; batch members use distinct ParEGO weights for diversity."""
        if n < 1:
            raise ValueError("n must be >= 1")
        with self._overhead("last_ask_s"):
            out = self._ask(n)
        self.stats["n_asks"] += len(out)
        self.stats["n_ask_calls"] += 1
        return out

    def _ask(self, n: int) -> list[list]:
        if self._reeval:
            self._assess_jump()
        out: list[list] = []
        while self._init_queue and len(out) < n:
            x = self._init_queue.pop(0)
            if _key(x) not in self._pending:
                out.append(x)
        if len(out) < n:
            if self._model_ready():
                out.extend(self._propose(n - len(out), exclude=out))
            else:
                out.extend(self._random_points(n - len(out), exclude=out))
        self._pending.update(_key(x) for x in out)
        return out

    def tell(self, xs: list[list], ys) -> None:
        """Record evaluations; ys is (n, n_objectives), minimised, non-finite = failed/worst."""
        xs = [[plain(v) for v in x] for x in xs]
        if not xs:
            return
        with self._overhead():
            self._tell(xs, ys)

    def _tell(self, xs: list[list], ys) -> None:
        Y = np.array(ys, dtype=np.float64).reshape(len(xs), -1)
        if Y.shape[1] != self.n_objectives:
            raise ValueError(f"expected {self.n_objectives} objectives, got {Y.shape[1]}")
        Y[~np.all(np.isfinite(Y), axis=1)] = np.nan  # a failed row is worst in every objective
        self._X.extend(xs)
        self._Xt = np.vstack([self._Xt, self._transform(xs)])
        self._Y = np.vstack([self._Y, Y])
        self._frame_of = np.concatenate([self._frame_of, np.full(len(xs), self._frame)])
        for x, y in zip(xs, Y, strict=True):
            k = _key(x)
            self._pending.discard(k)
            if k in self._reeval:
                self._reeval_new[k] = y
        if self._reeval and len(self._reeval_new) == len(self._reeval):
            self._assess_jump()
        self._tells_since_fit += len(xs)
        self.stats["n_tells"] += len(xs)

    def new_frame(self) -> list[list]:
        """Start a frame; returns the previous Pareto set's X, to be re-evaluated first."""
        with self._overhead():
            return self._new_frame()

    def _new_frame(self) -> list[list]:
        self._pending.clear()
        self._reeval, self._reeval_new = {}, {}
        self._assessed_moves = {}
        self._xi = XI
        self.stats["jump"] = False
        self.stats["last_move"] = None
        if len(self._X) == 0:  # nothing learnt yet: this frame stays cold
            self.stats["warm"] = False
            return []
        last = int(self._frame_of.max())
        self._frame += 1
        self.stats["frame"] = self._frame
        self.stats["warm"] = True
        self._init_queue = []
        out = self._select_reevaluation(np.flatnonzero(self._frame_of == last))
        for x in out:
            i = self._last_index_of(x, last)
            self._reeval[_key(x)] = self._Y[i].copy()
        prev = self._Y[(self._frame_of == last) & np.all(np.isfinite(self._Y), axis=1)]
        if prev.shape[0]:
            span = prev.max(axis=0) - prev.min(axis=0)
            self._reeval_span = np.where(span > 0, span, 1.0)
        self._age_out()
        return out

    @property
    def designing(self) -> bool:
        """Whether the next asks still come from the initial design (defaults, LHS), not the
        model."""
        return bool(self._init_queue)

    def design_answers(self, n: int) -> bool:
        """Whether ``ask(n)`` would take all ``n`` points from the initial design queue
        (reading no observation: no jump to assess, no model), so it may be asked before
        the evaluations in flight are told."""
        if self._reeval or n < 1:
            return False
        free = 0
        for x in self._init_queue:
            free += _key(x) not in self._pending
            if free >= n:
                return True
        return False

    def enqueue(self, points: list[list]) -> None:
        """Evaluate these points next (before LHS/BO proposals), e.g. a workflow's defaults."""
        self._init_queue[:0] = [[plain(v) for v in x] for x in points]

    def reevaluation_move(self, xs: Sequence | None = None) -> float | None:
        """Largest move among the previous front's points re-evaluated so far this frame (or
        among those of ``xs``): per point the largest objective change as a fraction of the
        previous frame's objective range (a point that now fails moved a whole range); None
        before any was told."""
        wanted = None if xs is None else {_key(x) for x in xs}
        keys = [k for k in self._reeval if k in self._reeval_new
                and (wanted is None or k in wanted)]
        if not keys:  # all re-evaluations told: the jump rule kept each point's move
            moves = [m for k, m in self._assessed_moves.items()
                     if wanted is None or k in wanted]
            return max(moves) if moves else None
        return float(self._point_moves(keys).max())

    def _point_moves(self, keys: list[tuple]) -> np.ndarray:
        """Per re-evaluated point: the largest objective change as a fraction of the previous
        frame's objective range (a point that now fails moved a whole range)."""
        old = np.array([self._reeval[k] for k in keys]).reshape(-1, self.n_objectives)
        new = np.array([self._reeval_new[k] for k in keys]).reshape(-1, self.n_objectives)
        return np.where(np.isfinite(new), np.abs(new - old) / self._reeval_span, 1.0).max(axis=1)

    def within_noise(self, move: float | None) -> bool:
        """Whether a re-evaluation ``move`` (:meth:`reevaluation_move`) is within the frame-to-
        frame noise this search has measured: at most REUSE_MOVE times the typical move of
        calm frames, once at least one calm frame has been measured (never on the prior)."""
        return (move is not None and self.stats.get("n_calm", 0) >= 1
                and move <= REUSE_MOVE * self._typical_move)

    def reuse_reevaluations(self, xs: list[list]) -> list[list]:
        """Tell the previous frame's values of re-evaluation points ``xs`` as this frame's
        observations, without evaluating them: for a frame whose inputs are unchanged within
        noise (:meth:`within_noise` of the points already re-evaluated). No jump is assessed
        for this frame (nothing new was measured), and the copies do not count toward the
        hyperparameter refit (they add no information).

        Returns
        -------
        list of list
            The points reused (those of ``xs`` awaiting re-evaluation this frame).
        """
        with self._overhead():
            pts = [list(x) for x in xs
                   if _key(x) in self._reeval and _key(x) not in self._reeval_new]
            ys = np.array([self._reeval[_key(x)] for x in pts]).reshape(len(pts),
                                                                        self.n_objectives)
            self._reeval, self._reeval_new = {}, {}
            if pts:
                since = self._tells_since_fit
                self._tell(pts, ys)
                self._tells_since_fit = since
                self.stats["n_reused"] = self.stats.get("n_reused", 0) + len(pts)
        return pts

    def observe_jump(self, jumped: bool = True) -> None:
        """External scene-change signal (e.g. a new sample area): same response as detection."""
        self._reeval, self._reeval_new = {}, {}
        if jumped:
            self._on_jump()

    def pareto(self) -> tuple[list[list], np.ndarray]:
        """Non-dominated X, Y among this frame's finite evaluations."""
        idx = self._current_finite()
        if idx.size == 0:
            return [], np.zeros((0, self.n_objectives))
        front = idx[non_dominated_mask(self._Y[idx])]
        return [list(self._X[i]) for i in front], self._Y[front].copy()

    def knee(self, method: str = "euclidean", scale=None) -> tuple[list, np.ndarray]:
        """Knee of this frame's front (see `knee.knee_index`)."""
        X, Y = self.pareto()
        if not X:
            raise ValueError("no finite evaluations in this frame yet")
        i = knee_index(Y, method, scale)
        return X[i], Y[i]

    def hypervolume(self, ref=None) -> float:
        """HV of this frame's front. Default ref: this frame's nadir padded by 10 % of the
        range — fine for monitoring, but pass a fixed `ref` to compare runs or frames."""
        _, Y = self.pareto()
        if Y.shape[0] == 0:
            return 0.0
        if ref is None:
            Yc = self._Y[self._current_finite()]
            hi, lo = Yc.max(axis=0), Yc.min(axis=0)
            span = hi - lo
            ref = hi + np.where(span > 0, 0.1 * span, 0.1 * np.maximum(np.abs(hi), 1.0))
        return _hypervolume(Y, ref)

    def state_dict(self) -> dict:
        """Plain lists/floats/ints (JSON-able; non-finite objectives become None)."""
        return {
            "version": 1,
            "n_objectives": self.n_objectives,
            "config": {
                "n_initial": self.n_initial,
                "seed": self.seed,
                "n_candidates": self.n_candidates,
                "refit_every": self.refit_every,
                "forgetting": self.forgetting,
                "explore_jump": self.explore_jump,
                "max_reevaluate": self.max_reevaluate,
                "max_observations": self.max_observations,
            },
            "X": [list(x) for x in self._X],
            "Y": [[float(v) if np.isfinite(v) else None for v in row] for row in self._Y],
            "frame_of": [int(f) for f in self._frame_of],
            "frame": self._frame,
            "theta": None if self._theta is None else [float(t) for t in self._theta],
            "tells_since_fit": self._tells_since_fit,
            "rng": self._rng.bit_generator.state,
            "init_queue": [list(x) for x in self._init_queue],
            "pending": [list(k) for k in self._pending],
            "reeval": [[list(k), [float(v) for v in y]] for k, y in self._reeval.items()],
            "reeval_new": [[list(k), [float(v) for v in y]] for k, y in self._reeval_new.items()],
            "reeval_span": [float(v) for v in self._reeval_span],
            "typical_move": self._typical_move,
            "xi": self._xi,
            "stats": dict(self.stats),
        }

    @classmethod
    def from_state_dict(cls, space: list, d: dict) -> MultiObjectiveOptimizer:
        """Inverse of `state_dict`; `space` must be the same search space."""
        if d.get("version") != 1:
            raise ValueError(f"unsupported state version {d.get('version')!r}")
        opt = cls(space, d["n_objectives"], **d["config"])
        xs = [list(x) for x in d["X"]]
        opt._X = xs
        opt._Xt = opt.space.transform(xs) if xs else opt._Xt
        Y = np.array([[np.nan if v is None else v for v in row] for row in d["Y"]], dtype=float)
        opt._Y = Y.reshape(len(xs), opt.n_objectives)
        opt._frame_of = np.array(d["frame_of"], dtype=np.int64)
        opt._frame = int(d["frame"])
        opt._theta = None if d["theta"] is None else np.array(d["theta"], dtype=float)
        opt._tells_since_fit = int(d["tells_since_fit"])
        opt._rng.bit_generator.state = d["rng"]
        opt._init_queue = [list(x) for x in d["init_queue"]]
        opt._pending = {tuple(x) for x in d["pending"]}
        opt._reeval = {tuple(k): np.array(y, dtype=float) for k, y in d["reeval"]}
        opt._reeval_new = {tuple(k): np.array(y, dtype=float) for k, y in d["reeval_new"]}
        opt._reeval_span = np.array(d["reeval_span"], dtype=float)
        opt._typical_move = float(d["typical_move"])
        opt._xi = float(d["xi"])
        opt.stats = dict(d["stats"])
        return opt

    @contextmanager
    def _overhead(self, key: str | None = None) -> Iterator[None]:
        """Time optimizer work into `stats`."""
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.stats["overhead_s"] += dt
        if key is not None:
            self.stats[key] = dt

    # ------------------------------------------------------------------ frames

    def _current_finite(self) -> np.ndarray:
        ok = (self._frame_of == self._frame) & np.all(np.isfinite(self._Y), axis=1)
        return np.flatnonzero(ok)

    def _last_index_of(self, x: list, frame: int) -> int:
        k = _key(x)
        for i in range(len(self._X) - 1, -1, -1):
            if self._frame_of[i] == frame and _key(self._X[i]) == k:
                return i
        raise KeyError(k)

    def _select_reevaluation(self, idx: np.ndarray) -> list[list]:
        """Previous front, deduplicated; if capped: knee, extremes, then farthest-point fill."""
        idx = idx[np.all(np.isfinite(self._Y[idx]), axis=1)]
        if idx.size == 0:
            return []
        front = idx[non_dominated_mask(self._Y[idx])]
        seen: dict[tuple, int] = {}
        for i in front:
            seen.setdefault(_key(self._X[i]), int(i))
        front = np.array(list(seen.values()), dtype=np.int64)
        if front.size > self.max_reevaluate:
            Z = normalise_front(self._Y[front])
            chosen = [knee_index(self._Y[front])]
            for j in range(self.n_objectives):
                e = int(np.argmin(Z[:, j]))
                if e not in chosen:
                    chosen.append(e)
            while len(chosen) < self.max_reevaluate:
                dist = np.min(np.linalg.norm(Z[:, None] - Z[chosen][None], axis=2), axis=1)
                if dist.max() <= 0.0:  # the rest duplicate chosen objective vectors
                    break
                chosen.append(int(np.argmax(dist)))
            front = front[chosen[: self.max_reevaluate]]
        return [list(self._X[i]) for i in front]

    def _age_out(self) -> None:
        """Drop observations the forgetting rule has made uninformative, then cap the count."""
        keep = np.ones(len(self._X), dtype=bool)
        if self.forgetting > 1.0:
            age = self._frame - self._frame_of
            keep &= NOISE0 * self.forgetting**age <= 1.0
        if keep.sum() > self.max_observations:  # oldest first
            order = np.argsort(self._frame_of, kind="stable")
            drop = order[: int(keep.sum()) - self.max_observations]
            keep[drop] = False
        self._subset(keep)

    def _subset(self, keep: np.ndarray) -> None:
        self._X = [x for x, k in zip(self._X, keep, strict=True) if k]
        self._Xt, self._Y, self._frame_of = self._Xt[keep], self._Y[keep], self._frame_of[keep]

    def _assess_jump(self) -> None:
        """Apply the jump rule to the re-evaluated previous front (module docstring)."""
        keys = [k for k in self._reeval if k in self._reeval_new]
        # a point that now fails moved "infinitely": counted as a full-range move
        moves = self._point_moves(keys) if keys else np.zeros(0)
        self._assessed_moves = dict(zip(keys, moves.tolist(), strict=True))
        self._reeval, self._reeval_new = {}, {}
        if len(keys) == 0:
            return
        move = float(np.median(moves))
        self.stats["last_move"] = move
        if move > self.explore_jump * self._typical_move:
            self._on_jump()
        else:
            self._typical_move = max(TYPICAL_MOVE_FLOOR, 0.7 * self._typical_move + 0.3 * move)
            self.stats["n_calm"] = self.stats.get("n_calm", 0) + 1

    def _on_jump(self) -> None:
        self._subset(self._frame_of == self._frame)
        self._init_queue = self._initial_design(self.n_initial, LHS_ITERATIONS_JUMP)
        self._xi = XI_JUMP
        self._tells_since_fit = self.refit_every  # refit hyperparameters at the next ask
        self.stats["jump"] = True
        self.stats["n_jumps"] += 1

    # ------------------------------------------------------------------ proposals

    def _seed(self) -> int:
        return int(self._rng.integers(_INT_MAX))

    def _initial_design(self, n: int, iterations: int = LHS_ITERATIONS) -> list[list]:
        """skopt's ``Lhs(criterion="maximin", iterations).generate(dimensions, n, seed)``
        (:func:`maximin_lhs`: the same designs and choice, scored at once), mapped back to
        parameter values through the normalising space, built once per optimizer (skopt
        rebuilds its transformers per call and maps every improving design)."""
        if n <= 0:
            return []
        space = self.__dict__.get("_lhs_space")
        if space is None:
            space = Space(copy.deepcopy(self.dimensions))
            space.set_transformer("normalize")
            self._lhs_space = space
        best = maximin_lhs(n, space.n_dims, iterations, np.random.RandomState(self._seed()))
        return [[plain(v) for v in x] for x in space.inverse_transform(best)]

    def _random_points(self, n: int, exclude: list[list]) -> list[list]:
        taken = {_key(x) for x in exclude} | self._pending
        out: list[list] = []
        for _ in range(20 * n):
            x = [plain(v) for v in self.space.rvs(1, random_state=self._seed())[0]]
            if _key(x) not in taken:
                out.append(x)
                taken.add(_key(x))
                if len(out) == n:
                    break
        return out

    def _model_ready(self) -> bool:
        return len(self._X) >= 2

    def _scalarise(self, w: np.ndarray) -> np.ndarray:
        """Augmented Chebyshev of [0,1]-rescaled objectives; failed rows score above all."""
        Y = self._Y
        finite = np.all(np.isfinite(Y), axis=1)
        if not finite.any():
            return np.zeros(len(Y))
        F = normalise_front(Y[finite])
        s = np.full(len(Y), 1.1 * (1.0 + RHO * w.sum()))
        s[finite] = np.max(w * F, axis=1) + RHO * (F @ w)
        return s

    def _noise(self) -> np.ndarray:
        age = self._frame - self._frame_of
        return (NOISE0 * self.forgetting ** age.astype(float)) ** 2

    def _sklearn_kernel(self):
        """The GP kernel as scikit-learn's objects (the ``GP_FIT = "sklearn"`` reference);
        its ``theta`` and ``bounds`` are ``_theta0`` and ``_bounds``."""
        from skopt.learning.gaussian_process.kernels import (  # noqa: PLC0415
            ConstantKernel,
            Matern,
            WhiteKernel,
        )

        d = self.space.transformed_n_dims
        return ConstantKernel(1.0, (0.01, 1000.0)) * Matern(
            length_scale=np.ones(d), length_scale_bounds=[(0.01, 100.0)] * d, nu=2.5
        ) + WhiteKernel(1e-4, (1e-6, 1.0))

    def _fit_hyperparameters(self, z: np.ndarray, alpha: np.ndarray) -> None:
        """Type-II ML fit of (amplitude, length scales, white noise) with skopt's GP.

        Warm-started from the previous theta (one L-BFGS run, capped iterations); only the
        very first fit pays for restarts.
        """
        t0 = time.perf_counter()
        seed = self._seed()
        if GP_FIT == "numpy":
            self._theta = _fit_theta(self._Xt, z, alpha, self._bounds,
                                     self._theta0 if self._theta is None else self._theta,
                                     restarts=1 if self._theta is None else 0, seed=seed)
        else:
            from skopt.learning import GaussianProcessRegressor  # noqa: PLC0415 - reference

            kernel = self._sklearn_kernel()
            if self._theta is not None:
                kernel = kernel.clone_with_theta(self._theta)
            gp = GaussianProcessRegressor(
                kernel=kernel,
                alpha=alpha,
                optimizer=_lbfgs_capped,
                normalize_y=False,
                n_restarts_optimizer=1 if self._theta is None else 0,
                random_state=seed,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gp.fit(self._Xt, z)
            self._theta = gp.kernel_.theta.copy()
        self._tells_since_fit = 0
        self.stats["n_hyperfits"] += 1
        self.stats["hyperfit_s"] += time.perf_counter() - t0

    def _transform(self, xs: list[list]) -> np.ndarray:
        """``self.space.transform(xs)`` as float64 rows (none for no points)."""
        if not xs:
            return np.zeros((0, self.space.transformed_n_dims))
        return np.asarray(self.space.transform(xs), dtype=np.float64)

    def _snap(self, Z: np.ndarray) -> np.ndarray:
        """Map unit-cube points onto representable transformed points (rounded integers,
        one-hot categories) column-block-wise — skopt's row-wise transform is ~10x slower.

        A one-column integer or two-valued categorical is snapped in closed form
        (:func:`_snap_rule`, equal to skopt's ``transform(inverse_transform(.))``, tested):
        a round trip of 2000 candidates through Python lists held the GIL for ~1 % of a warm
        frame's samples. Any other one-column dimension takes the round trip."""
        out = np.clip(Z, 0.0, 1.0)
        rules = self.__dict__.get("_snap_rules")
        if rules is None:  # the space is fixed: its rules are found once
            rules = self._snap_rules = [_snap_rule(d) if d.transformed_size == 1
                                        and not isinstance(d, Real) else None
                                        for d in self.space.dimensions]
        col = 0
        for dim, rule in zip(self.space.dimensions, rules, strict=True):
            size = dim.transformed_size
            block = out[:, col : col + size]
            if isinstance(dim, Real):
                pass
            elif size > 1:  # one-hot
                hot = np.argmax(block, axis=1)
                block[:] = 0.0
                block[np.arange(len(block)), hot] = 1.0
            else:
                if rule is not None:
                    block[:, 0] = rule(block[:, 0])
                else:
                    snapped = dim.transform(dim.inverse_transform(block[:, 0]))
                    block[:, 0] = np.asarray(snapped, dtype=float).reshape(len(block))
            col += size
        return out

    def _candidates(self, exclude_t: np.ndarray) -> np.ndarray:
        """Transformed EI candidates: uniform + Gaussian perturbations of the current front."""
        d = self.space.transformed_n_dims
        cur = self._current_finite()
        if cur.size:
            centres = self._Xt[cur[non_dominated_mask(self._Y[cur])]]
        else:
            finite = np.flatnonzero(np.all(np.isfinite(self._Y), axis=1))
            centres = self._Xt[finite[non_dominated_mask(self._Y[finite])]] if finite.size else None
        n_local = int(LOCAL_FRACTION * self.n_candidates) if centres is not None else 0
        Z = self._rng.random((self.n_candidates, d))
        if n_local:
            pick = self._rng.integers(len(centres), size=n_local)
            sig = self._rng.choice(LOCAL_SIGMAS, size=(n_local, 1))
            Z[:n_local] = centres[pick] + sig * self._rng.standard_normal((n_local, d))
        C = self._snap(Z)
        if exclude_t.shape[0]:
            C = C[_min_sq_dist(C, exclude_t) > 1e-12]
        return C

    def _propose(self, n: int, exclude: list[list]) -> list[list]:
        """ParEGO batch: one lattice weight per point, shared GP factor and candidate set."""
        replace = n > len(self.weights)
        W = self.weights[self._rng.choice(len(self.weights), size=n, replace=replace)]
        S = np.stack([self._scalarise(w) for w in W], axis=1)  # (n_obs, n)
        sd = S.std(axis=0)
        Zy = (S - S.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        alpha = self._noise()
        if self._theta is None or self._tells_since_fit >= self.refit_every:
            self._fit_hyperparameters(Zy[:, 0], alpha)
        amp, ls, white = _unpack_theta(self._theta)
        Xs = self._Xt / ls
        K = _matern52(Xs, Xs, amp)
        K[np.diag_indices_from(K)] += white + alpha
        L = _cholesky(K)
        A = cho_solve((L, True), Zy)  # (n_obs, n)

        cur = self._frame_of == self._frame
        exclude_t = self._Xt[cur]
        pend = [list(k) for k in self._pending] + exclude
        if pend:
            exclude_t = np.vstack([exclude_t, self._transform(pend)])
        C = self._candidates(exclude_t)
        if C.shape[0] == 0:
            return self._random_points(n, exclude)
        Ks = _matern52(C / ls, Xs, amp)  # (n_cand, n_obs)
        V = solve_triangular(L, Ks.T, lower=True, check_finite=False)
        sd_post = np.sqrt(np.maximum(amp - np.einsum("ij,ij->j", V, V), 1e-12))
        mean = Ks @ A  # (n_cand, n)
        if cur.any():
            best = Zy[cur].min(axis=0)
        else:  # only aged data: incumbent = best posterior mean at the data
            best = ((K - np.diag(white + alpha)) @ A).min(axis=0)
        taken = np.zeros(C.shape[0], dtype=bool)
        picked = []
        for j in range(n):
            imp = best[j] - mean[:, j] - self._xi
            u = imp / sd_post
            ei = imp * ndtr(u) + sd_post * np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
            ei[taken] = -np.inf
            i = int(np.argmax(ei))
            if not np.isfinite(ei[i]):
                break
            picked.append(C[i])
            taken |= np.all(C == C[i], axis=1)  # duplicates of the pick, too
        out = [[plain(v) for v in x] for x in self.space.inverse_transform(np.array(picked))]
        if len(out) < n:
            out.extend(self._random_points(n - len(out), exclude + out))
        return out


def _snap_rule(dim) -> Callable[[np.ndarray], np.ndarray] | None:
    """``dim.transform(dim.inverse_transform(x))`` for a one-column transformed dimension, as
    array arithmetic, where the transform is one this knows; else None.

    - ``Integer`` normalised with a uniform prior: the value ``round(x (high - low) + low)``
      clipped to [low, high], then ``(v - low) / (high - low)`` in the same float operations
      the dimension does;
    - two-valued ``Categorical`` one-hot: the second category where x > 0.5 (the one-hot
      column's threshold), transformed to 1.0, else 0.0.
    """
    if (type(dim) is Integer and dim.transform_ == "normalize" and dim.prior == "uniform"
            and dim.high > dim.low):
        low, high = float(dim.low), float(dim.high)
        lo, hi, span = int(dim.low), int(dim.high), high - low

        def integer(x: np.ndarray) -> np.ndarray:
            v = np.clip(np.round(x * span + low).astype(int), lo, hi)
            return (v - low) / span

        return integer
    if type(dim) is Categorical and dim.transform_ == "onehot" and len(dim.categories) == 2:
        return lambda x: (x > 0.5).astype(np.float64)
    return None


def _unpack_theta(theta: np.ndarray) -> tuple[float, np.ndarray, float]:
    """theta of C * Matern(ls) + White, log-space: [log C, log ls..., log noise]."""
    t = np.exp(theta)
    return float(t[0]), t[1:-1], float(t[-1])


def _matern52(A: np.ndarray, B: np.ndarray, amp: float) -> np.ndarray:
    """Matern-5/2 on inputs already divided by the length scales (same as sklearn's)."""
    r = np.sqrt(5.0) * cdist(A, B)
    return amp * (1.0 + r + r * r / 3.0) * np.exp(-r)


def _min_sq_dist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return cdist(A, B, "sqeuclidean").min(axis=1)


def _neg_log_marginal_likelihood(theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                                 alpha: np.ndarray) -> tuple[float, np.ndarray]:
    """-log p(y | X, theta) and its gradient in theta for C * Matern-5/2(ARD) + White with
    per-observation noise ``alpha``: scikit-learn's ``log_marginal_likelihood`` for this one
    kernel (same formulas, same theta layout), without its generic kernel algebra, which
    cost ~0.7 ms per call against ~0.1 ms here. A covariance that is not positive definite
    scores +inf with a zero gradient, as there."""
    amp, ls, white = _unpack_theta(theta)
    n = X.shape[0]
    D = (X[:, None, :] - X[None, :, :]) ** 2 / ls**2  # (n, n, d)
    t = np.sqrt(5.0 * D.sum(axis=-1))
    e = np.exp(-t)
    M = (1.0 + t + t * t / 3.0) * e
    K = amp * M
    K[np.diag_indices(n)] += white + alpha
    try:
        L = cholesky(K, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return np.inf, np.zeros_like(theta)
    a = cho_solve((L, True), y, check_finite=False)
    lml = -0.5 * float(y @ a) - float(np.log(np.diag(L)).sum()) - 0.5 * n * math.log(2 * math.pi)
    W = np.outer(a, a) - cho_solve((L, True), np.eye(n), check_finite=False)
    grad = np.empty(theta.shape[0])
    grad[0] = 0.5 * float(np.sum(W * (amp * M)))
    grad[1:-1] = 0.5 * amp * (5.0 / 3.0) * np.einsum("ij,ijk->k", W * ((t + 1.0) * e), D)
    grad[-1] = 0.5 * white * float(np.trace(W))
    return -lml, -grad


def _fit_theta(X: np.ndarray, y: np.ndarray, alpha: np.ndarray, bounds: np.ndarray,
               theta0: np.ndarray, restarts: int, seed: int) -> np.ndarray:
    """Type-II maximum likelihood theta, as ``GaussianProcessRegressor(optimizer=
    _lbfgs_capped, n_restarts_optimizer=restarts, random_state=seed).fit`` finds it: one
    capped L-BFGS-B run from ``theta0``, plus ``restarts`` from uniform draws in ``bounds``
    (log space), the lowest -log-likelihood wins."""
    def obj(theta):
        return _neg_log_marginal_likelihood(theta, X, y, alpha)

    optima = [_lbfgs_capped(obj, np.asarray(theta0, dtype=float), bounds)]
    if restarts > 0:
        rng = np.random.RandomState(seed)
        for _ in range(restarts):
            optima.append(_lbfgs_capped(obj, rng.uniform(bounds[:, 0], bounds[:, 1]), bounds))
    return np.asarray(optima[int(np.argmin([f for _, f in optima]))][0], dtype=float).copy()


def _lbfgs_capped(obj_func, initial_theta, bounds):
    """sklearn GP optimizer hook: L-BFGS-B with an iteration cap (hyperparameters need not
    be exact to rank EI candidates, and the cap bounds the worst-case refit time)."""
    res = minimize(
        obj_func,
        initial_theta,
        method="L-BFGS-B",
        jac=True,
        bounds=bounds,
        options={"maxiter": LBFGS_MAXITER},
    )
    return res.x, res.fun


def _cholesky(K: np.ndarray) -> np.ndarray:
    jitter = 0.0
    for _ in range(6):
        try:
            return cholesky(K + jitter * np.eye(len(K)), lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            jitter = 1e-8 if jitter == 0.0 else jitter * 10.0
    raise np.linalg.LinAlgError("GP covariance is not positive definite")


def _in_order(objective: Callable[[list], Sequence[float]], xs: list[list],
              pool: ThreadPoolExecutor | None, workers: int,
              may_start: Callable[[], bool]) -> list:
    """``objective`` of each of ``xs``, in order, at most ``workers`` at once on ``pool``
    (None: one after another), each started only while ``may_start()``: the results of the
    prefix started. A thread that finishes starts the next point at once (a batch whose
    members differ in cost no longer holds the others back); the points, their order and
    their results are those of evaluating one by one."""
    if pool is None or len(xs) <= 1 or workers <= 1:
        out = []
        for x in xs:
            if not may_start():
                break
            out.append(objective(x))
        return out
    futures: list = []
    active: set = set()
    while True:
        while len(futures) < len(xs) and len(active) < workers and may_start():
            f = pool.submit(objective, xs[len(futures)])
            futures.append(f)
            active.add(f)
        if not active:
            break
        finished, active = wait(active, return_when=FIRST_COMPLETED)
        if any(f.exception() is not None for f in finished):  # stop feeding; raise in order
            wait(active)
            break
    return [f.result() for f in futures]


def maximin_lhs(n: int, d: int, iterations: int, rng: np.random.RandomState) -> np.ndarray:
    """skopt's ``Lhs(lhs_type="classic", criterion="maximin", iterations)`` design in the unit
    cube: the same random designs from ``rng`` and the same choice, scored as arrays at once.

    Each design puts one point in each of ``n`` strata per dimension (jittered uniformly
    inside it, strata permuted per dimension); the first design is drawn and, as in skopt,
    replaced by the first of the next ``iterations`` with the widest closest pair. skopt
    scores them one by one in Python (~14 ms of a cold search's start for 200); here the
    draws stay in skopt's order (so the designs are identical) and the scoring is one
    vectorised distance computation (~3 ms).

    Parameters
    ----------
    n, d : int
        Points and dimensions.
    iterations : int
        Designs compared after the first.
    rng : numpy.random.RandomState
        skopt's random state (its draws are consumed in skopt's order).

    Returns
    -------
    (n, d) ndarray of float
    """
    edges = np.linspace(0.0, 1.0, n + 1)
    width, low = np.diff(edges), edges[:n]

    def draw() -> np.ndarray:  # skopt's Lhs._lhs_normalized + _random_permute_matrix
        h = rng.rand(n, d) * width[:, None] + low[:, None]
        out = np.empty_like(h)
        for j in range(d):
            out[:, j] = h[rng.permutation(n), j]
        return out

    first = draw()
    if n < 2 or iterations < 1:
        return first
    designs = np.stack([draw() for _ in range(int(iterations))])
    i, j = np.triu_indices(n, 1)
    closest = np.sqrt(((designs[:, i, :] - designs[:, j, :]) ** 2).sum(axis=-1)).min(axis=1)
    return designs[int(np.argmax(closest))] if closest.max() > 0.0 else first


def run_frame(
    objective: Callable[[list], Sequence[float]],
    opt: MultiObjectiveOptimizer,
    *,
    budget: int,
    deadline_s: float | None = None,
    batch: int = 1,
    workers: int = 1,
    reuse: bool = False,
    anchor: Sequence | None = None,
    patience: int = 0,
    knee: str = "euclidean",
    knee_scale: Sequence[float] | None = None,
) -> FrameSearch:
    """One frame: re-evaluate the previous front (counts toward `budget`), then ask/evaluate
    in batches until `budget` evaluations or `deadline_s` seconds, whichever comes first.

    ``reuse`` skips re-evaluations whose inputs are unchanged within noise: ``anchor`` (the
    previous frame's choice, else the first point of the previous front) is re-evaluated
    first, alone; if it moved no more than this search's typical calm-frame move
    (:meth:`MultiObjectiveOptimizer.within_noise`), the rest of the previous front keeps its
    values (:meth:`~MultiObjectiveOptimizer.reuse_reevaluations`, listed in ``reused_X``) and
    still counts toward `budget`: the frame spends its evaluations on new candidates only.
    Otherwise the rest is re-evaluated as usual. With ``workers`` > 1, where this search's
    last anchor moved (or no calm frame is measured yet), the anchor is not evaluated alone:
    the whole front goes in one pass, the anchor first, and the anchor's own move decides.

    ``workers`` > 1 evaluates up to that many candidates at once in threads (the objective
    must be thread-safe; numpy, numba ``nogil`` kernels and BLAS release the GIL), asking at
    least ``workers`` candidates per batch: ParEGO gives each batch member its own weight
    vector, so a batch explores as well as the same number of sequential asks between
    GP refits. The evaluations of a pass run in order, a thread starting the next point as
    soon as it is free (:func:`_in_order`); the deadline is checked before each start.

    ``patience`` > 0 ends the search early once that many evaluations in a row have left
    the answer unchanged, the knee of the frame's front under ``knee`` / ``knee_scale`` (the
    rule the caller picks its answer with), counted only after the initial design is spent
    (:attr:`MultiObjectiveOptimizer.designing`): the budget is then a cap that a hard frame
    spends and an easy one does not. 0 spends the whole budget. (A criterion on the whole
    front stops later for the same answers: with two or three objectives almost every
    evaluation adds a non-dominated point somewhere.)
    """
    t_start = time.perf_counter()
    overhead0 = opt.stats["overhead_s"]
    deadline = None if deadline_s is None else t_start + deadline_s
    workers = max(1, int(workers))
    batch = max(int(batch), workers)
    X: list[list] = []
    Ys: list[np.ndarray] = []
    reused: list[list] = []
    eval_s = 0.0
    pool = ThreadPoolExecutor(workers, thread_name_prefix="eval") if workers > 1 else None

    def spent() -> int:
        return len(X) + len(reused)

    def may_start() -> bool:
        return deadline is None or time.perf_counter() < deadline

    def evaluate(xs: list[list]) -> int:
        """Evaluate ``xs`` in order (within the budget, each started before the deadline)
        and tell the evaluated prefix at once; returns its length."""
        nonlocal eval_s
        xs = xs[: max(0, budget - spent())]
        t0 = time.perf_counter()
        ys = _in_order(objective, xs, pool, workers, may_start)
        eval_s += time.perf_counter() - t0
        done = len(ys)
        X.extend(xs[:done])
        Ys.extend(np.asarray(y, dtype=np.float64).ravel() for y in ys)
        if done:
            opt.tell(X[-done:], np.array(Ys[-done:]))
        return done

    try:
        reeval = opt.new_frame()
        warm = bool(opt.stats["warm"])
        if reuse and len(reeval) > 1:
            if anchor is not None:  # the previous choice first (stable sort keeps the rest)
                first = _key(anchor)
                reeval = sorted(reeval, key=lambda x: _key(x) != first)
            # the anchor alone decides. It is evaluated alone where reuse may follow (re-
            # evaluating more beside it was measured slower at 1024²: on a calm frame the
            # extra evaluation is CPU the other workflows need); where this search's last
            # anchor moved, or no calm frame is measured yet (reuse cannot follow), the rest
            # is likely re-evaluated anyway, and the whole front goes in one pass, the anchor
            # first, so that no evaluation thread idles (a drifting scene: domains, amorphous
            # regions)
            calm_before = (opt.stats.get("n_calm", 0) >= 1
                           and not opt.stats.get("anchor_moved", False))
            lead = 1 if calm_before or workers == 1 else len(reeval)
            evaluate(reeval[:lead])
            calm = opt.within_noise(opt.reevaluation_move(reeval[:1]))
            opt.stats["anchor_moved"] = not calm
            if lead < len(reeval):
                if calm:
                    reused = opt.reuse_reevaluations(reeval[lead:])
                else:
                    evaluate(reeval[lead:])
        else:
            evaluate(reeval)
        def answer() -> tuple | None:  # the knee's point; None before a finite evaluation
            try:
                return _key(opt.knee(knee, knee_scale)[0])
            except ValueError:
                return None

        last = answer() if patience > 0 else None
        stale = 0  # evaluations in a row, after the initial design, that left the knee as is
        while spent() < budget and may_start():
            designing = opt.designing
            xs = opt.ask(min(batch, budget - spent()))
            # the asks after it that the initial design alone answers read nothing these
            # evaluations will tell: asked now (same points, same order, same state), they
            # are evaluated in the same pass, so a thread that finishes early starts the next
            # point instead of waiting for its batch partner
            while designing and (more := min(batch, budget - spent() - len(xs))) > 0 \
                    and opt.design_answers(more):
                xs += opt.ask(more)
            n = evaluate(xs)
            if patience > 0:
                now = answer()
                stale = 0 if designing or now is None or now != last else stale + n
                last = now
                if stale >= patience:
                    break
            if n < len(xs):
                break
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    pX, pY = opt.pareto()
    if pX:
        kx, ky = opt.knee()
        # exact hypervolume exists here for <= 3 objectives; beyond that it is not reported
        hv = opt.hypervolume() if opt.n_objectives <= 3 else float("nan")
    else:
        kx, ky, hv = None, None, 0.0
    return FrameSearch(
        X=X,
        Y=np.array(Ys).reshape(len(X), opt.n_objectives),
        pareto_X=pX,
        pareto_Y=pY,
        knee_x=kx,
        knee_y=ky,
        n_evaluations=len(X),
        evaluation_s=eval_s,
        optimizer_s=opt.stats["overhead_s"] - overhead0,
        warm_started=warm,
        hypervolume=hv,
        reused_X=reused,
    )
