"""How the per-frame cost grows with frame size and with atom count (fitted exponents).

Warm per-frame wall time of the live engine (``workflow = "all"`` by default, budget 8 per
workflow, a 60 s deadline so that a busy machine does not change the evaluation count) on
simulated frames with drift: the median of the warm frames after one cold frame. Two sweeps:

* frame size at a fixed 12 px lattice (the atom count grows with the area);
* atom count at a fixed frame size, by changing the lattice spacing (24 ... 8 px).

The exponent is the slope of ``log(time)`` against ``log(pixels)`` (resp. ``log(atoms)``),
``np.polyfit`` of degree 1: 1.0 is linear.

    python -m benchmarks scaling [-- --quick] [--workflow atoms]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from rewardscope import config
from rewardscope.engine import warmup
from rewardscope.engine.session import SessionEngine
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

SIZES = [256, 384, 512, 768, 1024]
SIZES_QUICK = [256, 384, 512]
LATTICES = [24.0, 16.0, 12.0, 8.0]
LATTICES_QUICK = [16.0, 12.0, 8.0]


def warm_time(size: int, lattice_px: float, workflow: str = "all", n_frames: int = 4,
              seed: int = 0) -> dict[str, Any]:
    """Median warm seconds per frame (frames 2..n; frame 1 is the session's cold frame).

    Parameters
    ----------
    size : int
        Frame side, px.
    lattice_px : float
        Lattice spacing of the simulated perovskite, px (the engine gets it as a hint).
    workflow : str
        Engine workflow setting.
    n_frames : int
        Frames in the session, >= 2.
    """
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2 (one cold, then warm), got {n_frames}")
    sim = PerovskiteSimulator(SimConfig(shape=(size, size), lattice_px=lattice_px,
                                        noise_sigma=0.1, drift_px_per_frame=(0.5, 0.3),
                                        seed=seed))
    cfg = config.load(None, {"workflow": workflow, "lattice_px": lattice_px, "budget": 8,
                             "cold_budget": 16, "deadline_s": 60.0, "cold_deadline_s": 120.0})
    eng = SessionEngine("bench-scaling", cfg)
    times, atoms = [], 0
    for i in range(n_frames):
        frame = sim.frame(i)
        t0 = time.perf_counter()
        eng.analyse(frame.pixels, lattice_px, cfg)
        if i:
            times.append(time.perf_counter() - t0)
        atoms = len(frame.truth.atoms)
    return {"size": size, "lattice_px": lattice_px, "pixels": size * size, "atoms": atoms,
            "warm_s": float(np.median(times))}


def exponent(x: list[float] | np.ndarray, t: list[float] | np.ndarray) -> float:
    """Slope of log(t) on log(x): the power of ``x`` the cost grows with.

    Parameters
    ----------
    x : array_like of float
        Sizes (pixels, atoms), > 0, at least two distinct.
    t : array_like of float
        Times, s, > 0, same length.
    """
    x, t = np.asarray(x, float), np.asarray(t, float)
    if x.shape != t.shape or x.size < 2 or np.any(x <= 0) or np.any(t <= 0):
        raise ValueError("x and t must be positive, of equal length >= 2")
    return float(np.polyfit(np.log(x), np.log(t), 1)[0])


def run(quick: bool = False, workflow: str = "all") -> dict[str, Any]:
    """Both sweeps and their fitted exponents."""
    warmup()
    n = 3 if quick else 4
    by_size = [warm_time(s, 12.0, workflow, n) for s in (SIZES_QUICK if quick else SIZES)]
    side = 384 if quick else 512
    by_atoms = [warm_time(side, a, workflow, n) for a in (LATTICES_QUICK if quick else LATTICES)]
    return {"workflow": workflow, "by_size": by_size, "by_atoms": by_atoms,
            "exponent_pixels": exponent([r["pixels"] for r in by_size],
                                        [r["warm_s"] for r in by_size]),
            "exponent_atoms": exponent([r["atoms"] for r in by_atoms],
                                       [r["warm_s"] for r in by_atoms])}


def format_table(res: dict[str, Any]) -> str:
    lines = [f"{'sweep':<6} {'size':>6} {'lattice px':>10} {'atoms':>6} {'warm s':>8}"]
    lines.append("-" * len(lines[0]))
    for sweep, key in (("size", "by_size"), ("atoms", "by_atoms")):
        for r in res[key]:
            lines.append(f"{sweep:<6} {r['size']:>5}² {r['lattice_px']:>10.0f} {r['atoms']:>6} "
                         f"{r['warm_s']:>8.3f}")
    lines.append(f"time ~ pixels^{res['exponent_pixels']:.2f} (12 px lattice); "
                 f"time ~ atoms^{res['exponent_atoms']:.2f} (fixed frame size)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks scaling", description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workflow", default="all")
    args = ap.parse_args(argv)
    print(format_table(run(args.quick, args.workflow)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
