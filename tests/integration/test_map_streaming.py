"""``map`` over long and endless iterables: bounded by ``buffersize``, engine never starved."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from zmqworkers import Cluster


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class Counted:
    """An endless source of numbers that counts how many were read."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            self.pulled = i + 1
            yield i


def test_map_over_an_endless_generator_with_buffersize_streams_in_bounded_reads(
    cluster2: Cluster,
) -> None:
    source = Counted()
    t0 = time.monotonic()
    it = cluster2.map(abs, source, buffersize=64)
    try:
        assert next(it) == 0
        first = time.monotonic() - t0
        rest = [next(it) for _ in range(2_999)]
        assert rest == list(range(1, 3_000))
        # 3,000 taken: at most 64 more were read.
        assert 3_000 <= source.pulled <= 3_000 + 64
    finally:
        it.close()
    assert first < 15, first
    pulled = source.pulled
    assert cluster2.submit(abs, -1).result(15) == 1  # abandoned cleanly
    assert source.pulled == pulled


def test_buffersize_bounds_the_tasks_submitted_and_not_yet_yielded(cluster2: Cluster) -> None:
    source = Counted()
    seen: list[int] = []
    for k, value in enumerate(cluster2.map(abs, itertools.islice(source, 300), buffersize=5)):
        # When the k-th result (from 0) is yielded, k were taken before it.
        assert source.pulled <= k + 5, (k, source.pulled)
        seen.append(value)
    assert seen == list(range(300))


def test_buffersize_with_several_iterables_and_a_timeout(cluster2: Cluster) -> None:
    out = cluster2.map(pow, itertools.count(), itertools.repeat(2), timeout=30, buffersize=3)
    assert list(itertools.islice(out, 50)) == [i * i for i in range(50)]
    out.close()


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        (0, ValueError, "buffersize must be 1 or more"),
        (-3, ValueError, "buffersize must be 1 or more"),
        (1.5, TypeError, "buffersize must be a whole number or None, not 1.5"),
        (True, TypeError, "buffersize must be a whole number or None, not True"),
        ("8", TypeError, "buffersize must be a whole number or None, not '8'"),
    ],
)
def test_a_bad_buffersize_is_refused_by_name(
    cluster2: Cluster, bad: Any, error: type, words: str
) -> None:
    source = Counted()
    with pytest.raises(error, match=words):
        cluster2.map(abs, source, buffersize=bad)
    assert source.pulled == 0


def test_reading_a_long_iterable_without_buffersize_does_not_starve_the_engine() -> None:
    # A worker that hears nothing from its controller for 0.5 s leaves. Read
    # eagerly, a million arguments used to keep the engine submitting for
    # over a second, with no heartbeat sent and no result delivered.
    with Cluster(1, heartbeat_interval=0.1, heartbeat_misses=5) as c:
        c.wait_for_workers(1)
        pid = c.workers()[0]["pid"]
        early = c.submit(nap, 0.05)
        results = c.map(abs, range(1_000_000))
        assert early.result(5) == 0.05
        assert sum(1 for _ in results) == 1_000_000
        # The worker heard its controller all along: never lost, never replaced.
        assert c.counters().get("workers_lost", 0) == 0
        assert [w["pid"] for w in c.workers()] == [pid]
