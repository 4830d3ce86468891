"""TaskDriver.on_results: a batch of results gives the signals the per-result path gives.

The driver runs here without an engine (tasks added before ``start`` are
held), and its results come in as the engine hands them over: lists of
``(task id, ok, value)``. The face's hooks record what would be emitted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from zmqworkers.client.driver import TaskDriver
from zmqworkers.controller.options import build_options
from zmqworkers.errors import RemoteError


def noop(x: Any) -> Any:
    return x


class Recorder:
    """The face's side: ``emit(name, *args)`` and the per-batch ``emitter(name)``."""

    def __init__(self, listening: set[str]) -> None:
        self.listening = listening
        self.signals: list[tuple[Any, ...]] = []

    def emit(self, name: str, *args: Any) -> None:
        self.signals.append((name, *args))

    def emitter(self, name: str) -> Any:
        if name not in self.listening:
            return None
        return lambda *args: self.emit(name, *args)


class PerResult(TaskDriver):
    """The same driver through its per-result path (what a subclass gets)."""

    def on_result(self, tid: int, ok: bool, value: Any) -> None:
        super().on_result(tid, ok, value)


def driver(cls: type[TaskDriver], listening: set[str], tasks: list[Any]) -> tuple[Any, Recorder]:
    rec = Recorder(listening)
    d = cls(rec.emit, build_options(), rec.emitter)
    d.change_function(noop)
    d.add_tasks(tasks)
    return d, rec


def batches(n: int, failed: set[int], size: int) -> list[list[tuple[int, bool, Any]]]:
    results = [
        (tid, tid not in failed, RemoteError("E", "boom", "") if tid in failed else tid * 10)
        for tid in range(1, n + 1)
    ]
    return [results[i : i + size] for i in range(0, n, size)]


@pytest.mark.parametrize(
    "listening",
    [
        {"results", "error", "progress"},
        {"results", "error"},
        {"results"},
        {"progress"},
        set(),
    ],
)
@pytest.mark.parametrize("failed", [set(), {3, 17}])
def test_a_batch_gives_what_one_result_at_a_time_gives(
    listening: set[str], failed: set[int]
) -> None:
    tasks = [f"task-{i}" for i in range(1, 41)]
    fast, fast_rec = driver(TaskDriver, listening, tasks)
    slow, slow_rec = driver(PerResult, {"results", "error", "progress"}, tasks)
    for batch in batches(40, failed, 16):
        fast.on_results(batch)
        slow.on_results(batch)
    expected = [s for s in slow_rec.signals if s[0] in listening]
    assert fast_rec.signals == expected
    assert fast.done == slow.done == 40 and fast.progress == 1.0
    got = [s[1] for s in fast_rec.signals if s[0] in ("results", "error")]
    assert len(got) == len(set(got))  # each task once


def test_a_task_dropped_while_it_ran_gives_no_signal() -> None:
    tasks = list(range(100, 110))
    d, rec = driver(TaskDriver, {"results", "error", "progress"}, tasks)
    # Dropped while held: its result, should one still come, is not delivered.
    d.reset_task_list()
    assert d.target == 0
    d.add_tasks([7, 8])  # ids 11 and 12
    d.on_results([(3, True, "late"), (11, True, 70), (12, True, 80)])
    assert rec.signals == [
        ("results", 7, 70),
        ("progress", 0.5),
        ("results", 8, 80),
        ("progress", 1.0),
    ]
    assert d.done == 2


def test_array_tasks_are_emitted_as_the_objects_added() -> None:
    # Tasks are the caller's objects, arrays included (never compared with ==).
    tasks = [np.arange(3) + i for i in range(5)]
    d, rec = driver(TaskDriver, {"results"}, tasks)
    d.on_results([(tid, True, None) for tid in range(1, 6)])
    assert [s[1] for s in rec.signals] == tasks
    assert all(a is b for a, b in zip((s[1] for s in rec.signals), tasks))
    assert d.progress == 1.0


def test_progress_counts_a_batch_once_its_signals_are_out() -> None:
    # The seed's examples poll progress >= 1 and then read their spy: at no
    # point may progress say done while a result's signal is still to come.
    seen: list[tuple[int, float]] = []
    drivers: list[TaskDriver] = []

    def emitter(name: str) -> Any:
        if name != "results":
            return None
        return lambda task, value: seen.append((task, drivers[0].progress))

    d = TaskDriver(lambda *args: None, build_options(), emitter)
    drivers.append(d)
    d.change_function(noop)
    d.add_tasks(range(10))
    d.on_results([(tid, True, tid) for tid in range(1, 11)])
    assert [task for task, _ in seen] == list(range(10))
    assert all(p < 1.0 for _, p in seen)
    assert d.progress == 1.0
