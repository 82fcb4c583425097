"""CURVE over real loopback sockets: who gets in, who gets nothing, and clear key errors.

Daemon-level tests wait for ``daemon.CURVE_WIRED`` (set once ``Daemon.start`` calls the
security seam); the socket-level tests exercise the same module on plain ZeroMQ sockets now.
"""

from __future__ import annotations

import shutil
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq

from rewardscope import config, protocol
from rewardscope.cli import main as cli_main
from rewardscope.clients import ControlClient, InstrumentClient, ResultsClient
from rewardscope.live import daemon
from rewardscope.live.daemon import Daemon, InsecureBindError, check_bind_policy
from rewardscope.security import CurveError, CurveServer, apply_client, load_secret, write_keys

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
wired = pytest.mark.skipif(not hasattr(daemon, "CURVE_WIRED"),
                           reason="Daemon.start does not call the CURVE seam yet")
ANY = "tcp://127.0.0.1:*"
QUIET_S = 1.0  # how long an unauthorised peer is watched for (it must get nothing)


@dataclass
class Keys:
    dir: Path
    allow: Path

    def secret(self, name: str) -> str:
        return str(self.dir / f"{name}.key_secret")

    def public(self, name: str) -> str:
        return str(self.dir / f"{name}.key")

    def client(self, name: str) -> dict[str, str]:
        """Client kwargs for ``name`` talking to the service."""
        return {"curve_secret": self.secret(name), "curve_server_public": self.public("server")}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    root = tmp_path_factory.mktemp("curve")
    write_keys(root / "keys", ("server", "alice", "instrument", "mallory"))
    allow = root / "allow"
    allow.mkdir()
    for name in ("alice", "instrument"):  # mallory has valid keys but is not authorised
        shutil.copy(root / "keys" / f"{name}.key", allow)
    return Keys(root / "keys", allow)


@pytest.fixture
def contexts():
    """Service and clients on separate contexts, as in separate processes."""
    server_ctx, client_ctx = zmq.Context(), zmq.Context()
    yield server_ctx, client_ctx
    client_ctx.destroy(linger=0)
    server_ctx.destroy(linger=0)


def _bound(ctx: zmq.Context, kind: int, server: CurveServer) -> tuple[zmq.Socket, str]:
    sock = ctx.socket(kind)
    sock.linger = 0
    server.apply(sock)
    sock.bind(ANY)
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def _statuses_seen(pub: zmq.Socket, subscribers: list[ResultsClient], seconds: float,
                   wait_for: tuple[int, ...] = (), guard_s: float = 30.0) -> list[int]:
    """Publish heartbeats for ``seconds``, and on until each subscriber in ``wait_for`` has
    received one (a CURVE handshake on a loaded host may take longer than ``seconds``;
    ``guard_s`` only stops a hang); count what each subscriber received."""
    seen = [0] * len(subscribers)
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= seconds and (all(seen[i] for i in wait_for) or elapsed >= guard_s):
            break
        pub.send_multipart(protocol.encode_status({"state": "running"}))
        for i, sub in enumerate(subscribers):
            while sub.recv(timeout=0.02) is not None:
                seen[i] += 1
    return seen


