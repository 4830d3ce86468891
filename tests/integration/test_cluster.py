"""The plain-Python face end to end, on real local worker processes."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
import zmq

from tests.conftest import wait_for
from zmqworkers import Cluster, RemoteError
from zmqworkers.errors import ConfigurationError


def double(x):
    return 2 * x


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x


def echo(x):
    return x


def test_map_10000_in_order(cluster2) -> None:
    out = list(cluster2.map(double, range(10_000)))
    assert out == [2 * x for x in range(10_000)]


def test_raising_function_is_caught_as_original_type_and_worker_goes_on(cluster2) -> None:
    fut = cluster2.submit(fail_on, 3, 3)
    with pytest.raises(ValueError) as info:
        fut.result(timeout=30)
    exc = info.value
    assert isinstance(exc, RemoteError)
    assert exc.type_name == "ValueError"
    assert "bad value 3" in str(exc)
    assert "Remote traceback" in str(exc) and "fail_on" in str(exc)
    assert "fail_on" in str(exc.__cause__)
    # The worker that raised goes on serving: every later call succeeds.
    assert [cluster2.submit(fail_on, i, 3).result(30) for i in range(4, 10)] == list(range(4, 10))
    # Nobody died of it: both workers are (still) there, none was lost.
    cluster2.wait_for_workers(2)
    assert cluster2.counters().get("workers_lost", 0) == 0


def test_64mib_array_round_trips_bit_exact(cluster2) -> None:
    rng = np.random.default_rng(0)
    arr = rng.standard_normal(64 * 1024 * 1024 // 8)
    back = cluster2.submit(echo, arr).result(timeout=60)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert back.tobytes() == arr.tobytes()


def test_lambdas_and_closures_run(cluster2) -> None:
    offset = 7

    def closure(x):
        return x + offset

    assert list(cluster2.map(lambda x: x * 3, range(5))) == [0, 3, 6, 9, 12]
    assert list(cluster2.map(closure, range(3))) == [7, 8, 9]
    assert cluster2.submit(lambda a, b=1: a - b, 10, b=4).result(30) == 6


def test_functions_defined_in_main_run(tmp_path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            from zmqworkers import Cluster

            class Point:
                def __init__(self, x):
                    self.x = x

            def norm(p, scale):
                return Point(p.x * scale)

            if __name__ == "__main__":
                with Cluster(2) as c:
                    out = [p.x for p in c.map(lambda p: norm(p, 2), [Point(i) for i in range(5)])]
                print("RESULT", out)
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT [0, 2, 4, 6, 8]" in proc.stdout


def test_shared_argument_crosses_once_per_worker(cluster2) -> None:
    big = np.ones(4 * 1024 * 1024)  # 32 MiB
    cluster2.wait_for_workers(2)
    before = cluster2.counters()
    out = dict(cluster2.imap_unordered(lambda t, a: t + a[0], range(200), big))
    assert out == {t: t + 1.0 for t in range(200)}
    after = cluster2.counters()
    sent = after["bytes_sent"] - before.get("bytes_sent", 0)
    # Two workers get the function once each; 200 tasks would be 6.4 GB.
    assert after["functions_sent"] - before.get("functions_sent", 0) <= 2
    assert sent < 2 * big.nbytes + 1_000_000, sent


def test_imap_unordered_yields_task_and_result_pairs(cluster2) -> None:
    pairs = list(cluster2.imap_unordered(lambda t, a, b=0: t * a + b, range(50), 3, b=1))
    assert sorted(pairs) == [(t, 3 * t + 1) for t in range(50)]


def test_imap_unordered_streams_from_a_generator(cluster2) -> None:
    def gen():
        yield from range(1000)

    total = sum(r for _, r in cluster2.imap_unordered(double, gen()))
    assert total == 2 * sum(range(1000))


def test_submit_after_shutdown_is_refused() -> None:
    c = Cluster(1)
    c.shutdown()
    with pytest.raises(RuntimeError):
        c.submit(double, 1)


def test_context_manager_waits_for_work_and_stops_workers() -> None:
    with Cluster(2) as c:
        futs = [c.submit(time.sleep, 0.05) for _ in range(6)]
        pids = {w["pid"] for w in (wait_for(lambda: len(c.workers()) == 2 and c.workers()))}
    assert all(f.done() and f.exception() is None for f in futs)
    for pid in pids:
        wait_for(lambda pid=pid: not _alive(pid), timeout=15)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # reaped children vanish; a zombie is not alive for our purpose
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ConfigurationError, match="n_workers"):
        Cluster(-1)
    with pytest.raises(ConfigurationError, match="key"):
        Cluster(0, key="short")
    with pytest.raises(ConfigurationError, match="keygen"):
        Cluster(0, bind="tcp://0.0.0.0:0")


def test_unsigned_pickle_is_dropped_before_unpickling_and_counted(cluster2, tmp_path) -> None:
    marker = tmp_path / "created-by-pickle"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import msgpack

    from zmqworkers.protocol import PROTOCOL_VERSION, Kind

    payload = pickle.dumps(Evil())
    envelope = msgpack.packb([PROTOCOL_VERSION, int(Kind.RESULTS), "x/r", 1, None, 1])
    endpoints = cluster2._engine.endpoints
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(endpoints["results"])
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoints["tasks"])
        for sock in (push, dealer):
            sock.send_multipart([b"\0" * 32, envelope, payload])  # wrong signature
            sock.send_multipart([envelope, payload])  # no signature at all
        wait_for(lambda: cluster2.counters()["dropped"].get("signature", 0) >= 4, timeout=10)
        push.close()
        dealer.close()
    finally:
        ctx.term()
    assert not marker.exists()
    # The cluster still works afterwards.
    assert list(cluster2.map(double, range(10))) == [2 * x for x in range(10)]


def test_shutdown_cancel_futures_cancels_queued_work() -> None:
    c = Cluster(1)
    try:
        futs = [c.submit(time.sleep, 0.2) for _ in range(20)]
        wait_for(lambda: futs[0].running() or c.counters()["running"] > 0, timeout=20)
    finally:
        c.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futs if f.cancelled()]
    finished = [f for f in futs if not f.cancelled()]
    assert len(cancelled) >= 15, len(cancelled)
    assert all(f.exception() is None for f in finished)


def test_abandoned_map_iterator_drops_its_queued_tasks(cluster2) -> None:
    it = cluster2.map(time.sleep, [0.05] * 200)
    next(it)
    it.close()  # the caller stops iterating
    wait_for(lambda: cluster2.counters()["queued"] == 0, timeout=10)
    assert cluster2.counters()["delivered"] < 100
    assert list(cluster2.map(double, range(5))) == [0, 2, 4, 6, 8]


def test_map_raises_the_first_failure_in_order(cluster2) -> None:
    it = cluster2.map(fail_on, range(10), [5] * 10)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="bad value 5"):
        next(it)


def test_many_distinct_functions_on_one_worker_all_run() -> None:
    # More specs than the controller lets a worker keep idle: the controller
    # tells the worker what to forget, never a spec a queued task needs.
    with Cluster(1) as c:
        futs = [c.submit(lambda i=i: i) for i in range(300)]
        assert [f.result(60) for f in futs] == list(range(300))


def test_an_unpicklable_argument_fails_only_its_own_task(cluster2) -> None:
    import threading

    outcomes = list(cluster2.imap_outcomes(echo, [1, 2, threading.Lock(), 4, 5]))
    failed = [o for o in outcomes if o.error is not None]
    assert sorted(o.result for o in outcomes if o.error is None) == [1, 2, 4, 5]
    assert len(failed) == 1 and "cannot be pickled" in str(failed[0].error)


def exits(x):
    import sys

    sys.exit(f"task {x} gives up")


def test_sys_exit_in_a_task_fails_that_task_and_the_worker_goes_on(cluster2) -> None:
    with pytest.raises(SystemExit):
        cluster2.submit(exits, 1).result(30)
    assert list(cluster2.map(double, range(4))) == [0, 2, 4, 6]
    assert cluster2.counters().get("workers_lost", 0) == 0


def test_a_done_callback_may_ask_the_cluster(cluster2) -> None:
    seen: list[dict] = []
    fut = cluster2.submit(double, 2)
    fut.add_done_callback(lambda f: seen.append(cluster2.counters()))
    assert fut.result(30) == 4
    wait_for(lambda: seen, timeout=5)
    assert seen[0]["delivered"] >= 1


def test_local_workers_dial_a_private_ipc_folder_that_goes_with_the_cluster() -> None:
    # Spawned: a forked worker's command line is its fork server's.
    with Cluster(2, start_method="spawn") as c:
        c.wait_for_workers(2, timeout=30)
        local = c._engine.local_address
        assert c.address.startswith("tcp://127.0.0.1:")
        assert local.startswith("ipc://"), local
        folder = os.path.dirname(local[len("ipc://") :])
        assert os.stat(folder).st_mode & 0o777 == 0o700
        # The workers' command lines name the ipc address, not the TCP one.
        pids = {w["pid"] for w in c.workers()}
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert local.encode() in f.read().split(b"\0")
        assert list(c.map(double, range(100))) == [2 * x for x in range(100)]
    assert not os.path.exists(folder)


def test_local_workers_fall_back_to_tcp_without_a_usable_ipc_folder(monkeypatch, tmp_path) -> None:
    too_long = tmp_path / ("d" * 110)  # past the 107 bytes of a Unix socket path
    too_long.mkdir()
    for folder in (str(tmp_path / "missing"), str(too_long)):
        monkeypatch.setattr(tempfile, "tempdir", folder)
        with Cluster(1) as c:
            c.wait_for_workers(1, timeout=30)
            assert c._engine.local_address == c.address
            assert list(c.map(double, range(10))) == [2 * x for x in range(10)]
        assert os.listdir(too_long) == []
