"""When a waiting worker warns, and what it names: a pure function of the clock."""

from __future__ import annotations

import pytest

from zmqworkers.errors import ConfigurationError
from zmqworkers.security.connection import check_bind_address
from zmqworkers.worker.silence import SilenceReport


def test_warnings_come_at_every_doubling_and_name_the_likely_cause() -> None:
    report = SilenceReport("tcp://h:1", since=100.0, first=3.0)
    times = [100.0 + t / 10 for t in range(0, 260)]  # 26 s in steps of 0.1 s
    due = [t for t in times if report.due(t) is not None]
    assert [round(t - 100.0, 1) for t in due] == [3.0, 6.0, 12.0, 24.0]
    assert "a wrong address" in (SilenceReport("tcp://h:1", 0.0, 1.0).due(1.0) or "")
    connected = SilenceReport("tcp://h:1", 0.0, 1.0)
    connected.connected = True
    assert "most likely a wrong key" in (connected.due(1.5) or "")


@pytest.mark.parametrize(
    "good", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://127.0.0.1", "tcp://[::1]:0", "ipc:///x"]
)
def test_addresses_a_controller_can_bind_pass(good: str) -> None:
    assert check_bind_address(good) == good


@pytest.mark.parametrize("bad", ["tcp://h:65535", "tcp://h:5555/path", None, 5555])
def test_other_bind_addresses_are_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="cannot bind"):
        check_bind_address(bad)
