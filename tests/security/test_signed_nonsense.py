"""Validly signed messages with nonsense inside: dropped and counted, never fatal."""

from __future__ import annotations

import secrets
from contextlib import ExitStack
from typing import Any

import pytest
import zmq

from tests.conftest import wait_for
from tests.security.helpers import RawWorker
from zmqworkers import Cluster
from zmqworkers.protocol import Kind, encode

KEY = b"signed-nonsense-key-0123456789ab"

HELLO_HEADERS: list[Any] = [
    None,
    [1, 2],
    {"id": 5, "nonce": b"n" * 16},
    {"id": "", "nonce": b"n" * 16},
    {"id": "a@b", "nonce": b"n" * 16},
    {"id": "x" * 1000, "nonce": b"n" * 16},
    {"id": "x", "nonce": "not bytes"},
    {"id": "x", "nonce": b"short"},
    {"id": "x", "nonce": b"n" * 16, "pid": "12"},
    {"id": "x", "nonce": b"n" * 16, "capacity": True},
    {"id": "x", "nonce": b"n" * 16, "host": ["h"]},
]

RESULT_CHANNEL: list[tuple[int, Any, Any]] = [
    (Kind.RESULTS, None, {"not": "a list"}),
    (Kind.RESULTS, None, [(1, True)]),
    (Kind.RESULTS, None, [("one", True, 1)]),
    (Kind.RESULTS, None, [(1, "yes", 1)]),
    (Kind.RESULTS, None, [(True, True, 1)]),
    (Kind.RESULTS, None, 12),
    (Kind.BYE, {"returned": "abc"}, None),
    (Kind.BYE, {"returned": [None, 1.5]}, None),
    (Kind.HEARTBEAT, [1, 2], None),
    (Kind.HEARTBEAT, {"state": ["x"], "task": "seven"}, None),
    (Kind.MESSAGE, [None], None),
    (Kind.TASKS, {"spec": 1}, None),
    (Kind.FUNC, None, None),
    (Kind.WELCOME, None, None),
    (Kind.HELLO, None, None),
    (Kind.STOP, None, None),
    (Kind.REFUSED, None, None),
    (99, None, None),
]


@pytest.mark.parametrize("channel", ["task", "result"])
def test_signed_nonsense_is_dropped_and_the_job_goes_on(channel: str) -> None:
    ctx = zmq.Context()
    try:
        with Cluster(1, key=KEY) as cluster, ExitStack() as stack:
            raw = RawWorker(ctx, cluster.address, KEY, wid=f"odd{secrets.token_hex(2)}")
            stack.callback(raw.close)
            raw.hello()
            raw.send(Kind.HEARTBEAT, {"state": "idle"})
            wait_for(lambda: len(cluster.workers()) == 2, timeout=10)
            if channel == "task":
                sent = 0
                for i, header in enumerate(HELLO_HEADERS):
                    frames = encode(Kind.HELLO, f"h{i}", 1, KEY, header)
                    raw.dealer.send_multipart(frames)
                    sent += 1
                for kind in (Kind.RESULTS, Kind.BYE, Kind.TASKS):
                    raw.dealer.send_multipart(encode(kind, f"k{int(kind)}", 1, KEY, None))
                    sent += 1
            else:
                for kind, header, payload in RESULT_CHANNEL:
                    raw.send(kind, header, payload)
                # MESSAGE and the heartbeat with odd fields are taken, harmlessly.
                sent = len(RESULT_CHANNEL) - 2
            wait_for(lambda: sum(cluster.counters()["dropped"].values()) >= sent, timeout=10)
            dropped = cluster.counters()["dropped"]
            # Each was recognised for what it is: no handler stumbled on one.
            assert "invalid" not in dropped, dropped
            assert set(dropped) <= {"malformed", "unexpected", "kind"}, dropped
            assert sum(dropped.values()) == sent, dropped
            answers = [cluster.submit(abs, -i).result(timeout=30) for i in range(5)]
            assert answers == [0, 1, 2, 3, 4]
            assert cluster._engine.running
    finally:
        ctx.term()
