"""``rewardscope watch``: one line per result (and per error) from the service's results socket."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from rewardscope import protocol
from rewardscope.clients.client import ResultsClient


def format_result(r: protocol.Result) -> str:
    """One human line: seq, atoms, evaluations, latency, headline rewards."""
    rewards = " ".join(f"{k}={v:.3g}" for k, v in list(r.rewards.items())[:4]
                       if isinstance(v, (int, float)))
    warm = "warm" if r.extra.get("warm_started") else "cold"
    return (f"{r.session} seq={r.seq:<5d} atoms={len(r.atoms):<5d} walls={len(r.walls):<3d} "
            f"evals={r.n_evaluations:<3d} {warm} latency={r.latency_s * 1000:7.1f} ms {rewards}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default=protocol.DEFAULT_RESULTS_URL, help="results PUB URL")
    p.add_argument("--count", type=int, default=0, help="exit after N results (0 = forever)")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="exit with status 1 if no result arrives for this many seconds")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument("--status", action="store_true", help="also print status heartbeats")


def run(args: argparse.Namespace) -> int:
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    n = 0
    last = time.monotonic()
    with ResultsClient(args.results) as client:
        while not stop["now"]:
            msg = client.recv(timeout=0.2)
            if msg is None:
                if args.timeout and time.monotonic() - last > args.timeout:
                    print(f"no result for {args.timeout} s", file=sys.stderr)
                    return 1
                continue
            if isinstance(msg, protocol.Result):
                n += 1
                last = time.monotonic()
                if args.json:
                    print(json.dumps({"session": msg.session, "seq": msg.seq,
                                      "atoms": len(msg.atoms), "latency_s": msg.latency_s,
                                      "n_evaluations": msg.n_evaluations,
                                      "rewards": msg.rewards, "params": msg.params}),
                          flush=True)
                else:
                    print(format_result(msg), flush=True)
                if args.count and n >= args.count:
                    return 0
            else:
                topic, h = msg
                if topic == "error":
                    print(f"ERROR {h.get('code')} session={h.get('session')} "
                          f"seq={h.get('seq')}: {h.get('message')}", flush=True)
                elif args.status:
                    print(f"STATUS {json.dumps(h, default=str)}", flush=True)
    return 0
