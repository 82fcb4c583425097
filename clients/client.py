"""A small client for acquisition software: send frames, receive results, steer the service.

Depends on :mod:`rewardscope.protocol` (and :mod:`rewardscope.security` for CURVE) only.
Three classes, one per socket role::

    from rewardscope.clients import InstrumentClient, ResultsClient, ControlClient

    with InstrumentClient("tcp://127.0.0.1:5555") as inst, \\
         ResultsClient("tcp://127.0.0.1:5556") as res:
        inst.wait_for_subscriber(5.0)          # the service has connected
        inst.start_session("run-42", lattice_px=12.0)
        inst.send_frame(image)                 # numpy 2-D array, any FRAME_DTYPES dtype
        result = res.recv_result(timeout=10)   # protocol.Result with numpy atoms/labels
        inst.end_session()
    ControlClient("tcp://127.0.0.1:5557").set(budget=12)

CURVE (when the service runs with ``curve_secret``/``curve_allow``): pass your own secret
certificate and the service's public one, ``curve_secret="alice.key_secret",
curve_server_public="server.key"``; your ``alice.key`` must be in the service's allow folder.
An InstrumentClient that *binds* is the CURVE server instead: ``curve_secret`` is then its own
server certificate and ``curve_allow`` the folder of subscribers it lets in.
"""

from __future__ import annotations

import time
from types import TracebackType

import numpy as np
import zmq

from rewardscope import protocol, security


def _client_keys(curve_secret: str | None,
                 curve_server_public: str | None) -> security.ClientKeys | None:
    """Both files or neither: half a CURVE configuration is a mistake, not plain text."""
    if curve_secret is None and curve_server_public is None:
        return None
    if not (curve_secret and curve_server_public):
        raise ValueError("CURVE needs both curve_secret and curve_server_public")
    return security.load_client_keys(curve_secret, curve_server_public)


class _Socketed:
    sock: zmq.Socket

    def close(self) -> None:
        self.sock.close(linger=1000)

    def __enter__(self):
        return self

    def __exit__(self, et: type | None, ev: BaseException | None, tb: TracebackType | None):
        self.close()


class InstrumentClient(_Socketed):
    """The instrument side: binds a PUB (default) or PUSH socket and streams frames.

    PUB uses an XPUB socket so :meth:`wait_for_subscriber` can block until the service has
    subscribed; without that, the first frames of a session are lost to ZeroMQ's slow joiner.

    CURVE: connecting (``bind=False``, the service runs with ``frames_bind``) takes
    ``curve_secret`` + ``curve_server_public`` like the other clients; binding takes
    ``curve_secret`` (this side's server certificate) + ``curve_allow`` and runs a ZAP handler
    on ``context`` until :meth:`close`, so give it a context of its own.
    """

    def __init__(self, url: str = protocol.DEFAULT_FRAMES_URL, *, mode: str = "pub",
                 bind: bool = True, context: zmq.Context | None = None,
                 curve_secret: str | None = None, curve_server_public: str | None = None,
                 curve_allow: str | None = None) -> None:
        if mode not in ("pub", "push"):
            raise ValueError(f"mode must be 'pub' or 'push', got {mode!r}")
        ctx = context or zmq.Context.instance()
        self.mode = mode
        self._curve: security.CurveServer | None = None
        self.sock = ctx.socket(zmq.XPUB if mode == "pub" else zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        try:
            self._secure(ctx, bind, curve_secret, curve_server_public, curve_allow)
            (self.sock.bind if bind else self.sock.connect)(url)
        except BaseException:
            self.close()
            raise
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else url
        self.session: str | None = None
        self.seq = 0

    def _secure(self, ctx: zmq.Context, bind: bool, curve_secret: str | None,
                curve_server_public: str | None, curve_allow: str | None) -> None:
        if not bind:
            if curve_allow is not None:
                raise ValueError("curve_allow applies only when the instrument binds")
            keys = _client_keys(curve_secret, curve_server_public)
            if keys is not None:
                keys.apply(self.sock)
            return
        if curve_server_public is not None:
            raise ValueError("a binding instrument is the CURVE server: pass curve_secret and "
                             "curve_allow, not curve_server_public")
        if curve_secret is None and curve_allow is None:
            return
        if not (curve_secret and curve_allow):
            raise ValueError("a binding instrument needs both curve_secret and curve_allow")
        self._curve = security.CurveServer(curve_secret, curve_allow, ctx).start()
        self._curve.apply(self.sock)

    def close(self) -> None:
        super().close()
        if self._curve is not None:  # after the socket: a bound CURVE socket needs its ZAP
            self._curve.stop()
            self._curve = None

    def wait_for_subscriber(self, timeout_s: float = 5.0) -> bool:
        """Block until a subscriber subscribed to frames (PUB) — True if one did in time."""
        if self.mode != "pub":
            return True
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000)):
                msg = self.sock.recv()
                if msg[:1] == b"\x01":
                    return True
        return False

    def start_session(self, session: str, *, lattice_px: float | None = None,
                      meta: dict | None = None) -> None:
        self.session, self.seq = session, 0
        self.sock.send_multipart(protocol.encode_start(session, lattice_px=lattice_px,
                                                       meta=meta))

    def send_frame(self, pixels: np.ndarray, *, seq: int | None = None,
                   lattice_px: float | None = None, pixel_size_m: float | None = None,
                   origin_m: tuple[float, float] | None = None, t: float | None = None,
                   meta: dict | None = None) -> int:
        """Send one 2-D frame; returns the seq used (auto-incremented by default)."""
        if self.session is None:
            raise RuntimeError("call start_session() before send_frame()")
        seq = self.seq if seq is None else int(seq)
        self.sock.send_multipart(protocol.encode_frame(
            pixels, session=self.session, seq=seq, t=t, lattice_px=lattice_px,
            pixel_size_m=pixel_size_m, origin_m=origin_m, meta=meta), copy=False)
        self.seq = seq + 1
        return seq

    def end_session(self) -> None:
        if self.session is None:
            return
        self.sock.send_multipart(protocol.encode_end(self.session, n_frames=self.seq))
        self.session = None


