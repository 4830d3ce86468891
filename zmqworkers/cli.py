"""The ``zmqworkers`` command line: parses arguments, configures logging, calls the core."""

from __future__ import annotations

import argparse
import logging
import os
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
    p.add_argument(
        "--log-level",
        # From the environment too: local workers inherit their controller's.
        default=os.environ.get("ZMQWORKERS_LOG_LEVEL", "WARNING"),
        help="DEBUG, INFO, WARNING, ERROR (default: $ZMQWORKERS_LOG_LEVEL or WARNING)",
    )
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

    d = sub.add_parser("demo", help="run a small job on local workers and show it")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--tasks", type=int, default=20)
    d.add_argument("--delay", type=float, help="seconds per task (default 0.05, 0.25 with --gui)")
    d.add_argument("--gui", action="store_true", help="show the job in a monitor window")
    d.add_argument("--screenshot", metavar="PNG", help="with --gui: save the window at 50 %%")

    r = sub.add_parser("run", help="run MODULE:FUNC over tasks, with a progress bar")
    r.add_argument("function", metavar="MODULE:FUNC")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--range", help="tasks are the integers A:B (or A:B:STEP)")
    src.add_argument("--tasks", help="tasks from a file: .jsonl, .json (a list) or .npy")
    r.add_argument("--args", default="[]", help="JSON list of extra arguments for every task")
    r.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    where = r.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="local workers (default: one per core)")
    where.add_argument("--bind", help="serve worker daemons that connect to this address")
    r.add_argument("--key-file", help="shared key for daemons (else $ZMQWORKERS_KEY)")
    r.add_argument("--output", help="write results to FILE.jsonl (as they come) or FILE.npz")
    r.add_argument(
        "--progress",
        choices=["auto", "bar", "log"],
        default="auto",
        help="a bar on a terminal, log lines otherwise (auto)",
    )

    k = sub.add_parser("keygen", help="write a new random key to FILE (mode 0600)")
    k.add_argument("file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = args.log_level
    if args.command == "run" and level == "WARNING":
        level = "INFO"  # progress lines without a terminal are INFO
    _configure_logging(level)
    if args.command == "worker":
        return _worker(args)
    if args.command == "demo":
        from zmqworkers.demo import run_demo, run_demo_gui

        if args.screenshot and not args.gui:
            print("zmqworkers demo: --screenshot needs --gui", file=sys.stderr)
            return 2
        if args.workers < 1 or args.tasks < 1 or (args.delay is not None and args.delay < 0):
            print(
                "zmqworkers demo: --workers and --tasks must be >= 1, --delay >= 0",
                file=sys.stderr,
            )
            return 2
        if args.gui:
            delay = 0.25 if args.delay is None else args.delay
            return run_demo_gui(args.workers, args.tasks, delay, screenshot=args.screenshot)
        return run_demo(args.workers, args.tasks, 0.05 if args.delay is None else args.delay)
    if args.command == "run":
        return _run(args)
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


def _run(args: argparse.Namespace) -> int:
    import json

    from zmqworkers.errors import ConfigurationError
    from zmqworkers.runjob import parse_range, read_tasks, run

    try:
        extra = json.loads(args.args)
        kwargs = json.loads(args.kwargs)
        if not isinstance(extra, list) or not isinstance(kwargs, dict):
            raise ConfigurationError("--args takes a JSON list and --kwargs a JSON object")
        tasks = parse_range(args.range) if args.range else read_tasks(args.tasks)
        progress = args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty())
        n_workers = 0 if args.bind else args.workers
        return run(
            args.function,
            tasks,
            len(tasks),
            args=extra,
            kwargs=kwargs,
            n_workers=n_workers,
            bind=args.bind,
            key_file=args.key_file,
            output=args.output,
            progress=progress,
        )
    except json.JSONDecodeError as exc:
        print(f"zmqworkers run: --args/--kwargs is not valid JSON: {exc}", file=sys.stderr)
        return 2
    except ConfigurationError as exc:
        print(f"zmqworkers run: {exc}", file=sys.stderr)
        return 2


def _worker(args: argparse.Namespace) -> int:
    from zmqworkers.errors import ConfigurationError
    from zmqworkers.keys import resolve_key
    from zmqworkers.logs import tag_worker_records
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
    )
    worker = Worker(args.address, key, options)
    tag_worker_records(worker.id, worker.host)
    worker.install_signal_handlers()
    return worker.run()
