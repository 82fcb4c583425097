"""The seeds' way as a script, run cold from the shell on one saved frame (the baseline of
``python -m benchmarks cold``).

``skimage.feature.blob_log`` for atoms, sklearn GMMs on raw patches for domains and amorphous
regions, a cold ``skopt.gp_minimize`` of ``--calls`` calls per workflow (the functions of
``benchmarks/bench_pipeline.py``). Writes an ``.npz`` with ``atoms`` (x, y px), ``labels`` and
``amorphous_mask``.

    python -m benchmarks.seeds_way FRAME.npy OUT.npz [--lattice-px 12] [--calls 20]
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.seeds_way", description=__doc__)
    ap.add_argument("frame")
    ap.add_argument("out")
    ap.add_argument("--lattice-px", type=float, default=12.0,
                    help="lattice spacing the seeds' rewards assume (bench_pipeline.LATTICE)")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from benchmarks import bench_pipeline as bp
    from rewardscope.science.atomfind import normalize_frame

    if args.lattice_px != bp.LATTICE:
        raise SystemExit(f"--lattice-px: the seeds' functions assume {bp.LATTICE} px")
    image = normalize_frame(np.load(args.frame))
    atoms = bp.seeds_atoms(image, args.calls, args.seed)
    labels = bp.seeds_domains(image, atoms, args.calls, args.seed)
    mask = bp.seeds_amorphous(image, atoms, args.calls, args.seed)
    np.savez(args.out, atoms=atoms, labels=labels, amorphous_mask=mask)
    print(f"{len(atoms)} atoms -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
