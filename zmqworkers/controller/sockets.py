"""The controller's sockets, declared and bound in one place.

::

    ROUTER  tasks    HELLO/WELCOME, FUNC, TASKS, STOP to one worker
    PULL    results  RESULTS, BYE, HEARTBEAT, MESSAGE from every worker
    PUB     control  HEARTBEAT and STOP to all
    PAIR    monitor  the ROUTER's disconnections

Only the engine thread touches them (the ipc folder of local workers is
made before, by the thread that makes the engine, with no socket yet:
:meth:`ControllerSockets.plan_local_ipc`). Local workers may dial the same three
sockets over ipc in a private folder (see :meth:`ControllerSockets.bind_local_ipc`).
Every message the controller sends leaves through :meth:`ControllerSockets.send`,
:meth:`~ControllerSockets.send_unsolicited` or :meth:`~ControllerSockets.publish`,
which number and sign it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import struct
import tempfile
from typing import Any
from urllib.parse import urlsplit

import zmq

from zmqworkers.controller.options import EngineOptions
from zmqworkers.controller.segments import SegmentSpace
from zmqworkers.controller.sessions import Link, Session
from zmqworkers.errors import MessageTooLarge
from zmqworkers.heap import keep_large_buffers
from zmqworkers.protocol import Kind, encode_frames
from zmqworkers.protocol.liveness import ping_times
from zmqworkers.protocol.messages import NONCE_SIZE, Key, encode_unsigned, frames_size
from zmqworkers.protocol.records import Welcome
from zmqworkers.protocol.segments import release
from zmqworkers.protocol.session import broadcast_key
from zmqworkers.security import curve
from zmqworkers.security.cleanup import Leftovers
from zmqworkers.security.connection import is_local_link

log = logging.getLogger(__name__)

# Messages queued per connection on the controller's receiving sockets: with
# max_message_size, bounds the memory one connection can make it hold.
RECEIVE_HWM = 1000
# The longest path of a Unix socket (Linux's sun_path, less its final NUL).
IPC_PATH_MAX = 107


class ControllerSockets:
    """The context, the three sockets, the monitor and the CURVE authenticator."""

    def __init__(self, options: EngineOptions, controller_id: str) -> None:
        self.options = options
        self.controller_id = controller_id
        self._seq = 0
        self.pub_seq = 0
        self.pub_nonce = secrets.token_bytes(NONCE_SIZE)
        self._pub_key = broadcast_key(options.key, self.pub_nonce)
        self.ctx: zmq.Context[Any] | None = None
        self.router: Any = None
        self.pull: Any = None
        self.pub: Any = None
        self.monitor: Any = None
        self._auth: Any = None
        self.address = ""
        # The ipc folder of local workers (see bind_local_ipc), if any.
        self.local_address = options.bind
        self.local_eps: dict[str, str] = {}
        # Named in every welcome: a port on the task address's host, or an endpoint.
        self.results_ep: int | str = 0
        self.control_ep: int | str = 0
        self.endpoints: dict[str, str] = {}
        # The ipc folder and the connection file, removed at close, exit or SIGTERM.
        self.leftovers = Leftovers()
        # Shared-memory segments for local workers on ipc, if any.
        self.segments: SegmentSpace | None = None
        # The ipc folder made before binding (plan_local_ipc), if any.
        self._ipc_folder: str | None = None

    def bind(self) -> None:
        # Large frames arrive into malloc'd blocks: keep their pages (heap.py).
        keep_large_buffers()
        ctx = self.ctx = zmq.Context()
        opts = self.options
        self.router = ctx.socket(zmq.ROUTER)
        self.pull = ctx.socket(zmq.PULL)
        self.pub = ctx.socket(zmq.PUB)
        if opts.curve_dir:
            keys = curve.server_keys(opts.curve_dir)
            # The authenticator must listen before the first connection comes.
            self._auth = curve.start_authenticator(ctx, keys)
            for s in (self.router, self.pull, self.pub):
                curve.setup_server(s, keys)
        for s in (self.router, self.pull, self.pub):
            s.setsockopt(zmq.LINGER, 0)
        for s in (self.router, self.pull):
            s.setsockopt(zmq.MAXMSGSIZE, opts.max_message_size)
            s.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        # A send to a worker that has gone raises instead of vanishing.
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # ZeroMQ's own pings, answered without the GIL: a worker whose
        # heartbeat thread is held up is still seen to be there, and the
        # connection of one that answers nothing is closed (see liveness).
        # The pings tell the worker to close its side too when they stop
        # for as long (TTL), so it notices a stopped controller by this
        # controller's heartbeat limit, not its own.
        ping_ivl, ping_timeout = ping_times(opts.heartbeat_interval, opts.heartbeat_misses)
        self.router.setsockopt(zmq.HEARTBEAT_IVL, ping_ivl)
        self.router.setsockopt(zmq.HEARTBEAT_TIMEOUT, ping_timeout)
        self.router.setsockopt(zmq.HEARTBEAT_TTL, min(ping_timeout, 6_553_500))
        # No ROUTER_HANDOVER: each worker session connects with a fresh random
        # routing id, so a second connection claiming a live id is an
        # impostor trying to take over that worker's tasks, and is ignored.
        # A closed connection (a worker process died, or its host reset the
        # link) shows here at once, long before heartbeats would miss.
        self.monitor = self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        parts = urlsplit(opts.bind)
        if parts.scheme == "ipc":
            base = opts.bind
            self.router.bind(base)
            self.pull.bind(base + ".results")
            self.pub.bind(base + ".control")
            self.results_ep = base + ".results"
            self.control_ep = base + ".control"
        else:
            host = parts.hostname or "127.0.0.1"
            hostpart = f"[{host}]" if ":" in host else host
            port = parts.port or 0
            if port:
                eps = [f"tcp://{hostpart}:{port + i}" for i in range(3)]
            else:
                eps = [f"tcp://{hostpart}:*"] * 3
            self.router.bind(eps[0])
            self.pull.bind(eps[1])
            self.pub.bind(eps[2])
            self.results_ep = _port(self.pull)
            self.control_ep = _port(self.pub)
        self.address = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.bind_local_ipc()
        self.endpoints = {
            "tasks": self.address,
            "results": self.pull.getsockopt_string(zmq.LAST_ENDPOINT),
            "control": self.pub.getsockopt_string(zmq.LAST_ENDPOINT),
        }

    def plan_local_ipc(self) -> str | None:
        """The address local workers will dial, known before :meth:`bind`, or None.

        Its folder is made now, so that local workers can be started while
        the sockets are being bound. Should the bind not use it after all,
        :attr:`local_address` says where they must dial instead.
        """
        if not self._uses_local_ipc() or urlsplit(self.options.bind).scheme != "tcp":
            return None
        try:
            folder = tempfile.mkdtemp(prefix="zmqworkers-")
        except OSError:
            return None
        if len(os.fsencode(f"{folder}/control")) > IPC_PATH_MAX:
            # The bind would refuse it and fall back to TCP: no plan.
            shutil.rmtree(folder, ignore_errors=True)
            return None
        self.leftovers.add(folder)
        self._ipc_folder = folder
        return f"ipc://{folder}/tasks"

    def _uses_local_ipc(self) -> bool:
        opts = self.options
        return opts.local_ipc and opts.n_workers > 0 and os.name == "posix" and zmq.has("ipc")

    def bind_local_ipc(self) -> None:
        """Also listen on ipc, in a private folder, for this host's own workers.

        Unix sockets carried 8 MiB array round trips about 9 % faster than
        loopback TCP here (docs/architecture.md). Local workers dial it;
        daemons keep the TCP address. The folder is mode 0700, so only this
        user (and root) can connect at all.
        """
        self.local_address = self.address
        opts = self.options
        folder, self._ipc_folder = self._ipc_folder, None
        planned = folder is not None  # in the leftovers already
        if not (self._uses_local_ipc() and self.address.startswith("tcp://")):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            return
        socks = {"tasks": self.router, "results": self.pull, "control": self.pub}
        bound: list[tuple[zmq.Socket[Any], str]] = []
        try:
            if folder is None:
                folder = tempfile.mkdtemp(prefix="zmqworkers-")
            for name, sock in socks.items():
                sock.bind(f"ipc://{folder}/{name}")
                bound.append((sock, f"ipc://{folder}/{name}"))
        except (OSError, zmq.ZMQError) as exc:
            # No writable temporary folder, or a path too long for a Unix
            # socket: TCP serves the local workers too.
            log.debug("no ipc for local workers (%s): they use %s", exc, self.address)
            for sock, endpoint in bound:
                sock.unbind(endpoint)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            return
        # Gone with the sockets, or at exit or SIGTERM if they never closed.
        if not planned:
            self.leftovers.add(folder)
        if opts.shared_memory:
            self.segments = SegmentSpace.open()
        self.local_address = f"ipc://{folder}/tasks"
        self.local_eps = {
            "results": f"ipc://{folder}/results",
            "control": f"ipc://{folder}/control",
        }

    @property
    def seq(self) -> int:
        """The number of the last message sent on the task channel."""
        return self._seq

    def send(
        self, route: bytes, key: Key, kind: Kind, header: Any, body: Any = (), limit: int = 0
    ) -> int:
        """Send to one worker; the bytes sent.

        Raises ``zmq.ZMQError`` (EHOSTUNREACH: gone), or :class:`MessageTooLarge`
        without sending when the message is over ``limit`` bytes: the worker's
        socket would close the connection on it.
        """
        self._seq += 1
        frames = encode_frames(kind, self.controller_id, self._seq, key, header, body)
        size = frames_size(frames)
        if limit and size > limit:
            release(frames)
            raise MessageTooLarge(
                f"a {kind.name} message of {size} bytes is over the limit of {limit}",
                size,
                limit,
            )
        try:
            self.router.send_multipart([route, *frames], copy=False)
        except zmq.ZMQError:
            release(frames)  # not sent: its segments have no reader
            raise
        return size

    def session_link(self, host: str) -> Link:
        """What the session table needs to know of these sockets, once bound."""
        opts = self.options
        return Link(
            key=opts.key,
            host=host,
            # Whether every link to this controller is one nothing can
            # change in transit: all its sockets on loopback or ipc, or
            # all under CURVE.
            protected=not opts.sign_buffers and bool(opts.curve_dir or is_local_link(opts.bind)),
            sign_buffers=opts.sign_buffers,
            local_address=self.local_address,
            hello_ttl=opts.heartbeat_interval * opts.heartbeat_misses + 2,
            max_message_size=opts.max_message_size,
            segments=self.segments.prefix if self.segments is not None else "",
            private_ipc=self.local_address != self.address,
        )

    def welcome(self, nonce: bytes, session: Session) -> Welcome:
        """The answer to a hello (its ``nonce``) that opened ``session``."""
        opts = self.options
        return Welcome(
            controller=self.controller_id,
            nonce=nonce,
            session=bytes.fromhex(session.tag),
            pub_nonce=self.pub_nonce,
            pub_seq=self.pub_seq,
            results=self.results_ep,
            control=self.control_ep,
            heartbeat_interval=opts.heartbeat_interval,
            heartbeat_misses=opts.heartbeat_misses,
            sign_buffers=session.key.sign_buffers,
            ipc=self.local_eps if session.via_ipc else {},
            max_message_size=opts.max_message_size,
            forward_logs=opts.forward_logs or "",
            shm_prefix=session.key.segments.prefix if session.key.segments else "",
        )

    def send_unsolicited(self, route: bytes, kind: Kind, header: Any, key: Key = b"") -> None:
        """Send to a peer that may not read: never blocks, never raises.

        Signed with the shared key unless ``key`` is given (a peer not yet,
        or no longer, in a session may be a flood that does not read).
        """
        self._seq += 1
        frames = encode_frames(
            kind, self.controller_id, self._seq, key or self.options.key, header, ()
        )
        try:
            self.router.send_multipart([route, *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            release(frames)  # not sent: the names it said freed go in a later one

    def send_unsigned(self, route: bytes, kind: Kind, header: Any) -> None:
        """Answer input nobody authenticated: unsigned, never blocks, never raises.

        Signing such an answer with the shared key would hand whoever sent
        the input a message signed by the controller to replay.
        """
        self._seq += 1
        frames = encode_unsigned(kind, self.controller_id, self._seq, header)
        try:
            self.router.send_multipart([route, *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def publish(self, kind: Kind, header: Any) -> None:
        """Broadcast to every worker on the control channel."""
        self.pub_seq += 1
        frames = encode_frames(
            kind, f"{self.controller_id}/pub", self.pub_seq, self._pub_key, header, ()
        )
        self.pub.send_multipart(frames)

    def read_monitor(self) -> bool:
        """Read the monitor's events; True if a connection closed."""
        disconnected = False
        for _ in range(1000):
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if monitor_event(frames) == zmq.EVENT_DISCONNECTED:
                disconnected = True
        return disconnected

    def close(self) -> None:
        if self.router is not None and self.monitor is not None:
            try:
                self.router.disable_monitor()
            except zmq.ZMQError:
                pass
        for sock in (self.monitor, self.router, self.pull, self.pub):
            if sock is not None:
                sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self.ctx is not None:
            self.ctx.term()
        self.leftovers.remove_all()
        if self.segments is not None:
            self.segments.close()


def monitor_event(frames: list[bytes]) -> int:
    """The event number of one socket-monitor message.

    Read here rather than with ``zmq.utils.monitor``, which imports asyncio:
    about 15 ms on the path to the first result.
    """
    return int(struct.unpack_from("=H", frames[0])[0])


def _port(sock: zmq.Socket[Any]) -> int:
    ep = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return int(ep.rsplit(":", 1)[1])
