"""Publish a planned stream over ZeroMQ, paced like a microscope; ``rewardscope simulate``.

Why XPUB: a plain PUB drops everything sent before the subscriber's subscription arrives
(the slow joiner), which would make the ledger lie. XPUB reports subscriptions, so
:func:`publish` waits until the instrument topics are covered before the first message.

Ground truth travels on an optional second socket, one message per good frame, sent just
before the frame: ``[b"truth", header, atoms <f8 (N,2), site |i1, domain <i2, amorphous |b1]``
with header ``{v, type: "truth", session, seq, index, walls, lattice_px, rotation_deg,
polarization, n}``. It is an XPUB too, so a truth subscriber can be awaited. Use
:func:`encode_truth` and :func:`decode_truth`.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import zmq

from rewardscope import protocol
from rewardscope.simulators.faults import ALL_FAULTS, FaultPlan, Ledger, PlannedMessage, plan_stream
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig, Truth

log = logging.getLogger("rewardscope.simulate")

TOPIC_TRUTH = b"truth"
MODES = ("pub", "push")


# ---------------------------------------------------------------------- truth side channel

@dataclass
class TruthMessage:
    """Decoded truth for one frame (pixel coordinates of that frame)."""

    session: str
    seq: int
    index: int | None
    lattice_px: float
    rotation_deg: float
    walls: list[tuple[float, float, float, float]]
    polarization: np.ndarray  # (V, 2)
    atoms: np.ndarray  # (N, 2) float64, x, y
    site: np.ndarray  # (N,) int8
    domain: np.ndarray  # (N,) int16
    amorphous: np.ndarray  # (N,) bool


def encode_truth(truth: Truth, *, session: str, seq: int, index: int | None = None
                 ) -> list[bytes]:
    atoms = np.ascontiguousarray(truth.atoms, dtype="<f8").reshape(-1, 2)
    h = {"v": protocol.VERSION, "type": "truth", "session": session, "seq": int(seq),
         "index": index, "n": int(atoms.shape[0]), "lattice_px": float(truth.lattice_px),
         "rotation_deg": float(truth.rotation_deg),
         "walls": [[float(c) for c in w] for w in truth.walls],
         "polarization": np.asarray(truth.polarization, float).tolist()}
    return [TOPIC_TRUTH, protocol.pack(h), atoms.tobytes(),
            np.ascontiguousarray(truth.site, dtype="|i1").tobytes(),
            np.ascontiguousarray(truth.domain, dtype="<i2").tobytes(),
            np.ascontiguousarray(truth.amorphous, dtype="|b1").tobytes()]


def decode_truth(parts: list[bytes]) -> TruthMessage:
    """Inverse of :func:`encode_truth`; raises ProtocolError on anything inconsistent."""
    if len(parts) not in (5, 6) or bytes(parts[0]) != TOPIC_TRUTH:
        raise protocol.ProtocolError("bad_parts", "not a 5/6-part truth message")
    h = protocol.unpack_map(bytes(parts[1]), protocol.RESULT_LIMITS)
    if h.get("type") != "truth" or not isinstance(h.get("n"), int):
        raise protocol.ProtocolError("bad_header", "not a truth header")
    n = h["n"]
    specs = [("<f8", (n, 2)), ("|i1", (n,)), ("<i2", (n,)), ("|b1", (n,))]
    arrays = []
    for buf, (dt, shape) in zip(parts[2:], specs, strict=False):
        if len(buf) != int(np.prod(shape)) * np.dtype(dt).itemsize:
            raise protocol.ProtocolError("buffer_size", f"truth array of {len(buf)} bytes")
        arrays.append(np.frombuffer(bytes(buf), dtype=dt).reshape(shape).copy())
    if len(arrays) == 3:
        arrays.append(np.zeros(n, bool))
    return TruthMessage(session=str(h.get("session")), seq=int(h.get("seq", -1)),
                        index=h.get("index"), lattice_px=float(h.get("lattice_px", 0.0)),
                        rotation_deg=float(h.get("rotation_deg", 0.0)),
                        walls=[tuple(float(c) for c in w) for w in h.get("walls", [])],
                        polarization=np.asarray(h.get("polarization", []), float).reshape(-1, 2),
                        atoms=arrays[0], site=arrays[1], domain=arrays[2], amorphous=arrays[3])


# ---------------------------------------------------------------------- publishing

def _covered(prefixes: set[bytes], topics: Iterable[bytes]) -> bool:
    return all(any(t.startswith(p) for p in prefixes) for t in topics)


def wait_for_subscription(sock: zmq.Socket, timeout_s: float,
                          topics: tuple[bytes, ...] = protocol.INSTRUMENT_TOPICS,
                          grace_s: float = 0.25) -> set[bytes]:
    """Read XPUB subscription events until every topic is covered, or ``grace_s`` after the
    first one (a subscriber that wants only some topics), or the timeout. Returns prefixes."""
    prefixes: set[bytes] = set()
    deadline = time.monotonic() + timeout_s
    first: float | None = None
    while not (prefixes and _covered(prefixes, topics)):
        now = time.monotonic()
        until = deadline if first is None else min(deadline, first + grace_s)
        if now >= until:
            break
        if sock.poll(max(1, int((until - now) * 1000))):
            ev = sock.recv()
            if ev[:1] == b"\x01":
                prefixes.add(bytes(ev[1:]))
                first = first if first is not None else time.monotonic()
    return prefixes


def publish(url: str, messages: Iterable[PlannedMessage], rate_hz: float, mode: str = "pub",
            wait_for_subscriber_s: float = 5.0, *, bind: bool = True,
            truth_url: str | None = None, sndhwm: int = 1000, linger_s: float = 5.0,
            send_timeout_s: float = 60.0, truth_wait_s: float = 0.0,
            stop: threading.Event | None = None,
            endpoint_ready: threading.Event | None = None,
            endpoints: dict[str, str] | None = None) -> Ledger:
    """Send ``messages`` (good frames paced at ``rate_hz``; <= 0 = flat out) and return the
    :class:`Ledger` of what was actually sent.

    ``mode="pub"`` binds an XPUB and waits for a subscription; ``"push"`` binds a PUSH and
    waits for a PULL peer (TimeoutError if none). ``bind=False`` connects instead. With
    ``url`` ending in ``:*`` the bound endpoint is written to ``endpoints["frames"]`` (and
    ``"truth"``) before waiting, and ``endpoint_ready`` is set, so tests can use free ports.
    The truth socket is an XPUB too; ``truth_wait_s`` > 0 also waits for a truth subscriber.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB if mode == "pub" else zmq.PUSH)
    tsock: zmq.Socket | None = None
    try:
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.LINGER, int(linger_s * 1000))
        _attach(sock, url, bind, endpoints, "frames")
        if truth_url:
            tsock = ctx.socket(zmq.XPUB)
            tsock.setsockopt(zmq.SNDHWM, sndhwm)
            tsock.setsockopt(zmq.LINGER, int(linger_s * 1000))
            _attach(tsock, truth_url, bind, endpoints, "truth")
        if endpoint_ready is not None:
            endpoint_ready.set()
        _wait_for_peer(sock, mode, wait_for_subscriber_s)
        if tsock is not None and truth_wait_s > 0:
            wait_for_subscription(tsock, truth_wait_s, topics=(TOPIC_TRUTH,))
        sock.setsockopt(zmq.SNDTIMEO, int(send_timeout_s * 1000))
        return _send_all(sock, tsock, messages, rate_hz, stop)
    finally:
        sock.close()
        if tsock is not None:
            tsock.close()
        ctx.term()  # blocks until queued messages are flushed or linger expires


