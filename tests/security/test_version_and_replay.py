"""Protocol version skew on both sides; replays within and across controllers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import zmq

from tests.conftest import wait_for
from tests.security.helpers import ROOT, RawWorker
from zmqworkers import Cluster, __version__
from zmqworkers.protocol import PROTOCOL_VERSION, Kind

KEY = "replay-test-key-0123456789abcdef"

# A worker of another release: the same program speaking protocol 99.
OTHER_RELEASE_WORKER = textwrap.dedent(
    """
    import sys
    import zmqworkers.protocol.messages as messages
    messages.PROTOCOL_VERSION = 99
    from zmqworkers.cli import main
    sys.exit(main(["--log-level", "INFO", "worker", sys.argv[1]]))
    """
)


def test_version_mismatch_is_clear_on_both_sides(caplog) -> None:
    caplog.set_level(logging.WARNING)
    with Cluster(0, key=KEY) as cluster:
        env = {**os.environ, "PYTHONPATH": ROOT, "ZMQWORKERS_KEY": KEY}
        proc = subprocess.Popen(
            [sys.executable, "-c", OTHER_RELEASE_WORKER, cluster.address],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        expected = f"worker speaks protocol 99, controller {PROTOCOL_VERSION}"
        # The worker says it and exits non-zero, daemon or not.
        assert proc.returncode == 3, err
        assert expected in err
        assert "install the same zmqworkers release" in err
        # The controller logs it and counts the drop.
        assert any(expected in r.getMessage() for r in caplog.records)
        assert cluster.counters()["dropped"].get("version", 0) >= 1
        assert cluster.workers() == []


def test_captured_hello_replayed_to_a_restarted_controller_gets_no_worker_in() -> None:
    ctx = zmq.Context()
    try:
        with Cluster(0, key=KEY, heartbeat_interval=0.2) as first:
            raw = RawWorker(ctx, first.address, KEY.encode())
            raw.hello()
            beat = raw.send(Kind.HEARTBEAT, {"state": "idle"})
            wait_for(lambda: len(first.workers()) == 1, timeout=10)
            hello = raw.hello_frames
            raw.close()
        with Cluster(0, key=KEY, heartbeat_interval=0.2) as second:
            # The attacker replays the captured hello and heartbeat.
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(second.address)
            dealer.send_multipart(hello)
            assert dealer.poll(10_000), "the hello is answered (it is validly signed)"
            welcome = dealer.recv_multipart()
            assert len(welcome) >= 2
            # ...but the attacker cannot sign anything for the new session:
            head = second.address.rsplit(":", 1)[0]
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(f"{head}:{second._engine.endpoints['results'].rsplit(':', 1)[1]}")
            push.send_multipart(beat)
            wait_for(lambda: second.counters()["dropped"].get("signature", 0) >= 1, timeout=10)
            wait_for(lambda: second.counters().get("hellos_expired", 0) >= 1, timeout=15)
            assert second.workers() == []
            # A replay to the same controller is refused by sequence number.
            dealer.send_multipart(hello)
            wait_for(lambda: second.counters()["dropped"].get("replay", 0) >= 1, timeout=10)
            # And the controller still serves real workers.
            second._engine.start_workers(1)
            assert second.submit(abs, -4).result(timeout=30) == 4
            dealer.close()
            push.close()
    finally:
        ctx.term()


def test_replayed_results_within_a_session_are_refused() -> None:
    ctx = zmq.Context()
    try:
        with Cluster(0, key=KEY) as cluster:
            raw = RawWorker(ctx, cluster.address, KEY.encode())
            raw.hello()
            frames = raw.send(Kind.HEARTBEAT, {"state": "idle"})
            wait_for(lambda: len(cluster.workers()) == 1, timeout=10)
            raw.push.send_multipart(frames)  # type: ignore[union-attr]
            wait_for(lambda: cluster.counters()["dropped"].get("replay", 0) >= 1, timeout=10)
            raw.close()
    finally:
        ctx.term()


def test_a_hello_said_twice_gets_the_same_session() -> None:
    # A worker says hello again when the answer is slow: both answers must
    # name one session, or the worker would sign with a key nobody holds.
    from zmqworkers.protocol import decode, encode

    ctx = zmq.Context()
    try:
        with Cluster(0, key=KEY) as cluster:
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.ROUTING_ID, b"twice/0123")
            dealer.connect(cluster.address)
            header = {
                "id": "twice",
                "nonce": b"n" * 16,
                "pid": 1,
                "capacity": 1,
                "version": __version__,
            }
            sessions = []
            for seq in (10, 11):
                dealer.send_multipart(encode(Kind.HELLO, "twice", seq, KEY.encode(), header))
                assert dealer.poll(10_000)
                welcome = decode(dealer.recv_multipart(), KEY.encode())
                sessions.append(welcome.header["session"])
            assert sessions[0] == sessions[1]
            dealer.close()
    finally:
        ctx.term()
