"""The worker's side of the session rules: its hello, and what a welcome sets up.

The records are those of :mod:`zmqworkers.protocol.records`; the keys and
sender names follow :mod:`zmqworkers.protocol.session`, as the controller's do.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import zmq

from zmqworkers._version import __version__
from zmqworkers.errors import DecodeError, ProtocolVersionError
from zmqworkers.protocol import PROTOCOL_VERSION, Kind, encode
from zmqworkers.protocol.messages import NONCE_SIZE, SessionKey, session_limit
from zmqworkers.protocol.records import Hello, Refused, Welcome
from zmqworkers.protocol.segments import available as segments_available
from zmqworkers.protocol.session import (
    HEARTBEAT_CHANNEL,
    RESULTS_CHANNEL,
    broadcast_key,
    sender_name,
    session_key,
)
from zmqworkers.security.connection import is_local_link
from zmqworkers.security.curve import ClientKeys
from zmqworkers.worker.options import WorkerOptions
from zmqworkers.worker.silence import SilenceReport

log = logging.getLogger(__name__)

_AUTH_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


# The two records below are NamedTuples, not dataclasses: a fork server
# imports this module before its first fork, on the way to a cold start's
# first result, and with two dataclasses the import took 0.93 ms, 0.39 now.


class Joined(NamedTuple):
    """A session the controller opened for this worker."""

    welcome: Welcome
    key: SessionKey  # signs everything after the hello, both ways
    pub_key: bytes  # checks the controller's broadcasts
    tag: str

    def sender(self, worker_id: str, channel: str) -> str:
        return sender_name(worker_id, self.tag, channel)


def make_hello(
    worker_id: str,
    host: str,
    options: WorkerOptions,
    version: str,
    *,
    link_protected: bool,
    dialled: str,
) -> Hello:
    """This process's hello (``version``: its release), with a fresh nonce."""
    return Hello(
        id=worker_id,
        nonce=secrets.token_bytes(NONCE_SIZE),
        host=host,
        pid=os.getpid(),
        capacity=1 + max(0, options.prefetch),
        protocol=PROTOCOL_VERSION,
        version=version,
        # Nothing on this link can change bytes in transit (loopback, ipc,
        # CURVE): array buffers may skip hashing if the controller says the
        # same of its side.
        link_protected=link_protected,
        dialled=dialled,
        max_message_size=options.max_message_size,
        # Large buffers through shared memory, on an ipc link (this host).
        shm=dialled.startswith("ipc://") and link_protected and segments_available(),
    )


def answer_to(msg: Any, hello: Hello, key: bytes) -> Joined | Refused | None:
    """What an answer to ``hello`` means; None if it answers another hello (or is bad)."""
    hdr = msg.header
    if not isinstance(hdr, dict) or hdr.get("nonce") != hello.nonce:
        return None
    if msg.kind == Kind.REFUSED:
        return Refused.parse(hdr)
    try:
        welcome = Welcome.parse(hdr)
    except DecodeError:
        return None
    # Buffers go unhashed only if this side asked for it in its hello.
    unhashed = not welcome.sign_buffers and hello.link_protected
    return Joined(
        welcome,
        session_key(
            key,
            hello.nonce,
            welcome.session,
            sign_buffers=not unhashed,
            # Segments only if this side offered them.
            segments=welcome.shm_prefix if hello.shm else "",
        ),
        broadcast_key(key, welcome.pub_nonce),
        welcome.session.hex(),
    )


def side_endpoint(address: str, welcome: Welcome, name: str) -> str:
    """Where the welcome says the ``results`` or ``control`` channel is.

    A worker that dialled the controller's ipc address for local workers
    takes that channel's ipc address too; others take the port (or address)
    named for everyone.
    """
    if address.startswith("ipc://"):
        endpoint = welcome.ipc.get(name)
        if isinstance(endpoint, str) and endpoint.startswith("ipc://"):
            return endpoint
    port_or_endpoint = welcome.results if name == "results" else welcome.control
    if isinstance(port_or_endpoint, str):
        return port_or_endpoint
    head, _, _ = address.rpartition(":")
    return f"{head}:{int(port_or_endpoint)}"


class Dialling(NamedTuple):
    """What saying hello needs of the worker."""

    worker_id: str
    address: str
    key: bytes
    curve_name: str | None  # this worker's CURVE certificate; None without CURVE
    give_up_at: float | None  # monotonic time: the death timeout, if any
    silence_after: float  # seconds without an answer before the first warning
    should_exit: Callable[[], bool]
    next_seq: Callable[[], int]
    decode: Callable[[list[Any]], Any]  # a checked message, or None
    dropped: Counter[str]


def greet(tasks: zmq.Socket[Any], hello: Hello, d: Dialling) -> Joined | Refused | None:
    """Say hello until the controller answers; None if the worker should stop trying."""
    poller = zmq.Poller()
    poller.register(tasks, zmq.POLLIN)
    # Under CURVE a refused key shows only as failed handshakes: watch
    # for them, so the operator learns why this worker never joins.
    monitor = tasks.get_monitor_socket(_AUTH_FAILURES) if d.curve_name is not None else None
    if monitor is not None:
        poller.register(monitor, zmq.POLLIN)
    try:
        return _say_hello(tasks, hello, d, poller, monitor)
    finally:
        if monitor is not None:
            tasks.disable_monitor()
            monitor.close(linger=0)