def _attach(sock: zmq.Socket, url: str, bind: bool, endpoints: dict[str, str] | None,
            name: str) -> None:
    if bind:
        sock.bind(url)
        url = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    else:
        sock.connect(url)
    if endpoints is not None:
        endpoints[name] = url


def _wait_for_peer(sock: zmq.Socket, mode: str, timeout_s: float) -> None:
    if mode == "pub":
        prefixes = wait_for_subscription(sock, timeout_s)
        if not prefixes:
            log.warning("no subscriber within timeout, publishing anyway",
                        extra={"timeout_s": timeout_s})
        else:
            log.info("subscriber ready", extra={"topics": sorted(p.decode(errors="replace")
                                                                 for p in prefixes)})
    elif not sock.poll(int(timeout_s * 1000), zmq.POLLOUT):
        raise TimeoutError(f"no PULL peer within {timeout_s} s")


def _send_all(sock: zmq.Socket, tsock: zmq.Socket | None, messages: Iterable[PlannedMessage],
              rate_hz: float, stop: threading.Event | None) -> Ledger:
    ledger = Ledger()
    period = 1.0 / rate_hz if rate_hz and rate_hz > 0 else 0.0
    t0 = time.monotonic()
    last_log = t0
    it = iter(messages)
    while stop is None or not stop.is_set():
        try:
            msg = next(it)  # rendered only now, so the frame's wall-clock stamp is fresh
        except StopIteration:
            break
        if tsock is not None and msg.kind == "frame" and msg.truth is not None:
            tsock.send_multipart(encode_truth(msg.truth, session=msg.session, seq=msg.seq or 0,
                                              index=msg.index), copy=False)
        sock.send_multipart(msg.parts, copy=False)
        ledger.add(msg)
        now = time.monotonic()
        if now - last_log >= 1.0:
            last_log = now
            _log_progress(ledger, now - t0)
        if period and msg.kind == "frame":
            time.sleep(max(0.0, t0 + ledger.good_frames * period - time.monotonic()))
    _log_progress(ledger, time.monotonic() - t0, final=True)
    return ledger


