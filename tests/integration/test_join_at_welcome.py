"""Who joins at the welcome: the controller's own local workers on its ipc folder.

Such a worker's function and first tasks follow its welcome at once. Any
other hello, validly signed or not, joins only at its first message signed
with the session key, so a hello alone never gets a task.
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path
from typing import Any

import zmq

from tests.conftest import wait_for
from zmqworkers import Cluster, __version__
from zmqworkers.protocol import Kind, decode, encode
from zmqworkers.protocol.messages import NONCE_SIZE
from zmqworkers.protocol.records import Hello, Welcome
from zmqworkers.protocol.session import session_key
from zmqworkers.security.keys import new_key


def _hold(go: str) -> str:
    """Keep the cluster's one worker busy until ``go`` exists (at most 60 s)."""
    deadline = time.monotonic() + 60
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "held"


class _Hello:
    """A hello sent by hand on ``address``, claiming process ``pid`` on this host."""

    def __init__(self, ctx: zmq.Context[Any], address: str, key: bytes, pid: int) -> None:
        self.key = key
        self.nonce = secrets.token_bytes(NONCE_SIZE)
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(address)
        hello = Hello(
            id=f"by-hand-{pid}",
            nonce=self.nonce,
            host=socket.gethostname(),
            pid=pid,
            capacity=1,
            version=__version__,
            dialled=address,
        )
        self.dealer.send_multipart(encode(Kind.HELLO, hello.id, 1, key, hello.header()))
        assert self.dealer.poll(10_000), "no answer to the hello"
        msg = decode(self.dealer.recv_multipart(), key)
        assert msg.kind == Kind.WELCOME, msg
        welcome = Welcome.parse(msg.header)
        self.session = session_key(key, self.nonce, welcome.session, sign_buffers=True)

    def kinds(self, timeout: float) -> list[Kind]:
        """The kinds of what arrives (signed with the session key) within ``timeout`` s,
        but the controller's probes (heartbeats: it hears nothing from this side)."""
        out = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.dealer.poll(int(left * 1000)):
                kind = decode(self.dealer.recv_multipart(), self.session).kind
                if kind != Kind.HEARTBEAT:
                    out.append(kind)
        return out


def test_a_local_workers_first_tasks_follow_its_welcome(tmp_path: Path) -> None:
    key = new_key()
    go = tmp_path / "go"
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        with Cluster(1, key=key, prefetch=0, heartbeat_interval=0.2, max_attempts=1) as c:
            c.wait_for_workers(1, timeout=30)
            (real,) = c.workers()
            busy = c.submit(_hold, str(go))  # its one place taken
            wait_for(lambda: c.counters()["running"] == 1, timeout=30)
            # A hello on the ipc folder, as a local worker of this controller
            # (the process id of its worker) says it, and nothing else: no
            # message signed with the session key.
            local = _Hello(ctx, c._engine.local_address, key, real["pid"])
            later = c.submit(abs, -3)
            kinds = []
            deadline = time.monotonic() + 10
            while Kind.TASKS not in kinds and time.monotonic() < deadline:
                kinds += local.kinds(0.2)
            assert kinds[:2] == [Kind.FUNC, Kind.TASKS], kinds
            # Gone before a word came back: the task runs elsewhere, once,
            # and its one attempt (max_attempts=1) is not spent on that.
            local.dealer.close(linger=0)
            go.touch()
            assert busy.result(timeout=30) == "held"
            assert later.result(timeout=30) == 3
            assert c.counters()["delivered"] == 2
    finally:
        go.touch()
        ctx.destroy(linger=0)


def test_other_hellos_on_the_ipc_folder_join_only_when_they_sign(tmp_path: Path) -> None:
    key = new_key()
    go = tmp_path / "go"
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        with Cluster(1, key=key, prefetch=0, heartbeat_interval=0.2) as c:
            c.wait_for_workers(1, timeout=30)
            busy = c.submit(_hold, str(go))
            wait_for(lambda: c.counters()["running"] == 1, timeout=30)
            # Signed with the key, on the folder, but no local worker's pid.
            other = _Hello(ctx, c._engine.local_address, key, pid=1)
            later = c.submit(abs, -3)
            # Its session waits for a signed message until it expires, and
            # gets nothing meanwhile.
            kinds: list[Kind] = []
            deadline = time.monotonic() + 30
            while not c.counters().get("hellos_expired") and time.monotonic() < deadline:
                kinds += other.kinds(0.1)
            assert c.counters().get("hellos_expired") == 1
            assert kinds == []
            assert c.counters()["queued"] == 1
            go.touch()
            assert busy.result(timeout=30) == "held"
            assert later.result(timeout=30) == 3
            other.dealer.close(linger=0)
    finally:
        go.touch()
        ctx.destroy(linger=0)
