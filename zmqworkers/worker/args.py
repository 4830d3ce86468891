"""The worker's command-line arguments and what runs them.

``zmqworkers worker ...`` and ``python -m zmqworkers.worker ...`` both build
their parser with :func:`add_worker_arguments` and call :func:`run`, so
they take the same options and do the same. Nothing here imports the rest
of the command line, so a worker starts without parsing it.

A local worker forked by the fork server does not parse at all: its
arguments come as values (:func:`local_worker_args`), and argparse, which
takes longer to import than the rest of the worker program's start, is
never loaded on the way to its first result.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    # Parsed from a command line, or given as values (local_worker_args).
    WorkerArgs = argparse.Namespace | SimpleNamespace

log = logging.getLogger(__name__)


def _type_error(message: str) -> Exception:
    """argparse's error for a bad value (argparse has been loaded: it is parsing)."""
    import argparse

    return argparse.ArgumentTypeError(message)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s",
        stream=sys.stderr,
    )


def seconds(text: str, *, allow_zero: bool = True) -> float:
    """A finite number of seconds, 0 or more (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise _type_error(f"{text!r} is not a number of seconds") from None
    # NaN and infinity would pass every comparison a deadline makes, or none.
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise _type_error(f"{text!r} is not a finite number of seconds {bound}")
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds, more than 0 (argparse type)."""
    return seconds(text, allow_zero=False)


def message_size(text: str) -> int:
    """A message size limit in bytes, at least the floor (argparse type)."""
    from zmqworkers.errors import ConfigurationError
    from zmqworkers.protocol.messages import check_limit

    try:
        return check_limit(int(text), "--max-message-size")
    except ValueError as exc:
        if isinstance(exc, ConfigurationError):
            raise _type_error(str(exc)) from None
        raise _type_error(f"{text!r} is not a whole number of bytes") from None


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's options, on its own parser or the ``worker`` subcommand's."""
    parser.add_argument(
        "address",
        nargs="?",
        help="the controller's task address, e.g. tcp://node1:5555 (or --connection-file)",
    )
    parser.add_argument("--key-file", help="file holding the shared key (else $ZMQWORKERS_KEY)")
    parser.add_argument(
        "--curve",
        metavar="DIR",
        default=os.environ.get("ZMQWORKERS_CURVE"),
        help="encrypt with the CURVE certificates in DIR (from `zmqworkers keygen --curve`; "
        "default $ZMQWORKERS_CURVE)",
    )
    parser.add_argument(
        "--curve-name",
        default="worker",
        help="this worker's certificate in the CURVE directory (default: worker)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="without a key, use the well-known insecure key (trusted networks only)",
    )
    parser.add_argument(
        "--connection-file",
        help="JSON file a controller wrote (address, key, versions); waits for it to appear",
    )
    parser.add_argument(
        "--connection-wait",
        type=seconds,
        default=300.0,
        help="seconds to wait for --connection-file to appear (default 300)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes on this node, under a supervisor that replaces crashed ones",
    )
    parser.add_argument(
        "--lifetime",
        type=positive_seconds,
        default=None,
        help="leave after this many seconds, drained --drain-timeout before the end "
        "(e.g. a Slurm walltime)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=seconds,
        default=None,
        help="on SIGTERM, seconds to let running calls finish before they are killed "
        "(default 30 under a supervisor)",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        help="supervisor: replace at most this many crashed processes a minute (default 10)",
    )
    parser.add_argument(
        "--supervise",
        action="store_true",
        help="run under a supervisor even with one process (implied by --processes, "
        "--lifetime, --drain-timeout, --status-file and --max-restarts)",
    )
    parser.add_argument(
        "--status-file",
        help="supervisor: rewrite this JSON file every second (for `zmqworkers status`)",
    )
    parser.add_argument(
        "--log-level",
        dest="worker_log_level",
        default=None,
        help="DEBUG, INFO, WARNING (default), ERROR; daemon event lines show at INFO",
    )
    parser.add_argument("--prefetch", type=int, default=1, help="tasks held beyond the running one")
    parser.add_argument("--name", help="worker id (default: host-pid-random)")
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="exit when this process is gone and after one controller (local workers)",
    )
    parser.add_argument(
        "--heartbeat-interval", type=positive_seconds, help="seconds between heartbeats (1)"
    )
    parser.add_argument("--heartbeat-misses", type=int, help="silent intervals before a loss (3)")
    parser.add_argument(
        "--max-message-size",
        type=message_size,
        help="largest message in bytes, either way (default 2 GiB, at least 65536); "
        "a session uses the smaller of this and the controller's",
    )
    parser.add_argument(
        "--max-tasks",
        type=_max_tasks,
        help="recycling: each worker process is replaced after N tasks (it hands back "
        "what it holds first)",
    )
    parser.add_argument(
        "--max-memory",
        type=_max_memory,
        help="recycling: a process over this resident memory after a task (2GiB, 300MB, "
        "bytes) is replaced; one over it by 25%% during a task is ended, and the task "
        "counts an attempt",
    )
    parser.add_argument(
        "--death-timeout",
        type=positive_seconds,
        default=None,
        help="exit after this many seconds without a controller (default: wait forever)",
    )


def log_level(args: WorkerArgs) -> str:
    """The worker's --log-level, else the command line's, else $ZMQWORKERS_LOG_LEVEL."""
    level = args.worker_log_level or getattr(args, "log_level", None)
    # From the environment too: local workers inherit their controller's.
    return str(level or os.environ.get("ZMQWORKERS_LOG_LEVEL", "WARNING"))


@functools.cache
def worker_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m zmqworkers.worker``, built once per process.

    For daemons and spawned workers: a forked local worker takes its
    arguments as values (:func:`local_worker_args`).
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m zmqworkers.worker",
        description="Run a worker that serves the controller at ADDRESS.",
    )
    add_worker_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zmqworkers.worker``: the worker's options only."""
    args = worker_parser().parse_args(argv)
    configure_logging(log_level(args))
    return run(args)