# ---------------------------------------------------------------------- keys command
def test_keys_command_writes_loadable_private_certificates(tmp_path, capsys):
    out = tmp_path / "new" / "keys"
    assert cli_main(["keys", "--out", str(out), "--name", "server", "--name", "bob"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("server", "bob"):
        secret = out / f"{name}.key_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        public, _ = load_secret(secret)
        assert zmq.auth.load_certificate(out / f"{name}.key") == (public, None)
    assert not list(out.glob(".keys-*")), "temporary folder left behind"
    assert "bob: public" in capsys.readouterr().out

    before = (out / "server.key_secret").read_bytes()
    assert cli_main(["keys", "--out", str(out), "--name", "server"]) == 2  # never overwrite
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out / "server.key_secret").read_bytes() == before
    assert cli_main(["keys", "--out", str(out), "--name", "server", "--force"]) == 0
    assert (out / "server.key_secret").read_bytes() != before


def test_key_errors_name_the_file(keys, tmp_path):
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(CurveError, match="nope.key_secret"):
        CurveServer(missing, keys.allow)
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("curve\n    public-key = \"not-z85\"\n    secret-key = \"x\"\n")
    with pytest.raises(CurveError, match="malformed.*garbage.key_secret"):
        CurveServer(garbage, keys.allow)
    with pytest.raises(CurveError, match=r"server\.key holds no secret key"):
        CurveServer(keys.public("server"), keys.allow)
    with pytest.raises(CurveError, match="curve_allow folder not found"):
        CurveServer(keys.secret("server"), tmp_path / "no-such-dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CurveError, match="holds no"):
        CurveServer(keys.secret("server"), empty)
    bad_allow = tmp_path / "bad_allow"
    bad_allow.mkdir()
    (bad_allow / "eve.key").write_text("metadata\n")
    with pytest.raises(CurveError, match="eve.key"):
        CurveServer(keys.secret("server"), bad_allow)
    with pytest.raises(ValueError, match="both"):
        ResultsClient(ANY.replace("*", "1"), curve_secret=keys.secret("alice"))


def test_config_enables_curve_only_with_both_settings(keys):
    ctx = zmq.Context()
    try:
        assert CurveServer.from_config(config.load(None, {}), ctx) is None
        for half in ({"curve_secret": keys.secret("server")}, {"curve_allow": str(keys.allow)}):
            with pytest.raises(CurveError, match="curve_"):
                CurveServer.from_config(config.load(None, half), ctx)
        full = config.load(None, {"curve_secret": keys.secret("server"),
                                  "curve_allow": str(keys.allow)})
        server = CurveServer.from_config(full, ctx)
        assert server is not None and server.running
        with pytest.raises(CurveError, match="ZAP handler"):  # one per context
            CurveServer.from_config(full, ctx)
        server.stop()
        assert not server.running
    finally:
        ctx.destroy(linger=0)


def test_bind_beyond_loopback_needs_curve(keys):
    exposed = {"results": "tcp://0.0.0.0:*", "control": "tcp://0.0.0.0:*", "metrics_port": 0}
    with pytest.raises(InsecureBindError, match="results=tcp://0.0.0.0"):
        check_bind_policy(config.load(None, exposed))
    with pytest.raises(InsecureBindError, match="frames="):
        check_bind_policy(config.load(None, {"frames": "tcp://0.0.0.0:*", "frames_bind": True}))
    check_bind_policy(config.load(None, {**exposed, "curve_secret": keys.secret("server"),
                                         "curve_allow": str(keys.allow)}))


# ---------------------------------------------------------------------- plain sockets
def test_only_authorised_subscribers_receive(keys, contexts):
    server_ctx, client_ctx = contexts
    with CurveServer(keys.secret("server"), keys.allow, server_ctx) as server:
        pub, url = _bound(server_ctx, zmq.PUB, server)
        subs = [ResultsClient(url, context=client_ctx, **keys.client("alice")),
                ResultsClient(url, context=client_ctx, **keys.client("mallory")),
                ResultsClient(url, context=client_ctx)]
        try:
            alice, mallory, plain = _statuses_seen(pub, subs, QUIET_S + 0.5, wait_for=(0,))
        finally:
            for s in subs:
                s.close()
            pub.close()
        assert alice > 0 and mallory == 0 and plain == 0
        assert server.allow.denied_total >= 1  # mallory was refused by the allow-list


def test_only_authorised_requests_are_answered(keys, contexts):
    server_ctx, client_ctx = contexts
    with CurveServer(keys.secret("server"), keys.allow, server_ctx) as server:
        rep, url = _bound(server_ctx, zmq.REP, server)
        req = client_ctx.socket(zmq.REQ)
        try:
            req.linger, req.sndtimeo = 0, 5000
            apply_client(req, keys.secret("alice"), keys.public("server"))
            req.connect(url)
            req.send(protocol.encode_request("ping"))
            assert rep.poll(5000) and protocol.decode_request(rep.recv())["cmd"] == "ping"
            rep.send(protocol.encode_reply(True, pong=True))
            assert req.poll(5000) and protocol.decode_reply(req.recv())["ok"]
            # refused peers: the client times out (never hangs) and nothing reaches the REP
            for kwargs in (keys.client("mallory"), {}):
                control = ControlClient(url, timeout_s=QUIET_S, context=client_ctx, **kwargs)
                with pytest.raises(TimeoutError):
                    control.ping()
                control.close()
            assert not rep.poll(0)
        finally:
            req.close()
            rep.close()


def test_binding_instrument_admits_only_authorised_subscribers(keys, contexts):
    server_ctx, client_ctx = contexts
    inst = InstrumentClient(ANY, context=server_ctx, curve_secret=keys.secret("instrument"),
                            curve_allow=str(keys.allow))

    def subscriber(name: str) -> zmq.Socket:
        sub = client_ctx.socket(zmq.SUB)
        sub.linger = 0
        apply_client(sub, keys.secret(name), keys.public("instrument"))
        sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_FRAME)
        sub.connect(inst.endpoint)
        return sub

    try:
        rogue = subscriber("mallory")
        assert not inst.wait_for_subscriber(QUIET_S)
        friend = subscriber("alice")
        assert inst.wait_for_subscriber(5)
        rogue.close()
        friend.close()
    finally:
        inst.close()
    # close() released the context's ZAP endpoint, so a new handler can take it
    CurveServer(keys.secret("server"), keys.allow, server_ctx).start().stop()


def test_socket_from_another_context_is_refused(keys, contexts):
    server_ctx, client_ctx = contexts
    with CurveServer(keys.secret("server"), keys.allow, server_ctx) as server:
        foreign = client_ctx.socket(zmq.PUB)
        with pytest.raises(ValueError, match="another ZeroMQ context"):
            server.apply(foreign)
        foreign.close()
    with pytest.raises(RuntimeError, match="start"):
        server.apply(server_ctx.socket(zmq.PUB))


# ---------------------------------------------------------------------- the daemon
class SecureRig:
    """A CURVE daemon on loopback with frames bound; clients join on their own context."""

    def __init__(self, keys: Keys, server_ctx: zmq.Context, **overrides) -> None:
        cfg = config.load(None, {"curve_secret": keys.secret("server"),
                                 "curve_allow": str(keys.allow), "frames_bind": True,
                                 "frames": ANY, "results": ANY, "control": ANY,
                                 "metrics_port": 0, "heartbeat_s": 0.1, "lattice_px": 12.0,
                                 "budget": 2, "cold_budget": 2, **overrides})
        self.daemon = Daemon(cfg, context=server_ctx)
        self.daemon.start()
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()

    def url(self, which: str) -> str:
        endpoint = getattr(self.daemon, f"{which}_endpoint")
        return endpoint.replace("0.0.0.0", "127.0.0.1")

    def close(self) -> None:
        self.daemon.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()


@pytest.fixture
def rig(keys, contexts):
    r = SecureRig(keys, contexts[0])
    yield r
    r.close()


@wired
def test_authorised_clients_get_results_and_answers(keys, contexts, rig):
    from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

    ctx = contexts[1]
    with InstrumentClient(rig.url("frames"), bind=False, context=ctx,
                          **keys.client("instrument")) as inst, \
            ResultsClient(rig.url("results"), context=ctx, **keys.client("alice")) as results:
        control = ControlClient(rig.url("control"), context=ctx, **keys.client("alice"))
        try:
            assert control.ping()["ok"]
            assert inst.wait_for_subscriber(5)
            assert results.recv(timeout=5) is not None  # subscription live (a heartbeat)
            sim = PerovskiteSimulator(SimConfig(shape=(128, 128), lattice_px=12.0, seed=1))
            inst.start_session("curve", lattice_px=12.0)
            inst.send_frame(sim.frame(0).pixels)
            result = results.recv_result(timeout=20)
            assert result is not None and result.session == "curve" and result.seq == 0
            assert control.stats()["stats"]["frames_processed"] == 1
        finally:
            control.close()


@wired
def test_unauthorised_clients_get_nothing(keys, contexts, rig):
    ctx = contexts[1]
    alice = ResultsClient(rig.url("results"), context=ctx, **keys.client("alice"))
    subs = [ResultsClient(rig.url("results"), context=ctx, **keys.client("mallory")),
            ResultsClient(rig.url("results"), context=ctx)]
    rogue_inst = InstrumentClient(rig.url("frames"), bind=False, context=ctx,
                                  **keys.client("mallory"))
    controls = [ControlClient(rig.url("control"), timeout_s=QUIET_S, context=ctx,
                              **keys.client("mallory")),
                ControlClient(rig.url("control"), timeout_s=QUIET_S, context=ctx)]
    try:
        assert alice.recv(timeout=5) is not None  # the service is publishing heartbeats
        assert not rogue_inst.wait_for_subscriber(QUIET_S)
        rogue_inst.start_session("rogue")
        rogue_inst.send_frame(np.zeros((64, 64), np.float32))
        for control in controls:
            with pytest.raises(TimeoutError):
                control.ping()
        assert all(s.recv(timeout=0.2) is None for s in subs)
        stats = ControlClient(rig.url("control"), context=ctx, **keys.client("alice")).stats()
        assert stats["stats"]["frames_received"] == 0
    finally:
        for c in (alice, *subs, rogue_inst, *controls):
            c.close()


@wired
def test_curve_daemon_may_bind_beyond_loopback(keys, contexts):
    with pytest.raises(InsecureBindError):
        Daemon(config.load(None, {"results": "tcp://0.0.0.0:*", "control": ANY,
                                  "metrics_port": 0}), context=contexts[0])
    rig = SecureRig(keys, contexts[0], results="tcp://0.0.0.0:*", control="tcp://0.0.0.0:*")
    try:
        control = ControlClient(rig.url("control"), context=contexts[1], **keys.client("alice"))
        assert control.ping()["ok"]
        control.close()
    finally:
        rig.close()


@wired
def test_daemon_with_a_missing_certificate_does_not_start(keys, contexts, tmp_path):
    cfg = config.load(None, {"curve_secret": str(tmp_path / "gone.key_secret"),
                             "curve_allow": str(keys.allow), "results": ANY, "control": ANY,
                             "frames": ANY, "frames_bind": True, "metrics_port": 0})
    with pytest.raises(CurveError, match="gone.key_secret"):
        Daemon(cfg, context=contexts[0]).start()
