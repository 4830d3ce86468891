"""How the dispatcher cuts a worker's share of tasks into TASKS messages."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from zmqworkers.controller.batching import Batcher, Spec
from zmqworkers.controller.dispatch import Dispatcher
from zmqworkers.controller.options import EngineOptions
from zmqworkers.controller.scheduler import Scheduler, WorkerState
from zmqworkers.protocol import Kind
from zmqworkers.protocol.serialize import loads


def dispatch_once(args: list[Any], capacity: int, known_size: float) -> list[list[int]]:
    """The task ids of each TASKS message one dispatch round sends to one worker."""
    sched = Scheduler()
    sched.add_many("f", list(enumerate(args)))
    sched.join(WorkerState(id="w", host="h", capacity=capacity))
    batcher = Batcher(EngineOptions())
    batcher.add(Spec("f", (b"spec",)), {"f": len(args)})
    batcher.fit("f", known_size, 1)  # the payload size learned so far
    sent: list[list[int]] = []

    def send(wid: str, kind: Kind, header: Any, body: Any) -> bool:
        assert wid == "w"
        if kind == Kind.TASKS:
            sent.append([tid for tid, _ in loads(list(body))])
        return True

    d = Dispatcher(sched, batcher, send, lambda out: None, "me", Counter(), lambda: 0)
    d.run()
    return sent


def test_large_tasks_go_one_message_each_so_they_stream() -> None:
    arrays = [np.full(1 << 18, float(i)) for i in range(3)]  # 2 MiB each
    sent = dispatch_once(arrays, capacity=3, known_size=3 << 20)
    assert sent == [[0], [1], [2]]


def test_mid_size_tasks_share_messages_of_about_batch_bytes() -> None:
    arrays = [np.full(1 << 15, float(i)) for i in range(6)]  # 256 KiB each
    sent = dispatch_once(arrays, capacity=6, known_size=300 << 10)  # 3 fit 1 MiB
    assert sent == [[0, 1, 2], [3, 4, 5]]


def test_tiny_tasks_share_one_message() -> None:
    sent = dispatch_once(list(range(50)), capacity=50, known_size=8.0)
    assert sent == [list(range(50))]


def test_a_payload_larger_than_known_sends_what_fits_and_requeues_the_rest() -> None:
    arrays = [np.full(1 << 18, float(i)) for i in range(3)]  # 2 MiB each
    sent = dispatch_once(arrays, capacity=3, known_size=1024.0)
    # Sized for 1 KiB tasks, all three would share a message; at their
    # real size the first goes alone and the others wait for the next ask.
    assert sent == [[0]]
