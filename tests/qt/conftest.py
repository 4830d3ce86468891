"""Fixtures of the Qt tests: worker daemons as separate processes, owned and killed."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def key() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def daemons(key: str) -> Iterator[Callable[[str, int], list[subprocess.Popen[bytes]]]]:
    """``start(address, n)`` runs ``n`` worker daemons, as an operator would."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(address: str, n: int = 2) -> list[subprocess.Popen[bytes]]:
        env = dict(os.environ, ZMQWORKERS_KEY=key, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-m", "zmqworkers.worker", address, "--death-timeout", "60"]
        new = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL) for _ in range(n)]
        procs.extend(new)
        return new

    yield start
    for p in procs:
        p.kill()
    for p in procs:
        p.wait(10)


@pytest.fixture
def controllers() -> Iterator[list[object]]:
    """Controllers a test made; every one still running is stopped and joined."""
    made: list[object] = []
    yield made
    for c in made:
        if c.isRunning():  # type: ignore[attr-defined]
            assert c.shutdown(timeout=30), "a controller did not stop"  # type: ignore[attr-defined]
