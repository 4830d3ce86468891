"""Shared keys: where they come from and how they are written."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from zmqworkers.errors import ConfigurationError
from zmqworkers.security.files import read_trusted_text

KEY_ENV = "ZMQWORKERS_KEY"
MIN_KEY_LENGTH = 16

# The key of ``insecure=True`` / ``--insecure`` when no key is given: written
# here, so it is known to everyone. It keeps the framing and the checks
# against accidents (corruption, crossed jobs), and protects nothing against
# an attacker. Both sides log a warning whenever it is used.
INSECURE_KEY = b"zmqworkers-insecure-well-known-key-protects-nothing"


def new_key() -> bytes:
    """A fresh random key (64 hex characters)."""
    return secrets.token_hex(32).encode()


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    text = read_trusted_text(path, "key file", secret=True).strip()
    if len(text) < MIN_KEY_LENGTH:
        raise ConfigurationError(
            f"key file {path} holds {len(text)} characters; a key needs at least "
            f"{MIN_KEY_LENGTH} (make one with `zmqworkers keygen FILE`)"
        )
    return text.encode()


def resolve_key(
    key: str | bytes | None = None,
    key_file: str | os.PathLike[str] | None = None,
    *,
    generate: bool = False,
) -> bytes | None:
    """The key to use: explicit ``key``, else ``key_file``, else ``$ZMQWORKERS_KEY``.

    With none of them, a random key when ``generate`` is true, else None.
    """
    if key is not None and key_file is not None:
        raise ConfigurationError("give either key or key_file, not both")
    if key is not None:
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if len(raw) < MIN_KEY_LENGTH:
            raise ConfigurationError(
                f"key of {len(raw)} bytes is too short; use at least {MIN_KEY_LENGTH}"
            )
        return raw
    if key_file is not None:
        return read_key_file(key_file)
    env = os.environ.get(KEY_ENV)
    if env:
        return resolve_key(env)
    return new_key() if generate else None


def write_key_file(path: str | os.PathLike[str]) -> Path:
    """Write a new key to ``path`` with mode 0600; refuse to overwrite."""
    target = Path(path).expanduser()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(new_key().decode() + "\n")
    return target
