"""The loopback rig the integration tests share: a real instrument client, a running daemon
and results/control clients, all on 127.0.0.1 with ports picked by the OS."""

from __future__ import annotations

import socket
import threading
import time

from rewardscope import config, protocol
from rewardscope.clients import ControlClient, InstrumentClient, ResultsClient
from rewardscope.live.daemon import Daemon


class Rig:
    """Instrument client -> daemon -> results subscriber + control client.

    ``overrides`` are configuration keys on top of the loopback sockets; ``topics`` the
    results subscription (default: results, status and errors). Every message ``wait_for``
    receives is kept in ``seen``, in order.
    """

    def __init__(self, *, topics: tuple[bytes, ...] | None = None, control_timeout_s: float = 5.0,
                 **overrides) -> None:
        self.instrument = InstrumentClient("tcp://127.0.0.1:*")
        self.seen: list = []
        cfg = config.load(None, {"frames": self.instrument.endpoint,
                                 "results": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*",
                                 "metrics_port": 0, "heartbeat_s": 0.2, **overrides})
        self.daemon = Daemon(cfg)
        self.daemon.start()
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()
        kw = {} if topics is None else {"topics": topics}
        self.results = ResultsClient(self.daemon.results_endpoint, **kw)
        self.control = ControlClient(self.daemon.control_endpoint, timeout_s=control_timeout_s)
        assert self.instrument.wait_for_subscriber(10)
        # the results subscription is confirmed once a heartbeat arrives
        assert self.wait_for(lambda m: isinstance(m, tuple) and m[0] == "status", 5)

    def wait_for(self, pred, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.results.recv(timeout=0.2)
            if msg is not None:
                self.seen.append(msg)
                if pred(msg):
                    return msg
        return None

    def collect(self, n_results: int, timeout: float = 30.0):
        results, errors = [], []
        deadline = time.monotonic() + timeout
        while len(results) < n_results and time.monotonic() < deadline:
            msg = self.results.recv(timeout=0.2)
            if isinstance(msg, protocol.Result):
                results.append(msg)
            elif isinstance(msg, tuple) and msg[0] == "error":
                errors.append(msg[1])
        return results, errors

    def close(self) -> None:
        self.daemon.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        self.results.close()
        self.control.close()
        self.instrument.close()


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback right now (for servers that need a number)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
