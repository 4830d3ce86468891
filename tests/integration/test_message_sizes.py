"""Messages over max_message_size, on real processes: the task fails, nothing else.

A message larger than its link allows is closed on by the receiving socket
(ZMQ_MAXMSGSIZE), so it must never be sent: the sender checks the size
against the limit both sides agreed in the handshake, and the task fails
with ``MessageTooLarge``. Small limits stand in for the gigabytes.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from zmqworkers import Cluster
from zmqworkers.errors import MessageTooLarge, WorkerLost
from zmqworkers.security.keys import KEY_ENV

LIMIT = 4 << 20
BIG = 20 << 20


def make_bytes(n: int) -> bytes:
    return b"x" * n


def pid(_: object = None) -> int:
    return os.getpid()


def _refuse_to_load() -> None:
    raise RuntimeError("this result cannot be read here")


class Unreadable:
    """Pickles on the worker; unpickling it on the controller raises."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_refuse_to_load, ())


def unreadable(path: str) -> Unreadable:
    with open(path, "a") as f:
        f.write("run\n")
    return Unreadable()


@pytest.fixture
def small_cluster() -> Iterator[Cluster]:
    c = Cluster(2, max_message_size=LIMIT)
    try:
        c.wait_for_workers(2, timeout=30)
        yield c
    finally:
        c.shutdown(wait=False, cancel_futures=True)


def _lost_or_left(c: Cluster) -> list[object]:
    return [w for w in c.workers() if str(w["state"]).startswith(("lost", "left"))]


def test_an_argument_over_the_limit_fails_its_task_and_the_cluster_goes_on(
    small_cluster: Cluster,
) -> None:
    # Sent as it was, the argument made each worker's socket close its
    # connection: both workers were declared lost, never came back, and
    # neither this task nor any later one ended.
    c = small_cluster
    with pytest.raises(MessageTooLarge) as info:
        c.submit(len, b"y" * BIG).result(timeout=20)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.limit == LIMIT and err.size > BIG
    assert str(LIMIT) in str(err) and str(err.size) in str(err)
    # The cluster goes on: the same two workers serve the next tasks.
    assert list(c.map(len, [b"z" * 1000] * 20, timeout=20)) == [1000] * 20
    assert len(c.workers()) == 2 and not _lost_or_left(c)
    counters = c.counters()
    assert counters["running"] == 0 and counters["queued"] == 0
    assert counters.get("workers_lost", 0) == 0


def test_a_result_over_the_limit_fails_its_task_and_the_worker_goes_on(
    small_cluster: Cluster,
) -> None:
    # Sent as it was, the controller's socket closed the connection on the
    # result: no log line, no drop counted, the future never ended and the
    # worker showed `running: 1` for ever.
    c = small_cluster
    with pytest.raises(MessageTooLarge) as info:
        c.submit(make_bytes, BIG).result(timeout=20)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.limit == LIMIT and err.size > BIG
    assert f"{err.size} bytes" in str(err) and f"limit of {LIMIT} bytes" in str(err)
    pids = {w["pid"] for w in c.workers()}
    # The worker goes on: later tasks run on the same processes, nothing
    # is left running anywhere.
    assert set(c.map(pid, range(20), timeout=20)) <= pids
    wait_for(lambda: c.counters()["running"] == 0, timeout=10)
    assert not _lost_or_left(c) and c.counters().get("workers_lost", 0) == 0


def add_len(data: bytes, n: int) -> int:
    return len(data) + n


def test_a_function_whose_shared_arguments_are_over_the_limit_fails_its_tasks(
    small_cluster: Cluster,
) -> None:
    # The function travels once per worker (FUNC), with what it is bound to.
    c = small_cluster
    bound = functools.partial(add_len, b"z" * BIG)
    with pytest.raises(MessageTooLarge, match="the function with its shared arguments"):
        c.submit(bound, 1).result(timeout=20)
    assert c.submit(add_len, b"abc", 1).result(timeout=20) == 4
    assert c.counters()["running"] == 0 and c.counters().get("workers_lost", 0) == 0


