"""The controller's settings: one frozen value, every default written here once.

Each face (``Cluster``, ``WorkerController``) takes a subset of these as
keywords and builds the value with :func:`build_options`; a test compares
the faces' signatures with :class:`EngineOptions`. The engine never edits
the value it is given: what it works out (the key under CURVE or insecure
mode, the workers' environment) goes into a copy of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from zmqworkers.controller.forkserver import DEFAULT_START_METHOD, START_METHODS, check_preload
from zmqworkers.errors import ConfigurationError
from zmqworkers.protocol.liveness import HEARTBEAT_INTERVAL, HEARTBEAT_MISSES
from zmqworkers.protocol.messages import DEFAULT_MAX_MESSAGE_SIZE, check_limit
from zmqworkers.security import curve
from zmqworkers.security.connection import check_bind_address, is_local_link
from zmqworkers.security.keys import INSECURE_KEY, resolve_key
from zmqworkers.worker.options import parse_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    """Controller settings. Intervals and timeouts are in seconds."""

    n_workers: int = 0
    bind: str = "tcp://127.0.0.1:0"
    key: bytes = b""
    key_given: bool = False
    insecure: bool = False
    prefetch: int = 1
    # Both sides send a heartbeat every ``heartbeat_interval``; a peer silent
    # for ``heartbeat_interval * heartbeat_misses`` is lost. This catches hung
    # hosts and cut links; a dead process is seen at once (process watch for
    # local workers, connection watch for every worker).
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    heartbeat_misses: int = HEARTBEAT_MISSES
    # A task that was running on this many workers that died fails with
    # WorkerLost instead of killing more.
    max_attempts: int = 3
    # Tiny tasks share messages: a worker whose tasks take less than this
    # (measured) gets batches worth about this much work per dispatch unit,
    # up to max_batch tasks. 0 turns batching off. A task measured slower
    # than this is always sent alone, so no slow task waits behind others.
    batch_target: float = 0.002
    max_batch: int = 512
    batch_bytes: int = 1 << 20  # ... and at most about this many payload bytes
    # Start a new local worker for each one that dies, so capacity holds.
    replace_dead_workers: bool = True
    # How often local worker processes are checked for exits.
    process_check_interval: float = 0.1
    # How long a stop waits for workers to finish their current call before
    # local processes are terminated.
    stop_timeout: float = 10.0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # Read-only: each run hands its workers a fresh copy.
    worker_env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Written (mode 0600) once the sockets are bound: address, key, versions,
    # for daemons started with --connection-file on a shared filesystem.
    connection_file: str | None = None
    # CURVE directory (see zmqworkers.security.curve): encrypt, admit only known workers.
    curve_dir: str | None = None
    # Local workers dial ipc in a private folder (POSIX) rather than the TCP
    # address: measured faster for large arrays.
    local_ipc: bool = True
    # Out-of-band array buffers enter the signature by length only on links
    # that rule out changes in transit (loopback, ipc, CURVE) when the worker
    # agrees; True hashes them everywhere (for a plain TCP relay
    # that carries a loopback port across a network).
    sign_buffers: bool = False
    # Large array buffers between the controller and its local workers
    # (ipc, buffers not hashed) go through shared-memory segments rather
    # than the socket. Daemons always use the socket.
    shared_memory: bool = True
    # How local workers start: "forkserver" forks each from a template
    # process that has imported zmqworkers and ``preload`` once (the default
    # on Linux: a warm start takes milliseconds), "spawn" starts a new
    # interpreter for each. See docs/cluster.md.
    start_method: str = DEFAULT_START_METHOD
    # Modules the fork server imports before it forks (ignored by "spawn").
    preload: tuple[str, ...] = ()
    # "HOST:PORT" of a read-only web dashboard (page, JSON, Prometheus
    # metrics; see docs/monitoring.md); None: no dashboard. Port 0 picks one.
    dashboard: str | None = None
    # The lowest level of log records that tasks emit on workers to send to
    # the controller's "zmqworkers.remote" logger (e.g. "WARNING"); None: off.
    forward_logs: str | None = None
    # Seconds a task may run before its worker process is replaced and the
    # task fails with TaskTimeout; None: no limit. Per call: with_options.
    task_timeout: float | None = None
    # Recycling of local workers: a process leaves and is replaced after
    # this many tasks, or when its resident memory is over
    # max_worker_memory bytes after a task (over it by 25% during a task,
    # it is ended and the task counts an attempt). None: never.
    max_tasks_per_worker: int | None = None
    max_worker_memory: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.worker_env, MappingProxyType):
            object.__setattr__(self, "worker_env", MappingProxyType(dict(self.worker_env)))

    def replace(self, **changes: Any) -> EngineOptions:
        """A copy with ``changes``; the value itself never changes."""
        return dataclasses.replace(self, **changes)


# What a face takes that is not an option itself, or that it spells
# differently; the signature test lists these explicitly.
FACE_ONLY = frozenset({"key_file"})


def build_options(
    *,
    key: str | bytes | None = None,
    key_file: str | os.PathLike[str] | None = None,
    prefetch: int = EngineOptions.prefetch,
    curve_dir: str | os.PathLike[str] | None = None,
    connection_file: str | os.PathLike[str] | None = None,
    max_message_size: int | None = None,
    start_method: str = EngineOptions.start_method,
    preload: Sequence[str] = EngineOptions.preload,
    task_timeout: float | None = EngineOptions.task_timeout,
    max_tasks_per_worker: int | None = EngineOptions.max_tasks_per_worker,
    max_worker_memory: int | str | None = EngineOptions.max_worker_memory,
    **rest: Any,
) -> EngineOptions:
    """Engine options from a face's keywords: one place for key and checks.

    The key is ``key``, else ``key_file``, else ``$ZMQWORKERS_KEY``, else a
    random one (``key_given`` then stays false, for the bind policy).
    """
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
        raise ConfigurationError(f"prefetch must be a whole number >= 0, not {prefetch!r}")
    unknown = sorted(set(rest) - {f.name for f in dataclasses.fields(EngineOptions)})
    if unknown:
        raise ConfigurationError(f"unknown option(s): {', '.join(unknown)}")
    check_bind_address(rest.get("bind", EngineOptions.bind))
    if rest.get("dashboard") is not None:
        rest["dashboard"] = check_dashboard_address(rest["dashboard"])
    if rest.get("forward_logs") is not None:
        rest["forward_logs"] = check_log_level(rest["forward_logs"])
    rest.update(start_method=check_start_method(start_method), preload=check_preload(preload))
    rest.update(
        task_timeout=check_timeout(task_timeout, "task_timeout"),
        max_tasks_per_worker=check_count(max_tasks_per_worker, "max_tasks_per_worker"),
        max_worker_memory=check_memory(max_worker_memory),
    )
    explicit = resolve_key(key, key_file)
    if max_message_size is not None:
        # Below the floor even a heartbeat is refused, and every job hangs.
        rest["max_message_size"] = check_limit(max_message_size)
    return EngineOptions(
        key=explicit or resolve_key(generate=True) or b"",
        key_given=explicit is not None,
        prefetch=prefetch,
        curve_dir=os.fspath(curve_dir) if curve_dir is not None else None,
        connection_file=os.fspath(connection_file) if connection_file is not None else None,
        **rest,
    )


def check_dashboard_address(address: Any) -> str:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6), or a port alone for 127.0.0.1."""
    if isinstance(address, int) and not isinstance(address, bool):
        address = f"127.0.0.1:{address}"
    if not isinstance(address, str):
        raise ConfigurationError(f"dashboard must be 'HOST:PORT', not {address!r}")
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", address
    if not port.isdigit() or int(port) > 65535 or not host.strip("[]"):
        raise ConfigurationError(
            f"dashboard must be 'HOST:PORT' with a port from 0 to 65535 "
            f"(0 picks a free one), such as '127.0.0.1:8787', not {address!r}"
        )
    return f"{host}:{int(port)}"


