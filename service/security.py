"""ZeroMQ CURVE: encryption plus client authentication for the sockets the service exposes.

Roles follow one rule so nobody has to guess who holds which key:

* on every socket the service **binds** (results PUB, control REP, and frames SUB/PULL when
  ``frames_bind = true``) the service is the CURVE *server*: its key pair comes from
  ``curve_secret`` and a peer may connect only if its public certificate is in the
  ``curve_allow`` folder (checked by a ZAP handler thread on the service's context);
* on a socket the service **connects** (frames, in the default layout) it is a CURVE *client*
  of the instrument, which needs the instrument's public certificate. The config has no field
  for it yet (``curve_instrument_public`` is read if it ever appears); without it that socket
  stays plain and a warning is logged when it leaves loopback.

Recommended secure layout: ``frames_bind = true`` + ``curve_secret`` + ``curve_allow``, with
the instrument connecting as a CURVE client whose public certificate sits in ``curve_allow``
next to those of the result/control clients. Everything then has one key holder (the service)
and one allow-list.

Certificates are the pyzmq/czmq text format: ``NAME.key`` (public, give it away) and
``NAME.key_secret`` (public + secret, mode 0600). ``rewardscope keys`` writes them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from rewardscope.config import ConfigError

log = logging.getLogger("rewardscope.security")

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_MAX_LOGGED_KEYS = 1024  # distinct refused keys warned about; later ones only at debug level


class CurveError(ConfigError):
    """CURVE cannot be set up as configured; the message names the file or folder at fault."""


def require_curve() -> None:
    """Refuse early: libzmq without libsodium would otherwise fail deep inside setsockopt."""
    if not zmq.has("curve"):
        raise CurveError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE support; "
                         "install a pyzmq wheel with libsodium to use curve_secret/curve_allow")


# ---------------------------------------------------------------------- certificates
def _read_certificate(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    p = Path(path)
    if not p.is_file():
        raise CurveError(f"CURVE certificate not found: {p}")
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as exc:
        raise CurveError(f"cannot read CURVE certificate {p}: {exc}") from None
    _check_z85(public, p, "public")
    if secret is not None:
        _check_z85(secret, p, "secret")
    return public, secret


def _check_z85(key: bytes, path: Path, what: str) -> None:
    try:
        ok = len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, IndexError, TypeError):
        ok = False
    if not ok:
        raise CurveError(f"malformed {what} key in CURVE certificate {path} "
                         "(expected 40 Z85 characters)")


def load_public(path: str | os.PathLike) -> bytes:
    """The Z85 public key from a ``.key`` (or ``.key_secret``) certificate."""
    return _read_certificate(path)[0]


def load_secret(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` certificate, checked to belong together."""
    public, secret = _read_certificate(path)
    if secret is None:
        raise CurveError(f"{path} holds no secret key: pass the NAME.key_secret file, "
                         "not the public NAME.key")
    if zmq.curve_public(secret) != public:
        raise CurveError(f"CURVE certificate {path}: public key does not match the secret key")
    if os.name == "posix" and Path(path).stat().st_mode & 0o077:
        log.warning("secret CURVE certificate is readable by other users; chmod 600 it",
                    extra={"path": str(path)})
    return public, secret


def load_allowed(directory: str | os.PathLike) -> frozenset[bytes]:
    """Public keys of every ``*.key`` in ``directory``; an empty folder is refused (no one
    could connect, which is always a mistake)."""
    d = Path(directory)
    if not d.is_dir():
        raise CurveError(f"curve_allow folder not found: {d}")
    keys = frozenset(load_public(p) for p in sorted(d.glob("*.key")))
    if not keys:
        raise CurveError(f"curve_allow folder {d} holds no *.key public certificates; "
                         "no client could connect")
    return keys


def _key_paths(out: Path, name: str) -> tuple[Path, Path]:
    return out / f"{name}.key", out / f"{name}.key_secret"


