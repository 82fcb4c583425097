"""``rewardscope experiment``: how fast does a scan strategy *discover* what a sample holds?

The closed loop runs in one process on loopback: the digital twin
(:mod:`rewardscope.simulators.twin`, a sample of ``fovs x fovs`` base fields of view with
domain walls, amorphous patches and a defect cluster) publishes each frame as an instrument;
the service daemon (workflow ``all``, ``regions_mode`` auto, or approve with ``--approve``)
analyses it and publishes its suggestions; the controller (:mod:`rewardscope.clients.controller`)
picks the next field of view and moves the twin. One frame at a time (the next frame is taken
once the service has answered the last one), so the service's speed never changes the answer.

After every frame the twin books the fraction of the sample's wall length, amorphous area and
defects imaged at high magnification so far (pixel size <= base pixel size / 2). Writes
``DIR/experiment.json`` ``{strategy, frames, seed, discovery: {wall_fraction: [...],
amorphous_fraction: [...], defect_fraction: [...]}, views: [...], ...}`` (one value per frame)
and ``DIR/discovery.png``, and prints a table.

``raster`` and ``random`` ignore the service; ``--no-service`` skips it for them (discovery is
a function of the scan positions alone; the benchmark uses this to save CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from rewardscope import config, logs

KINDS = ("wall_fraction", "amorphous_fraction", "defect_fraction")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", default="rewardscope", choices=("rewardscope", "raster",
                                                                  "random"))
    p.add_argument("--frames", type=int, default=40, help="frame budget (default 40)")
    p.add_argument("--seed", type=int, default=0, help="sample layout and noise seed")
    p.add_argument("--out", default="experiment-out", help="output folder")
    p.add_argument("--fovs", type=int, default=8, help="sample side in base fields of view")
    p.add_argument("--fov-px", type=int, default=384, help="frame side, pixels")
    p.add_argument("--lattice-px", type=float, default=12.0,
                   help="lattice spacing at the base magnification, pixels")
    p.add_argument("--domains", type=int, default=5, help="domains (closed walls) in the sample")
    p.add_argument("--amorphous", type=int, default=3, help="amorphous patches in the sample")
    p.add_argument("--defect-clusters", type=int, default=1)
    p.add_argument("--workflow", default="all")
    p.add_argument("--approve", action="store_true",
                   help="regions_mode approve: the controller approves suggestions over the "
                        "control socket")
    p.add_argument("--no-service", action="store_true",
                   help="raster/random only: run the scan without the service")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="show the service's logs")


def twin_overrides(args: argparse.Namespace) -> dict:
    return {"fovs": args.fovs, "fov_px": args.fov_px, "lattice_px": args.lattice_px,
            "domains": args.domains, "amorphous_regions": args.amorphous,
            "defect_clusters": args.defect_clusters}


def run_experiment(strategy: str, frames: int, seed: int, *, twin: dict | None = None,
                   service: bool = True, workflow: str = "all", approve: bool = False,
                   progress: bool = False, on_frame=None, service_overrides: dict | None = None
                   ) -> dict:
    """Run one closed-loop experiment and return its record.

    Parameters
    ----------
    strategy : str
        ``rewardscope``, ``raster`` or ``random`` (see :mod:`rewardscope.clients.controller`).
    frames : int
        Frame budget (>= 1).
    seed : int
        Twin layout/noise seed; also the random strategy's and the service's seed.
    twin : dict, optional
        :class:`~rewardscope.simulators.twin.TwinConfig` overrides.
    service : bool
        Run the service daemon (required for ``rewardscope``).
    on_frame : callable, optional
        ``on_frame(row, result, frame, regions)`` after each frame: ``row`` is its line of
        the record (view, discovery, counts), ``result`` the service's Result or None,
        ``frame`` the TwinFrame, ``regions`` the service's suggestions for it (list of maps).
    Returns
    -------
    dict
        ``{strategy, frames, seed, discovery: {wall_fraction, amorphous_fraction,
        defect_fraction: [per frame]}, rows: [...], twin: {...}, elapsed_s, ...}``.
    """
    from tqdm import tqdm

    from rewardscope.clients.controller import STRATEGIES, Controller
    from rewardscope.simulators.twin import Twin

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if strategy == "rewardscope" and not service:
        raise ValueError("the rewardscope strategy needs the service")
    scope = Twin(seed=seed, **(twin or {}))
    t0 = time.perf_counter()
    daemon = serving = instrument = None
    try:
        if service:
            daemon, serving, instrument = _start_service(workflow, seed, approve,
                                                         service_overrides or {})
            ctl = Controller(scope, daemon.results_endpoint, strategy=strategy,
                             control_url=daemon.control_endpoint if approve else None,
                             approve=approve, seed=seed)
            time.sleep(0.2)  # let the controller's subscription settle
            instrument.start_session(f"experiment-{strategy}-{seed}",
                                     lattice_px=scope.config.lattice_px)
        else:
            ctl = Controller(scope, None, strategy=strategy, seed=seed)
        rows: list[dict] = []
        view = ctl.first_view()
        bar = tqdm(total=frames, desc=f"{strategy} seed {seed}", unit="frame",
                   disable=not progress, file=sys.stderr)
        for i in range(frames):
            fr = scope.frame()
            result = None
            if service:
                scope.publish(instrument, fr, seq=i)
                ok = ctl.wait_for(i, timeout_s=120.0)
                result = ctl.results_by_seq.get(i)
                if not ok:
                    print(f"no answer from the service for frame {i}", file=sys.stderr)
            row = _row(i, fr, view, scope, ctl, result)
            if on_frame is not None:
                on_frame(row, result, fr, list(ctl.regions_by_seq.get(i, [])))
            rows.append(row)
            bar.update(1)
            bar.set_postfix_str(" ".join(f"{k[:4]} {row[k]:.2f}" for k in KINDS))
            if i + 1 < frames:
                view = ctl.step(i)
        bar.close()
        if service:
            instrument.end_session()
    finally:
        if service and daemon is not None:
            ctl.close()
            daemon.stop()
            serving.join(timeout=30)
            instrument.close()
    return {"strategy": strategy, "frames": frames, "seed": seed,
            "discovery": {k: [r[k] for r in rows] for k in KINDS},
            "high_mag_frames": sum(r["high_mag"] for r in rows),
            "suggestions_followed": len(ctl.followed),
            "twin": {"fovs": scope.config.fovs, "fov_px": scope.config.fov_px,
                     "lattice_px": scope.config.lattice_px, "side_m": scope.side_m,
                     "base_fov_m": scope.base_fov_m, "high_mag": scope.config.high_mag,
                     "wall_length_m": scope.wall_length_m,
                     "amorphous_area_m2": scope.amorphous_area_m2,
                     "defects": int(len(scope.defects_m))},
            "service": bool(service), "workflow": workflow if service else None,
            "approve": bool(approve), "rows": rows,
            "elapsed_s": round(time.perf_counter() - t0, 3)}


def _start_service(workflow: str, seed: int, approve: bool, extra: dict):
    from rewardscope.clients import InstrumentClient
    from rewardscope.live.daemon import Daemon

    instrument = InstrumentClient("tcp://127.0.0.1:*")
    overrides = {"frames": instrument.endpoint, "results": "tcp://127.0.0.1:*",
                 "control": "tcp://127.0.0.1:*", "metrics_port": 0, "workflow": workflow,
                 "seed": seed}
    if "regions_mode" in config.KEYS:
        overrides["regions_mode"] = "approve" if approve else "auto"
    overrides.update(extra)
    daemon = Daemon(config.load(None, overrides))
    daemon.start()
    serving = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    serving.start()
    if not instrument.wait_for_subscriber(30.0):
        daemon.stop()
        instrument.close()
        raise RuntimeError("the service did not subscribe to the twin in time")
    return daemon, serving, instrument


def _row(i: int, fr, view: dict, scope, ctl, result) -> dict:
    regions = ctl.regions_by_seq.get(i, [])
    row = {"frame": i, "kind": view.get("kind"), "id": view.get("id"),
           "reason": view.get("reason"), "center_m": list(scope.center_m),
           "fov_m": scope.fov_m, "magnification": round(fr.magnification, 4),
           "high_mag": fr.high_mag, "regions": len(regions),
           "true_walls": len(fr.truth.walls),
           "true_amorphous_px": int(fr.truth.amorphous_mask.sum()),
           "true_defects": int(len(fr.truth.defects)), **scope.discovery()}
    if result is not None:
        mask = result.arrays.get("amorphous_mask")
        labels = result.labels
        row.update(atoms=int(len(result.atoms)), walls=len(result.walls),
                   domains=int(len(set(labels[labels >= 0].tolist()))) if len(labels) else 0,
                   amorphous_px=0 if mask is None else int(mask.sum()))
    return row


def write_outputs(record: dict, out: str | Path) -> Path:
    """``experiment.json`` and ``discovery.png`` under ``out``; returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(record, indent=1))
    plot_discovery({record["strategy"]: record}, out / "discovery.png")
    return out


