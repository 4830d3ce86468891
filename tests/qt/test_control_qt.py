"""WorkerController's controls: timeouts, and stop/requestInterruption that interrupt.

On local workers and on a worker daemon; signals recorded with ``QSignalSpy``.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("qtpy.QtTest", reason="needs a Qt binding")

from tests.conftest import wait_for  # noqa: E402
from tests.qt.spy import Spy  # noqa: E402
from zmqworkers import TaskTimeout, WorkerController  # noqa: E402


def test_task_timeout_fails_the_hung_task_and_the_run_completes(controllers) -> None:
    wc = WorkerController(1, time.sleep, task_timeout=1)
    controllers.append(wc)
    results, errors = Spy(wc.sig_results), Spy(wc.sig_error)
    wc.add_tasks([0.01, 30, 0.02])
    wc.finalize_tasks()
    t0 = time.monotonic()
    wc.start()
    assert wc.wait(20_000)
    assert time.monotonic() - t0 < 10
    assert sorted(task for task, _ in results) == [0.01, 0.02]
    ((task, err),) = list(errors)
    assert task == 30 and isinstance(err, TaskTimeout)
    assert wc.progress == 1


@pytest.mark.parametrize("how", ["stop", "requestInterruption"])
def test_interrupting_ends_a_hung_call_at_once(controllers, how: str) -> None:
    # stop_timeout=60: without interrupting, the thread would wait that long.
    wc = WorkerController(1, time.sleep, stop_timeout=60)
    controllers.append(wc)
    wc.add_tasks([60, 60, 60])
    wc.start()
    wait_for(lambda: any(w["state"] == "busy" for w in wc.workers()), timeout=30)
    pid = wc.workers()[0]["pid"]
    t0 = time.monotonic()
    getattr(wc, how)(interrupt=True)
    assert wc.wait(10_000)
    assert time.monotonic() - t0 < 5
    wait_for(lambda: not _alive(pid), timeout=10)


def test_a_daemon_without_supervisor_restarts_in_place(controllers, daemons, key) -> None:
    wc = WorkerController(0, time.sleep, task_timeout=1, key=key)
    controllers.append(wc)
    results, errors = Spy(wc.sig_results), Spy(wc.sig_error)
    wc.add_tasks([30, 0.01, 0.02])
    wc.finalize_tasks()
    wc.start()
    (proc,) = daemons(wc.address, 1)
    assert wc.wait(60_000)
    ((task, err),) = list(errors)
    assert task == 30 and isinstance(err, TaskTimeout)
    # The same process (it ran exec on itself) joined again and ran the rest.
    assert sorted(task for task, _ in results) == [0.01, 0.02]
    assert proc.poll() is None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