def _say_hello(
    tasks: zmq.Socket[Any],
    hello: Hello,
    d: Dialling,
    poller: zmq.Poller,
    monitor: zmq.Socket[Any] | None,
) -> Joined | Refused | None:
    sent = False
    deadline = time.monotonic() + 2.0
    refusals = 0
    silence = SilenceReport(d.address, time.monotonic(), d.silence_after)
    while not d.should_exit():
        why = silence.due(time.monotonic())
        if why is not None:
            log.warning("worker %s: %s", d.worker_id, why)
        # No controller at all (nobody listening) must end a daemon
        # after its death timeout too, not only between controllers.
        if d.give_up_at is not None and time.monotonic() > d.give_up_at:
            return None
        if not sent:
            try:
                frames = encode(Kind.HELLO, d.worker_id, d.next_seq(), d.key, hello.header())
                tasks.send_multipart(frames, flags=zmq.NOBLOCK)
                sent = silence.connected = True
                deadline = time.monotonic() + 2.0
            except zmq.Again:
                pass
        # Until the hello is out, wake as soon as the connection is up
        # (POLLOUT), not after a fixed pause: this is on the path to the
        # first result.
        poller.modify(tasks, zmq.POLLIN if sent else zmq.POLLIN | zmq.POLLOUT)
        events = dict(poller.poll(100))
        if monitor is not None and events.get(monitor):
            monitor.recv_multipart()  # a failed CURVE handshake: what it says is known
            refusals += 1
            if refusals & (refusals - 1) == 0:
                log.error(
                    "worker %s: the controller at %s refuses this worker's CURVE key "
                    "(%d handshake(s)); copy %s.key into its authorized_workers folder",
                    d.worker_id,
                    d.address,
                    refusals,
                    d.curve_name,
                )
        if events.get(tasks, 0) & zmq.POLLIN:
            msg = d.decode(tasks.recv_multipart(copy=False))
            if msg is None or msg.kind not in (Kind.WELCOME, Kind.REFUSED):
                continue
            answer = answer_to(msg, hello, d.key)
            if answer is None:
                d.dropped["stale"] += 1  # an answer to another hello
                continue
            return answer
        if sent and time.monotonic() > deadline:
            # The hello went to a connection that has since gone: say it again.
            sent = False
    return None


def version_refusal(exc: ProtocolVersionError) -> str:
    """Why a controller's answer (a refusal, most likely) cannot be read: both versions."""
    return (
        f"worker speaks protocol {exc.ours}, controller {exc.theirs}: "
        "install the same zmqworkers release on both sides (this "
        f"worker runs zmqworkers {__version__})"
    )


def end_segments(key: bytes | SessionKey) -> None:
    """Remove this worker's shared-memory segments of a session that is over."""
    if isinstance(key, SessionKey) and key.segments is not None:
        key.segments.close()


class Joining(Protocol):
    """The worker state saying hello reads, and what a welcome sets."""

    id: str
    host: str
    address: str
    key: bytes
    options: WorkerOptions
    dropped: Counter[str]
    _curve: ClientKeys | None
    _waiting_since: float
    _next_seq: Callable[[], int]
    _skey: bytes | SessionKey
    _pub_key: bytes
    _limit: int
    _result_sender: str
    _hb_sender: str

    def _should_exit(self) -> bool: ...


def join(
    w: Joining, tasks: zmq.Socket[Any], decode: Callable[[list[Any]], Any]
) -> Joined | Refused | None:
    """Say hello on ``tasks``; once welcomed, take the session's keys, limit and senders."""
    hello = make_hello(
        w.id,
        w.host,
        w.options,
        __version__,
        link_protected=w._curve is not None or is_local_link(w.address),
        dialled=w.address,
    )
    dt = w.options.death_timeout
    dialling = Dialling(
        worker_id=w.id,
        address=w.address,
        key=w.key,
        curve_name=w.options.curve_name if w._curve is not None else None,
        give_up_at=None if dt is None else w._waiting_since + dt,
        silence_after=w.options.heartbeat_interval * w.options.heartbeat_misses,
        should_exit=w._should_exit,
        next_seq=w._next_seq,
        decode=decode,
        dropped=w.dropped,
    )
    answer = greet(tasks, hello, dialling)
    if isinstance(answer, Joined):
        end_segments(w._skey)  # the last session's, if any
        w._skey, w._pub_key = answer.key, answer.pub_key
        w._limit = session_limit(w.options.max_message_size, answer.welcome.max_message_size)
        w._result_sender = answer.sender(w.id, RESULTS_CHANNEL)
        w._hb_sender = answer.sender(w.id, HEARTBEAT_CHANNEL)
    return answer
