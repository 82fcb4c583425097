"""Discovery per frame budget: rewardscope (follow the service) vs raster vs random.

``python -m benchmarks experiment -- --seeds 5 --frames 40``: each seed is one twin sample
(8 x 8 base fields of view of 384 px, walls, amorphous patches, a defect cluster); every
strategy gets the same frame budget. Prints every seed's final fractions of wall length,
amorphous area and defects imaged at high magnification (pixel size <= base / 2), the means,
and the ratios rewardscope / raster of the means (target >= 3x for walls and amorphous area).
Raster and random run without the service (their discovery depends on their scan positions
only); rewardscope runs the closed loop through the daemon (workflow ``all``, regions auto).
``--plot DIR`` writes the mean discovery curves to ``DIR/discovery.png``.
"""

from __future__ import annotations

import argparse

from rewardscope import logs
from rewardscope.cli.experiment import KINDS, plot_discovery, run_experiment

STRATEGIES = ("rewardscope", "raster", "random")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_experiment")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--fovs", type=int, default=8)
    p.add_argument("--fov-px", type=int, default=384)
    p.add_argument("--plot", default=None, help="folder for discovery.png (mean curves)")
    args = p.parse_args(argv or [])
    logs.setup("ERROR", "text")
    twin = {"fovs": args.fovs, "fov_px": args.fov_px}
    finals: dict[str, list[tuple[float, ...]]] = {s: [] for s in STRATEGIES}
    curves: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    print(f"{args.frames} frames per run, {args.fovs}x{args.fovs} fields of view of "
          f"{args.fov_px} px; final fractions imaged at high magnification", flush=True)
    print(f"{'seed':>4} {'strategy':>12} {'walls':>7} {'amorph':>7} {'defects':>7} "
          f"{'zoomed':>6} {'s':>6}", flush=True)
    for seed in range(args.seeds):
        for strategy in STRATEGIES:
            rec = run_experiment(strategy, args.frames, seed, twin=twin,
                                 service=strategy == "rewardscope")
            final = tuple(rec["discovery"][k][-1] for k in KINDS)
            finals[strategy].append(final)
            curves[strategy].append(rec["discovery"])
            print(f"{seed:>4} {strategy:>12} {final[0]:>7.3f} {final[1]:>7.3f} "
                  f"{final[2]:>7.3f} {rec['high_mag_frames']:>6} {rec['elapsed_s']:>6.1f}",
                  flush=True)
    means = {s: [sum(f[i] for f in finals[s]) / len(finals[s]) for i in range(3)]
             for s in STRATEGIES}
    print(f"{'mean':>4} {'':>12}")
    for s in STRATEGIES:
        m = means[s]
        print(f"{'':>4} {s:>12} {m[0]:>7.3f} {m[1]:>7.3f} {m[2]:>7.3f}")
    for i, kind in enumerate(("walls", "amorphous", "defects")):
        print(f"rewardscope / raster, {kind}: {_ratio(means['rewardscope'][i], means['raster'][i])}"
              f"; / random: {_ratio(means['rewardscope'][i], means['random'][i])}")
    if args.plot:
        from pathlib import Path
        out = Path(args.plot)
        out.mkdir(parents=True, exist_ok=True)
        mean_curves = {s: {"discovery": {k: [sum(c[k][j] for c in curves[s]) / len(curves[s])
                                             for j in range(args.frames)] for k in KINDS}}
                       for s in STRATEGIES}
        plot_discovery(mean_curves, out / "discovery.png")
        print(f"wrote {out / 'discovery.png'}")
    return 0


def _ratio(a: float, b: float) -> str:
    if b > 0:
        return f"{a / b:.2f}x"
    return "inf (baseline found none)" if a > 0 else "- (neither found any)"


if __name__ == "__main__":
    raise SystemExit(main())