def segment_sized(i: int) -> Any:
    import numpy as np

    return np.full(16 * 1024, float(i))  # 128 KiB: a shared-memory segment of its own


def tiny(i: int) -> int:
    return i


def test_a_thousand_results_let_go_at_once_do_not_lose_the_next_function() -> None:
    # Their names, said freed in the next message's header, made it 74 KB:
    # over the envelope's limit, the worker dropped that FUNC message, and
    # the next task failed with "function spec ... was never received".
    with Cluster(1) as c:
        results = list(c.map(segment_sized, range(1000), timeout=120))
        assert [float(r[0]) for r in results] == [float(i) for i in range(1000)]
        del results
        assert c.submit(tiny, 42).result(timeout=30) == 42
        assert list(c.map(tiny, range(20), timeout=30)) == list(range(20))


def send_long_text(n: int) -> bool:
    from zmqworkers.worker.current import send_message

    return send_message("x" * n)


def test_a_message_text_over_the_envelope_fails_its_task_clearly() -> None:
    # The text travels in the header, which the controller refuses whole
    # past 64 KiB: it was dropped without a word.
    with Cluster(1) as c:
        assert c.submit(send_long_text, 1000).result(timeout=30) is True
        with pytest.raises(Exception, match="header takes [0-9]+ bytes, over the limit of 65536"):
            c.submit(send_long_text, 100_000).result(timeout=30)
        assert c.submit(tiny, 7).result(timeout=30) == 7


