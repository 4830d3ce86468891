"""``zmqworkers slurm``: worker jobs for a controller script, for as long as it runs.

::

    zmqworkers slurm --jobs 4 --processes 8 --connection-file /shared/me/conn.json \\
        -- python my_controller.py ARGS

The command submits the jobs, runs the controller script with
``ZMQWORKERS_CONNECTION_FILE`` (where the script's ``Cluster`` writes its
connection file) and ``ZMQWORKERS_WORKERS`` (the worker processes to
expect) set, replaces jobs that end early, and cancels every job when the
script ends, with the script's exit status.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from typing import Any

from zmqworkers.worker.args import positive_seconds


def add_parser(sub: Any) -> None:
    s = sub.add_parser(
        "slurm",
        help="run a controller script with worker daemons in Slurm jobs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = s.add_mutually_exclusive_group(required=True)
    size.add_argument("--jobs", type=int, help="worker jobs to keep")
    size.add_argument("--total-processes", type=int, help="worker processes to keep, in jobs")
    s.add_argument("--connection-file", required=True, help="on a directory the nodes share")
    s.add_argument("--processes", type=int, default=1, help="worker processes per job (1)")
    s.add_argument("--cores", type=int, help="--cpus-per-task (default: --processes)")
    s.add_argument("--memory", help="--mem, e.g. 16G")
    s.add_argument("--walltime", default="01:00:00", help="--time (01:00:00)")
    s.add_argument("--partition")
    s.add_argument("--account")
    s.add_argument("--qos")
    s.add_argument("--job-name", default="zmqworkers")
    s.add_argument("--sbatch", action="append", default=[], help="an extra #SBATCH line")
    s.add_argument("--setup", action="append", default=[], help="a line run before the daemon")
    s.add_argument("--python", default=sys.executable, help="the Python on the compute nodes")
    s.add_argument("--output", default="/dev/null", help="the jobs' --output (%%j: job id)")
    s.add_argument("--drain-timeout", type=positive_seconds, default=60.0)
    s.add_argument("--death-timeout", type=positive_seconds, default=300.0)
    s.add_argument("--print-script", action="store_true", help="print the job script and exit")
    s.add_argument(
        "controller", nargs=argparse.REMAINDER, help="-- the controller command and its arguments"
    )


def run(args: argparse.Namespace) -> int:
    from zmqworkers.errors import ConfigurationError, SlurmError
    from zmqworkers.scale.slurm_jobs import SlurmJobs

    command = args.controller[1:] if args.controller[:1] == ["--"] else args.controller
    try:
        jobs = SlurmJobs(
            None,
            args.connection_file,
            processes=args.processes,
            cores=args.cores,
            memory=args.memory,
            walltime=args.walltime,
            partition=args.partition,
            account=args.account,
            qos=args.qos,
            job_name=args.job_name,
            directives=tuple(args.sbatch),
            setup=tuple(args.setup),
            python=args.python,
            output=args.output,
            drain_timeout=args.drain_timeout,
            death_timeout=args.death_timeout,
        )
        if args.print_script:
            print(jobs.job_script(), end="")
            return 0
        if not command:
            raise ConfigurationError("give the controller command after --")
        if args.jobs is not None:
            jobs.scale(jobs=args.jobs)
            n_jobs = args.jobs
        else:
            jobs.scale(processes=args.total_processes)
            n_jobs = -(-args.total_processes // args.processes)
    except (ConfigurationError, SlurmError) as exc:
        print(f"zmqworkers slurm: {exc}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["ZMQWORKERS_CONNECTION_FILE"] = jobs.connection_file
    env["ZMQWORKERS_WORKERS"] = str(n_jobs * args.processes)
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        jobs.close()
        print(f"zmqworkers slurm: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return 2

    def forward(signum: int, frame: Any) -> None:
        # The controller shuts down as it chooses; the jobs go when it has.
        child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = child.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        jobs.close()
    return status if status >= 0 else 128 - status