def check_log_level(level: Any) -> str:
    """A logging level name (or number) for ``forward_logs``, as a name."""
    if isinstance(level, int) and not isinstance(level, bool):
        name = logging.getLevelName(level)
        if isinstance(name, str) and not name.startswith("Level "):
            return name
    elif isinstance(level, str) and isinstance(logging.getLevelName(level.upper()), int):
        return level.upper()
    raise ConfigurationError(
        f"forward_logs must be a logging level such as 'WARNING' or 'INFO', not {level!r}"
    )


def check_timeout(value: Any, what: str) -> float | None:
    """Seconds more than 0, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{what} must be a number of seconds > 0, or None, not {value!r}")
    return float(value)


def check_count(value: Any, what: str) -> int | None:
    """A whole number of 1 or more, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a whole number >= 1, or None, not {value!r}")
    return value


def check_memory(value: Any) -> int | None:
    """Bytes from a number or a size such as ``"2GiB"``, or None."""
    try:
        return parse_size(value, "max_worker_memory")
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def check_start_method(method: str) -> str:
    if method not in START_METHODS:
        raise ConfigurationError(
            f"start_method must be one of {', '.join(map(repr, START_METHODS))}, not {method!r}"
        )
    if method == "forkserver" and not hasattr(os, "fork"):
        raise ConfigurationError('start_method="forkserver" needs os.fork: use "spawn" here')
    return method


def apply_bind_policy(options: EngineOptions) -> EngineOptions:
    """Apply the bind policy; the options with the key CURVE or insecure mode use."""
    key = options.key
    env = dict(options.worker_env)
    if options.curve_dir:
        curve.server_keys(options.curve_dir)  # fail now, naming the file
        if not options.key_given:
            key = curve.hmac_key(options.curve_dir)
        env.setdefault(curve.CURVE_ENV, str(options.curve_dir))
    if not key:
        raise ConfigurationError("the engine needs a key")
    # A connection file carries even a random key to the daemons.
    shared = options.key_given or options.curve_dir or options.connection_file
    if not (is_local_link(options.bind) or shared):
        if not options.insecure:
            raise ConfigurationError(
                f"refusing to bind {options.bind} without a key: anyone who can reach "
                "that address could run code on your workers and in this process. "
                "Fix: give key= or key_file= (or set $ZMQWORKERS_KEY; make a key file "
                "with `zmqworkers keygen FILE` and give it to the workers with "
                "--key-file), or encrypt with curve_dir= (`zmqworkers keygen --curve "
                "DIR`), or bind 127.0.0.1; insecure=True (--insecure) skips this check "
                "on a network you trust completely"
            )
        key = INSECURE_KEY
        log.warning(
            "INSECURE: binding %s with the well-known insecure key; anyone who can "
            "reach it can run code on the workers and in this process",
            options.bind,
        )
    return options.replace(key=key, worker_env=env)
