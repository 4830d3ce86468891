"""Large arrays between a controller and its local workers go through shared memory.

Real processes and real /dev/shm: segments are used both ways, nothing is
left behind after a worker is killed mid-transfer, and daemons keep the
socket.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import wait_for
from zmqworkers.protocol.segments import SEGMENT_THRESHOLD, available, owner_prefix

pytestmark = pytest.mark.skipif(not available(), reason="no POSIX shared memory in /dev/shm")

ELEMENTS = SEGMENT_THRESHOLD // 8 * 2  # 1 MiB of float64: over the threshold


def ours() -> list[str]:
    """Segments of controllers in this process (their names carry its pid)."""
    return [n for n in os.listdir("/dev/shm") if n.startswith(owner_prefix())]


def from_segment(a: Any) -> bool:
    """Whether an array's memory is a mapped segment (not a socket frame)."""
    base = a
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return False


def describe(x: np.ndarray) -> tuple[bool, bool, np.ndarray]:
    """In the worker: was the argument mapped, is it writable; and it back."""
    return from_segment(x), bool(x.flags.writeable), x


def echo(x: np.ndarray) -> np.ndarray:
    return x


@pytest.fixture(autouse=True)
def no_segments_left() -> Iterator[None]:
    yield
    assert ours() == [], "shared-memory segments left behind"


def test_arrays_go_both_ways_through_segments_read_only() -> None:
    from zmqworkers import Cluster

    a = np.arange(ELEMENTS, dtype=np.float64)
    with Cluster(2) as c:
        mapped, writable, back = c.submit(describe, a).result(timeout=60)
        assert mapped, "the task's argument did not arrive in a segment"
        assert not writable, "a task's input must stay read-only"
        assert from_segment(back), "the result did not come back in a segment"
        assert np.array_equal(back, a)
        # Small arrays still take the socket.
        small = np.arange(1000.0)
        assert c.submit(describe, small).result(timeout=60)[0] is False
    assert ours() == []


def plus_one(x: np.ndarray) -> np.ndarray:
    return x + 1


def test_an_echoed_array_comes_back_in_its_own_segment_without_a_copy() -> None:
    from zmqworkers import Cluster

    a = np.arange(ELEMENTS, dtype=np.float64)
    with Cluster(1) as c:
        back = c.submit(echo, a).result(timeout=60)
        assert np.array_equal(back, a) and from_segment(back)
        assert not back.flags.writeable
        with pytest.raises(ValueError):
            back.flags.writeable = True
        # The controller's segment came back by reference: the worker wrote none.
        assert len(ours()) == 1
        del back
    assert ours() == []


def test_a_computed_array_comes_back_in_a_segment_of_the_worker() -> None:
    from zmqworkers import Cluster

    a = np.arange(ELEMENTS, dtype=np.float64)
    with Cluster(1) as c:
        back = c.submit(plus_one, a).result(timeout=60)
        assert np.array_equal(back, a + 1) and from_segment(back)
        assert not back.flags.writeable
        assert len(ours()) == 2  # the task's, and the worker's for the result
        del back
    assert ours() == []


def scaled(x: np.ndarray) -> tuple[bool, np.ndarray]:
    """In the worker: is the argument writable (as an in-band one is); and 2 x."""
    return bool(x.flags.writeable), 2 * x


def test_mid_size_arrays_travel_packed_and_arrive_writable_and_intact() -> None:
    from zmqworkers import Cluster

    arrays = [np.full(2048, float(i)) for i in range(300)]  # 16 KiB each
    with Cluster(2) as c:
        got = list(c.map(scaled, arrays, timeout=120))
        back = list(c.map(echo, arrays, timeout=120))
    assert all(writable for writable, _ in got)
    assert all(np.array_equal(r, 2 * a) for (_, r), a in zip(got, arrays, strict=True))
    for r, a in zip(back, arrays, strict=True):
        assert np.array_equal(r, a) and r.flags.writeable


