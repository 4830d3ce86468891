"""Hellos in another protocol version: answered unsigned, logged rate-limited."""

from __future__ import annotations

import logging

import msgpack
import pytest
import zmq

from tests.conftest import wait_for
from zmqworkers import Cluster
from zmqworkers.errors import DecodeError
from zmqworkers.protocol import PROTOCOL_VERSION, Kind, decode
from zmqworkers.protocol.messages import peek_version

KEY = "foreign-version-key-0123456789ab"
N = 200


def _foreign_hello(i: int) -> list[bytes]:
    # Protocol 2 and no valid signature: anyone can send this.
    envelope = msgpack.packb([2, int(Kind.HELLO), f"stranger-{i}", i, {}, 0])
    return [bytes(32), envelope]


def test_foreign_version_flood_is_logged_rate_limited_and_never_answered_signed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="zmqworkers")
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        with Cluster(0, key=KEY) as cluster:
            dealer.connect(cluster.address)
            for i in range(N):
                dealer.send_multipart(_foreign_hello(i))
            wait_for(lambda: cluster.counters()["dropped"].get("version", 0) == N, timeout=30)
            replies = []
            while dealer.poll(1000):
                replies.append(dealer.recv_multipart())
        lines = [r for r in caplog.records if "speaks protocol 2" in r.getMessage()]
        # At the 1st, 2nd, 4th, ..., 128th drop: 8 lines for 200 messages.
        assert len(lines) == 8, [r.getMessage() for r in lines]
        assert all(r.levelno <= logging.WARNING for r in lines)
        # Still answered, so a worker of another release learns why...
        assert replies and all(peek_version(r) == PROTOCOL_VERSION for r in replies)
        # ...but nothing signed with the shared key goes to an unknown sender.
        for reply in replies:
            with pytest.raises(DecodeError) as info:
                decode(reply, KEY.encode())
            assert info.value.reason == "signature"
    finally:
        dealer.close(linger=0)
        ctx.term()
