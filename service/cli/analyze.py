"""``rewardscope analyze IMAGE``: the live engine's reward-driven analysis, offline, on one image.

Writes ``DIR/result.json`` (atoms, labels, walls, params, rewards, pareto, n_evaluations,
elapsed_s, the workflows' scalars, and for every published array, e.g. ``amorphous_mask``, the
name of the ``.npy`` file holding it), ``DIR/overlay.png`` and ``DIR/pareto.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rewardscope.plaindata import plain


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help=".npy, .tif, .png, .dm3/.dm4/.emd")
    p.add_argument("--lattice-px", type=float, required=True,
                   help="expected lattice spacing in pixels")
    p.add_argument("--workflow", default="all",
                   help="atoms|domains|amorphous|all|latent, a comma-separated list, or a "
                        "user workflow as package.module:Class (default all)")
    p.add_argument("--budget", type=int, default=24, help="evaluations per workflow")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")


def analyze(image: np.ndarray, lattice_px: float, *, workflow: str = "all", budget: int = 24,
            seed: int = 0, progress: bool = False):
    """Run the reward-driven chain once with a generous budget; returns (Analysis, seconds)."""
    from tqdm import tqdm

    from rewardscope import config, engine
    from rewardscope.engine.session import SessionEngine, resolve_chain

    engine.warmup()
    cfg = config.load(None, {"workflow": workflow, "cold_budget": budget, "budget": budget,
                             "deadline_s": 3600.0, "seed": seed, "lattice_px": lattice_px})
    total = budget * len(resolve_chain(cfg.workflow))
    bar = tqdm(total=total, desc="evaluations", unit="eval", disable=not progress,
               file=sys.stderr)
    eng = SessionEngine("offline", cfg, on_evaluation=lambda wf: bar.set_postfix_str(wf)
                       or bar.update(1))
    t0 = time.perf_counter()
    result = eng.analyse(image, lattice_px, cfg)
    bar.close()
    return result, time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    from rewardscope import config
    from rewardscope.cli import plots
    from rewardscope.science import atomfind
    from rewardscope.storage.stills import load_image

    image, _meta = load_image(args.image)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        analysis, elapsed = analyze(image, args.lattice_px, workflow=args.workflow,
                                    budget=args.budget, seed=args.seed,
                                    progress=not args.no_progress)
    except config.ConfigError as exc:
        print(f"rewardscope analyze: {exc}", file=sys.stderr)
        return 2
    doc = {"image": str(args.image), "lattice_px": args.lattice_px, "workflow": args.workflow,
           "atoms": analysis.atoms.tolist(), "labels": analysis.labels.tolist(),
           "walls": analysis.walls, "amorphous_mask": None, **analysis.scalars,
           "params": analysis.params, "rewards": analysis.rewards, "pareto": analysis.pareto,
           "n_evaluations": analysis.n_evaluations, "elapsed_s": round(elapsed, 3),
           "optimizer_s": round(analysis.optimizer_s, 3), "hypervolume": analysis.hypervolume}
    for name, arr in analysis.arrays.items():  # each published array as NAME.npy
        np.save(out / f"{name}.npy", arr)
        doc[name] = f"{name}.npy"
    (out / "result.json").write_text(json.dumps(doc, indent=1, default=_json_default))
    plots.overlay(atomfind.normalize_frame(image), analysis, out / "overlay.png")
    plots.pareto(analysis, out / "pareto.png")
    print(f"{len(analysis.atoms)} atoms, {len(analysis.walls)} walls, "
          f"{analysis.n_evaluations} evaluations in {elapsed:.1f} s -> {out}/")
    return 0


def _json_default(v):
    out = plain(v)
    if out is v:
        raise TypeError(type(v).__name__)
    return out
