"""Tools of the security tests: a hand-driven worker, a loopback sniffer, daemons."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq

from zmqworkers._version import __version__
from zmqworkers.protocol import Kind, decode, derive_key, encode
from zmqworkers.protocol.messages import NONCE_SIZE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RawWorker:
    """Speaks the protocol by hand, to send what a real worker never would.

    ``hello()`` does the handshake; afterwards ``send(kind, header, payload)``
    signs with the session key on the result channel.
    """

    def __init__(self, ctx: zmq.Context[Any], address: str, key: bytes, wid: str = "raw") -> None:
        self.ctx = ctx
        self.address = address
        self.key = key
        self.id = wid
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.ROUTING_ID, f"{wid}/{secrets.token_hex(8)}".encode())
        self.dealer.connect(address)
        self.push: zmq.Socket[Any] | None = None
        self.hello_frames: list[bytes] = []
        self.seq = 0
        self.session_key = b""
        self.sender = ""

    def hello(self, timeout: float = 10.0) -> Any:
        nonce = secrets.token_bytes(NONCE_SIZE)
        header = {
            "id": self.id,
            "host": "raw",
            "pid": 0,
            "capacity": 1,
            "nonce": nonce,
            "version": __version__,
        }
        self.hello_frames = [
            bytes(f) for f in encode(Kind.HELLO, self.id, time.time_ns(), self.key, header)
        ]
        self.dealer.send_multipart(self.hello_frames)
        if not self.dealer.poll(int(timeout * 1000)):
            raise AssertionError("no answer to the hello")
        welcome = decode(self.dealer.recv_multipart(), self.key)
        assert welcome.kind == Kind.WELCOME, welcome
        ours = welcome.header["session"]
        self.session_key = derive_key(self.key, b"session", nonce, ours)
        self.sender = f"{self.id}@{ours.hex()}/r"
        head = self.address.rsplit(":", 1)[0]
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(f"{head}:{welcome.header['results']}")
        return welcome

    def frames(self, kind: int, header: Any = None, payload: Any = None, **kw: Any) -> list[Any]:
        self.seq += 1
        return encode(
            kind,  # type: ignore[arg-type]
            self.sender,
            self.seq,
            self.session_key,
            header,
            payload,
            has_payload=payload is not None,
            **kw,
        )

    def send(self, kind: int, header: Any = None, payload: Any = None) -> list[bytes]:
        frames = [bytes(f) for f in self.frames(kind, header, payload)]
        assert self.push is not None
        self.push.send_multipart(frames)
        return frames

    def close(self) -> None:
        self.dealer.close(linger=0)
        if self.push is not None:
            self.push.close(linger=0)


def can_sniff() -> bool:
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    except (OSError, AttributeError):
        return False
    s.close()
    return True


@contextmanager
def sniff_loopback(max_seconds: float = 60.0) -> Iterator[bytearray]:
    """Collect every packet seen on ``lo`` while the block runs (bounded)."""
    captured = bytearray()
    stop = threading.Event()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
    sock.bind(("lo", 0))
    sock.settimeout(0.05)
    deadline = time.monotonic() + max_seconds

    def run() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                captured.extend(sock.recv(262144))
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=run, name="sniffer", daemon=True)
    thread.start()
    try:
        yield captured
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def keygen(directory: Any, *args: str) -> None:
    """``zmqworkers keygen --curve DIRECTORY ARGS``, which must succeed."""
    out = subprocess.run(
        [sys.executable, "-m", "zmqworkers", "keygen", "--curve", str(directory), *args],
        env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def start_daemon(
    address: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``zmqworkers worker ADDRESS ARGS`` as a daemon (no parent pid)."""
    full_env = {**os.environ, "PYTHONPATH": ROOT}
    full_env.pop("ZMQWORKERS_KEY", None)
    full_env.pop("ZMQWORKERS_CURVE", None)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "zmqworkers", "--log-level", "INFO", "worker", address, *args]
    return subprocess.Popen(
        cmd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def stop_process(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.communicate(timeout=10)
