"""Warm per-frame latency of ``workflow = "all"`` with the domains descriptor menu in the
search space, against the same chain with the atom routes only, measured in the same run.

    python -m benchmarks descriptor_menu [-- --frames 6 --size 256 --rounds 2]

Both configurations see the same simulated atomic-resolution frames (two domains, noise);
the first frame (cold) is left out, the median of the warm ones is compared. The atom-only
configuration is the domains workflow restricted to ``routes=("patch", "fft")`` (a dotted
path in the ``workflow`` list, as any user workflow); a third runs every route in one search
over the whole space (no per-frame regime, :meth:`DomainsWorkflow.regime`), for contrast.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rewardscope import config
from rewardscope.engine.session import SessionEngine
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig
from rewardscope.workflows.domains import DomainsWorkflow

LATTICE = 15.0


class AtomRoutesDomains(DomainsWorkflow):
    """The domains workflow with the atom routes only (the baseline)."""

    def __init__(self) -> None:
        super().__init__(routes=("patch", "fft"))


class UnlimitedDomains(DomainsWorkflow):
    """Every route in one search over the whole space (no regimes: the optimizer may propose
    grid routes on atomic-resolution frames, where they fail), for contrast."""

    def regime(self, ctx):
        return ""


def _warm_latencies(spec: list[str], frames: list[np.ndarray], budget: int) -> list[float]:
    cfg = config.load(None, {"workflow": spec, "budget": budget, "lattice_px": LATTICE})
    eng = SessionEngine("bench", cfg)
    out = []
    for i, px in enumerate(frames):
        t = time.perf_counter()
        eng.analyse(px, LATTICE, cfg)
        if i:
            out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks descriptor_menu")
    p.add_argument("--frames", type=int, default=6, help="frames per configuration (first cold)")
    p.add_argument("--size", type=int, default=256, help="frame side, px")
    p.add_argument("--budget", type=int, default=8, help="warm evaluations per workflow")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per configuration")
    args = p.parse_args(argv)
    sim = PerovskiteSimulator(SimConfig(shape=(args.size, args.size), lattice_px=LATTICE,
                                        noise_sigma=0.15, n_walls=2, seed=3))
    frames = [sim.frame(i).pixels for i in range(args.frames)]
    base = ["atoms", "benchmarks.bench_descriptor_menu:AtomRoutesDomains", "amorphous"]
    free = ["atoms", "benchmarks.bench_descriptor_menu:UnlimitedDomains", "amorphous"]
    # interleave rounds so drift in machine load hits every configuration alike
    atom, menu, unl = [], [], []
    for _ in range(args.rounds):
        atom += _warm_latencies(base, frames, args.budget)
        menu += _warm_latencies(["atoms", "domains", "amorphous"], frames, args.budget)
        unl += _warm_latencies(free, frames, args.budget)
    a, m, u = (float(np.median(v)) for v in (atom, menu, unl))
    print(f"| configuration | warm median s | frames |\n|---|---|---|\n"
          f"| all, atom routes only (baseline) | {a:.3f} | {len(atom)} |\n"
          f"| all, with the descriptor menu | {m:.3f} | {len(menu)} |\n"
          f"| all, menu in one search (no regimes) | {u:.3f} | {len(unl)} |")
    print(f"ratio menu / atom-only: {m / a:.3f} (target <= 1.10); "
          f"one search, no regimes: {u / a:.3f}")
    return 0