def write_keys(out_dir: str | os.PathLike, names: Sequence[str] = ("server", "client"), *,
               force: bool = False) -> dict[str, tuple[Path, Path]]:
    """Create ``NAME.key`` / ``NAME.key_secret`` pairs; returns name -> (public, secret) paths.

    The folder is created 0700 and secrets end up 0600. Certificates are generated in a private
    temporary folder and moved in, so a secret is never visible with looser permissions.
    Existing certificates are kept unless ``force``: replacing the server key locks out every
    client that trusted the old one.
    """
    require_curve()
    names = list(names)
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"invalid certificate name {name!r}: use letters, digits, _ . -")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate certificate names in {names}")
    out = Path(out_dir)
    if not out.exists():
        out.mkdir(mode=0o700, parents=True)
        out.chmod(0o700)  # mkdir's mode is filtered by the umask
    clash = [str(p) for n in names for p in _key_paths(out, n) if p.exists()]
    if clash and not force:
        raise FileExistsError(f"refusing to overwrite {', '.join(clash)} (use --force)")
    written: dict[str, tuple[Path, Path]] = {}
    with tempfile.TemporaryDirectory(dir=out, prefix=".keys-") as tmp:  # 0700 by construction
        for name in names:
            public, secret = zmq.auth.create_certificates(tmp, name)
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)
            dst_public, dst_secret = _key_paths(out, name)
            os.replace(secret, dst_secret)
            os.replace(public, dst_public)
            written[name] = (dst_public, dst_secret)
    return written


# ---------------------------------------------------------------------- client side
@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair plus the server's public key, loaded once (reconnects reuse it)."""

    public: bytes
    secret: bytes
    server_public: bytes

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE client; call before ``connect``."""
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret
        socket.curve_serverkey = self.server_public


def load_client_keys(client_secret_file: str | os.PathLike,
                     server_public_file: str | os.PathLike) -> ClientKeys:
    require_curve()
    public, secret = load_secret(client_secret_file)
    return ClientKeys(public, secret, load_public(server_public_file))


def apply_client(socket: zmq.Socket, client_secret_file: str | os.PathLike,
                 server_public_file: str | os.PathLike) -> None:
    """Make ``socket`` a CURVE client of the server whose public certificate is given."""
    load_client_keys(client_secret_file, server_public_file).apply(socket)


# ---------------------------------------------------------------------- server side
class AllowList:
    """ZAP credentials provider: a client is let in iff its public key is in the folder.

    Used instead of ``configure_curve(location=...)`` because that one only logs a load error
    (and then refuses everyone silently), and never says whom it refused.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.keys = load_allowed(self.directory)
        self.denied_total = 0
        self._logged: set[bytes] = set()

    def reload(self) -> int:
        """Re-read the folder (e.g. after adding a client); returns the number of keys."""
        self.keys = load_allowed(self.directory)
        return len(self.keys)

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the authenticator thread with the client's Z85 public key."""
        if key in self.keys:
            return True
        self.denied_total += 1
        if key not in self._logged and len(self._logged) < _MAX_LOGGED_KEYS:
            self._logged.add(key)
            log.warning("CURVE client refused: public key not in curve_allow",
                        extra={"client_key": key.decode("ascii", "replace"),
                               "allow": str(self.directory)})
        else:
            log.debug("CURVE client refused again", extra={"client_key": key.decode("ascii",
                                                                                     "replace")})
        return False


