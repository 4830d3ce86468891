"""A future's done-callbacks are user code: they never hold the engine thread.

A callback that blocks (on another future, a lock, I/O) must leave results,
answers and heartbeats flowing, and a callback that waits for another
future of the same cluster must get it when its result comes.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

from tests.conftest import wait_for
from zmqworkers import Cluster


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_blocked_done_callback_leaves_the_engine_running() -> None:
    # Silent for 0.6 s and a worker takes its controller for dead.
    c = Cluster(1, heartbeat_interval=0.2, heartbeat_misses=3, stop_timeout=2)
    entered = threading.Event()
    gate = threading.Event()
    try:
        c.wait_for_workers(1)
        pid = c.workers()[0]["pid"]
        first = c.submit(abs, -1)
        first.add_done_callback(lambda f: (entered.set(), gate.wait(30)))
        assert entered.wait(15)
        # While the callback blocks: a result longer than the silence a
        # worker tolerates, an answer from the engine, and more results.
        assert c.submit(nap, 1.0).result(5) == 1.0
        assert c.counters().get("workers_lost", 0) == 0
        assert sorted(c.map(abs, range(-20, 0), timeout=5)) == list(range(1, 21))
        assert [w["pid"] for w in c.workers()] == [pid]  # never replaced
    finally:
        gate.set()
        c.shutdown(wait=False, cancel_futures=True)


def test_a_done_callback_may_wait_for_another_pending_future() -> None:
    c = Cluster(1, stop_timeout=2)
    got: list[Any] = []
    done = threading.Event()
    slow: Future[Any] | None = None
    try:
        c.wait_for_workers(1)
        fast = c.submit(abs, -3)
        slow = c.submit(nap, 0.3)

        def wait_for_slow(f: Future[Any]) -> None:
            assert slow is not None
            got.append((f.result(), slow.result()))  # no timeout
            done.set()

        fast.add_done_callback(wait_for_slow)
        assert done.wait(15), "the callback never got the other future's result"
        assert got == [(3, 0.3)]
        assert c.submit(abs, -4).result(5) == 4
    finally:
        if slow is not None and not slow.done():
            slow.cancel()  # frees a callback stuck in slow.result()
        c.shutdown(wait=False, cancel_futures=True)


def test_done_callbacks_run_once_each_off_the_engine_thread_and_before_shutdown_returns() -> None:
    threads: list[str] = []
    lock = threading.Lock()

    def record(f: Future[Any]) -> None:
        with lock:
            threads.append(threading.current_thread().name)

    with Cluster(2) as c:
        futures = [c.submit(abs, -i) for i in range(200)]
        for f in futures:
            f.add_done_callback(record)
        assert [f.result(30) for f in futures] == list(range(200))
    # After a waiting shutdown every callback has run, and none on the engine.
    assert len(threads) == 200
    assert "zmqworkers-engine" not in threads
    # Added to a future already done: it runs at once, in the caller's thread.
    late: list[str] = []
    futures[0].add_done_callback(lambda f: late.append(threading.current_thread().name))
    assert late == [threading.current_thread().name]


def test_a_callback_that_raises_is_logged_and_the_next_ones_still_run(caplog) -> None:
    ran: list[int] = []
    with Cluster(1) as c:
        f = c.submit(abs, -1)
        f.add_done_callback(lambda f: 1 / 0)
        f.add_done_callback(lambda f: ran.append(f.result()))
        assert f.result(30) == 1
        wait_for(lambda: ran, timeout=5)
    assert ran == [1]
    assert any("done-callback" in r.getMessage() for r in caplog.records)


def test_a_done_callback_may_shut_its_cluster_down(caplog) -> None:
    c = Cluster(1)
    done = threading.Event()
    f = c.submit(abs, -1)
    f.add_done_callback(lambda f: (c.shutdown(wait=True), done.set()))
    try:
        assert done.wait(30)
        assert f.result(0) == 1
        assert not any("still runs" in r.getMessage() for r in caplog.records)
        wait_for(lambda: not any(t.name == "zmqworkers-callbacks" for t in threading.enumerate()))
    finally:
        c.shutdown(wait=False)
