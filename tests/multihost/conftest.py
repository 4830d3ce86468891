"""Namespace-host fixtures: a controller host and two worker hosts on a bridge."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.multihost.netns import Network, why_unavailable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "e" * 64
PORT = 5555  # private to the controller's namespace: no clash with anything


@pytest.fixture(scope="session")
def netns_reason() -> str | None:
    return why_unavailable()


@pytest.fixture
def net(netns_reason: str | None) -> Iterator[Network]:
    if netns_reason:
        pytest.skip(netns_reason)
    network = Network()
    try:
        for name in ("ctl", "h1", "h2"):
            network.add_host(name)
        yield network
    finally:
        network.close()


def host_env(host: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["ZMQWORKERS_KEY"] = KEY
    env["ZW_HOST"] = host
    return env


def controller_address(net: Network) -> str:
    return f"tcp://{net.hosts['ctl'].ip}:{PORT}"


def start_worker(net: Network, host: str, name: str, *extra: str) -> None:
    argv = [sys.executable, "-m", "zmqworkers", "--log-level", "INFO", "worker", "--name", name]
    net.start(host, [*argv, controller_address(net), *extra], env=host_env(host))
