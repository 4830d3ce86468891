"""A hostile client: floods a controller's ports with what it must refuse.

``python -m tests.security.hostile_client TASK_ADDRESS RESULTS_PORT N MAX_SIZE``
with the controller's key in ``$ZMQWORKERS_KEY`` (an insider gone bad: it
also joins as a worker and then replays, forges and sends nonsense, signed).
Prints ``SENT <reason> <count>`` lines and ``DONE``, then keeps its
connections open until a line arrives on stdin.
"""

from __future__ import annotations

import os
import random
import sys
from collections import Counter

import msgpack
import zmq

from tests.security.helpers import RawWorker
from zmqworkers.protocol import PROTOCOL_VERSION, Kind, encode


def main(argv: list[str]) -> int:
    address, results_port, n, max_size = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    key = os.environ["ZMQWORKERS_KEY"].encode()
    rng = random.Random(5)
    ctx = zmq.Context()
    raw = RawWorker(ctx, address, key, wid="hostile")
    raw.hello()
    beat = raw.send(Kind.HEARTBEAT, {"state": "idle"})
    head = address.rsplit(":", 1)[0]
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"{head}:{results_port}")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(address)
    valid = [bytes(f) for f in encode(Kind.HEARTBEAT, "x/r", 1, key, {"a": 1})]
    big = max_size // 3 + 1
    sent: Counter[str] = Counter()
    for i in range(n):
        what = i % 10
        if what == 0:
            frames = [rng.randbytes(rng.randrange(1, 100)) for _ in range(rng.randrange(1, 5))]
            reason = "garbage"
        elif what == 1:
            frames = [valid[0][: rng.randrange(32)], *valid[1:]]
            reason = "truncated"
        elif what == 2:
            frames = [valid[0], valid[1], b"x" * big, b"y" * big, b"z" * big]
            reason = "oversized"
        elif what == 3:
            frames = [b"\0" * 32, *valid[1:]]
            reason = "unsigned"
        elif what == 4:
            frames = beat
            reason = "replayed"
        elif what == 5:
            env = msgpack.packb([PROTOCOL_VERSION + 7, 1, "old", 1, None, 0])
            frames = [b"\0" * 32, env]
            reason = "version"
        elif what == 6:
            # Declares a 4 GiB binary in a 20-byte envelope; and 10**9 frames.
            env = msgpack.packb([PROTOCOL_VERSION, 5, "w", 1, None, 10**9])
            frames = [b"\0" * 32, rng.choice((b"\xc6\xff\xff\xff\xff" + b"a" * 15, env))]
            reason = "absurd-size"
        elif what == 7:
            frames = [bytes(f) for f in raw.frames(77, None)]  # signed, unknown kind
            reason = "unknown-kind"
        elif what == 8:
            payload = rng.choice(([(1, "yes", 3)], {"not": "a list"}, [("a", True, 1)], 7))
            frames = [bytes(f) for f in raw.frames(Kind.RESULTS, None, payload)]
            reason = "signed-nonsense"
        else:
            frames = [bytes(f) for f in encode(Kind.BYE, raw.sender, 1, b"k" * 32, {"x": 1})]
            reason = "wrong-key"
        sock = dealer if (i // 10) % 2 and what not in (4, 7, 8) else push
        sock.send_multipart(frames)
        sent[reason] += 1
    # Frames over the socket's own limit: libzmq drops the connection.
    huge = ctx.socket(zmq.PUSH)
    huge.setsockopt(zmq.LINGER, 0)
    huge.connect(f"{head}:{results_port}")
    huge.send_multipart([b"\0" * 32, b"h" * (max_size + 1)])
    for reason, count in sorted(sent.items()):
        print("SENT", reason, count, flush=True)
    # Connections stay open until the controller has read everything: a
    # message still in flight when its connection closes may be lost, and
    # the test counts every one.
    print("DONE", flush=True)
    sys.stdin.readline()
    # Everything queued is delivered before leaving (bounded).
    for s in (push, dealer, raw.push):
        s.close(linger=20_000)  # type: ignore[union-attr]
    huge.close(linger=0)
    raw.dealer.close(linger=0)
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
