"""The ``zmqworkers`` command line: parses arguments, configures logging, calls the core."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from zmqworkers._version import __version__
from zmqworkers.worker.args import (
    add_worker_arguments,
    address_and_key,
    configure_logging,
    positive_seconds,
    seconds,
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
    add_worker_arguments(w)

    d = sub.add_parser("demo", help="run a small job on local workers and show it")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--tasks", type=int, default=20)
    d.add_argument("--delay", type=seconds, help="seconds per task (default 0.05, 0.25 with --gui)")
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
        "--dashboard",
        nargs="?",
        const="127.0.0.1:0",
        metavar="HOST:PORT",
        help="serve a read-only web dashboard (default 127.0.0.1 on a free port; "
        "its URL is logged; see docs/monitoring.md)",
    )
    r.add_argument(
        "--forward-logs",
        metavar="LEVEL",
        help="log here what tasks log on workers at LEVEL or above (e.g. WARNING)",
    )
    r.add_argument(
        "--progress",
        choices=["auto", "bar", "log"],
        default="auto",
        help="a bar on a terminal, log lines otherwise (auto)",
    )

    i = sub.add_parser("info", help="show a live controller's workers as a table")
    i.add_argument("address", nargs="?", help="the controller's task address")
    i.add_argument("--key-file", help="file holding the shared key (else $ZMQWORKERS_KEY)")
    i.add_argument("--connection-file", help="JSON file the controller wrote")
    i.add_argument(
        "--timeout", type=positive_seconds, default=5.0, help="seconds to wait for an answer"
    )
    i.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    i.add_argument(
        "--watch",
        action="store_true",
        help="redraw the table every second until Ctrl-C",
    )

    st = sub.add_parser("status", help="check a daemon's --status-file (container probes)")
    st.add_argument("file")
    st.add_argument("--max-age", type=seconds, default=30.0, help="seconds before it is stale")
    st.add_argument("--ready", action="store_true", help="also require running workers")

    k = sub.add_parser(
        "keygen",
        help="write a new random key to FILE (mode 0600), or CURVE certificates to DIR",
    )
    k.add_argument("file", help="the key file, or with --curve the certificate directory")
    k.add_argument(
        "--curve",
        action="store_true",
        help="make CURVE certificates in the directory: the controller's (once) and a "
        "worker's, which is added to DIR/authorized_workers",
    )
    k.add_argument("--name", default="worker", help="with --curve: the worker's name")
    from zmqworkers.cli import slurm as slurm_command
    from zmqworkers.pydidas import command as pydidas_command  # imports no pydidas

    slurm_command.add_parser(sub)

    pydidas_command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = getattr(args, "worker_log_level", None) or args.log_level
    if args.command == "run" and level == "WARNING":
        level = "INFO"  # progress lines without a terminal are INFO
    configure_logging(level)
    if args.command == "worker":
        from zmqworkers.worker.args import run as run_worker

        return run_worker(args)
    if args.command == "info":
        return _info(args)
    if args.command == "status":
        from zmqworkers.worker.daemon import check_status

        ok, why = check_status(args.file, args.max_age, args.ready)
        print(why)
        return 0 if ok else 1
    if args.command == "demo":
        from zmqworkers.cli.demo import run_demo, run_demo_gui

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
    if args.command == "keygen" and args.curve:
        return _curve_keygen(args.file, args.name)
    if args.command == "run":
        return _run(args)
    if args.command == "slurm":
        from zmqworkers.cli.slurm import run as run_slurm

        return run_slurm(args)
    if args.command == "pydidas-workflow":
        from zmqworkers.pydidas.command import run as run_pydidas_workflow

        return run_pydidas_workflow(args)
    if args.command == "keygen":
        from zmqworkers.security.keys import write_key_file

        try:
            path = write_key_file(args.file)
        except FileExistsError:
            print(f"zmqworkers: {args.file} exists; not overwriting a key", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"zmqworkers keygen: cannot write {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"wrote a new key to {path} (mode 0600)")
        return 0
    return 2


def _curve_keygen(directory: str, name: str) -> int:
    from zmqworkers.errors import ConfigurationError
    from zmqworkers.security.curve import create

    try:
        written = create(directory, name)
    except ConfigurationError as exc:
        print(f"zmqworkers keygen: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import json

    from zmqworkers.cli.runjob import parse_range, read_tasks, run
    from zmqworkers.errors import ConfigurationError

    try:
        extra = json.loads(args.args)
        kwargs = json.loads(args.kwargs)
        if not isinstance(extra, list) or not isinstance(kwargs, dict):
            raise ConfigurationError("--args takes a JSON list and --kwargs a JSON object")
        if args.workers is not None and args.workers < 1:
            # Without --bind nobody else can join: zero workers would wait for ever.
            raise ConfigurationError(
                f"--workers must be 1 or more, not {args.workers} "
                "(or --bind ADDRESS to serve worker daemons)"
            )
        tasks = parse_range(args.range) if args.range else read_tasks(args.tasks)
        if not tasks:
            source = f"--range {args.range}" if args.range else f"--tasks {args.tasks}"
            raise ConfigurationError(f"{source} holds no tasks: nothing to run")
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
            dashboard=args.dashboard,
            forward_logs=args.forward_logs,
        )
    except json.JSONDecodeError as exc:
        print(f"zmqworkers run: --args/--kwargs is not valid JSON: {exc}", file=sys.stderr)
        return 2
    except ConfigurationError as exc:
        print(f"zmqworkers run: {exc}", file=sys.stderr)
        return 2


def _info(args: argparse.Namespace) -> int:
    import json

    from zmqworkers.client.info import format_table, query_info
    from zmqworkers.errors import ConfigurationError

    try:
        address, key = address_and_key(args)
    except ConfigurationError as exc:
        print(f"zmqworkers info: {exc}", file=sys.stderr)
        return 2
    if args.watch:
        return _watch(address, key, timeout=args.timeout, as_json=args.json)
    try:
        answer = query_info(address, key, timeout=args.timeout)
    except TimeoutError as exc:
        print(f"zmqworkers info: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2, default=str))
    else:
        print(format_table(answer))
    return 0


# Home, clear the screen: each redraw replaces the last.
CLEAR = "\x1b[H\x1b[2J"


def _watch(
    address: str, key: bytes, timeout: float = 5.0, as_json: bool = False, every: float = 1.0
) -> int:
    """Redraw the worker table every ``every`` seconds until Ctrl-C (exit status 0).

    A controller that does not answer is said on the screen, and asked again.
    """
    import json
    import time

    from zmqworkers.client.info import format_table, query_info

    try:
        while True:
            started = time.monotonic()
            try:
                answer = query_info(address, key, timeout=timeout)
                text = json.dumps(answer, default=str) if as_json else format_table(answer)
            except TimeoutError as exc:
                text = f"zmqworkers info: {exc}; asking again"
            stamp = time.strftime("%H:%M:%S")
            sys.stdout.write(f"{CLEAR}{text}\n\n{stamp}, every {every:g} s; Ctrl-C to stop\n")
            sys.stdout.flush()
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 0