class ResultsClient(_Socketed):
    """Subscribes to the service's results PUB: results, status heartbeats, errors.

    Recommended regions and released scans are further topics: pass
    ``topics=protocol.RESULT_TOPICS + protocol.REGION_TOPICS`` to get them too (decoded as
    :class:`protocol.Regions` and :class:`protocol.Scan`).
    """

    def __init__(self, url: str = protocol.DEFAULT_RESULTS_URL, *,
                 topics: tuple[bytes, ...] = protocol.RESULT_TOPICS,
                 context: zmq.Context | None = None, curve_secret: str | None = None,
                 curve_server_public: str | None = None) -> None:
        keys = _client_keys(curve_secret, curve_server_public)
        ctx = context or zmq.Context.instance()
        self.sock = ctx.socket(zmq.SUB)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t)
        if keys is not None:
            keys.apply(self.sock)
        self.sock.connect(url)

    def recv(self, timeout: float | None = None
             ) -> (protocol.Result | protocol.Regions | protocol.Scan | tuple[str, dict]
                   | None):
        """Next message: a Result, Regions or Scan, or (topic, header) for status/error; None
        on timeout (``timeout`` in seconds)."""
        if not self.sock.poll(None if timeout is None else int(timeout * 1000)):
            return None
        parts = self.sock.recv_multipart()
        topic = bytes(parts[0])
        if topic == protocol.TOPIC_RESULT:
            return protocol.decode_result(parts)
        if topic == protocol.TOPIC_REGIONS:
            return protocol.decode_regions(parts)
        if topic == protocol.TOPIC_SCAN:
            return protocol.decode_scan(parts)
        return protocol.decode_event(parts)

    def recv_result(self, timeout: float | None = None) -> protocol.Result | None:
        """Skip status/error messages until a result arrives (or the timeout passes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            msg = self.recv(left)
            if msg is None:
                return None
            if isinstance(msg, protocol.Result):
                return msg


class ControlClient:
    """REQ client for the control socket, with the 'lazy pirate' reconnect on timeout."""

    def __init__(self, url: str = protocol.DEFAULT_CONTROL_URL, *, timeout_s: float = 5.0,
                 context: zmq.Context | None = None, curve_secret: str | None = None,
                 curve_server_public: str | None = None) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.keys = _client_keys(curve_secret, curve_server_public)
        self.ctx = context or zmq.Context.instance()
        self.sock = self._connect()

    def _connect(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        # A REQ send blocks while no connection exists (e.g. a refused CURVE handshake).
        s.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
        if self.keys is not None:
            self.keys.apply(s)
        s.connect(self.url)
        return s

    def _timeout(self, what: str) -> TimeoutError:
        self.sock.close()
        self.sock = self._connect()  # a REQ socket is stuck after a lost request or reply
        return TimeoutError(f"{what} {self.url} in {self.timeout_s} s")

    def call(self, cmd: str, **args) -> dict:
        """Send a command, return the reply map; raise TimeoutError if the service is silent."""
        try:
            self.sock.send(protocol.encode_request(cmd, **args))
        except zmq.Again:
            raise self._timeout(f"could not send '{cmd}' to") from None
        if not self.sock.poll(int(self.timeout_s * 1000)):
            raise self._timeout(f"no reply to '{cmd}' from")
        return protocol.decode_reply(self.sock.recv())

    def ping(self) -> dict:
        return self.call("ping")

    def config(self) -> dict:
        return self.call("config")

    def stats(self) -> dict:
        return self.call("stats")

    def pause(self) -> dict:
        return self.call("pause")

    def resume(self) -> dict:
        return self.call("resume")

    def set(self, **values) -> dict:
        return self.call("set", **values)

    def suggestions(self, session: str | None = None) -> dict:
        """``{"ok": true, "pending": [suggestion, ...]}``: suggestions awaiting a decision
        (each with ``session``, ``seq`` and ``expires_in_s``), best score first."""
        return self.call("suggestions") if session is None else self.call("suggestions",
                                                                          session=session)

    def approve(self, sid: str) -> dict:
        """Release suggestion ``sid``: ``{"ok": true, "scan": {...}}`` or ``{"ok": false,
        "code": ..., "error": ...}`` (codes: ``protocol.CONTROL_ERROR_CODES``)."""
        return self.call("approve", id=sid)

    def reject(self, sid: str) -> dict:
        """Drop suggestion ``sid`` for good (never scanned): ``{"ok": true, "id": sid}``."""
        return self.call("reject", id=sid)

    def close(self) -> None:
        self.sock.close()
