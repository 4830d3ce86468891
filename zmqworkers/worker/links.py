"""The worker's links: dial settings, the heartbeat thread's loop, the last goodbye, its parent."""

from __future__ import annotations

import logging
import os
import secrets
import select
import threading
from collections.abc import Callable
from typing import Any, cast

import zmq

from zmqworkers.protocol import Kind, encode
from zmqworkers.protocol.liveness import ping_times
from zmqworkers.protocol.messages import Key
from zmqworkers.protocol.segments import release
from zmqworkers.security import curve
from zmqworkers.worker.group import kill_rest_of_group, pid_exists
from zmqworkers.worker.options import WorkerOptions
from zmqworkers.worker.usage import Usage

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_MS = 1000
# While no controller answers, reconnect attempts back off from ZeroMQ's
# 100 ms up to this, instead of knocking every 100 ms for ever. A daemon
# between two runs of a GUI waits on average half of it before it joins the
# next one: at 1 s, the join was most of a short pydidas run on daemons.
RECONNECT_IVL_MAX_MS = 250
# The task channel's first retry on an ipc address: a local worker may dial
# before its controller has bound (the controller asks for it first, see
# LocalWorkers.start_early), and ZeroMQ's 100 ms would then be most of its
# wait for the first result. Doubled at each retry, up to the maximum.
# Daemons keep ZeroMQ's: a TCP connection refused after its handshake
# (a CURVE key the controller does not know) is retried from the start.
IPC_TASKS_RECONNECT_IVL_MS = 2


def redial_quickly(sock: zmq.Socket[Any]) -> None:
    """Dial settings for every worker socket.

    A connect whose SYNs went into a cut link would otherwise wait for the
    kernel's SYN backoff (seconds, growing); it is retried afresh instead.
    """
    sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)


