"""A cancel of many prefetched tasks reaches the worker: messages it can take."""

from __future__ import annotations

from typing import Any

from zmqworkers.controller.control import TaskControl
from zmqworkers.controller.scheduler import Scheduler, WorkerState
from zmqworkers.protocol import Kind, decode, encode
from zmqworkers.protocol.records import Cancel

KEY = b"k" * 32


def test_a_cancel_of_tens_of_thousands_of_prefetched_tasks_goes_in_parts_each_decodable() -> None:
    # A worker with a deep prefetch and large batches may hold this many:
    # as one message, its header alone was over the 64 KiB a header may
    # take, and the worker refused it whole (the tasks then ran).
    sched = Scheduler(max_attempts=3)
    ids = list(range(1 << 20, (1 << 20) + 30_000))
    sched.add_many("f", [(tid, None) for tid in ids])
    sched.join(WorkerState(id="w1", capacity=1, batch=len(ids)))
    held = [tid for _, tids in sched.assign() for tid in tids]
    assert sorted(held) == ids
    sent: list[tuple[str, Kind, Any]] = []

    def send(wid: str, kind: Kind, header: Any) -> bool:
        sent.append((wid, kind, header))
        return True

    control = TaskControl(None, sched, None, send, lambda kind, header: None)  # type: ignore[arg-type]
    # The first the worker holds counts as running; the rest as prefetched.
    prefetched = held[1:]
    assert all(control.cancel(prefetched, force=False))
    told: list[int] = []
    for wid, kind, header in sent:
        assert (wid, kind) == ("w1", Kind.CANCEL)
        msg = decode(encode(Kind.CANCEL, "ctl", 1, KEY, header), KEY)
        told += Cancel.parse(msg.header).tasks
    assert sorted(told) == sorted(prefetched) and len(sent) > 1
