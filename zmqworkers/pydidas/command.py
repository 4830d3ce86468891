"""``zmqworkers pydidas-workflow``: process a pydidas scan on local workers or on daemons.

The output directory gets what ``run-pydidas-workflow`` writes there: one
``node_NN.nxs`` (or ``node_NN_<label>.nxs``) file per node with results.
This module imports pydidas only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """Add the command to the ``zmqworkers`` subparsers."""
    p = sub.add_parser(
        "pydidas-workflow",
        help="run a pydidas workflow over a scan (local workers or daemons), with a progress bar",
    )
    p.add_argument("--workflow", required=True, metavar="TREE", help="the workflow tree file")
    p.add_argument("--scan", required=True, metavar="SCAN", help="the scan file")
    p.add_argument(
        "--diffraction-exp",
        required=True,
        metavar="EXP",
        help="the diffraction experiment file",
    )
    p.add_argument("--output-dir", required=True, metavar="OUTDIR", help="where results go")
    p.add_argument(
        "--overwrite", action="store_true", help="write into OUTDIR even if it holds files"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=int, help="local workers (default: pydidas's mp_n_workers setting)"
    )
    where.add_argument("--bind", help="serve worker daemons that connect to this address")
    p.add_argument("--key-file", help="shared key for the daemons (else $ZMQWORKERS_KEY)")
    p.add_argument(
        "--progress",
        choices=["auto", "bar", "none"],
        default="auto",
        help="a bar on a terminal (auto), always, or none",
    )


def _fail(text: str) -> int:
    print(f"zmqworkers pydidas-workflow: {text}", file=sys.stderr)
    return 2


def _check_args(args: argparse.Namespace) -> str | None:
    for name, value in (
        ("--workflow", args.workflow),
        ("--scan", args.scan),
        ("--diffraction-exp", args.diffraction_exp),
    ):
        if not Path(value).is_file():
            return f"{name} {value}: no such file"
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        return f"--output-dir {out}: exists and is not a directory"
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        return f"--output-dir {out} is not empty: give --overwrite to write into it"
    if args.workers is not None and args.workers < 1:
        return f"--workers must be 1 or more, not {args.workers}"
    if args.bind is not None and args.key_file is None and not os.environ.get("ZMQWORKERS_KEY"):
        return "--bind needs a key: --key-file FILE or $ZMQWORKERS_KEY"
    if args.key_file is not None and args.bind is None:
        return "--key-file is for daemons: give --bind ADDRESS with it"
    return None


def run(args: argparse.Namespace) -> int:
    bad = _check_args(args)
    if bad:
        return _fail(bad)
    # pydidas's Qt application, its apps and its runner all read sys.argv
    # with prefix matching (our --scan would be its -scan, -s its -screen):
    # they must see none of this command's arguments.
    saved_argv = sys.argv
    sys.argv = saved_argv[:1]
    try:
        return _run(args)
    finally:
        sys.argv = saved_argv


def _run(args: argparse.Namespace) -> int:
    from pydidas.contexts import DiffractionExperimentContext, ScanContext
    from pydidas.core import UserConfigError
    from pydidas.workflow import WorkflowResults, WorkflowTree
    from pydidas.workflow.result_io import ProcessingResultIoMeta

    from zmqworkers.errors import ZmqWorkersError
    from zmqworkers.pydidas import frames
    from zmqworkers.pydidas.workflow import ClusterSpec, ScanPointFailed, iter_points, store_point

    tree, scan, exp, results = WorkflowTree(), ScanContext(), DiffractionExperimentContext(), None
    try:
        scan.import_from_file(args.scan)
        exp.import_from_file(args.diffraction_exp)
        tree.import_from_file(args.workflow)
        results = WorkflowResults()
        ProcessingResultIoMeta.set_active_savers_and_title([])
        results.prepare_new_results()
        tree.prepare_execution()
    except (UserConfigError, OSError, ValueError, KeyError) as exc:
        return _fail(f"cannot load the workflow, scan or experiment: {exc}")
    n_points = int(scan.n_points)
    if args.bind is not None:
        key = None if args.key_file else os.environ["ZMQWORKERS_KEY"]
        where = ClusterSpec(bind=args.bind, key=key, key_file=args.key_file)
        n_workers = 0
    else:
        where = ClusterSpec()
        n_workers = args.workers if args.workers is not None else _pydidas_workers()
    state = frames.capture_state(run=os.urandom(6).hex())
    stored: dict[str, Any] = {}
    unreadable = 0
    started = time.monotonic()
    try:
        cluster = where.start(n_workers)
    except (ZmqWorkersError, OSError, ValueError) as exc:
        return _fail(f"cannot start the workers: {exc}")
    bar = _progress(args.progress, n_points)
    try:
        if where.remote:
            print(
                f"serving worker daemons at {cluster.address} "
                f"(zmqworkers worker {cluster.address} --key-file ...)",
                file=sys.stderr,
            )
        for index, frame in iter_points(cluster, state, range(n_points)):
            if not store_point(index, frame, stored, results):
                unreadable += 1
            if bar is not None:
                bar.update(1)
    except KeyboardInterrupt:
        print("zmqworkers pydidas-workflow: interrupted; nothing written", file=sys.stderr)
        return 130
    except ScanPointFailed as exc:
        # The run stops at the first point that raised: files with that
        # point (and those never processed) left empty would look complete.
        print(
            f"zmqworkers pydidas-workflow: {exc}\nnothing written to {args.output_dir}",
            file=sys.stderr,
        )
        print(getattr(exc.remote, "remote_traceback", ""), file=sys.stderr)
        return 1
    except Exception as exc:
        print(
            f"zmqworkers pydidas-workflow: processing failed: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    finally:
        if bar is not None:
            bar.close()
        cluster.shutdown(cancel_futures=True)
    elapsed = time.monotonic() - started
    try:
        results.save_results_to_disk(args.output_dir, ".hdf5", overwrite=args.overwrite)
    except (UserConfigError, OSError) as exc:
        return _fail(f"cannot write the results to {args.output_dir}: {exc}")
    print(
        f"{n_points} scan points processed in {elapsed:.2f} s"
        + (f" ({unreadable} unreadable, left empty)" if unreadable else "")
        + f"; results in {args.output_dir}",
        file=sys.stderr,
    )
    return 0


def _pydidas_workers() -> int:
    from zmqworkers.pydidas.wire import default_n_workers

    return default_n_workers()


def _progress(mode: str, total: int) -> Any:
    if mode == "none" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="point", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
