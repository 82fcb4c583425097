"""``rewardscope watch``: one line per result (and per error) from the service's results socket.

``--approve`` also prints the recommended regions as they arrive, numbered, and reads operator
commands from stdin: ``a N`` / ``approve ID`` releases a suggestion as a scan, ``r N`` /
``reject ID`` drops it for good, ``l`` lists what is pending (N: the number printed in front of
a suggestion; an id may be shortened to any unique prefix).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import zmq

from rewardscope import protocol
from rewardscope.clients.client import ControlClient, ResultsClient


def format_result(r: protocol.Result) -> str:
    """One human line: seq, atoms, evaluations, latency, headline rewards."""
    rewards = " ".join(f"{k}={v:.3g}" for k, v in list(r.rewards.items())[:4]
                       if isinstance(v, (int, float)))
    warm = "warm" if r.extra.get("warm_started") else "cold"
    return (f"{r.session} seq={r.seq:<5d} atoms={len(r.atoms):<5d} walls={len(r.walls):<3d} "
            f"evals={r.n_evaluations:<3d} {warm} latency={r.latency_s * 1000:7.1f} ms {rewards}")


def format_suggestion(n: int, s: dict) -> str:
    """One line per suggestion: its number, id, reason, score, significance, box (px)."""
    box = " ".join(f"{c:.0f}" for c in s["box_px"])
    where = ""
    if s.get("center_m") is not None:
        where = (f" center=({s['center_m'][0] * 1e9:.1f}, {s['center_m'][1] * 1e9:.1f}) nm"
                 f" fov={s['fov_m'] * 1e9:.1f} nm" if s.get("fov_m") else "")
    return (f"  [{n}] {s['id']} {s['reason']:<11s} score={s['score']:.3g} "
            f"-log10p={s['significance']:.3g} box_px=[{box}] x{s.get('magnification', 1):.1f}"
            f"{where}")


def format_scan(scan: protocol.Scan) -> str:
    """One line per released scan."""
    box = " ".join(f"{c:.0f}" for c in scan.box_px)
    return (f"SCAN {scan.session} seq={scan.seq} {scan.id} {scan.reason or ''} "
            f"({scan.decision or 'released'}) box_px=[{box}]")


class Operator:
    """The approval side of ``watch --approve``: numbered suggestions and typed commands.

    ``control`` is anything with ``approve(id)``, ``reject(id)`` and ``suggestions()`` returning
    the service's reply maps (a :class:`ControlClient`).
    """

    def __init__(self, control) -> None:
        self.control = control
        self.numbered: dict[int, str] = {}  # number printed -> id
        self._next = 1

    def number(self, sid: str) -> int:
        """The number shown for ``sid`` (a new one the first time)."""
        for n, known in self.numbered.items():
            if known == sid:
                return n
        n, self._next = self._next, self._next + 1
        self.numbered[n] = sid
        return n

    def show_regions(self, msg: protocol.Regions) -> str:
        """Lines for a regions message, numbering each suggestion."""
        head = f"REGIONS {msg.session} seq={msg.seq} ({len(msg.regions)})"
        return "\n".join([head] + [format_suggestion(self.number(s["id"]), s)
                                   for s in msg.regions])

    def resolve(self, token: str) -> str | None:
        """A number, a full id, or a unique id prefix -> the id (None: ambiguous/unknown)."""
        if token.isdigit() and int(token) in self.numbered:
            return self.numbered[int(token)]
        hits = {sid for sid in self.numbered.values() if sid.startswith(token)}
        if len(hits) == 1:
            return hits.pop()
        return token if not hits else None

    def command(self, line: str) -> str:
        """Run one typed command and return what to print.

        ``a|approve N|ID``, ``r|reject N|ID``, ``l|list``, ``h|help``; anything else is answered
        with the usage, never sent.
        """
        words = line.split()
        if not words:
            return ""
        verb = words[0].lower()
        if verb in ("l", "list"):
            reply = self.control.suggestions()
            if not reply.get("ok"):
                return f"error {reply.get('code')}: {reply.get('error')}"
            pending = reply.get("pending", [])
            if not pending:
                return "nothing pending"
            return "\n".join(format_suggestion(self.number(s["id"]), s)
                             + f" expires in {s.get('expires_in_s', 0):.0f} s" for s in pending)
        if verb in ("a", "approve", "r", "reject") and len(words) == 2:
            sid = self.resolve(words[1])
            if sid is None:
                return f"'{words[1]}' matches several suggestions; type more of the id"
            approve = verb in ("a", "approve")
            reply = self.control.approve(sid) if approve else self.control.reject(sid)
            if not reply.get("ok"):
                return f"refused {reply.get('code')}: {reply.get('error')}"
            if approve:
                scan = reply["scan"]
                box = " ".join(f"{c:.0f}" for c in scan["box_px"])
                return f"approved {sid}: scan box_px=[{box}]"
            return f"rejected {sid}"
        return "commands: a|approve N|ID, r|reject N|ID, l|list (N: the number in [ ])"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default=protocol.DEFAULT_RESULTS_URL, help="results PUB URL")
    p.add_argument("--count", type=int, default=0, help="exit after N results (0 = forever)")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="exit with status 1 if no result arrives for this many seconds")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument("--status", action="store_true", help="also print status heartbeats")
    p.add_argument("--approve", action="store_true",
                   help="print suggested regions and approve/reject them from stdin "
                        "(a N, r N, l); run the service with regions_mode = \"approve\"")
    p.add_argument("--control", default=protocol.DEFAULT_CONTROL_URL,
                   help="control REP URL (for --approve)")


def run(args: argparse.Namespace) -> int:
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    approve = getattr(args, "approve", False)
    topics = protocol.RESULT_TOPICS + (protocol.REGION_TOPICS if approve else ())
    operator = Operator(ControlClient(args.control)) if approve else None
    try:
        return _watch(args, stop, topics, operator)
    finally:
        if operator is not None:
            operator.control.close()


def _watch(args: argparse.Namespace, stop: dict, topics: tuple[bytes, ...],
           operator: Operator | None) -> int:
    n = 0
    last = time.monotonic()
    with ResultsClient(args.results, topics=topics) as client:
        poller = zmq.Poller()
        poller.register(client.sock, zmq.POLLIN)
        reading = operator is not None
        if reading:
            poller.register(sys.stdin, zmq.POLLIN)
        while not stop["now"]:
            events = dict(poller.poll(200))
            if reading and (sys.stdin.fileno() in events or sys.stdin in events):
                line = sys.stdin.readline()
                if not line:  # stdin closed: keep watching, stop reading
                    poller.unregister(sys.stdin)
                    reading = False
                elif out := operator.command(line):
                    print(out, flush=True)
            msg = client.recv(timeout=0) if client.sock in events else None
            if msg is None:
                if args.timeout and time.monotonic() - last > args.timeout:
                    print(f"no result for {args.timeout} s", file=sys.stderr)
                    return 1
                continue
            if isinstance(msg, protocol.Regions):
                if operator is not None:
                    print(operator.show_regions(msg), flush=True)
            elif isinstance(msg, protocol.Scan):
                print(format_scan(msg), flush=True)
            elif isinstance(msg, protocol.Result):
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
