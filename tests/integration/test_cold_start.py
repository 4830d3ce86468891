"""A worker's way to its first task, as a controller sees it on the wire.

A real worker process against sockets this test binds and drives by hand:
the test plays the controller's side of the handshake.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from typing import Any

import zmq

from tests.deploy.helpers import subprocess_env
from zmqworkers.protocol import Kind, decode, encode
from zmqworkers.protocol.messages import NONCE_SIZE
from zmqworkers.protocol.records import Hello, Welcome
from zmqworkers.protocol.session import session_key
from zmqworkers.security.keys import KEY_ENV, new_key

# Far longer than the test waits: a status on the results channel within
# the wait cannot be the serve loop's periodic one.
HEARTBEAT_INTERVAL = 60.0


def _recv(sock: zmq.Socket[Any], timeout: float) -> list[bytes]:
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError(f"nothing on the {sock.socket_type} socket within {timeout} s")
    return sock.recv_multipart()


def test_a_welcomed_worker_reports_on_its_results_channel_at_once() -> None:
    # The controller counts a session joined at its first message on the
    # result channel, and sends the first tasks then: the worker sends one
    # from its results socket as soon as that is dialled, without waiting
    # for its heartbeat thread or its first periodic status.
    key = new_key()
    ctx: zmq.Context[Any] = zmq.Context()
    router, pull, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PULL), ctx.socket(zmq.PUB)
    proc = None
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        results_port = pull.bind_to_random_port("tcp://127.0.0.1")
        control_port = pub.bind_to_random_port("tcp://127.0.0.1")
        env = dict(subprocess_env(), **{KEY_ENV: key.decode()})
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zmqworkers.worker",
                f"tcp://127.0.0.1:{port}",
                *("--parent-pid", str(os.getpid())),
                *("--heartbeat-interval", str(HEARTBEAT_INTERVAL)),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        route, *frames = _recv(router, 30)
        hello_msg = decode(frames, key)
        assert hello_msg.kind == Kind.HELLO
        hello = Hello.parse(hello_msg.header)
        session = secrets.token_bytes(NONCE_SIZE)
        welcome = Welcome(
            controller="ctl-test",
            nonce=hello.nonce,
            session=session,
            pub_nonce=secrets.token_bytes(NONCE_SIZE),
            pub_seq=0,
            results=results_port,
            control=control_port,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            heartbeat_misses=3,
            sign_buffers=True,
        )
        router.send_multipart([route, *encode(Kind.WELCOME, "ctl-test", 1, key, welcome.header())])
        skey = session_key(key, hello.nonce, session, sign_buffers=True)
        senders = []
        deadline = time.monotonic() + 10
        while not any(s.endswith("/r") for s in senders):
            left = deadline - time.monotonic()
            assert left > 0, f"only {senders} on the result channel within 10 s"
            msg = decode(_recv(pull, left), skey)
            assert msg.kind == Kind.HEARTBEAT
            assert msg.header["id"] == hello.id
            senders.append(msg.sender)
        assert senders[-1] == f"{hello.id}@{session.hex()}/r"
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        for sock in (router, pull, pub):
            sock.close(linger=0)
        ctx.term()


# A program that uses numpy, as most that start workers do, and has not
# parsed arguments.
LEAN_CONTROLLER = """
import json, sys
import numpy
from zmqworkers import Cluster

def loaded(_):
    return sorted(m for m in ("argparse", "numpy.random") if m in sys.modules)

with Cluster(2) as c:
    print(json.dumps({"controller": loaded(0), "worker": c.submit(loaded, 0).result()}))
"""


def test_a_forked_worker_neither_parses_arguments_nor_imports_numpy_random() -> None:
    # On the way to a forked worker's first result: argparse alone took
    # longer to import than the rest of the worker program, and reseeding
    # numpy's global generator imported numpy.random (6 ms) where the
    # server had not.
    proc = subprocess.run(
        [sys.executable, "-c", LEAN_CONTROLLER],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["controller"] == [], "the premise: neither is loaded in the controller"
    assert seen["worker"] == []