def test_a_batch_too_large_together_goes_out_in_smaller_messages(
    small_cluster: Cluster,
) -> None:
    # Each result fits; together they would not: they are split, none lost.
    c = small_cluster
    sizes = [LIMIT // 3] * 12
    assert list(c.map(make_bytes, sizes, timeout=30)) == [b"x" * n for n in sizes]
    assert c.counters().get("failed", 0) == 0


def test_a_result_that_never_arrives_is_reconciled_not_left_running(tmp_path: Path) -> None:
    # The controller drops the worker's RESULTS message (its payload does not
    # unpickle there). The worker's next status, sent behind it on the same
    # connection, says it holds nothing: the task is sent once more, then
    # fails. Before, it stayed `running: 1` on an idle worker for ever.
    runs = tmp_path / "runs"
    with Cluster(1, max_attempts=2, heartbeat_interval=0.2) as c:
        with pytest.raises(WorkerLost, match="its result never arrived"):
            c.submit(unreadable, str(runs)).result(timeout=20)
        assert runs.read_text().count("run") == 2  # max_attempts, not more
        assert c.submit(len, "abc").result(timeout=20) == 3
        counters = c.counters()
        assert counters["running"] == 0
        assert counters["dropped"].get("malformed") == 2
        assert counters["results_lost"] == 2
        assert counters.get("workers_lost", 0) == 0


class SlowToPickle:
    """A large result whose pickling holds the GIL for about a second.

    As pickling a large bytes object does (2.8 s for 1 GiB here): the
    copy is one C call, so no other thread of the worker runs meanwhile.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[type, tuple[bytes]]:
        sum(range(10**8))  # one C call, about a second: the GIL is held throughout
        return (SlowToPickle, (self.data,))


def large_result_once(path: str, n: int) -> SlowToPickle:
    with open(path, "a") as f:
        f.write("run\n")
    return SlowToPickle(b"x" * n)


def test_a_large_result_does_not_make_a_live_worker_look_lost(tmp_path: Path) -> None:
    # While its result was pickled, the worker's heartbeat thread could not
    # run: the worker was declared lost and the task ran again (a 1 GiB
    # result ran three times). ZeroMQ's pings, answered without the GIL,
    # show the worker is there; with 0.3 s of silence allowed, it must not
    # be lost, and the task runs once.
    runs = tmp_path / "runs"
    n = 50 << 20
    events: list[str] = []

    class Watching(Cluster):
        def on_event(self, name: str, data: object) -> None:
            events.append(name)
            super().on_event(name, data)

    with Watching(1, heartbeat_interval=0.1, heartbeat_misses=3) as c:
        c.wait_for_workers(1, timeout=30)
        result = c.submit(large_result_once, str(runs), n).result(timeout=60)
        assert isinstance(result, SlowToPickle) and len(result.data) == n
        assert runs.read_text().count("run") == 1
        assert "worker_lost" not in events
        assert c.counters().get("workers_lost", 0) == 0


def _load_slowly(data: bytes) -> bytes:
    sum(range(10**8))  # one C call, about a second: the controller's GIL is held
    return data


class SlowToLoad:
    """A result whose unpickling holds the controller's GIL for about a second."""

    def __reduce__(self) -> tuple[object, tuple[bytes]]:
        return (_load_slowly, (b"payload",))


def slow_to_load() -> SlowToLoad:
    return SlowToLoad()


def test_a_controller_busy_with_a_result_is_not_left_by_its_worker() -> None:
    # While the engine thread decodes the result, the controller sends no
    # heartbeats; its ZeroMQ I/O thread still answers pings. The worker
    # used to take the silence (0.3 s allowed here) for a dead controller
    # and leave, and a new process took its place.
    events: list[str] = []

    class Watching(Cluster):
        def on_event(self, name: str, data: object) -> None:
            events.append(name)
            super().on_event(name, data)

    with Watching(1, heartbeat_interval=0.1, heartbeat_misses=3) as c:
        c.wait_for_workers(1, timeout=30)
        first = c.submit(pid).result(timeout=20)
        assert c.submit(slow_to_load).result(timeout=30) == b"payload"
        # Still the same process, never lost, never gone.
        assert [c.submit(pid).result(timeout=20) for _ in range(5)] == [first] * 5
        assert "worker_lost" not in events and "worker_left" not in events


def test_a_daemons_smaller_limit_holds_for_the_whole_session() -> None:
    # The daemon accepts at most 1 MiB; the controller 2 GiB. The handshake
    # agrees on the smaller, so each side fails what the other would refuse.
    key = "e" * 64
    env = {**os.environ, KEY_ENV: key}
    with Cluster(0, key=key) as c:
        cmd = [sys.executable, "-m", "zmqworkers", "worker", c.address]
        daemon = subprocess.Popen(
            [*cmd, "--max-message-size", str(1 << 20)], env=env, stdin=subprocess.DEVNULL
        )
        try:
            c.wait_for_workers(1, timeout=30)
            with pytest.raises(MessageTooLarge) as arg_info:
                c.submit(len, b"y" * (2 << 20)).result(timeout=20)
            with pytest.raises(MessageTooLarge) as result_info:
                c.submit(make_bytes, 2 << 20).result(timeout=20)
            assert arg_info.value.limit == result_info.value.limit == 1 << 20
            assert c.submit(len, b"y" * 1000).result(timeout=20) == 1000
            assert c.counters().get("workers_lost", 0) == 0
        finally:
            daemon.kill()
            daemon.wait(10)


@pytest.mark.parametrize("bad", ["10", "-1", "0", "lots"])
def test_a_worker_refuses_a_limit_below_the_floor(bad: str) -> None:
    cmd = [sys.executable, "-m", "zmqworkers", "worker", "tcp://127.0.0.1:9"]
    done = subprocess.run(
        [*cmd, "--max-message-size", bad], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert b"--max-message-size" in done.stderr and bad.encode() in done.stderr


def test_an_argument_the_worker_cannot_read_fails_instead_of_hanging() -> None:
    # The TASKS message is signed, but its payload does not unpickle on the
    # worker: dropped there. The worker's status says it received that
    # message and holds nothing, so the task is sent again, then fails.
    # Before, it stayed running for ever.
    with Cluster(1, max_attempts=2, heartbeat_interval=0.2) as c:
        with pytest.raises(WorkerLost, match="its result never arrived"):
            c.submit(len, Unreadable()).result(timeout=20)
        assert c.submit(len, "abc").result(timeout=20) == 3
        counters = c.counters()
        assert counters["running"] == 0 and counters["results_lost"] == 2
        assert counters.get("workers_lost", 0) == 0