def local_worker_argv(
    address: str,
    parent_pid: int,
    prefetch: int,
    max_tasks: int | None = None,
    max_memory: int | None = None,
) -> list[str]:
    """The command line of a worker its controller starts on this host."""
    return [
        address,
        *("--parent-pid", str(parent_pid), "--prefetch", str(prefetch)),
        *(["--max-tasks", str(max_tasks)] if max_tasks else ()),
        *(["--max-memory", str(max_memory)] if max_memory else ()),
    ]


def local_worker_args(
    address: str,
    parent_pid: int,
    prefetch: int,
    max_tasks: int | None = None,
    max_memory: int | None = None,
) -> SimpleNamespace:
    """What the worker's parser makes of :func:`local_worker_argv`, without argparse.

    Every option the parser has, at its default but the ones given (a test
    holds the two equal).
    """
    return SimpleNamespace(
        address=address,
        key_file=None,
        curve=os.environ.get("ZMQWORKERS_CURVE"),
        curve_name="worker",
        insecure=False,
        connection_file=None,
        connection_wait=300.0,
        processes=1,
        lifetime=None,
        drain_timeout=None,
        max_restarts=None,
        supervise=False,
        status_file=None,
        worker_log_level=None,
        prefetch=prefetch,
        name=None,
        parent_pid=parent_pid,
        heartbeat_interval=None,
        heartbeat_misses=None,
        max_message_size=None,
        max_tasks=max_tasks or None,
        max_memory=max_memory or None,
        death_timeout=None,
    )


def run_local(worker: dict[str, Any]) -> int:
    """A local worker from :func:`local_worker_args`'s values (a fork server's child)."""
    args = local_worker_args(**worker)
    configure_logging(log_level(args))
    return run(args)


