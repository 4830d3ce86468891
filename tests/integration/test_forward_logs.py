"""Task log records from a worker daemon reach the controller's log, bounded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from zmqworkers import Cluster
from zmqworkers.errors import ConfigurationError
from zmqworkers.worker.logforward import BURST, RATE

ROOT = Path(__file__).resolve().parents[2]
KEY = "cd" * 32


def warn(x: int) -> int:
    logging.getLogger("mytask").warning("task %d is unsure", x)
    logging.getLogger("mytask").info("task %d says little", x)
    return x


def chatter(n: int) -> int:
    import time

    log = logging.getLogger("chatty")
    for i in range(n):
        log.warning("line %d", i)
    time.sleep(0.05)  # a token comes back: the last line carries the drop count
    log.warning("last line")
    return n


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def remote_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("zmqworkers.remote")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


@pytest.fixture
def daemon_cluster() -> Iterator[Cluster]:
    with Cluster(0, key=KEY, forward_logs="WARNING") as c:
        env = dict(os.environ, PYTHONPATH=str(ROOT), ZMQWORKERS_KEY=KEY)
        argv = [sys.executable, "-m", "zmqworkers", "worker", c.address, "--name", "remote-1"]
        # The daemon's own stderr would get every line too: kept out of the test's output.
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        try:
            c.wait_for_workers(1)
            yield c
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_a_daemons_task_warning_reaches_the_controllers_log(
    daemon_cluster: Cluster, remote_log: Records
) -> None:
    wid = daemon_cluster.workers()[0]["id"]
    assert wid.startswith("remote-1")
    assert daemon_cluster.submit(warn, 7).result(timeout=30) == 7
    got = wait_for(lambda: [r for r in remote_log.records if "is unsure" in r.getMessage()])
    assert isinstance(got, list) and len(got) == 1
    rec = got[0]
    assert rec.name == "zmqworkers.remote" and rec.levelno == logging.WARNING
    assert wid in rec.getMessage() and "mytask: task 7 is unsure" in rec.getMessage()
    assert rec.worker == wid and rec.remote_logger == "mytask"  # type: ignore[attr-defined]
    # INFO is below the level asked for: not sent.
    assert not [r for r in remote_log.records if "says little" in r.getMessage()]


def test_a_task_logging_100000_lines_is_bounded_and_the_run_goes_on(
    daemon_cluster: Cluster, remote_log: Records
) -> None:
    assert daemon_cluster.submit(chatter, 100_000).result(timeout=120) == 100_000
    last = wait_for(lambda: [r for r in remote_log.records if "last line" in r.getMessage()])
    assert last
    lines = [r for r in remote_log.records if "chatty: line" in r.getMessage()]
    drops = [r for r in remote_log.records if "dropped" in r.getMessage()]
    dropped = sum(r.dropped for r in drops)  # type: ignore[attr-defined]
    # Bounded: a burst and then RATE a second, far below 100,000.
    assert BURST <= len(lines) < 5_000
    assert drops and "dropped" in drops[-1].getMessage()
    # Every line is sent or counted as dropped, none lost unsaid.
    assert len(lines) + 1 + dropped == 100_001
    # The worker goes on serving.
    assert daemon_cluster.submit(warn, 8).result(timeout=30) == 8
    assert RATE > 0


def test_forward_logs_off_by_default_and_a_bad_level_is_named(remote_log: Records) -> None:
    with Cluster(1) as c:
        assert c.submit(warn, 1).result(timeout=30) == 1
        assert c.submit(warn, 2).result(timeout=30) == 2
    assert not remote_log.records
    with pytest.raises(ConfigurationError, match="forward_logs must be a logging level"):
        Cluster(0, forward_logs="LOUD")
