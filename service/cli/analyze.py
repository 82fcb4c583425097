"""``rewardscope analyze IMAGE``: the live engine's reward-driven analysis, offline, on one image.

Writes ``DIR/result.json`` (atoms, labels, walls, params, rewards, pareto, n_evaluations,
elapsed_s, the workflows' scalars, and for every published array, e.g. ``amorphous_mask``, the
name of the ``.npy`` file holding it), ``DIR/overlay.png`` and ``DIR/pareto.png``. One
exception: ``polarization`` names ``polarization_map.npy``, the whole map as an (M, 4) table
x, y, dx, dy in px (cell centres, then B displacements; ``cells.npy`` holds x, y alone).
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
    p.add_argument("--lattice-px", type=float, default=None,
                   help="lattice spacing hint in pixels (default: none, the cell is found in "
                        "the frame; a hint the frame contradicts by > 10 %% is reported, not "
                        "used)")
    p.add_argument("--motif", default=None,
                   help="visible columns per unit cell: perovskite-001 (default), "
                        "perovskite-110, perovskite-001-abf, perovskite-110-abf, single, or a "
                        "number")
    p.add_argument("--contrast", choices=("auto", "bright", "dark"), default=None,
                   help="column contrast: bright (HAADF), dark (BF, ABF) or auto (default: "
                        "decided from the frame)")
    p.add_argument("--workflow", default="all",
                   help="atoms|domains|amorphous|all|latent, a comma-separated list, or a "
                        "user workflow as package.module:Class (default all)")
    p.add_argument("--budget", type=int, default=24, help="evaluations per workflow")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")


def analyze(image: np.ndarray, lattice_px: float | None = None, *, workflow: str = "all",
            budget: int = 24, seed: int = 0, progress: bool = False, motif: str | None = None,
            contrast: str | None = None, pixel_size_m: float | None = None):
    """Run the reward-driven chain once with a generous budget; returns (Analysis, seconds).

    ``lattice_px`` is only a hint: the cell is found in the image (result field ``lattice``).
    """
    from tqdm import tqdm

    from rewardscope import config, engine
    from rewardscope.engine.session import SessionEngine, resolve_chain

    engine.warmup()
    cfg = config.load(None, {"workflow": workflow, "cold_budget": budget, "budget": budget,
                             "deadline_s": 3600.0, "seed": seed, "lattice_px": lattice_px,
                             "motif": motif, "contrast": contrast})
    total = budget * len(resolve_chain(cfg.workflow))
    bar = tqdm(total=total, desc="evaluations", unit="eval", disable=not progress,
               file=sys.stderr)
    eng = SessionEngine("offline", cfg, on_evaluation=lambda wf: bar.set_postfix_str(wf)
                       or bar.update(1))
    t0 = time.perf_counter()
    result = eng.analyse(image, lattice_px, cfg, pixel_size_m=pixel_size_m)
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
                                    progress=not args.no_progress, motif=args.motif,
                                    contrast=args.contrast,
                                    pixel_size_m=(_meta or {}).get("pixel_size_m"))
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
        fname = f"{name}.npy"
        if name == "polarization" and "cells" in analysis.arrays:  # the map: x, y, dx, dy
            arr, fname = polarization_table(analysis.arrays["cells"], arr), POLARIZATION_FILE
        np.save(out / fname, arr)
        doc[name] = fname
    (out / "result.json").write_text(json.dumps(doc, indent=1, default=_json_default))
    plots.overlay(atomfind.normalize_frame(image), analysis, out / "overlay.png")
    plots.pareto(analysis, out / "pareto.png")
    print(f"{len(analysis.atoms)} atoms, {len(analysis.walls)} walls, "
          f"{analysis.n_evaluations} evaluations in {elapsed:.1f} s -> {out}/")
    return 0


POLARIZATION_FILE = "polarization_map.npy"


def polarization_table(cells: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The polarization map as one (M, 4) float32 table: cell x, y and displacement dx, dy, px.

    Parameters
    ----------
    cells : (M, 2) array_like of float
        Cell centres x, y in px.
    vectors : (M, 2) array_like of float
        B-column displacements dx, dy in px, row-aligned with ``cells``.

    Returns
    -------
    (M, 4) ndarray of float32
        Columns x, y, dx, dy.

    Raises
    ------
    ValueError
        If ``cells`` and ``vectors`` are not both (M, 2) with the same M.
    """
    c = np.asarray(cells, dtype=np.float32).reshape(-1, 2)
    v = np.asarray(vectors, dtype=np.float32).reshape(-1, 2)
    if c.shape != v.shape:
        raise ValueError(f"cells {c.shape} and vectors {v.shape} must both be (M, 2)")
    return np.concatenate([c, v], axis=1)


def _json_default(v):
    out = plain(v)
    if out is v:
        raise TypeError(type(v).__name__)
    return out
