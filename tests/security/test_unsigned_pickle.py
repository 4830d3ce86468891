"""An unsigned pickle that would create a file, sent to a controller and to a worker."""

from __future__ import annotations

import os
import pickle
import secrets
import subprocess
import sys
import time
from typing import Any

import msgpack
import zmq

from tests.conftest import wait_for
from tests.security.helpers import ROOT, RawWorker
from zmqworkers import Cluster
from zmqworkers.protocol import PROTOCOL_VERSION, Kind, decode, derive_key, encode, encode_frames
from zmqworkers.protocol.serialize import dumps

KEY = b"unsigned-pickle-test-key-0123456789"


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def evil_frames(kind: Kind, path: str, sender: str = "x") -> list[list[bytes]]:
    """The same pickle, with a zero signature, no signature, and another key's."""
    payload = pickle.dumps(Evil(path))
    envelope = msgpack.packb([PROTOCOL_VERSION, int(kind), sender, 10**12, {"spec": "s"}, 1])
    forged = encode_frames(kind, sender, 10**12, b"not-the-key-000000", {"spec": "s"}, [payload])
    return [[b"\0" * 32, envelope, payload], [envelope, payload], [bytes(f) for f in forged]]


def test_controller_never_unpickles_an_unsigned_pickle(tmp_path) -> None:
    marker = tmp_path / "created-by-pickle"
    ctx = zmq.Context()
    try:
        with Cluster(1, key=KEY) as cluster:
            raw = RawWorker(ctx, cluster.address, KEY)
            raw.hello()
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(cluster.address)
            n = 0
            for kind in (Kind.RESULTS, Kind.HELLO, Kind.BYE):
                # As from nobody, and as from a real session's sender name.
                for sender in ("x/r", raw.sender):
                    for frames in evil_frames(kind, str(marker), sender):
                        raw.push.send_multipart(frames)  # type: ignore[union-attr]
                        dealer.send_multipart(frames)
                        n += 2
            # Signed with the shared key but not the session's: refused too.
            wrong_session = encode(
                Kind.RESULTS, raw.sender, 10**12, KEY, None, [Evil(str(marker))], has_payload=True
            )
            raw.push.send_multipart(wrong_session)  # type: ignore[union-attr]
            n += 1
            wait_for(lambda: sum(cluster.counters()["dropped"].values()) >= n, timeout=15)
            assert cluster.submit(abs, -3).result(timeout=30) == 3
            dealer.close()
            raw.close()
    finally:
        ctx.term()
    assert not marker.exists()


def test_worker_never_unpickles_or_runs_what_its_controller_did_not_sign(tmp_path) -> None:
    marker = tmp_path / "created-by-pickle"
    ran = tmp_path / "ran-unsigned-task"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    pull = ctx.socket(zmq.PULL)
    pub = ctx.socket(zmq.PUB)
    for s in (router, pull, pub):
        s.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    results_port = pull.bind_to_random_port("tcp://127.0.0.1")
    control_port = pub.bind_to_random_port("tcp://127.0.0.1")
    env = {**os.environ, "PYTHONPATH": ROOT, "ZMQWORKERS_KEY": KEY.decode()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zmqworkers.worker", f"tcp://127.0.0.1:{port}"]
        + ["--parent-pid", str(os.getpid()), "--heartbeat-interval", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert router.poll(30_000), "the worker never said hello"
        route, *hello_frames = router.recv_multipart()
        hello = decode(hello_frames, KEY)
        assert hello.kind == Kind.HELLO
        # Before the welcome: unsigned and forged answers are ignored.
        for frames in evil_frames(Kind.WELCOME, str(marker), "ctl"):
            router.send_multipart([route, *frames])
        ours = secrets.token_bytes(16)
        pub_nonce = secrets.token_bytes(16)
        welcome = {
            "controller": "ctl",
            "nonce": hello.header["nonce"],
            "session": ours,
            "pub_nonce": pub_nonce,
            "pub_seq": 0,
            "results": results_port,
            "control": control_port,
            "heartbeat_interval": 5.0,
            "heartbeat_misses": 20,
        }
        router.send_multipart([route, *encode(Kind.WELCOME, "ctl", 1, KEY, welcome)])
        session = derive_key(KEY, b"session", hello.header["nonce"], ours)
        pub_key = derive_key(KEY, b"pub", pub_nonce)
        # The worker's first heartbeat proves it took the welcome.
        assert pull.poll(30_000)
        beat = decode(pull.recv_multipart(), session)
        assert beat.kind == Kind.HEARTBEAT

        # On the task channel: unsigned, forged, and a spec signed with the
        # shared key instead of the session key; each would write a file.
        writer = ("task", _touch, (str(ran),), {})
        for kind in (Kind.FUNC, Kind.TASKS):
            for frames in evil_frames(kind, str(marker), "ctl"):
                router.send_multipart([route, *frames])
        stale = encode_frames(
            Kind.FUNC, "ctl", 50, KEY, {"spec": "w"}, dumps(writer, by_value=True)
        )
        router.send_multipart([route, *stale])
        stale_tasks = encode(Kind.TASKS, "ctl", 51, KEY, {"spec": "w"}, [(7, 0)], has_payload=True)
        router.send_multipart([route, *stale_tasks])
        # On the broadcast channel: the same, and an unsigned stop.
        for frames in evil_frames(Kind.STOP, str(marker), "ctl/pub"):
            pub.send_multipart(frames)
        pub.send_multipart(encode(Kind.STOP, "ctl/pub", 5, KEY, {"worker": None}))

        # The real controller's signed work still runs: the worker is alive
        # and was listening while the rest arrived.
        spec = dumps(("task", abs, (), {}), by_value=True)
        router.send_multipart(
            [route, *encode_frames(Kind.FUNC, "ctl", 2, session, {"spec": "a"}, spec)]
        )
        tasks = encode(Kind.TASKS, "ctl", 3, session, {"spec": "a"}, [(1, -5)], has_payload=True)
        router.send_multipart([route, *tasks])
        got = None
        for _ in range(50):
            assert pull.poll(10_000), "no result for the signed task"
            msg = decode(pull.recv_multipart(), session)
            if msg.kind == Kind.RESULTS:
                got = msg.payload
                break
        assert got == [(1, True, 5)]
        # A broadcast reaches a subscriber only once its subscription has
        # reached the publisher (a worker joins faster than that), so the
        # signed stop is repeated, as a controller repeats its broadcasts.
        deadline = time.monotonic() + 30
        seq = 6
        while proc.poll() is None and time.monotonic() < deadline:
            pub.send_multipart(encode(Kind.STOP, "ctl/pub", seq, pub_key, {"worker": None}))
            seq += 1
            try:
                proc.wait(0.1)
            except subprocess.TimeoutExpired:
                pass
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "dropped a message (signature" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for s in (router, pull, pub):
            s.close(linger=0)
        ctx.term()
    assert not marker.exists()
    assert not ran.exists()


def _touch(task: Any, path: str) -> None:
    open(path, "w").close()