def address_and_key(args: WorkerArgs) -> tuple[str, bytes]:
    """From ADDRESS and --key-file/$ZMQWORKERS_KEY, or from --connection-file."""
    from zmqworkers.errors import ConfigurationError
    from zmqworkers.security.connection import (
        check_address,
        read_connection_file,
        wait_for_connection_file,
    )
    from zmqworkers.security.keys import resolve_key

    address = args.address
    key = None
    if args.connection_file:
        wait = getattr(args, "connection_wait", 0.0)
        wait_for_connection_file(args.connection_file, wait)
        info = read_connection_file(args.connection_file)
        address = address or info.address
        key = info.key
    if not address:
        raise ConfigurationError("give the controller's ADDRESS or --connection-file FILE")
    check_address(address)
    if args.key_file or key is None:
        key = resolve_key(key_file=args.key_file)
    curve_dir = getattr(args, "curve", None)
    if key is None and curve_dir:
        from zmqworkers.security import curve

        key = curve.hmac_key(curve_dir)
    if key is None and getattr(args, "insecure", False):
        from zmqworkers.security.keys import INSECURE_KEY

        log.warning("INSECURE: using the well-known insecure key; anyone can impersonate")
        key = INSECURE_KEY
    if key is None:
        raise ConfigurationError(
            "no key: pass --key-file FILE or --connection-file FILE, or set ZMQWORKERS_KEY "
            "to the controller's key (or --curve DIR for CURVE certificates)"
        )
    return address, key


def run(args: WorkerArgs) -> int:
    """Run a worker (or a supervisor of some) from parsed worker arguments."""
    from zmqworkers.errors import ConfigurationError
    from zmqworkers.heap import keep_large_buffers
    from zmqworkers.logs import tag_worker_records
    from zmqworkers.worker.loop import Worker, WorkerOptions

    try:
        address, key = address_and_key(args)
    except ConfigurationError as exc:
        print(f"zmqworkers worker: {exc}", file=sys.stderr)
        return 2
    bad = _bad_worker_numbers(args)
    if bad:
        print(f"zmqworkers worker: {bad}", file=sys.stderr)
        return 2
    if args.heartbeat_interval is None:
        args.heartbeat_interval = WorkerOptions.heartbeat_interval
    if args.heartbeat_misses is None:
        args.heartbeat_misses = WorkerOptions.heartbeat_misses
    # Asked for by name, or implied by an option only the supervisor has.
    # Never a supervisor's own child, which gets --max-tasks and the like too.
    supervised = (
        args.parent_pid is None
        and _supervisor_pid() is None
        and (
            args.supervise
            or args.processes > 1
            or args.lifetime is not None
            or args.drain_timeout is not None
            or args.status_file is not None
            or args.max_restarts is not None
            # Recycled processes need someone to start the next one.
            or args.max_tasks is not None
            or args.max_memory is not None
        )
    )
    if supervised:
        from zmqworkers.worker.daemon import DaemonOptions, child_args, run_daemon

        level = log_level(args)
        options_d = DaemonOptions(
            processes=args.processes,
            lifetime=args.lifetime,
            drain_timeout=(
                DaemonOptions.drain_timeout if args.drain_timeout is None else args.drain_timeout
            ),
            name=args.name,
            status_file=args.status_file,
            max_restarts=(
                DaemonOptions.max_restarts if args.max_restarts is None else args.max_restarts
            ),
            child_args=child_args(
                prefetch=args.prefetch,
                heartbeat_interval=args.heartbeat_interval,
                heartbeat_misses=args.heartbeat_misses,
                death_timeout=args.death_timeout,
                log_level=level,
                extra=[
                    *(["--curve-name", args.curve_name] if args.curve else ()),
                    *(
                        ["--max-message-size", str(args.max_message_size)]
                        if args.max_message_size is not None
                        else ()
                    ),
                    *(["--max-tasks", str(args.max_tasks)] if args.max_tasks else ()),
                    *(["--max-memory", str(args.max_memory)] if args.max_memory else ()),
                ],
            ),
        )
        if args.curve:
            # Children read the certificate folder from the environment.
            os.environ["ZMQWORKERS_CURVE"] = args.curve
        # The event lines are the daemon's record of what happened: they show
        # at the default level too.
        daemon_log = logging.getLogger("zmqworkers.worker.daemon")
        if daemon_log.getEffectiveLevel() > logging.INFO:
            daemon_log.setLevel(logging.INFO)
        return run_daemon(address, key, options_d)
    options = WorkerOptions(
        prefetch=args.prefetch,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_misses=args.heartbeat_misses,
        daemon=args.parent_pid is None,
        parent_pid=args.parent_pid if args.parent_pid is not None else _supervisor_pid(),
        death_timeout=args.death_timeout,
        name=args.name,
        curve_dir=args.curve,
        curve_name=args.curve_name,
        # A daemon given --drain-timeout runs under the supervisor, which
        # hands its children theirs through the environment.
        drain_timeout=_drain_timeout(args.drain_timeout),
        max_tasks=args.max_tasks,
        max_memory=args.max_memory,
    )
    if args.max_message_size is not None:
        options.max_message_size = args.max_message_size
    # Large frames arrive into malloc'd blocks: keep their pages (heap.py).
    keep_large_buffers()
    try:
        worker = Worker(address, key, options)
    except ConfigurationError as exc:
        print(f"zmqworkers worker: {exc}", file=sys.stderr)
        return 2
    tag_worker_records(worker.id, worker.host)
    worker.install_signal_handlers()
    from zmqworkers.worker.options import DRAIN_ENV

    if DRAIN_ENV in os.environ:
        # A supervisor's child, in a session of its own: the terminal's
        # Ctrl-C reaches the supervisor, which passes one SIGTERM on; a
        # SIGINT sent here as well would make it leave mid-call.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    from zmqworkers.worker.group import kill_rest_of_group

    try:
        return worker.run()
    finally:
        kill_rest_of_group()  # its parent may be gone: what its tasks started ends here