def _log_progress(ledger: Ledger, elapsed: float, final: bool = False) -> None:
    log.info("simulate done" if final else "simulate progress", extra={
        "messages": ledger.messages, "good_frames": ledger.good_frames,
        "errors": ledger.n_errors, "seq_gaps": ledger.seq_gaps, "restarts": ledger.restarts,
        "elapsed_s": round(elapsed, 2),
        "rate_hz": round(ledger.good_frames / elapsed, 2) if elapsed > 0 else 0.0})


# ---------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rewardscope simulate``."""
    p = parser
    p.add_argument("--publish", metavar="URL", default=protocol.DEFAULT_FRAMES_URL,
                   help="frames endpoint (default %(default)s)")
    p.add_argument("--connect", action="store_true",
                   help="connect to --publish/--truth instead of binding")
    p.add_argument("--mode", choices=MODES, default="pub", help="XPUB (default) or PUSH")
    p.add_argument("--rate", metavar="HZ", type=float, default=2.0,
                   help="good frames per second; 0 = as fast as possible (default 2)")
    p.add_argument("--frames", metavar="N", type=int, default=100)
    p.add_argument("--seed", metavar="S", type=int, default=0)
    p.add_argument("--session", metavar="NAME", default=None, help="default sim-<seed>")
    p.add_argument("--faults", metavar="LIST", default="",
                   help=f"comma list or 'all': {','.join(ALL_FAULTS)}")
    p.add_argument("--fault-every", metavar="K", type=int, default=5,
                   help="one fault after every K good frames (default 5)")
    p.add_argument("--shape", metavar=("R", "C"), type=int, nargs=2, default=(384, 384))
    p.add_argument("--lattice-px", metavar="A", type=float, default=12.0)
    p.add_argument("--rotation", metavar="DEG", type=float, default=0.0)
    p.add_argument("--noise", metavar="SIGMA", type=float, default=0.0,
                   help="additive Gaussian noise, units of the A peak (tests use 0.35)")
    p.add_argument("--dose", metavar="E", type=float, default=None,
                   help="electrons/pixel at the A peak (Poisson); default none")
    p.add_argument("--amorphous", metavar="N", type=int, default=0, help="amorphous blobs")
    p.add_argument("--walls", metavar="N", type=int, default=2, help="domain walls")
    p.add_argument("--wall-direction", choices=("100", "110", "random"), default="100")
    p.add_argument("--drift", metavar=("DX", "DY"), type=float, nargs=2, default=(0.0, 0.0),
                   help="drift in pixels per frame")
    p.add_argument("--dtype", choices=("<u2", "<f4"), default="<u2")
    p.add_argument("--truth", metavar="URL", default=None,
                   help="also publish ground truth on this PUB endpoint")
    p.add_argument("--wait", metavar="S", type=float, default=5.0,
                   help="seconds to wait for a subscriber/peer (default 5)")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(shape=tuple(args.shape), lattice_px=args.lattice_px,
                     rotation_deg=args.rotation, noise_sigma=args.noise, dose=args.dose,
                     amorphous_regions=args.amorphous, n_walls=args.walls,
                     wall_direction=args.wall_direction, drift_px_per_frame=tuple(args.drift),
                     dtype=args.dtype, seed=args.seed)


def _setup_logging() -> None:
    """Structured text logs on stderr unless the caller already configured logging."""
    if logging.getLogger().handlers:
        return
    try:
        from rewardscope import logs
    except ImportError:
        logging.basicConfig(level=logging.INFO)
    else:
        logs.setup("INFO", "text")


def run(args: argparse.Namespace) -> int:
    """Stream the simulated session; print the final ledger as one JSON line on stdout."""
    _setup_logging()
    try:
        sim = PerovskiteSimulator(config_from_args(args))
        plan = FaultPlan.parse(args.faults, every=args.fault_every, seed=args.seed)
    except ValueError as exc:
        log.error("bad simulate options: %s", exc)
        return 2
    session = args.session or f"sim-{args.seed}"
    log.info("simulate start", extra={"url": args.publish, "mode": args.mode,
                                      "session": session, "frames": args.frames,
                                      "rate_hz": args.rate, "faults": ",".join(plan.kinds)})
    try:
        ledger = publish(args.publish, plan_stream(sim, args.frames, session, plan),
                         args.rate, mode=args.mode, wait_for_subscriber_s=args.wait,
                         bind=not args.connect, truth_url=args.truth)
    except (TimeoutError, zmq.ZMQError) as exc:
        log.error("simulate failed: %s", exc)
        return 1
    print(json.dumps(ledger.as_dict()), flush=True)
    return 0
