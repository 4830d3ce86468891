"""A RESULTS payload, checked whole and then taken in one step by the dispatcher."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from zmqworkers.controller.batching import Batcher
from zmqworkers.controller.dispatch import Dispatcher
from zmqworkers.controller.options import EngineOptions
from zmqworkers.controller.scheduler import Scheduler, WorkerState
from zmqworkers.errors import DecodeError, RemoteError
from zmqworkers.protocol.records import check_results


@pytest.mark.parametrize(
    "items",
    [
        [],
        [(1, True, None)],
        [(1, True, None), (2, False, {"type": "E"})],
        [[1, True, 0], (2, True, 0)],
    ],
)
def test_well_formed_results_pass(items: list[Any]) -> None:
    check_results(items, "w")


@pytest.mark.parametrize(
    "items",
    [
        "not a list",
        [(1, True, None), ("2", True, None)],  # the last entry's id is text
        [(1, True, None), (2, 1, None)],  # a flag that is no bool
        [(1, True, None), (2, True)],  # two fields
        [(1, True, None), 7],
    ],
)
def test_a_bad_entry_anywhere_fails_the_whole_payload(items: Any) -> None:
    with pytest.raises(DecodeError, match="not"):
        check_results(items, "w")


def test_results_are_delivered_once_in_order_with_errors_made_remote() -> None:
    sched = Scheduler()
    sched.add_many("f", [(tid, tid) for tid in range(5)])
    sched.join(WorkerState(id="w", host="h", capacity=5))
    sched.assign()
    delivered: list[list[tuple[int, bool, Any]]] = []
    stats: Counter[str] = Counter()
    d = Dispatcher(
        sched, Batcher(EngineOptions()), lambda *a: True, delivered.append, "me", stats, lambda: 0
    )
    assert d.take_results("w", [(3, True, 30), [0, True, 0], (3, True, 30)]) == "f"
    assert d.take_results("w", [(1, False, {"type": "ValueError", "message": "no"})]) == "f"
    assert d.take_results("w", [(0, True, 0)]) is None  # only a duplicate
    assert delivered[0] == [(3, True, 30), (0, True, 0)]
    assert all(type(item) is tuple for item in delivered[0])
    ((tid, ok, err),) = delivered[1]
    assert (tid, ok) == (1, False) and isinstance(err, RemoteError) and "no" in str(err)
    assert delivered[2:] in ([], [[]])
    assert stats["duplicates"] == 2  # errors are counted where they are delivered
    assert sorted(sched.tasks) == [2, 4] and sched.workers["w"].done == 3
