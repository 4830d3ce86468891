"""Connection files: how a daemon finds its controller on a shared filesystem.

A controller writes one after it has bound its sockets (``Cluster(...,
connection_file=PATH)``); a daemon reads it with ``zmqworkers worker
--connection-file PATH``. The file is JSON, written with mode 0600 because it
holds the shared key::

    {"address": "tcp://node1:5555", "key": "...", "protocol": 1,
     "version": "0.1.0", "curve_public_key": null}

It is written to a temporary name and renamed, so a daemon polling for it
never reads half a file.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket as pysocket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from zmqworkers._version import __version__
from zmqworkers.errors import ConfigurationError
from zmqworkers.protocol import PROTOCOL_VERSION
from zmqworkers.security.files import read_trusted_text

log = logging.getLogger(__name__)

WILDCARD_HOSTS = {"0.0.0.0", "*", "::", "[::]"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def is_local_link(address: str) -> bool:
    """Whether ``address`` is carried by this host's kernel alone.

    True for ipc (and inproc) and for loopback TCP: no other host is on the
    path, and no unprivileged process can change bytes on it in transit.
    """
    parts = urlsplit(address)
    if parts.scheme in ("ipc", "inproc"):
        return True
    if ";" in parts.netloc:
        return False  # ZeroMQ's "source;destination" form: judge neither
    host = (parts.hostname or "").lower()
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


@dataclass(frozen=True)
class ConnectionInfo:
    """What a connection file says."""

    address: str
    key: bytes | None
    protocol: int
    version: str
    curve_public_key: str | None = None


def check_address(address: str) -> str:
    """Refuse an address a worker could not dial, saying what a good one is."""
    parts = urlsplit(address)
    ok = parts.scheme == "ipc" and bool(parts.path or parts.netloc)
    if parts.scheme == "tcp":
        try:
            ok = bool(parts.hostname) and parts.port is not None and parts.port > 0
        except ValueError:
            ok = False
    if not ok:
        raise ConfigurationError(
            f"{address!r} is not a controller address: give tcp://HOST:PORT "
            "(e.g. tcp://node1:5555) or ipc:///path"
        )
    return address


def check_bind_address(address: object) -> str:
    """Refuse an address a controller cannot listen on, saying what a good one is.

    A controller binds three sockets: at PORT, PORT+1 and PORT+2 for a
    fixed port, or at random ports for port 0 or none.
    """
    ok = False
    if isinstance(address, str):
        parts = urlsplit(address)
        if parts.scheme == "ipc":
            ok = bool(parts.path or parts.netloc)
        elif parts.scheme == "tcp" and not (parts.path or parts.query or parts.fragment):
            try:
                port = parts.port
                ok = bool(parts.hostname) and (port is None or 0 <= port <= 65535 - 2)
            except ValueError:
                ok = False
    if not ok:
        raise ConfigurationError(
            f"cannot bind {address!r}: give tcp://HOST:PORT (PORT 0 for random ports, "
            "e.g. tcp://127.0.0.1:0 or tcp://0.0.0.0:5555) or ipc:///path"
        )
    return address  # type: ignore[return-value]


def advertised_address(bound: str) -> str:
    """The address a remote worker dials for a socket bound at ``bound``.

    A wildcard bind (``tcp://0.0.0.0:5555``) is reachable under this host's
    name; anything else is already dialable as it is.
    """
    parts = urlsplit(bound)
    if parts.scheme != "tcp" or parts.hostname is None:
        return bound
    host = parts.hostname
    if host in WILDCARD_HOSTS or f"[{host}]" in WILDCARD_HOSTS:
        return f"tcp://{pysocket.getfqdn()}:{parts.port}"
    return bound


def write_connection_file(
    path: str | os.PathLike[str],
    address: str,
    key: bytes | None,
    *,
    curve_public_key: str | None = None,
) -> Path:
    """Write a connection file (mode 0600), replacing any older one."""
    target = Path(path)
    data: dict[str, Any] = {
        "address": advertised_address(address),
        "key": key.decode() if key is not None else None,
        "protocol": PROTOCOL_VERSION,
        "version": __version__,
        "curve_public_key": curve_public_key,
    }
    # mkstemp creates the file with mode 0600 before anything is written.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        # Daemons would refuse it (a folder others can write): say so now,
        # where the fix is made, and leave no key there.
        read_trusted_text(target, "connection file", secret=True)
    except ConfigurationError:
        target.unlink(missing_ok=True)
        raise
    return target


def read_connection_file(path: str | os.PathLike[str]) -> ConnectionInfo:
    """Read and check a connection file; every problem is a ConfigurationError."""
    p = Path(path)
    # It holds the key as well as the address: as secret as a key file.
    text = read_trusted_text(p, "connection file", secret=True)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"connection file {p} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"connection file {p} does not hold a JSON object")
    address = data.get("address")
    if not isinstance(address, str):
        raise ConfigurationError(f"connection file {p}: 'address' is missing")
    try:
        check_address(address)
    except ConfigurationError as exc:
        raise ConfigurationError(f"connection file {p}: {exc}") from exc
    key = data.get("key")
    if key is not None and not isinstance(key, str):
        raise ConfigurationError(f"connection file {p}: 'key' is not a string")
    protocol = data.get("protocol")
    if not isinstance(protocol, int) or isinstance(protocol, bool):
        raise ConfigurationError(f"connection file {p}: 'protocol' is missing or not a number")
    if protocol != PROTOCOL_VERSION:
        raise ConfigurationError(
            f"connection file {p} is for protocol {protocol} (zmqworkers "
            f"{data.get('version', '?')}); this worker speaks protocol {PROTOCOL_VERSION} "
            f"(zmqworkers {__version__}): install the same zmqworkers release on both sides"
        )
    curve = data.get("curve_public_key")
    if curve is not None and not isinstance(curve, str):
        raise ConfigurationError(f"connection file {p}: 'curve_public_key' is not a string")
    return ConnectionInfo(
        address=address,
        key=key.encode() if key else None,
        protocol=protocol,
        version=str(data.get("version", "")),
        curve_public_key=curve,
    )


def wait_for_connection_file(path: str | os.PathLike[str], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``path`` to exist.

    A daemon started next to its controller (the tasks of one Slurm job)
    usually starts before the controller has written the file.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    p = Path(path)
    if not p.exists():
        log.info("waiting up to %.0f s for connection file %s", timeout, p)
    while not p.exists():
        if time.monotonic() >= deadline:
            raise ConfigurationError(
                f"connection file {p} did not appear within {timeout:g} s "
                "(is the controller running, with connection_file= set?)"
            )
        time.sleep(0.1)
