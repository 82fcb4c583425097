"""Cold ``rewardscope analyze`` of one frame vs the seeds' way, both from the shell.

Both are separate processes started the way a user would (wall clock around the subprocess:
interpreter start, imports, numba's cache, the analysis, writing the results; ``analyze``
also draws ``overlay.png`` and ``pareto.png``), on the same saved simulated frame (384², 12 px
lattice, two domains, two amorphous regions, noise 0.15), in the same run. ``analyze`` gets no
lattice hint (it finds the cell); the seeds' way is given the true 12 px spacing. Quality
against the simulator's truth: atom F1 within 0.25 lattice spacings, domain ARI on the
labelled atoms, amorphous mask IoU. ``analyze`` runs ``--repeat`` times (median reported, and
the first run alone: it pays for numba's cache if that is cold); the seeds' way once. The
``no pictures`` row is ``analyze --no-pictures`` (result.json and arrays, no overlay/pareto
PNGs, no plotting library imported), run alternately with the default in the same loop.

    python -m benchmarks cold [-- --repeat 3 --size 384]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rewardscope.science.scoring import labelled_ari, mask_iou, match_points
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

ROOT = Path(__file__).resolve().parent.parent
LATTICE = 12.0


def analyze_command() -> list[str]:
    """The ``rewardscope`` console script beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("rewardscope")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rewardscope.cli"]


def make_frame(size: int = 384, seed: int = 384):
    """A simulated frame with domains and amorphous regions: (pixels, truth)."""
    sim = PerovskiteSimulator(SimConfig(shape=(size, size), lattice_px=LATTICE, noise_sigma=0.15,
                                        seed=seed, amorphous_regions=2))
    f = sim.frame(0)
    return f.pixels, f.truth


def quality(atoms, labels, mask, truth) -> dict[str, float]:
    """F1, ARI and IoU of one result against the simulator's truth."""
    atoms = np.asarray(atoms, dtype=np.float64).reshape(-1, 2)
    tol = 0.25 * truth.lattice_px
    return {"F1": match_points(atoms, truth.atoms, tol).f1,
            "ARI": labelled_ari(atoms, np.asarray(labels), truth.atoms, truth.domain, tol),
            "IoU": mask_iou(mask, truth.amorphous_mask)}


def timed(cmd: list[str], timeout: float = 900.0) -> float:
    """Wall seconds of one subprocess (raises if it fails)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dt


def run_ours(frame: Path, out: Path, extra: list[str] | None = None):
    """One cold ``rewardscope analyze``: (wall s, result.json document)."""
    dt = timed([*analyze_command(), "analyze", str(frame), "--out", str(out), "--no-progress",
                *(extra or [])])
    return dt, json.loads((out / "result.json").read_text())


def run(size: int = 384, repeat: int = 3, calls: int = 20,
        extra: list[str] | None = None) -> dict[str, Any]:
    """Cold analyze (``repeat`` times) and the seeds' way (once) on the same frame.

    Parameters
    ----------
    size : int
        Frame side, px.
    repeat : int
        Cold ``analyze`` runs (each a new process).
    calls : int
        ``gp_minimize`` calls per workflow for the seeds' way.
    extra : list of str, optional
        Further ``analyze`` options.
    """
    pixels, truth = make_frame(size)
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        tmp = Path(tmp)
        frame = tmp / "frame.npy"
        np.save(frame, pixels)
        times, bare, doc = [], [], None
        for i in range(max(1, repeat)):  # alternately, so a load change hits both alike
            dt, doc = run_ours(frame, tmp / f"ours{i}", extra)
            times.append(dt)
            bare.append(run_ours(frame, tmp / f"bare{i}", [*(extra or []), "--no-pictures"])[0])
        mask_file = doc.get("amorphous_mask")
        mask = np.load(tmp / f"ours{len(times) - 1}" / mask_file) if mask_file else None
        ours_q = quality(doc["atoms"], doc["labels"], mask, truth)
        seeds_s = timed([sys.executable, "-m", "benchmarks.seeds_way", str(frame),
                         str(tmp / "seeds.npz"), "--calls", str(calls)])
        s = np.load(tmp / "seeds.npz")
        seeds_q = quality(s["atoms"], s["labels"], s["amorphous_mask"], truth)
    ours = statistics.median(times)
    row = {"size": size, "ours_s": ours, "ours_first_s": times[0], "ours_runs": len(times),
           "n_evaluations": doc["n_evaluations"], "analysis_s": doc["elapsed_s"],
           "seeds_s": seeds_s, "seeds_calls": calls, "ratio": seeds_s / ours,
           "bare_s": statistics.median(bare), "bare_ratio": seeds_s / statistics.median(bare)}
    for k in ("F1", "ARI", "IoU"):
        row[f"ours_{k}"], row[f"seeds_{k}"] = ours_q[k], seeds_q[k]
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'size':>5} {'analyze s':>9} {'(first)':>8} {'evals':>5} {'seeds s':>8} "
            f"{'x':>6} {'F1 ours/seeds':>14} {'ARI ours/seeds':>15} {'IoU ours/seeds':>15}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['size']:>4}² {r['ours_s']:>9.2f} {r['ours_first_s']:>8.2f} "
                     f"{r['n_evaluations']:>5} {r['seeds_s']:>8.2f} {r['ratio']:>6.1f} "
                     f"{r['ours_F1']:>6.3f}/{r['seeds_F1']:<7.3f} "
                     f"{r['ours_ARI']:>7.3f}/{r['seeds_ARI']:<7.3f} "
                     f"{r['ours_IoU']:>7.3f}/{r['seeds_IoU']:<7.3f}")
        if "bare_s" in r:
            lines.append(f"{'':>5} {r['bare_s']:>9.2f} {'':>8} {'':>5} {'':>8} "
                         f"{r['bare_ratio']:>6.1f}  (no pictures)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks cold", description=__doc__)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args(argv)
    print(format_table([run(args.size, args.repeat, args.calls)]))
    print("x = seeds' way wall s / cold analyze wall s (median), separate processes, same run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
