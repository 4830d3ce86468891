"""A hostile client floods a running job: every result right, drops counted, memory flat."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

import psutil

from tests.conftest import wait_for
from tests.security.helpers import ROOT
from zmqworkers import Cluster

KEY = "hostile-flood-key-0123456789abcdef"
N_MESSAGES = 50_000
MAX_SIZE = 64 * 1024


def slow_square(x: int) -> int:
    time.sleep(0.005)
    return x * x


def test_flood_during_a_job() -> None:
    me = psutil.Process()
    with Cluster(
        2, key=KEY, heartbeat_interval=0.2, max_message_size=MAX_SIZE, max_attempts=5
    ) as cluster:
        cluster.wait_for_workers(2, timeout=30)
        assert list(cluster.map(slow_square, range(10))) == [x * x for x in range(10)]
        rss_before = me.memory_info().rss
        env = {**os.environ, "PYTHONPATH": ROOT, "ZMQWORKERS_KEY": KEY}
        hostile = subprocess.Popen(
            [sys.executable, "-m", "tests.security.hostile_client", cluster.address]
            + [str(cluster._engine.results_channel), str(N_MESSAGES), str(MAX_SIZE)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        flood_over = threading.Event()

        def read_stdout() -> None:
            assert hostile.stdout is not None
            for line in hostile.stdout:
                lines.append(line)
                if line.startswith("DONE"):
                    break
            flood_over.set()

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        # The job runs in waves for as long as the flood lasts, so it is
        # provably running while the garbage arrives. The client joins as a
        # worker just before it starts flooding.
        futures: list[Future[int]] = []
        waves_during_flood = 0
        deadline = time.monotonic() + 90
        try:
            wait_for(
                lambda: flood_over.is_set() or any(w["id"] == "hostile" for w in cluster.workers()),
                timeout=30,
            )
            while not flood_over.is_set() and time.monotonic() < deadline:
                start = len(futures)
                wave = [cluster.submit(slow_square, x) for x in range(start, start + 20)]
                futures += wave
                # Most of a wave, not all: one task may sit on the hostile
                # "worker" until the controller declares it lost.
                wait_for(lambda w=wave: sum(f.done() for f in w) >= 15, timeout=30)
                waves_during_flood += 1
            assert flood_over.wait(60), "the flood did not end"
            deadline = time.monotonic() + 30
            while True:
                dropped = cluster.counters()["dropped"]
                if sum(dropped.values()) >= N_MESSAGES or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            _, err = hostile.communicate("close\n", timeout=60)
        finally:
            if hostile.poll() is None:
                hostile.kill()
                hostile.communicate()
            reader.join(5)
        assert hostile.returncode == 0, err
        assert waves_during_flood >= 1
        results = [f.result(timeout=60) for f in futures]
        assert results == [x * x for x in range(len(futures))]
        rss_after = me.memory_info().rss
    sent = dict(line.split()[1:3] for line in lines if line.startswith("SENT"))
    assert sum(int(v) for v in sent.values()) == N_MESSAGES
    # Every message of the flood was refused and counted, by reason.
    assert sum(dropped.values()) >= N_MESSAGES, (dropped, sent)
    for reason in ("signature", "malformed", "size", "replay", "version", "kind"):
        assert dropped.get(reason, 0) > 0, (reason, dropped)
    assert dropped["size"] >= int(sent["oversized"])
    assert dropped["version"] == int(sent["version"])
    assert dropped["replay"] >= int(sent["replayed"])
    growth = (rss_after - rss_before) / 2**20
    print(
        f"flood: {growth:.1f} MiB controller RSS growth, {len(futures)} tasks in "
        f"{waves_during_flood} waves during it; drops {dropped}"
    )
    assert growth < 100, f"controller memory grew by {growth:.0f} MiB"
