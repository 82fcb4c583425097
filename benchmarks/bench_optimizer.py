"""Optimizer overhead: skopt's default GP `Optimizer` vs our ParEGO, cold and warm.

Problem: 4 parameters in [0, 1], two minimised objectives, a ZDT1 whose optimal set sits at
x1..x3 = c (c = 0.25 on the cold frame, drifting to 0.30 on the warm one): f1 = x0,
g = 1 + 9 * mean((x1..3 - c)^2), f2 = g * (1 - sqrt(f1 / g)); front f2 = 1 - sqrt(f1).
skopt has no multi-objective mode, so baseline (a) minimises the equal-weight sum f1 + f2
(one trade-off point, which is what a single-objective loop gives you). Every row does the
same number of ask/tell evaluations; "optimizer s" is time inside ask/tell (the objective
costs microseconds, so wall ~ optimizer time). Hypervolume uses the fixed reference
(1.1, 2.0) over all evaluated points; its maximum is 2.2 - 1/3 = 1.867.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
from skopt import Optimizer
from skopt.space import Real

from rewardscope.optimize import MultiObjectiveOptimizer, hypervolume, run_frame

REF = (1.1, 2.0)
HV_MAX = 2.2 - 1.0 / 3.0
DIMS = [Real(0.0, 1.0, name=f"x{i}") for i in range(4)]


def shifted_zdt1(c: float) -> Callable[[list], list[float]]:
    def f(x: list) -> list[float]:
        x = np.asarray(x, dtype=float)
        g = 1.0 + 9.0 * np.mean((x[1:] - c) ** 2)
        return [float(x[0]), float(g * (1.0 - np.sqrt(x[0] / g)))]

    return f


def run_skopt(n_evals: int, seed: int, **kwargs) -> dict:
    """skopt single-objective loop on f1 + f2; times ask and tell only."""
    f = shifted_zdt1(0.30)
    t_wall = time.perf_counter()
    opt = Optimizer(DIMS, base_estimator="GP", random_state=seed, **kwargs)
    overhead = time.perf_counter() - t_wall
    Y = []
    for _ in range(n_evals):
        t0 = time.perf_counter()
        x = opt.ask()
        overhead += time.perf_counter() - t0
        y = f(x)
        Y.append(y)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.tell(x, float(sum(y)))
        overhead += time.perf_counter() - t0
    return {
        "evals": n_evals,
        "wall": time.perf_counter() - t_wall,
        "overhead": overhead,
        "hv": hypervolume(np.array(Y), REF),
    }


def run_ours(n_evals: int, seed: int, batch: int = 1) -> tuple[dict, dict]:
    """Cold frame on c = 0.25, then the warm frame on c = 0.30, both `n_evals` evaluations."""
    opt = MultiObjectiveOptimizer(DIMS, 2, seed=seed)
    rows = []
    for c in (0.25, 0.30):
        t0 = time.perf_counter()
        res = run_frame(shifted_zdt1(c), opt, budget=n_evals, batch=batch)
        rows.append(
            {
                "evals": res.n_evaluations,
                "wall": time.perf_counter() - t0,
                "overhead": res.optimizer_s,
                "hv": hypervolume(res.Y, REF),
                "warm": res.warm_started,
            }
        )
    return rows[0], rows[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_optimizer", description=__doc__.splitlines()[0])
    ap.add_argument("--evals", type=int, default=20, help="ask/tell evaluations per row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--skip-sampling", action="store_true", help="skip the skopt acq_optimizer='sampling' row"
    )
    args = ap.parse_args(argv or [])
    n, seed = args.evals, args.seed

    rows: list[tuple[str, dict]] = []
    rows.append(("(a) skopt Optimizer GP default, f1+f2", run_skopt(n, seed)))
    if not args.skip_sampling:
        sampled = run_skopt(n, seed, acq_optimizer="sampling")
        rows.append(("(a') skopt GP acq_optimizer=sampling", sampled))
    cold, warm = run_ours(n, seed)
    rows.append(("(b) ours ParEGO cold (frame 1)", cold))
    rows.append(("(c) ours ParEGO warm (frame 2, drifted)", warm))
    _, warm_b = run_ours(n, seed, batch=4)
    rows.append(("(c') ours warm, batch=4", warm_b))

    base = rows[0][1]
    print(f"{n} evaluations per row, 4 parameters, 2 objectives; HV ref {REF}, max {HV_MAX:.3f}")
    head = (
        f"{'method':42s} {'wall s':>8s} {'optim. s':>9s} {'ms/eval':>8s} "
        f"{'overhead vs (a)':>16s} {'HV':>7s}"
    )
    print(head)
    print("-" * len(head))
    for name, r in rows:
        ratio = r["overhead"] / base["overhead"]
        print(
            f"{name:42s} {r['wall']:8.2f} {r['overhead']:9.3f} "
            f"{1e3 * r['overhead'] / r['evals']:8.1f} {ratio:15.4f}x {r['hv']:7.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