def _max_tasks(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise _type_error(f"must be a whole number, 1 or more, not {text!r}")
    return n


def _max_memory(text: str) -> int:
    from zmqworkers.worker.options import parse_size

    try:
        size = parse_size(text, "--max-memory")
    except ValueError as exc:
        raise _type_error(str(exc)) from None
    assert size is not None
    return size


def _supervisor_pid() -> int | None:
    """The pid of the supervisor that started this worker, while it is its parent."""
    from zmqworkers.worker.options import SUPERVISOR_ENV

    try:
        pid = int(os.environ.get(SUPERVISOR_ENV, ""))
    except ValueError:
        return None
    # Inherited by a worker the supervisor did not start itself: not ours.
    return pid if pid == os.getppid() else None


def _drain_timeout(given: float | None) -> float:
    from zmqworkers.worker.loop import WorkerOptions
    from zmqworkers.worker.options import DRAIN_ENV

    if given is not None:
        return given
    try:
        return float(os.environ[DRAIN_ENV])
    except (KeyError, ValueError):
        return WorkerOptions.drain_timeout


def _bad_worker_numbers(args: WorkerArgs) -> str | None:
    if args.processes < 1:
        return f"--processes must be 1 or more, not {args.processes}"
    if args.prefetch < 0:
        return f"--prefetch must be 0 or more, not {args.prefetch}"
    if args.lifetime is not None and args.lifetime <= 0:
        return f"--lifetime must be more than 0 seconds, not {args.lifetime}"
    if args.drain_timeout is not None and args.drain_timeout < 0:
        return f"--drain-timeout must be 0 seconds or more, not {args.drain_timeout}"
    if args.max_restarts is not None and args.max_restarts < 0:
        return f"--max-restarts must be 0 or more, not {args.max_restarts}"
    if args.heartbeat_misses is not None and args.heartbeat_misses < 1:
        return f"--heartbeat-misses must be 1 or more, not {args.heartbeat_misses}"
    return None
