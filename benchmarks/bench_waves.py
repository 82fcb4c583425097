"""Workflows of a wave side by side vs one after another, warm, ``workflow = "all"``.

``domains`` and ``amorphous`` read only the atoms, so the engine runs them side by side in
threads after ``atoms`` (``rewardscope.engine.session.CONCURRENT_WAVES``); their outputs are
merged in chain order. Two engines, one with the waves and one without, analyse the same
drifting simulated frames (the pipeline section's: 12 px lattice, noise 0.15, two amorphous
regions), interleaved frame by frame and alternating who goes first, budget 8 per workflow,
no deadline. Reported per size: median and p90 of the warm frames (the first, cold frame is
left out) and the quality of each (atom F1, domain ARI, amorphous IoU: equal by design).

    python -m benchmarks waves [-- --sizes 384 1024 --frames 10]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.bench_pipeline import LATTICE, atom_f1, domain_ari
from rewardscope import config
from rewardscope.engine import session as session_mod
from rewardscope.engine import warmup
from rewardscope.engine.session import SessionEngine
from rewardscope.science.scoring import mask_iou
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig


def run_size(size: int, n_frames: int = 10) -> dict[str, Any]:
    """One size: {"size", "waves_s", "waves_p90", "serial_s", "serial_p90", "x", quality}."""
    sim = PerovskiteSimulator(SimConfig(shape=(size, size), lattice_px=LATTICE, noise_sigma=0.15,
                                        drift_px_per_frame=(0.5, 0.3), seed=size,
                                        amorphous_regions=2))
    cfg = config.load(None, {"workflow": "all", "lattice_px": LATTICE, "budget": 8,
                             "cold_budget": 16, "deadline_s": 60.0})
    engines = {"waves": SessionEngine("waves", cfg), "serial": SessionEngine("serial", cfg)}
    times: dict[str, list[float]] = {k: [] for k in engines}
    quality: dict[str, list[tuple]] = {k: [] for k in engines}
    saved = session_mod.CONCURRENT_WAVES
    try:
        for sf in sim.frames(n_frames):
            order = list(engines) if sf.index % 2 == 0 else list(engines)[::-1]
            for name in order:
                session_mod.CONCURRENT_WAVES = name == "waves"
                t0 = time.perf_counter()
                a = engines[name].analyse(sf.pixels, LATTICE, cfg)
                dt = time.perf_counter() - t0
                if sf.index == 0:
                    continue  # the cold frame
                times[name].append(dt)
                quality[name].append((atom_f1(a.atoms, sf.truth),
                                      domain_ari(a.atoms, a.labels, sf.truth),
                                      mask_iou(a.arrays.get("amorphous_mask"),
                                               sf.truth.amorphous_mask)))
    finally:
        session_mod.CONCURRENT_WAVES = saved
    row: dict[str, Any] = {"size": size, "frames": len(times["waves"])}
    for name in engines:
        row[f"{name}_s"] = float(np.median(times[name]))
        row[f"{name}_p90"] = float(np.percentile(times[name], 90))
        f1, ari, iou = np.mean(np.array(quality[name], dtype=float), axis=0)
        row[f"{name}_F1"], row[f"{name}_ARI"], row[f"{name}_IoU"] = f1, ari, iou
    row["x"] = row["serial_s"] / row["waves_s"]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks waves", description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[384, 1024])
    ap.add_argument("--frames", type=int, default=10, help="frames per size (first is cold)")
    args = ap.parse_args(argv)
    warmup()
    print(f"{'size':>5} {'waves s':>8} {'p90':>6} {'serial s':>9} {'p90':>6} {'x':>5}  "
          "F1 / ARI / IoU (waves; serial)")
    for size in args.sizes:
        r = run_size(size, args.frames)
        print(f"{size:>4}² {r['waves_s']:>8.3f} {r['waves_p90']:>6.3f} {r['serial_s']:>9.3f} "
              f"{r['serial_p90']:>6.3f} {r['x']:>5.2f}  "
              f"{r['waves_F1']:.3f} / {r['waves_ARI']:.3f} / {r['waves_IoU']:.3f}; "
              f"{r['serial_F1']:.3f} / {r['serial_ARI']:.3f} / {r['serial_IoU']:.3f}")
    print("x = serial / waves (median warm seconds per frame), interleaved in one run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
