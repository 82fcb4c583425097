"""Replay a recorded session (or still images) as a live instrument stream.

Why: reproducing a session exactly — same bytes, same order, same pacing — is the cheapest way
to debug, benchmark and regression-test the service without a microscope. Record logs are
re-sent message for message, paced by the recorded receive-time gaps divided by ``speed``.
Paths that are not record logs are read as still images (:mod:`rewardscope.storage.stills`)
and sent as one session, ``interval_s`` apart.

PUB mode binds an XPUB socket and waits for the first subscription before sending, so a
subscriber that connects after the replay starts (ZeroMQ's slow joiner) does not miss the
``start`` message. XPUB_NODROP makes a slow consumer slow the replay down instead of losing
messages.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import zmq

from rewardscope import protocol
from rewardscope.storage import stills
from rewardscope.storage.recordlog import Record, RecordReader, is_record_log

log = logging.getLogger(__name__)

MODES = ("pub", "push")
_POLL_MS = 100
PathLike = str | os.PathLike[str]


def replay(path: PathLike | Sequence[PathLike], publish_url: str = protocol.DEFAULT_FRAMES_URL,
           speed: float = 1.0, mode: str = "pub", wait_for_subscriber_s: float | None = 5.0,
           loop: bool = False, *, stop_event: threading.Event | None = None,
           lattice_px: float | None = None, session: str | None = None,
           interval_s: float = 1.0, on_bound: Callable[[str], None] | None = None,
           linger_s: float = 5.0, context: zmq.Context | None = None) -> int:
    """Bind ``publish_url`` and re-send the recorded messages; return how many were sent.

    ``path`` is one file or a list; runs of non-log paths become one stills session each
    (``session``, ``lattice_px`` and ``interval_s`` apply to those). ``speed`` divides the
    recorded gaps (2.0 = twice as fast; <= 0 = as fast as the consumer takes them).
    ``loop`` repeats until ``stop_event`` is set. ``on_bound`` receives the bound endpoint
    (useful with ``tcp://127.0.0.1:*``). In push mode sending waits for a puller.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        raise ValueError("nothing to replay")
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: no such file")
        if not is_record_log(p) and os.path.splitext(p)[1].lower() not in stills.SUPPORTED_EXTS:
            raise stills.ImageFormatError(f"{p}: neither a record log nor a supported image")
    stop = stop_event or threading.Event()
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB if mode == "pub" else zmq.PUSH)
    sent = 0
    try:
        if mode == "pub":
            sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.bind(publish_url)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("replaying %d file(s) on %s (%s, speed %s)", len(paths), endpoint, mode, speed)
        if on_bound is not None:
            on_bound(endpoint)
        if mode == "pub" and wait_for_subscriber_s:
            _wait_for_subscriber(sock, wait_for_subscriber_s, stop)
        while not stop.is_set():
            for records in _sources(paths, session, lattice_px, interval_s):
                sent += _send_paced(sock, records, speed, stop)
                if stop.is_set():
                    break
            if not loop:
                break
    finally:
        # Let queued messages reach the peer, unless we were told to stop.
        sock.close(linger=0 if stop.is_set() else int(linger_s * 1000))
    log.info("replay sent %d messages", sent)
    return sent


