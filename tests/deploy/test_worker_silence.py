"""A worker nobody answers says so, with the likely causes, and its death timeout fails."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.deploy.helpers import subprocess_env
from zmqworkers import Cluster
from zmqworkers.security.keys import write_key_file
from zmqworkers.worker.silence import EXIT_NO_CONTROLLER

QUICK = ["--heartbeat-interval", "0.2", "--heartbeat-misses", "2", "--death-timeout", "3"]


def _worker(address: str, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zmqworkers", "worker", address, "--key-file", str(key), *QUICK],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_wrong_key_is_named_at_warning_and_the_death_timeout_fails(tmp_path: Path) -> None:
    wrong = write_key_file(tmp_path / "wrong")
    with Cluster(0, key="the-right-key-0123456789abcdef") as c:
        out = _worker(c.address, wrong)
        assert c.workers() == []
    assert out.returncode == EXIT_NO_CONTROLLER, out.stderr
    assert "WARNING zmqworkers.worker.loop" in out.stderr
    assert f"connected to {c.address}, but no answer to the hello" in out.stderr
    assert "most likely a wrong key" in out.stderr
    assert "no controller for 3 s, exiting" in out.stderr


def test_nothing_listening_is_named_at_warning(tmp_path: Path) -> None:
    key = write_key_file(tmp_path / "key")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    out = _worker(address, key)
    assert out.returncode == EXIT_NO_CONTROLLER, out.stderr
    line = next(x for x in out.stderr.splitlines() if f"no connection to {address}" in x)
    assert "WARNING" in line
    for cause in ("wrong address", "no controller running there", "firewall"):
        assert cause in line
    # Rate-limited: at 0.4, 0.8, 1.6 s (and 3.2 s, if it comes before the exit).
    assert 3 <= out.stderr.count("no connection to") <= 4, out.stderr
