"""``rewardscope demo``: the whole live loop on loopback in one process, no external servers.

A simulated microscope (the acquisition client over real ZeroMQ) streams frames into the service
daemon, and a watcher prints one line per result with the measured accuracy against the
simulator's ground truth. Exit status 0 when every frame got a result.

``--twin``: the main job end to end on the digital twin (:mod:`rewardscope.cli.experiment`):
the service with workflow ``all`` suggests regions, the controller follows them, one line per
frame; the last frame's overlay with its regions and the discovery curve go to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from rewardscope import config, logs
from rewardscope.science.scoring import match_points


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=20, help="frames to stream (default 20)")
    p.add_argument("--rate", type=float, default=2.0, help="frames per second (default 2)")
    p.add_argument("--size", type=int, default=384, help="frame side in pixels (default 384)")
    p.add_argument("--lattice-px", type=float, default=12.0)
    p.add_argument("--noise", type=float, default=0.1, help="noise sigma / A-column peak")
    p.add_argument("--workflow", default="atoms",
                   help="atoms|domains|amorphous|all|latent, a comma-separated list, or "
                        "package.module:Class (default atoms)")
    p.add_argument("--budget", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metrics-port", type=int, default=0, help="0 = no metrics endpoint")
    p.add_argument("--verbose", action="store_true", help="show the service's logs")
    p.add_argument("--twin", action="store_true",
                   help="the main job on the digital twin: the service (workflow all) suggests "
                        "regions, a controller follows them; --frames frames, then the last "
                        "frame's overlay with its regions and the discovery curve in --out")
    p.add_argument("--out", default="demo-out", help="--twin: output folder (default demo-out)")


def run(args: argparse.Namespace) -> int:
    if args.twin:
        from rewardscope.cli.experiment import run_demo

        return run_demo(args)
    from rewardscope.clients import InstrumentClient, ResultsClient
    from rewardscope.live.daemon import Daemon
    from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

    logs.setup("INFO" if args.verbose else "WARNING", "text")
    sim = PerovskiteSimulator(SimConfig(shape=(args.size, args.size), lattice_px=args.lattice_px,
                                        noise_sigma=args.noise, drift_px_per_frame=(0.3, 0.2),
                                        seed=args.seed))
    instrument = InstrumentClient("tcp://127.0.0.1:*")
    overrides = {"frames": instrument.endpoint, "results": "tcp://127.0.0.1:*",
                 "control": "tcp://127.0.0.1:*", "metrics_port": args.metrics_port,
                 "workflow": args.workflow, "lattice_px": args.lattice_px, "seed": args.seed}
    if args.budget:
        overrides["budget"] = args.budget
    cfg = config.load(None, overrides)
    print(f"rewardscope demo: {args.frames} simulated {args.size}x{args.size} frames at "
          f"{args.rate:g} Hz, workflow '{args.workflow}' (compiling kernels...)", flush=True)
    daemon = Daemon(cfg)
    daemon.start()
    serving = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    serving.start()
    results = ResultsClient(daemon.results_endpoint)
    truths: dict[int, object] = {}
    if not instrument.wait_for_subscriber(10.0):
        print("service did not subscribe in time", file=sys.stderr)
        return 1
    time.sleep(0.2)  # let the watcher's subscription settle too

    def stream() -> None:
        instrument.start_session("demo", lattice_px=args.lattice_px)
        for i, sf in enumerate(sim.frames(args.frames)):
            truths[i] = sf.truth
            instrument.send_frame(sf.pixels, lattice_px=args.lattice_px)
            time.sleep(1.0 / args.rate if args.rate > 0 else 0)
        instrument.end_session()

    sender = threading.Thread(target=stream, name="instrument", daemon=True)
    sender.start()
    print(f"{'seq':>4} {'atoms':>6} {'truth':>6} {'F1':>6} {'evals':>5} {'latency':>10}",
          flush=True)
    got, latencies, f1s = 0, [], []
    deadline = time.monotonic() + args.frames / max(args.rate, 0.1) + 60
    while got < args.frames and time.monotonic() < deadline:
        r = results.recv_result(timeout=1.0)
        if r is None:
            done = daemon.stats.frames_processed + sum(daemon.dropped.values())
            if not sender.is_alive() and done >= args.frames and daemon.slot.depth() == 0:
                break
            continue
        got += 1
        truth = truths[r.seq]
        m = match_points(r.atoms, truth.atoms, 0.25 * args.lattice_px)
        latencies.append(r.latency_s)
        f1s.append(m.f1)
        print(f"{r.seq:>4} {len(r.atoms):>6} {len(truth.atoms):>6} {m.f1:>6.3f} "
              f"{r.n_evaluations:>5} {r.latency_s * 1000:>8.1f} ms", flush=True)
    sender.join(timeout=5)
    daemon.stop()
    serving.join(timeout=30)
    results.close()
    instrument.close()
    dropped = sum(daemon.dropped.values())
    if latencies:
        lat = sorted(latencies)
        print(f"done: {got}/{args.frames} results, median latency "
              f"{lat[len(lat) // 2] * 1000:.1f} ms, mean F1 {sum(f1s) / len(f1s):.3f}, "
              f"dropped {dropped}", flush=True)
    return 0 if got + dropped >= args.frames and got > 0 else 1
