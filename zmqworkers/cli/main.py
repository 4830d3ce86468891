"""The ``zmqworkers`` command line: parses arguments, configures logging, calls the core."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
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


def _seconds(text: str, *, allow_zero: bool = True) -> float:
    """A finite number of seconds, 0 or more (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    # NaN and infinity would pass every comparison a deadline makes, or none.
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds {bound}")
    return value


def _positive_seconds(text: str) -> float:
    """A finite number of seconds, more than 0 (argparse type)."""
    return _seconds(text, allow_zero=False)


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
    w.add_argument(
        "address",
        nargs="?",
        help="the controller's task address, e.g. tcp://node1:5555 (or --connection-file)",
    )
    w.add_argument("--key-file", help="file holding the shared key (else $ZMQWORKERS_KEY)")
    w.add_argument(
        "--curve",
        metavar="DIR",
        default=os.environ.get("ZMQWORKERS_CURVE"),
        help="encrypt with the CURVE certificates in DIR (from `zmqworkers keygen --curve`; "
        "default $ZMQWORKERS_CURVE)",
    )
    w.add_argument(
        "--curve-name",
        default="worker",
        help="this worker's certificate in the CURVE directory (default: worker)",
    )
    w.add_argument(
        "--insecure",
        action="store_true",
        help="without a key, use the well-known insecure key (trusted networks only)",
    )
    w.add_argument(
        "--connection-file",
        help="JSON file a controller wrote (address, key, versions); waits for it to appear",
    )
    w.add_argument(
        "--connection-wait",
        type=_seconds,
        default=300.0,
        help="seconds to wait for --connection-file to appear (default 300)",
    )
    w.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes on this node, under a supervisor that replaces crashed ones",
    )
    w.add_argument(
        "--lifetime",
        type=_positive_seconds,
        default=None,
        help="leave after this many seconds, drained --drain-timeout before the end "
        "(e.g. a Slurm walltime)",
    )
    w.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=None,
        help="on SIGTERM, seconds to let running calls finish before they are killed "
        "(default 30 under a supervisor)",
    )
    w.add_argument(
        "--max-restarts",
        type=int,
        help="supervisor: replace at most this many crashed processes a minute (default 10)",
    )
    w.add_argument(
        "--supervise",
        action="store_true",
        help="run under a supervisor even with one process (implied by --processes, "
        "--lifetime, --drain-timeout, --status-file and --max-restarts)",
    )
    w.add_argument(
        "--status-file",
        help="supervisor: rewrite this JSON file every second (for `zmqworkers status`)",
    )
    w.add_argument(
        "--log-level",
        dest="worker_log_level",
        default=None,
        help="DEBUG, INFO, WARNING (default), ERROR; daemon event lines show at INFO",
    )
    w.add_argument("--prefetch", type=int, default=1, help="tasks held beyond the running one")
    w.add_argument("--name", help="worker id (default: host-pid-random)")
    w.add_argument(
        "--parent-pid",
        type=int,
        help="exit when this process is gone and after one controller (local workers)",
    )
    w.add_argument(
        "--heartbeat-interval", type=_positive_seconds, help="seconds between heartbeats (1)"
    )
    w.add_argument("--heartbeat-misses", type=int, help="silent intervals before a loss (3)")
    w.add_argument(
        "--death-timeout",
        type=_positive_seconds,
        default=None,
        help="exit after this many seconds without a controller (default: wait forever)",
    )

    d = sub.add_parser("demo", help="run a small job on local workers and show it")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--tasks", type=int, default=20)
    d.add_argument(
        "--delay", type=_seconds, help="seconds per task (default 0.05, 0.25 with --gui)"
    )
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

    i = sub.add_parser("info", help="show a live controller's workers as a table")
    i.add_argument("address", nargs="?", help="the controller's task address")
    i.add_argument("--key-file", help="file holding the shared key (else $ZMQWORKERS_KEY)")
    i.add_argument("--connection-file", help="JSON file the controller wrote")
    i.add_argument(
        "--timeout", type=_positive_seconds, default=5.0, help="seconds to wait for an answer"
    )
    i.add_argument("--json", action="store_true", help="print the raw answer as JSON")

    st = sub.add_parser("status", help="check a daemon's --status-file (container probes)")
    st.add_argument("file")
    st.add_argument("--max-age", type=_seconds, default=30.0, help="seconds before it is stale")
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
    from zmqworkers.pydidas import command as pydidas_command  # imports no pydidas

    pydidas_command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = getattr(args, "worker_log_level", None) or args.log_level
    if args.command == "run" and level == "WARNING":
        level = "INFO"  # progress lines without a terminal are INFO
    _configure_logging(level)
    if args.command == "worker":
        return _worker(args)
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
        )
    except json.JSONDecodeError as exc:
        print(f"zmqworkers run: --args/--kwargs is not valid JSON: {exc}", file=sys.stderr)
        return 2
    except ConfigurationError as exc:
        print(f"zmqworkers run: {exc}", file=sys.stderr)
        return 2


def _address_and_key(args: argparse.Namespace) -> tuple[str, bytes]:
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


def _worker(args: argparse.Namespace) -> int:
    from zmqworkers.errors import ConfigurationError
    from zmqworkers.logs import tag_worker_records
    from zmqworkers.worker.loop import Worker, WorkerOptions

    try:
        address, key = _address_and_key(args)
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
    supervised = args.parent_pid is None and (
        args.supervise
        or args.processes > 1
        or args.lifetime is not None
        or args.drain_timeout is not None
        or args.status_file is not None
        or args.max_restarts is not None
    )
    if supervised:
        from zmqworkers.worker.daemon import DaemonOptions, child_args, run_daemon

        level = getattr(args, "worker_log_level", None) or args.log_level
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
                extra=["--curve-name", args.curve_name] if args.curve else (),
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
        parent_pid=args.parent_pid,
        death_timeout=args.death_timeout,
        name=args.name,
        curve_dir=args.curve,
        curve_name=args.curve_name,
        # A daemon given --drain-timeout runs under the supervisor, which
        # hands its children theirs through the environment.
        drain_timeout=_drain_timeout(args.drain_timeout),
    )
    try:
        worker = Worker(address, key, options)
    except ConfigurationError as exc:
        print(f"zmqworkers worker: {exc}", file=sys.stderr)
        return 2
    tag_worker_records(worker.id, worker.host)
    worker.install_signal_handlers()
    from zmqworkers.worker.daemon import DRAIN_ENV

    if DRAIN_ENV in os.environ:
        # A supervisor's child: Ctrl-C reaches the whole process group and
        # the supervisor passes one SIGTERM on; a second signal would make
        # this worker leave mid-call instead of finishing it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return worker.run()


def _drain_timeout(given: float | None) -> float:
    from zmqworkers.worker.daemon import DRAIN_ENV
    from zmqworkers.worker.loop import WorkerOptions

    if given is not None:
        return given
    try:
        return float(os.environ[DRAIN_ENV])
    except (KeyError, ValueError):
        return WorkerOptions.drain_timeout


def _bad_worker_numbers(args: argparse.Namespace) -> str | None:
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


def _info(args: argparse.Namespace) -> int:
    import json

    from zmqworkers.client.info import format_table, query_info
    from zmqworkers.errors import ConfigurationError

    try:
        address, key = _address_and_key(args)
    except ConfigurationError as exc:
        print(f"zmqworkers info: {exc}", file=sys.stderr)
        return 2
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