def plot_discovery(records: dict[str, dict], path: str | Path) -> None:
    """One panel per discovery kind, one curve per record (label = key)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100, sharey=True)
    for ax, kind in zip(axes, KINDS, strict=True):
        for name, rec in records.items():
            ys = rec["discovery"][kind]
            ax.plot(range(1, len(ys) + 1), ys, label=name, lw=1.8)
        ax.set_title(kind.replace("_", " ") + " imaged at high magnification")
        ax.set_xlabel("frame")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of the sample's total")
    axes[0].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(record: dict, every: int | None = None) -> str:
    """The discovery curve as text: one line per ``every`` frames and the last frame."""
    n = len(record["discovery"][KINDS[0]])
    every = every or max(1, n // 10)
    lines = [f"{'frame':>5} {'walls':>7} {'amorph':>7} {'defects':>7}"]
    for i in sorted({*range(every - 1, n, every), n - 1}):
        w, a, d = (record["discovery"][k][i] for k in KINDS)
        lines.append(f"{i + 1:>5} {w:>7.3f} {a:>7.3f} {d:>7.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    logs.setup("INFO" if args.verbose else "WARNING", "text")
    if args.no_service and args.strategy == "rewardscope":
        print("rewardscope experiment: --no-service applies to raster/random only",
              file=sys.stderr)
        return 2
    try:
        record = run_experiment(args.strategy, args.frames, args.seed,
                                twin=twin_overrides(args), service=not args.no_service,
                                workflow=args.workflow, approve=args.approve,
                                progress=not args.no_progress)
    except (ValueError, config.ConfigError) as exc:
        print(f"rewardscope experiment: {exc}", file=sys.stderr)
        return 2
    out = write_outputs(record, args.out)
    print(f"strategy {record['strategy']}, {record['frames']} frames, seed {record['seed']}: "
          f"{record['high_mag_frames']} at high magnification, "
          f"{record['suggestions_followed']} suggestions followed, {record['elapsed_s']:.1f} s")
    print(table(record))
    print(f"wrote {out / 'experiment.json'} and {out / 'discovery.png'}")
    return 0


# ---------------------------------------------------------------------- rewardscope demo --twin

def run_demo(args: argparse.Namespace) -> int:
    """``rewardscope demo --twin``: the closed loop on a 4 x 4-field twin with one line per
    frame, then the overlay of the last frame with suggestions (regions boxed; the last frame
    when none had any) and the discovery curve under ``args.out``."""
    logs.setup("INFO" if args.verbose else "WARNING", "text")
    workflow = "all" if args.workflow == "atoms" else args.workflow  # demo's default is atoms
    last: dict = {}
    print(f"rewardscope demo --twin: {args.frames} frames of {args.size} px on a 4x4-field "
          f"sample, workflow '{workflow}', the controller following the service's suggestions "
          f"(compiling kernels...)", flush=True)
    print(f"{'frame':>5} {'view':>18} {'atoms':>6} {'domains':>7} {'walls':>5} {'amorph%':>7} "
          f"{'regions':>7}  {'wall':>5} {'amor':>5} {'defe':>5}", flush=True)

    def line(row: dict, result, frame, regions: list[dict]) -> None:
        view = f"{row['reason'] or row['kind']} x{row['magnification']:.2f}"
        n_px = frame.pixels.size
        print(f"{row['frame']:>5} {view:>18} {row.get('atoms', '-'):>6} "
              f"{row.get('domains', '-'):>7} {row.get('walls', '-'):>5} "
              f"{100.0 * row.get('amorphous_px', 0) / n_px:>7.1f} {row['regions']:>7}  "
              f"{row['wall_fraction']:>5.2f} {row['amorphous_fraction']:>5.2f} "
              f"{row['defect_fraction']:>5.2f}", flush=True)
        if result is not None and (row["regions"] or not last.get("with_regions")):
            last.update(row=row, result=result, frame=frame, regions=regions,
                        with_regions=bool(regions))

    try:
        record = run_experiment("rewardscope", args.frames, args.seed,
                                twin={"fovs": 4, "domains": 3, "amorphous_regions": 2,
                                      "fov_px": args.size, "lattice_px": args.lattice_px,
                                      "noise_sigma": min(args.noise, 0.1)},
                                workflow=workflow, on_frame=line,
                                service_overrides={"budget": args.budget} if args.budget
                                else None)
    except (ValueError, config.ConfigError) as exc:
        print(f"rewardscope demo: {exc}", file=sys.stderr)
        return 2
    out = write_outputs(record, args.out)
    if last:
        overlay_regions(last["frame"].pixels, last["result"], last.get("regions", []),
                        out / "overlay.png",
                        title=f"frame {last['row']['frame']}, x{last['frame'].magnification:.1f}")
    answered = sum("atoms" in r for r in record["rows"])
    print(f"done: {answered}/{args.frames} frames answered, "
          f"{record['suggestions_followed']} suggestions followed, "
          f"{record['high_mag_frames']} frames at high magnification")
    print(table(record))
    print(f"wrote {out / 'overlay.png'}, {out / 'discovery.png'} and {out / 'experiment.json'}")
    return 0 if answered == args.frames else 1


def overlay_regions(image, result, regions: list[dict], path: str | Path,
                    title: str = "") -> None:
    """The frame in grey, atoms coloured by label, walls red, amorphous outline cyan, and each
    suggested region's ``box_px`` in yellow with its reason and score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    h, w = image.shape
    fig, ax = plt.subplots(figsize=(8, 8 * h / w), dpi=100)
    ax.imshow(image, cmap="gray", interpolation="nearest")
    atoms, labels = result.atoms, result.labels
    if len(atoms):
        ax.scatter(atoms[:, 0], atoms[:, 1], s=5, c=np.where(labels >= 0, labels, -1),
                   cmap="tab10", vmin=-1, vmax=9, linewidths=0)
    for x0, y0, x1, y1 in result.walls:
        ax.plot([x0, x1], [y0, y1], color="red", lw=2)
    mask = result.arrays.get("amorphous_mask")
    if mask is not None and np.any(mask):
        ax.contour(np.asarray(mask, float), levels=[0.5], colors="cyan", linewidths=1.5)
    for s in regions:
        x0, y0, x1, y1 = s["box_px"]
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=2))
        ax.text(x0, y0 - 3, f"{s['reason']} {float(s['score']):.2f}", color="yellow",
                fontsize=9)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(f"{title}: {len(atoms)} atoms, {len(result.walls)} walls, "
                 f"{len(regions)} regions suggested")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
