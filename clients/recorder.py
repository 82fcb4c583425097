"""Record an instrument's frame stream to a record log, message for message.

Why: a recording can be replayed into the service later (``rewardscope replay``) to reproduce
a session exactly, for debugging, benchmarks and regression tests. Every multipart message is
written as it arrives, byte for byte, with its receive time; nothing is decoded, so malformed
messages are kept too (they are what the service saw). Each record reaches the OS at once, so
stopping or crashing leaves a valid file.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq

from rewardscope import protocol
from rewardscope.storage.recordlog import RecordWriter

log = logging.getLogger(__name__)

MODES = ("sub", "pull")
_POLL_MS = 100  # how often a blocked receive looks at the stop conditions


def record(frames_url: str, out_path: str | os.PathLike[str], mode: str = "sub",
           stop_after: int | None = None, duration_s: float | None = None,
           stop_event: threading.Event | None = None, *, fsync: bool = False,
           context: zmq.Context | None = None) -> int:
    """Connect to ``frames_url`` and append every message to ``out_path``; return the count.

    ``mode="sub"`` subscribes to everything (a passive tap beside the service); ``"pull"``
    takes the messages instead (the recorder is the consumer). Stops after ``stop_after``
    messages, after ``duration_s`` seconds or when ``stop_event`` is set, whichever comes
    first; with none of them it runs until the event or an interrupt.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB if mode == "sub" else zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    if mode == "sub":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    deadline = None if duration_s is None else time.monotonic() + duration_s
    count = 0
    try:
        sock.connect(frames_url)
        log.info("recording %s (%s) to %s", frames_url, mode, out_path)
        with RecordWriter(out_path, fsync=fsync) as writer:
            while stop_after is None or count < stop_after:
                if stop_event is not None and stop_event.is_set():
                    break
                timeout = _POLL_MS
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    timeout = max(1, min(timeout, int(left * 1000)))
                if not sock.poll(timeout, zmq.POLLIN):
                    continue
                frames = sock.recv_multipart(copy=False)
                t = time.time()
                writer.write([f.buffer for f in frames], t=t)
                count += 1
                if count % 1000 == 0:
                    log.debug("recorded %d messages", count)
    finally:
        sock.close()
    log.info("recorded %d messages to %s", count, out_path)
    return count


@contextmanager
def _stop_on_signals(event: threading.Event) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``event.set()`` while recording (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping the recording", signum)
        event.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``rewardscope record --frames URL --out FILE [--mode sub|pull] [--count N] [--duration S]``.

    ``--count``/``--duration`` are optional; SIGINT/SIGTERM stop cleanly and keep the file.
    """
    parser.add_argument("--frames", default=protocol.DEFAULT_FRAMES_URL, metavar="URL",
                        help=f"instrument frames URL (default {protocol.DEFAULT_FRAMES_URL})")
    parser.add_argument("--out", required=True, metavar="FILE", help="record log to write")
    parser.add_argument("--mode", choices=MODES, default="sub",
                        help="sub: tap a PUB stream (default); pull: consume a PUSH stream")
    parser.add_argument("--count", type=int, default=None, metavar="N",
                        help="stop after N messages")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop after S seconds")
    parser.add_argument("--fsync", action="store_true",
                        help="fsync after every message (survives power loss; slower)")


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    t0 = time.monotonic()
    with _stop_on_signals(stop):
        n = record(args.frames, args.out, mode=args.mode, stop_after=args.count,
                   duration_s=args.duration, stop_event=stop, fsync=args.fsync)
    print(f"recorded {n} messages to {args.out} in {time.monotonic() - t0:.1f} s")
    return 0