def segment_block(i: int) -> np.ndarray:
    return np.full(SEGMENT_THRESHOLD // 8, float(i))  # a segment of its own


def sum_all(arrays: list[np.ndarray]) -> float:
    return float(sum(a.sum() for a in arrays))


def test_many_names_said_freed_with_a_packed_argument_still_fit_one_message() -> None:
    # 700 results let go at once queue 700 names to say freed (~52 KB); an
    # argument of 8,000 mid-size arrays packs with a layout of ~24 KB. In one
    # header they went over the envelope's 64 KiB: the worker dropped the
    # message, and the task never ended.
    from zmqworkers import Cluster

    with Cluster(1) as c:
        assert c.submit(sum_all, [np.ones(4)]).result(timeout=60) == 4.0
        results = list(c.map(segment_block, range(700), timeout=120))
        assert [float(r[0]) for r in results] == [float(i) for i in range(700)]
        del results
        arg = [np.ones(1024) for _ in range(8000)]  # 8 KiB each: packed
        assert c.submit(sum_all, arg).result(timeout=60) == 8000 * 1024.0
        # The names said later are taken: the next results reuse segments.
        assert len(list(c.map(segment_block, range(50), timeout=60))) == 50


def test_shared_memory_false_keeps_the_socket() -> None:
    from zmqworkers import Cluster

    with Cluster(1, shared_memory=False) as c:
        mapped, _, back = c.submit(describe, np.ones(ELEMENTS)).result(timeout=60)
    assert not mapped and not from_segment(back)


def test_worker_killed_mid_transfer_leaves_nothing_and_loses_nothing() -> None:
    from zmqworkers import Cluster

    n = 1000
    arrays = [np.full(ELEMENTS, float(i)) for i in range(n)]
    with Cluster(2) as c:
        c.wait_for_workers(2, timeout=60)
        victim = c.workers()[0]["pid"]
        seen: list[int] = []
        used_segments = 0
        for i, r in enumerate(c.map(echo, arrays, timeout=300)):
            # Intact: every element of result i is i.
            assert r.shape == (ELEMENTS,) and r[0] == i and r[-1] == i and (r == i).all()
            used_segments += from_segment(r)
            seen.append(i)
            if i == 200:
                os.kill(victim, signal.SIGKILL)  # tasks and results in flight both ways
        assert seen == list(range(n)), "each result delivered once, in order"
        assert used_segments > n // 2
        assert c.counters()["workers_lost"] >= 1
    assert ours() == []


def test_segments_of_a_killed_controller_are_swept_by_the_next() -> None:
    # A controller killed with SIGKILL cannot sweep: the next one does.
    code = (
        "import numpy as np, os, signal, sys\n"
        "from zmqworkers import Cluster\n"
        "c = Cluster(1)\n"
        f"r = c.submit(lambda x: x, np.ones({ELEMENTS})).result(timeout=60)\n"
        "from zmqworkers.protocol.segments import owner_prefix\n"
        "names = [n for n in os.listdir('/dev/shm') if n.startswith(owner_prefix())]\n"
        "print(os.getpid(), len(names), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout, proc.stderr[-2000:]
    pid, left = (int(v) for v in proc.stdout.split())
    assert left >= 1, "the killed controller held no segment: nothing is shown"

    def leftover() -> list[str]:
        return [n for n in os.listdir("/dev/shm") if n.startswith(owner_prefix(pid))]

    # Its worker ends by itself (its parent is gone); until then it may write.
    from zmqworkers import Cluster

    wait_for(lambda: not _alive_children_of(pid), timeout=30)
    assert leftover(), "nothing was left to sweep"
    with Cluster(1):
        pass
    assert leftover() == []


def _alive_children_of(pid: int) -> bool:
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            if f"--parent-pid {pid}" in " ".join(p.info["cmdline"] or []):
                return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            continue
    return False


def where(x: np.ndarray) -> tuple[int, bool, np.ndarray]:
    import time

    time.sleep(0.05)
    return os.getpid(), from_segment(x), x


def test_a_daemon_on_tcp_keeps_the_socket_beside_local_workers_on_segments() -> None:
    from tests.integration.test_faults import KEY, start_daemon
    from zmqworkers import Cluster

    with Cluster(1, key=KEY) as c:
        daemon = start_daemon(c.address)
        try:
            c.wait_for_workers(2, timeout=60)
            local = {w["pid"] for w in c.workers() if w["local"]}
            assert daemon.pid not in local
            runs = list(c.map(where, [np.full(ELEMENTS, float(i)) for i in range(40)]))
            by_daemon = [r for r in runs if r[0] == daemon.pid]
            by_local = [r for r in runs if r[0] in local]
            assert by_daemon and by_local, "both kinds of worker must have served"
            assert not any(mapped or from_segment(a) for _, mapped, a in by_daemon)
            assert all(mapped and from_segment(a) for _, mapped, a in by_local)
            assert all((a == i).all() for i, (_, _, a) in enumerate(runs))
        finally:
            daemon.kill()
            daemon.wait(10)


FULL_SHM = """
import numpy as np
from zmqworkers import Cluster
with Cluster(1) as c:
    a = np.arange(4 * 1024 * 1024 // 8, dtype=np.float64)  # 4 MiB, /dev/shm holds 1
    back = c.submit(lambda x: x + 1, a).result(timeout=60)
    assert np.array_equal(back, a + 1)
print("intact", flush=True)
"""


def test_a_full_dev_shm_sends_through_the_socket_instead() -> None:
    # A container's /dev/shm is often 64 MiB. Here a private mount
    # namespace puts a 1 MiB tmpfs over /dev/shm for one controller and its
    # worker: a segment that does not fit must fail cleanly (then the socket
    # carries the array), not kill a process with SIGBUS on its first write.
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("cannot make a private mount namespace here (needs root)")
    script = f'mount -t tmpfs -o size=1m tmpfs /dev/shm && exec {sys.executable} -c "$0"'
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, FULL_SHM],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "intact" in proc.stdout, proc.stderr[-3000:]


def remove_segments(prefix: str, started: str, timeout: float) -> int:
    """In the worker: wait for the controller's next segment and remove it before it is read."""
    import time

    open(started, "w").close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
        if names:
            for n in names:
                os.unlink(os.path.join("/dev/shm", n))
            return len(names)
        time.sleep(0.01)
    return 0


def total(x: np.ndarray) -> float:
    return float(x.sum())


def test_tasks_whose_segment_is_gone_are_reconciled_not_left_on_the_worker(
    tmp_path: Path,
) -> None:
    # The second TASKS message waits in the worker's socket while the first
    # task runs, and that task removes the segment it names. The worker
    # cannot map it: the message is dropped, but it is signed, so its number
    # is known and the worker's status says it was received and its tasks
    # are not held. They go out again. Before, a decode failure past the
    # signature carried no number when a segment failed, and as the
    # worker's last message its task stayed on the worker for ever.
    from zmqworkers import Cluster

    a = np.arange(ELEMENTS, dtype=np.float64)
    with Cluster(1, prefetch=1, heartbeat_interval=0.2) as c:
        c.wait_for_workers(1, timeout=60)
        started = tmp_path / "started"
        removed = c.submit(remove_segments, owner_prefix(), str(started), 20)
        # Sent once the first task runs: the worker reads no message meanwhile.
        wait_for(started.exists, timeout=30)
        second = c.submit(total, a)
        assert removed.result(timeout=60) == 1
        assert second.result(timeout=30) == float(a.sum())
        counters = c.counters()
    assert counters["results_lost"] == 1, counters
    assert counters.get("failed", 0) == 0 and counters.get("workers_lost", 0) == 0, counters