class CurveServer:
    """The service's key pair and its ZAP handler on one context.

    ``start()`` before any socket binds: a CURVE server socket with no ZAP handler on its
    context accepts *every* client holding a valid key pair. ``stop()`` only after those
    sockets are closed, for the same reason. One ZAP handler per context (ZeroMQ's rule).
    """

    def __init__(self, secret_file: str | os.PathLike, allow_dir: str | os.PathLike,
                 context: zmq.Context | None = None, *,
                 peer_public: str | os.PathLike | None = None) -> None:
        require_curve()
        self.secret_file = Path(secret_file)
        self.public, self.secret = load_secret(self.secret_file)
        self.allow = AllowList(allow_dir)
        self.peer_public = load_public(peer_public) if peer_public else None
        self.context = context or zmq.Context.instance()
        self._auth: ThreadAuthenticator | None = None

    @classmethod
    def from_config(cls, cfg: Any, context: zmq.Context | None = None) -> CurveServer | None:
        """A started server for ``cfg``, or None when CURVE is off (``curve_secret`` empty)."""
        if not cfg.curve_secret:
            if cfg.curve_allow:
                raise CurveError("curve_allow is set but curve_secret is empty; set both to "
                                 "enable CURVE, or neither")
            return None
        if not cfg.curve_allow:
            raise CurveError("curve_secret is set but curve_allow is empty; CURVE needs a folder "
                             "of authorised client public certificates (*.key)")
        # Not a ServiceConfig field yet; read it if it is ever added.
        peer = getattr(cfg, "curve_instrument_public", "") or None
        server = cls(cfg.curve_secret, cfg.curve_allow, context, peer_public=peer)
        server.start()
        return server

    @property
    def running(self) -> bool:
        return self._auth is not None and self._auth.is_alive()

    def start(self) -> CurveServer:
        if self._auth is not None:
            return self
        auth = _start_authenticator(self.context)
        auth.configure_curve_callback(domain="*", credentials_provider=self.allow)
        self._auth = auth
        log.info("CURVE enabled", extra={"secret": str(self.secret_file),
                                         "allow": str(self.allow.directory),
                                         "allowed_keys": len(self.allow.keys)})
        return self

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def reload(self) -> int:
        """Pick up added/removed client certificates without a restart."""
        n = self.allow.reload()
        log.info("CURVE allow-list reloaded", extra={"allowed_keys": n})
        return n

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server (call before ``bind``)."""
        if not self.running:
            raise RuntimeError("CurveServer.start() must run before securing a bound socket, "
                               "or any client with a key pair would be let in")
        if socket.context is not self.context:
            raise ValueError("socket belongs to another ZeroMQ context than the authenticator; "
                             "its clients would not be checked")
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def apply_connect(self, socket: zmq.Socket,
                      server_public: bytes | str | os.PathLike | None = None) -> None:
        """Make ``socket`` a CURVE client (own key pair) of a peer that binds; before connect."""
        peer = self.peer_public if server_public is None else server_public
        if peer is None:
            raise CurveError("no public certificate for the peer this socket connects to")
        if not isinstance(peer, bytes):
            peer = load_public(peer)
        ClientKeys(self.public, self.secret, peer).apply(socket)

    def secure(self, socket: zmq.Socket, *, bind: bool, url: str) -> None:
        """Apply the role rule: server on bound sockets, client on connected ones if possible."""
        if bind:
            self.apply(socket)
        elif self.peer_public is not None:
            self.apply_connect(socket)
        else:
            _warn_plain_connect(url)

    def __enter__(self) -> CurveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start_authenticator(context: zmq.Context, wait_s: float = 1.0) -> ThreadAuthenticator:
    """Bind the context's ZAP handler, waiting briefly for a just-stopped one to let go.

    Closing a socket is asynchronous in ZeroMQ, so the ZAP endpoint of a handler stopped a
    moment ago (a restarted daemon on the same context) can still be taken for a few ms.
    """
    deadline = time.monotonic() + wait_s
    while True:
        auth = ThreadAuthenticator(context, log=logging.getLogger("rewardscope.zap"))
        try:
            auth.start()
            return auth
        except zmq.ZMQError as exc:
            auth.stop()
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise CurveError(f"cannot start the CURVE authenticator ({exc}): this ZeroMQ "
                                 "context already has a ZAP handler") from None
            time.sleep(0.02)


def is_loopback_url(url: str) -> bool:
    """True for tcp:// on 127.0.0.0/8, ::1 or localhost, and for ipc:// / inproc://."""
    parsed = urlparse(url)
    if parsed.scheme in ("ipc", "inproc"):
        return True
    host = (parsed.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', 0.0.0.0, interface names, DNS names: all reach the network


def _warn_plain_connect(url: str) -> None:
    if not is_loopback_url(url):
        log.warning("frames socket connects without CURVE: frames travel unencrypted and the "
                    "instrument is not authenticated; set frames_bind = true so the instrument "
                    "connects as an authorised CURVE client", extra={"frames": url})


def secure(server: CurveServer | None, socket: zmq.Socket, *, bind: bool, url: str) -> None:
    """The daemon's one-line seam: no-op when CURVE is off."""
    if server is not None:
        server.secure(socket, bind=bind, url=url)
