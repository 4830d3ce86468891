"""Shared fixtures: every resource owned, every wait bounded."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def wait_for(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> object:
    """Poll ``cond`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {cond}")
        time.sleep(interval)


@pytest.fixture
def cluster2() -> Iterator[object]:
    from zmqworkers import Cluster

    c = Cluster(2)
    try:
        yield c
    finally:
        c.shutdown(wait=False, cancel_futures=True)


def worker_processes() -> list[Any]:
    """This test process's descendants that run zmqworkers (psutil.Process objects).

    Not the fork servers: one lives as long as the process that started it.
    """
    import psutil

    from zmqworkers.controller.forkserver import server_pids

    servers = server_pids()
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in servers and "zmqworkers" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found