def dial_tasks(
    sock: zmq.Socket[Any], address: str, worker_id: str, opts: WorkerOptions
) -> zmq.Socket[Any]:
    """The task connection (a DEALER) of one session, dialled to ``address``."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue a hello for nobody
    # A fresh routing id per session: nobody can guess it to take over
    # this worker's place at the controller.
    sock.setsockopt(zmq.ROUTING_ID, f"{worker_id}/{secrets.token_hex(8)}".encode())
    sock.setsockopt(zmq.MAXMSGSIZE, opts.max_message_size)
    redial_quickly(sock)
    if address.startswith("ipc://"):
        sock.setsockopt(zmq.RECONNECT_IVL, IPC_TASKS_RECONNECT_IVL_MS)
    answer_pings(sock, opts.heartbeat_interval, opts.heartbeat_misses)
    sock.connect(address)
    return sock


def local_side_endpoint(address: str, name: str) -> str | None:
    """The ``results`` or ``control`` endpoint beside a controller's ipc folder for
    local workers (``ipc://FOLDER/tasks``), before its welcome names it; else None."""
    head, sep, tail = address.rpartition("/")
    if address.startswith("ipc://") and sep and tail == "tasks":
        return f"{head}/{name}"
    return None


def dial_results(sock: zmq.Socket[Any], endpoint: str) -> zmq.Socket[Any]:
    """The result connection (a PUSH): results, statuses and goodbyes go out on it."""
    sock.setsockopt(zmq.LINGER, 2000)
    redial_quickly(sock)
    sock.connect(endpoint)
    return sock


def dial_control(sock: zmq.Socket[Any], endpoint: str) -> zmq.Socket[Any]:
    """The main thread's subscription (a SUB) to the controller's broadcasts."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
    redial_quickly(sock)
    sock.connect(endpoint)
    return sock


def answer_pings(sock: zmq.Socket[Any], interval: float, misses: int) -> None:
    """ZeroMQ's own pings on the task connection, answered without the GIL.

    The controller pings too, and closes the connection of a worker that
    answers nothing; these close it from this side when the controller
    answers nothing (a stopped process, a hung host, a cut link).
    """
    ping_ivl, ping_timeout = ping_times(interval, misses)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ping_ivl)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ping_timeout)


def connected(tasks: zmq.Socket[Any]) -> bool:
    """Whether the task socket (``IMMEDIATE``) has a connection up to the controller."""
    return bool(tasks.poll(0, zmq.POLLOUT))


def beat(
    sock: zmq.Socket[Any],
    endpoint: str,
    stop: threading.Event,
    interval: float,
    key: Key,
    sender: str,
    status: Callable[[], tuple[int, dict[str, Any]]],
) -> None:
    """Send ``status()`` as a heartbeat every ``interval`` until ``stop`` is set.

    Each carries the process's RSS and CPU use too (:mod:`.usage`).
    """
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 4)
    redial_quickly(sock)
    sock.connect(endpoint)
    usage = Usage()
    # The session's first status went out with its first message on the
    # results channel: the next is due an interval later. (Sent at once, it
    # took the interpreter from the thread that is about to run the
    # session's first task.)
    while not stop.wait(interval):
        seq, header = status()
        header = {**header, **usage.sample()}
        frames = encode(Kind.HEARTBEAT, sender, seq, key, header)
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            release(frames)  # not sent: the names it said freed go in a later one


def from_another_controller(header: Any, ours: str | None) -> bool:
    """Whether a heartbeat names a controller other than this session's."""
    theirs = header.get("controller") if isinstance(header, dict) else None
    return theirs is not None and ours is not None and theirs != ours


def send_goodbye(
    endpoint: str,
    curve_keys: Any,
    sender: str,
    key: Key,
    header: dict[str, Any],
    before: list[list[Any]] = [],  # noqa: B006 - read only
) -> None:
    """Send a BYE from a thread that owns no socket (the main one is stuck in a call).

    ``before``: messages signed by ``sender`` with the numbers 1, 2, ...
    (results held back), sent first; the BYE takes the next number.
    A context of its own: its term() waits until the goodbye is out,
    without touching the sockets other threads use.
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    if curve_keys is not None:
        curve.setup_client(sock, curve_keys)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(endpoint)
    for frames in before:
        sock.send_multipart(frames, copy=False)
    sock.send_multipart(encode(Kind.BYE, sender, len(before) + 1, key, header))
    sock.close()
    ctx.term()  # waits (up to the linger) until the goodbye is out


def pid_alive(pid: int) -> bool:
    """Whether the process ``pid`` (a local worker's controller) still runs."""
    # A zombie parent (exited, not yet reaped) still exists; being
    # re-parented is the surer sign.
    return pid_exists(pid) and os.getppid() == pid


def exit_if_orphaned(worker_id: str, parent_pid: int | None) -> None:
    """End a local worker whose controller died, even in the middle of a call.

    The main thread checks only between tasks; a call that never returns
    would otherwise keep running with no one to take its result.
    """
    if parent_gone(parent_pid):
        log.warning("worker %s: controller process %d is gone, exiting", worker_id, parent_pid)
        kill_rest_of_group()  # no parent is left to end what its tasks started
        os._exit(1)


def parent_gone(parent_pid: int | None) -> bool:
    """Whether a local worker's controller process has ended (False for a daemon)."""
    return parent_pid is not None and not pid_alive(parent_pid)


def news(*socks: zmq.Socket[Any]) -> Callable[[int], list[tuple[int, int]]]:
    """A poll of the sockets' notification descriptors: non-empty once one has news.

    A descriptor turns readable when its socket is told of a message on a
    pipe it found empty. So after a read that drains the sockets, nothing
    that comes goes unsignalled, at the cost of one poll(2), a quarter of a
    ``zmq_poll``'s. Nothing else may ask these sockets for their events in
    between: that takes the signal and leaves the message unannounced.
    """
    fds = select.poll()
    for sock in socks:
        fds.register(cast(int, sock.get(zmq.FD)), select.POLLIN)
    return fds.poll
