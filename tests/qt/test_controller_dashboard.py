"""WorkerController with a dashboard, and with task log records forwarded."""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest

pytest.importorskip("qtpy.QtTest", reason="needs a Qt binding")

from tests.conftest import wait_for  # noqa: E402
from tests.qt import jobs  # noqa: E402
from tests.qt.spy import Spy  # noqa: E402
from zmqworkers import WorkerController  # noqa: E402


def test_the_dashboard_serves_while_the_controller_runs(controllers) -> None:
    wc = WorkerController(2, jobs.linear, func_args=(2, 5), dashboard="127.0.0.1:0")
    controllers.append(wc)
    assert wc.dashboard_url is None  # not started
    wc.add_tasks(range(10))
    wc.start()
    wait_for(lambda: wc.progress >= 1, timeout=30)
    url = wc.dashboard_url
    assert url is not None

    def status() -> dict:
        with urllib.request.urlopen(url + "api/status", timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    # The first worker may do all ten before the second has joined.
    assert wait_for(lambda: len(status()["workers"]) == 2, timeout=30)
    now = status()
    assert now["done"] == 10 and now["failed"] == 0
    wc.finalize_tasks()
    assert wc.wait(30_000)


def test_forwarded_log_records_are_logged_not_messages(controllers, caplog) -> None:
    wc = WorkerController(2, jobs.talk_and_log, forward_logs="WARNING")
    controllers.append(wc)
    messages = Spy(wc.sig_message_from_worker)
    with caplog.at_level(logging.WARNING, logger="zmqworkers.remote"):
        wc.add_tasks(range(4))
        wc.finalize_tasks()
        wc.start()
        assert wc.wait(30_000)
        got = wait_for(
            lambda: len([r for r in caplog.records if "logs a warning" in r.getMessage()]) == 4
        )
        assert got
    assert sorted(m[0] for m in messages) == [f"hello from task {i}" for i in range(4)]
