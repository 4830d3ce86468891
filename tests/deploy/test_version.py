"""A worker of another protocol or library version is refused, and both sides say why."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.deploy.helpers import subprocess_env
from zmqworkers import Cluster, __version__
from zmqworkers.protocol import PROTOCOL_VERSION

KEY = "k" * 32

# A worker program that believes it is another release: same code, other
# numbers on the wire.
OTHER_RELEASE = """
import sys
import zmqworkers.protocol.messages as messages
import zmqworkers.worker.handshake as handshake
protocol, version, address = int(sys.argv[1]), sys.argv[2], sys.argv[3]
messages.PROTOCOL_VERSION = handshake.PROTOCOL_VERSION = protocol
handshake.__version__ = version
from zmqworkers.cli import main
sys.exit(main(["worker", address, "--name", "other", "--death-timeout", "20"]))
"""


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(0, key=KEY)
    try:
        yield c
    finally:
        c.shutdown(wait=False, cancel_futures=True)


def run_other(address: str, protocol: int, version: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_env()
    env["ZMQWORKERS_KEY"] = KEY
    return subprocess.run(
        [sys.executable, "-c", OTHER_RELEASE, str(protocol), version, address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_other_protocol_is_refused_naming_both_versions(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    theirs = PROTOCOL_VERSION + 1
    # A warning, rate-limited like every drop: anyone can send these.
    with caplog.at_level(logging.WARNING, logger="zmqworkers.controller.engine"):
        done = run_other(cluster.address, theirs, __version__)
        # Worker side: a clear message and a non-zero exit, not a traceback.
        assert done.returncode == 3, done.stderr
        assert "Traceback" not in done.stderr
        assert f"worker speaks protocol {theirs}, controller {PROTOCOL_VERSION}" in done.stderr
        # Controller side: logged and counted, and the worker never joined.
        wait_for(lambda: cluster.counters()["dropped"].get("version", 0) >= 1, timeout=5)
    assert any(
        f"worker speaks protocol {theirs}, controller {PROTOCOL_VERSION}" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    assert cluster.workers() == []


def test_other_library_release_is_refused_naming_both_versions(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    # A warning, rate-limited like every drop: anyone can send these.
    with caplog.at_level(logging.WARNING, logger="zmqworkers.controller.engine"):
        done = run_other(cluster.address, PROTOCOL_VERSION, "99.0.0")
    expected = f"worker runs zmqworkers 99.0.0, controller zmqworkers {__version__}"
    assert done.returncode == 3, done.stderr
    assert expected in done.stderr
    assert any(expected in r.getMessage() for r in caplog.records)
    assert cluster.workers() == []
    assert cluster.counters()["dropped"]["version"] == 1


@pytest.mark.parametrize(
    ("ours", "theirs", "ok"),
    [
        ("0.1.0", "0.1.7", True),
        ("0.1.0", "0.2.0", False),
        ("1.2.0", "1.9.1", True),
        ("1.2.0", "2.0.0", False),
        ("0.1.0", "1.0.0", False),
    ],
)
def test_library_compatibility_rule(ours: str, theirs: str, ok: bool) -> None:
    from zmqworkers.protocol.messages import library_compatible

    assert library_compatible(ours, theirs) is ok
    assert library_compatible(theirs, ours) is ok


def test_refused_daemon_processes_are_not_restarted(tmp_path: Path, cluster: Cluster) -> None:
    # Every Python process of this daemon believes it is release 99.0.0.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import zmqworkers._version as v\nv.__version__ = '99.0.0'\n"
    )
    env = subprocess_env()
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    env["ZMQWORKERS_KEY"] = KEY
    done = subprocess.run(
        [sys.executable, "-m", "zmqworkers", "worker", cluster.address, "--processes", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("event=child_refused") == 2
    assert "event=child_replaced" not in done.stderr
    assert done.stderr.count("worker runs zmqworkers 99.0.0, controller zmqworkers") >= 2
    assert cluster.workers() == []
