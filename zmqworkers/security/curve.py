"""CURVE encryption: certificates, the list of accepted workers, socket setup.

A CURVE directory holds::

    DIR/controller.key          controller public key    (give to every worker)
    DIR/controller.key_secret   controller secret key    (controller host only)
    DIR/NAME.key                a worker's public key
    DIR/NAME.key_secret         a worker's secret key    (that worker's host only)
    DIR/authorized_workers/     public keys the controller accepts, like known hosts

``zmqworkers keygen --curve DIR [--name NAME]`` makes the controller's pair
(once) and a worker pair, and puts the worker's public key in
``authorized_workers``. To accept a worker made elsewhere, copy its ``.key``
file (never the secret) into that folder: it is read again on each connection.

The controller's sockets are CURVE servers and an authenticator thread (ZAP)
admits only clients whose public key is in ``authorized_workers``; every byte
on the wire is then encrypted. HMAC signing stays on inside the encryption.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from zmqworkers.errors import ConfigurationError
from zmqworkers.security.files import read_trusted_text

log = logging.getLogger(__name__)


def _zmq_auth() -> Any:
    """``zmq.auth``, imported on first use: a worker without CURVE never needs it."""
    import zmq.auth

    return zmq.auth


CURVE_ENV = "ZMQWORKERS_CURVE"
CONTROLLER = "controller"
DEFAULT_WORKER = "worker"
AUTHORIZED = "authorized_workers"


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized: Path


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server: bytes


def create(directory: str | os.PathLike[str], worker: str = DEFAULT_WORKER) -> list[Path]:
    """Make the controller's pair if missing, and a new pair for ``worker``.

    Returns the files written. Refuses to overwrite an existing worker pair.
    """
    if not zmq.has("curve"):
        raise ConfigurationError("this libzmq was built without CURVE support")
    if worker == CONTROLLER or not worker or os.sep in worker:
        raise ConfigurationError(f"{worker!r} cannot be a worker name")
    root = Path(directory)
    (root / AUTHORIZED).mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if not (root / f"{CONTROLLER}.key_secret").exists():
        written += [Path(p) for p in _zmq_auth().create_certificates(root, CONTROLLER)]
    if (root / f"{worker}.key_secret").exists():
        raise ConfigurationError(f"{root / worker}.key_secret exists; not overwriting it")
    public, secret = (Path(p) for p in _zmq_auth().create_certificates(root, worker))
    written += [public, secret]
    shutil.copyfile(public, root / AUTHORIZED / public.name)
    written.append(root / AUTHORIZED / public.name)
    for path in written:
        if path.name.endswith("_secret"):
            path.chmod(0o600)
    return written


def _load(path: Path, want_secret: bool) -> tuple[bytes, bytes | None]:
    if want_secret and path.exists():
        # Held to the rule of key files: whoever could write it could be us.
        read_trusted_text(path, "CURVE secret certificate", secret=True)
    try:
        public, secret = _zmq_auth().load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot read CURVE certificate {path}: {exc} "
            "(make them with `zmqworkers keygen --curve DIR`)"
        ) from exc
    if want_secret and not secret:
        raise ConfigurationError(f"{path} holds no secret key")
    return public, secret


def server_keys(directory: str | os.PathLike[str]) -> ServerKeys:
    root = Path(directory)
    public, secret = _load(root / f"{CONTROLLER}.key_secret", True)
    authorized = root / AUTHORIZED
    if not authorized.is_dir():
        raise ConfigurationError(f"{authorized} is missing: no worker could ever join")
    assert secret is not None
    return ServerKeys(public, secret, authorized)


def client_keys(directory: str | os.PathLike[str], worker: str = DEFAULT_WORKER) -> ClientKeys:
    root = Path(directory)
    public, secret = _load(root / f"{worker}.key_secret", True)
    server, _ = _load(root / f"{CONTROLLER}.key", False)
    assert secret is not None
    return ClientKeys(public, secret, server)


def hmac_key(directory: str | os.PathLike[str]) -> bytes:
    """The signing key under CURVE when no shared key is given.

    Derived from the controller's public key, so it is no secret: CURVE
    authenticates both ends, and signing only checks integrity.
    """
    public, _ = _load(Path(directory) / f"{CONTROLLER}.key", False)
    return hashlib.sha256(b"zmqworkers-curve-signing/" + public).hexdigest().encode()


def setup_server(sock: zmq.Socket[Any], keys: ServerKeys) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def setup_client(sock: zmq.Socket[Any], keys: ClientKeys) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server


class AuthorizedKeys:
    """The ZAP credentials check: is this public key in the folder?

    The folder is read again when it changes, so a key copied in is accepted
    without a restart. Refusals are logged, at most once per key and then
    every power of two.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.refused = 0
        self._stamp: float | None = None
        self._keys: dict[bytes, bool] = {}
        self._lock = threading.Lock()
        self._refused_by_key: dict[bytes, int] = {}

    def _current(self) -> dict[bytes, bool]:
        try:
            stamp = self.folder.stat().st_mtime
        except OSError:
            return {}
        if stamp != self._stamp:
            self._keys = _zmq_auth().load_certificates(self.folder)
            self._stamp = stamp
        return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        with self._lock:
            if self._current().get(key):
                return True
            self.refused += 1
            n = self._refused_by_key.get(key, 0) + 1
            if len(self._refused_by_key) < 4096:
                self._refused_by_key[key] = n
            if n & (n - 1) == 0:
                log.warning(
                    "refused a worker: its CURVE public key %s is not in %s (%d attempt(s))",
                    key.decode(errors="replace"),
                    self.folder,
                    n,
                )
            return False


def start_authenticator(ctx: zmq.Context[Any], keys: ServerKeys) -> Any:
    """Start the ZAP thread on ``ctx``: it must run before the sockets bind."""
    from zmq.auth.thread import ThreadAuthenticator  # the controller's only

    auth = ThreadAuthenticator(ctx, log=log.getChild("zap"))
    auth.start()
    checker = AuthorizedKeys(keys.authorized)
    auth.configure_curve_callback(domain="*", credentials_provider=checker)
    auth.checker = checker  # type: ignore[attr-defined]
    return auth
