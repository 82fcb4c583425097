"""Long soak: a simulated instrument streams into a real daemon for an hour; RSS is sampled.

    python -m benchmarks.soak --duration 3600 --rate 4 [--size 256] [--workflow all]

Prints one line per minute (frames processed, dropped, RSS) and a verdict: RSS growth after
the first five minutes must stay under ``--max-growth-mb``. CI runs a 40 s version of this
(tests/test_reliability.py::test_bounded_soak_memory_does_not_grow).
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

from rewardscope import config, logs
from rewardscope.clients import InstrumentClient
from rewardscope.live.daemon import Daemon
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig


def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=3600.0)
    p.add_argument("--rate", type=float, default=4.0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workflow", default="atoms")
    p.add_argument("--max-growth-mb", type=float, default=100.0)
    args = p.parse_args(argv)
    logs.setup("ERROR", "text")  # the expected rejections would drown the table

    sim = PerovskiteSimulator(SimConfig(shape=(args.size, args.size), noise_sigma=0.1,
                                        drift_px_per_frame=(0.2, 0.1)))
    frames = [sim.frame(i).pixels for i in range(16)]
    inst = InstrumentClient("tcp://127.0.0.1:*")
    cfg = config.load(None, {"frames": inst.endpoint, "results": "tcp://127.0.0.1:*",
                             "control": "tcp://127.0.0.1:*", "metrics_port": 0,
                             "workflow": args.workflow})
    daemon = Daemon(cfg)
    daemon.start()
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    inst.wait_for_subscriber(10)
    rng = np.random.default_rng(0)
    t0 = time.monotonic()
    next_report, i, baseline = t0 + 60, 0, None
    print(f"{'min':>4} {'processed':>10} {'dropped':>8} {'rss MB':>8}", flush=True)
    while time.monotonic() - t0 < args.duration:
        if i % 500 == 0:
            inst.start_session(f"soak-{i // 500}")
        inst.send_frame(frames[i % len(frames)])
        if i % 50 == 0:
            inst.sock.send_multipart([b"frame", rng.bytes(32), rng.bytes(128)])
        i += 1
        time.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
        if time.monotonic() >= next_report:
            next_report += 60
            s = daemon.stats_dict()
            rss = rss_mb()
            minute = int((time.monotonic() - t0) / 60)
            if minute == 5 or (baseline is None and args.duration < 600):
                baseline = rss
            print(f"{minute:>4} {s['frames_processed']:>10} "
                  f"{sum(s['frames_dropped'].values()):>8} {rss:>8.1f}", flush=True)
    daemon.stop()
    thread.join(timeout=30)
    inst.close()
    final = rss_mb()
    growth = final - (baseline or final)
    ok = growth < args.max_growth_mb
    print(f"RSS growth after warm-up: {growth:.1f} MB -> {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
