"""The ``zmqworkers`` command line: parses arguments, configures logging, calls the core."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from zmqworkers._version import __version__

log = logging.getLogger("zmqworkers.cli")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s",
        stream=sys.stderr,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zmqworkers", description=__doc__)
    p.add_argument("--version", action="version", version=f"zmqworkers {__version__}")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run a worker that serves the controller at ADDRESS")
    w.add_argument("address", help="the controller's task address, e.g. tcp://node1:5555")
    w.add_argument("--key-file", help="file holding the shared key (else $ZMQWORKERS_KEY)")
    w.add_argument("--prefetch", type=int, default=1, help="tasks held beyond the running one")
    w.add_argument("--name", help="worker id (default: host-pid-random)")
    w.add_argument(
        "--parent-pid",
        type=int,
        help="exit when this process is gone and after one controller (local workers)",
    )
    w.add_argument("--heartbeat-interval", type=float, default=1.0)
    w.add_argument("--heartbeat-misses", type=int, default=3)
    w.add_argument(
        "--death-timeout",
        type=float,
        default=None,
        help="exit after this many seconds without a controller (default: wait forever)",
    )

    w.add_argument(
        "--drain-timeout",
        type=float,
        default=25.0,
        help="after SIGTERM, let the running call finish for this many seconds, then hand "
        "it back and leave (default 25)",
    )

    d = sub.add_parser("demo", help="run a small job on local workers and show it")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--tasks", type=int, default=20)

    k = sub.add_parser("keygen", help="write a new random key to FILE (mode 0600)")
    k.add_argument("file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = args.log_level
    if args.command == "demo" and level == "WARNING":
        level = "WARNING"
    _configure_logging(level)
    if args.command == "worker":
        return _worker(args)
    if args.command == "demo":
        from zmqworkers.demo import run_demo

        return run_demo(n_workers=args.workers, n_tasks=args.tasks)
    if args.command == "keygen":
        from zmqworkers.keys import write_key_file

        try:
            path = write_key_file(args.file)
        except FileExistsError:
            print(f"zmqworkers: {args.file} exists; not overwriting a key", file=sys.stderr)
            return 2
        print(f"wrote a new key to {path} (mode 0600)")
        return 0
    return 2


def _worker(args: argparse.Namespace) -> int:
    from zmqworkers.errors import ConfigurationError
    from zmqworkers.keys import resolve_key
    from zmqworkers.worker.loop import Worker, WorkerOptions

    try:
        key = resolve_key(key_file=args.key_file)
    except ConfigurationError as exc:
        print(f"zmqworkers worker: {exc}", file=sys.stderr)
        return 2
    if key is None:
        print(
            "zmqworkers worker: no key: pass --key-file FILE or set ZMQWORKERS_KEY "
            "to the controller's key",
            file=sys.stderr,
        )
        return 2
    options = WorkerOptions(
        prefetch=args.prefetch,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_misses=args.heartbeat_misses,
        daemon=args.parent_pid is None,
        parent_pid=args.parent_pid,
        death_timeout=args.death_timeout,
        name=args.name,
        drain_timeout=args.drain_timeout,
    )
    worker = Worker(args.address, key, options)
    worker.install_signal_handlers()
    return worker.run()