def _wait_for_subscriber(sock: zmq.Socket, timeout_s: float, stop: threading.Event) -> bool:
    """Block until an XPUB subscription arrives (or time out with a warning)."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if sock.poll(max(1, min(_POLL_MS, int(left * 1000))), zmq.POLLIN):
            msg = sock.recv()
            if msg[:1] == b"\x01":
                log.debug("subscriber joined (prefix %r)", msg[1:33])
                return True
    log.warning("no subscriber after %.1f s; replaying anyway (early messages may be lost)",
                timeout_s)
    return False


def _sources(paths: Sequence[PathLike], session: str | None, lattice_px: float | None,
             interval_s: float) -> Iterator[Iterable[Record]]:
    """One record stream per record log, one per run of consecutive image files."""
    images: list[PathLike] = []
    for p in paths:
        if is_record_log(p):
            if images:
                yield _stills(images, session, lattice_px, interval_s)
                images = []
            yield _log_records(p)
        else:
            images.append(p)
    if images:
        yield _stills(images, session, lattice_px, interval_s)


def _log_records(path: PathLike) -> Iterator[Record]:
    reader = RecordReader(path)
    yield from reader
    if reader.truncated_tail:
        log.warning("%s: replayed %d records; the damaged tail (%d bytes, %s) was skipped",
                    path, reader.records_read, reader.bytes_skipped, reader.tail_reason)


def _stills(images: list[PathLike], session: str | None, lattice_px: float | None,
            interval_s: float) -> Iterator[Record]:
    name = session or stills.default_session_name(images)
    return stills.session_records(images, name, lattice_px, interval_s=interval_s)


def _send_paced(sock: zmq.Socket, records: Iterable[Record], speed: float,
                stop: threading.Event) -> int:
    """Send records keeping the recorded gaps / speed, scheduled from the first (no drift)."""
    sent = 0
    t_rec0: float | None = None
    t_wall0 = time.monotonic()
    for rec in records:
        if t_rec0 is None:
            t_rec0, t_wall0 = rec.t, time.monotonic()
        if speed > 0:
            due = t_wall0 + max(0.0, rec.t - t_rec0) / speed
            wait = due - time.monotonic()
            if wait > 0 and stop.wait(wait):
                break
        if not _send(sock, rec.parts, stop):
            break
        sent += 1
    return sent


def _send(sock: zmq.Socket, parts: list[bytes], stop: threading.Event) -> bool:
    """Send one multipart message, waiting (interruptibly) while the peer is full or absent."""
    while True:
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=len(parts[-1]) < 65536)
            return True
        except zmq.Again:
            if stop.is_set():
                return False
            if sock.type == zmq.XPUB:
                _drain_subscriptions(sock)
            sock.poll(_POLL_MS, zmq.POLLOUT)


def _drain_subscriptions(sock: zmq.Socket) -> None:
    while sock.poll(0, zmq.POLLIN):
        sock.recv()


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``rewardscope replay FILE [FILE...] --publish URL --speed 1.0 [--mode pub|push] ...``."""
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="record logs (.rsrec) and/or image files")
    parser.add_argument("--publish", default=protocol.DEFAULT_FRAMES_URL, metavar="URL",
                        help=f"URL to bind (default {protocol.DEFAULT_FRAMES_URL})")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="pacing factor: 2 = twice as fast, 0 = as fast as possible")
    parser.add_argument("--mode", choices=MODES, default="pub",
                        help="pub: publish to subscribers (default); push: to one puller")
    parser.add_argument("--lattice-px", type=float, default=None, metavar="A",
                        help="lattice spacing in pixels for image files")
    parser.add_argument("--session", default=None, help="session name for image files")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between image files at speed 1 (default 1)")
    parser.add_argument("--loop", action="store_true", help="repeat until interrupted")
    parser.add_argument("--wait", type=float, default=5.0, metavar="S",
                        help="seconds to wait for a subscriber before sending (pub mode)")


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    old = None
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT,
                                                                     signal.SIGTERM)}
    t0 = time.monotonic()
    try:
        n = replay(args.files, args.publish, speed=args.speed, mode=args.mode,
                   wait_for_subscriber_s=args.wait, loop=args.loop, stop_event=stop,
                   lattice_px=args.lattice_px, session=args.session,
                   interval_s=args.interval)
    except (stills.ImageFormatError, OSError, ValueError) as exc:
        log.error("replay failed: %s", exc)
        print(f"rewardscope replay: {exc}", file=sys.stderr)
        return 2
    finally:
        for s, h in (old or {}).items():
            signal.signal(s, h)
    print(f"replayed {n} messages on {args.publish} in {time.monotonic() - t0:.1f} s")
    return 0

