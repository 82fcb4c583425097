"""``rewardscope analyze IMAGE``: the live engine's reward-driven analysis, offline, on one image.

Writes ``DIR/result.json`` (atoms, labels, walls, amorphous_mask file name, params, rewards,
pareto, n_evaluations, elapsed_s), ``DIR/overlay.png`` and ``DIR/pareto.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rewardscope.workflows import WORKFLOW_CHAINS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help=".npy, .tif, .png, .dm3/.dm4/.emd")
    p.add_argument("--lattice-px", type=float, required=True,
                   help="expected lattice spacing in pixels")
    p.add_argument("--workflow", default="all",
                   choices=tuple(WORKFLOW_CHAINS))
    p.add_argument("--budget", type=int, default=24, help="evaluations per workflow")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")


def analyze(image: np.ndarray, lattice_px: float, *, workflow: str = "all", budget: int = 24,
            seed: int = 0, progress: bool = False):
    """Run the reward-driven chain once with a generous budget; returns (Analysis, seconds)."""
    from tqdm import tqdm

    from rewardscope import config, engine
    from rewardscope.engine.session import SessionEngine
    from rewardscope.workflows import WORKFLOW_CHAINS

    engine.warmup()
    cfg = config.load(None, {"workflow": workflow, "cold_budget": budget, "budget": budget,
                             "deadline_s": 3600.0, "seed": seed, "lattice_px": lattice_px})
    total = budget * len(WORKFLOW_CHAINS[workflow])
    bar = tqdm(total=total, desc="evaluations", unit="eval", disable=not progress,
               file=sys.stderr)
    eng = SessionEngine("offline", cfg, on_evaluation=lambda wf: bar.set_postfix_str(wf)
                       or bar.update(1))
    t0 = time.perf_counter()
    result = eng.analyse(image, lattice_px, cfg)
    bar.close()
    return result, time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    from rewardscope.cli import plots
    from rewardscope.science import atomfind
    from rewardscope.storage.stills import load_image

    image, _meta = load_image(args.image)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    analysis, elapsed = analyze(image, args.lattice_px, workflow=args.workflow,
                                budget=args.budget, seed=args.seed,
                                progress=not args.no_progress)
    mask_name = None
    if "amorphous_mask" in analysis.arrays:
        mask_name = "amorphous_mask.npy"
        np.save(out / mask_name, analysis.arrays["amorphous_mask"])
    doc = {"image": str(args.image), "lattice_px": args.lattice_px, "workflow": args.workflow,
           "atoms": analysis.atoms.tolist(), "labels": analysis.labels.tolist(),
           "walls": analysis.walls, "amorphous_mask": mask_name, "params": analysis.params,
           "rewards": analysis.rewards, "pareto": analysis.pareto,
           "n_evaluations": analysis.n_evaluations, "elapsed_s": round(elapsed, 3),
           "optimizer_s": round(analysis.optimizer_s, 3), "hypervolume": analysis.hypervolume}
    (out / "result.json").write_text(json.dumps(doc, indent=1, default=_plain))
    plots.overlay(atomfind.normalize_frame(image), analysis, out / "overlay.png")
    plots.pareto(analysis, out / "pareto.png")
    print(f"{len(analysis.atoms)} atoms, {len(analysis.walls)} walls, "
          f"{analysis.n_evaluations} evaluations in {elapsed:.1f} s -> {out}/")
    return 0


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v).__name__)
