"""SlurmJobs on a real Slurm (tests/deploy/slurm_helpers.py): submit, scale, adapt, retire.

The controller is a Cluster in this test process, outside any allocation;
the jobs' daemons are started by slurmd and reach it on loopback through a
connection file. Every job is cancelled at teardown.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.deploy.slurm_helpers import SlurmCluster, slurm_cluster
from zmqworkers import Cluster
from zmqworkers.errors import WorkerLost
from zmqworkers.slurm import SlurmCommands, SlurmJobs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    yield from slurm_cluster(tmp_path_factory)


@pytest.fixture
def share(slurm: SlurmCluster, tmp_path: Path) -> Iterator[Path]:
    """A folder standing for the shared filesystem; no job outlives the test."""
    d = tmp_path / "share"
    d.mkdir(mode=0o700)
    yield d
    slurm.cancel_every_job()


def nap_square(x: int) -> int:
    time.sleep(0.1)
    return x * x


def nap_square_slow_again(x: int, folder: str) -> int:
    """As nap_square; run a second time (its worker was lost), it takes 5 s.

    The controller sees a job's end on a later poll than the loss of its
    worker: a task run again at once would be done, and its record gone,
    before the attempt it was charged could be taken back.
    """
    ran = os.path.join(folder, str(x))
    if os.path.exists(ran):
        time.sleep(5)
    else:
        open(ran, "w").close()
    time.sleep(0.1)
    return x * x


def _cluster(share: Path, key: str, **kw: object) -> Cluster:
    return Cluster(0, bind="tcp://127.0.0.1:0", key=key, connection_file=share / "conn.json", **kw)


def _jobs(cluster: Cluster | None, slurm: SlurmCluster, share: Path, **kw: object) -> SlurmJobs:
    options: dict[str, object] = {
        "processes": 1,
        "walltime": "10:00",
        "drain_timeout": 10,
        "death_timeout": 60,
        "interval": 0.5,
        "output": str(share / "job-%j.out"),
        "commands": SlurmCommands(timeout=30, env=slurm.env),
    }
    options.update(kw)
    return SlurmJobs(cluster, share / "conn.json", **options)


class JobSampler:
    """The most jobs whose workers were connected at once, sampled from the face."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                ids = {re.sub(r"-\d+(r\d+)?$", "", w["id"]) for w in self.cluster.workers()}
            except Exception:  # noqa: BLE001 - the cluster closed under the sampler
                return
            self.most = max(self.most, len(ids))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _log_of(share: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(share.glob("job-*.out")))


def test_job_script_passes_sbatch_test_only_and_holds_no_key(
    slurm: SlurmCluster, share: Path
) -> None:
    key = secrets.token_hex(32)
    with _cluster(share, key) as cluster:
        jobs = _jobs(
            cluster,
            slurm,
            share,
            processes=2,
            partition="debug",
            job_name="zmqw-check",
            directives=["--comment=zmqworkers"],
            setup=["echo setting up"],
        )
        try:
            script = jobs.job_script()
            answer = jobs.commands.submit(script, test_only=True)
        finally:
            jobs.close()
    assert re.search(r"to start at", answer), answer
    assert key not in script and "--key" not in script
    assert f"--connection-file {share / 'conn.json'}" in script
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --comment=zmqworkers" in script
    assert jobs.submitted == []  # a test submission is not a job


@pytest.mark.timeout(240)
def test_adapt_grows_from_0_to_3_jobs_then_retires_them_all(
    slurm: SlurmCluster, share: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zmqworkers.scale.slurm_jobs")
    with _cluster(share, secrets.token_hex(32)) as cluster:
        jobs = _jobs(cluster, slurm, share)
        sampler = JobSampler(cluster)
        try:
            jobs.adapt(minimum=0, maximum=3, cooldown=2, idle_wait=3)
            t0 = time.monotonic()
            results = list(cluster.map(nap_square, range(600), timeout=150))
            ran = time.monotonic() - t0
            assert results == [x * x for x in range(600)]
            counters = cluster.counters()
            assert counters["delivered"] == 600, counters
            t1 = time.monotonic()
            # Drained and gone from squeue within a bound once the queue is empty.
            wait_for(lambda: not jobs.jobs(), timeout=60, interval=0.2)
            gone = time.monotonic() - t1
            alive = slurm.live_jobs()
            assert not set(jobs.submitted) & set(alive), alive
        finally:
            sampler.stop()
            jobs.close()
    assert sampler.most == 3, sampler.most
    assert len(jobs.submitted) == 3
    decisions = [r.getMessage() for r in caplog.records if "decision=" in r.getMessage()]
    assert any("decision=submit" in d and "submit 3" in d for d in decisions), decisions
    assert sum("decision=retire" in d for d in decisions) >= 1, decisions
    assert "event=drained" in _log_of(share)
    print(f"600 tasks on 0->3 jobs: {ran:.1f} s; all jobs gone {gone:.1f} s after the last result")


def test_a_job_killed_mid_run_costs_no_attempt_and_is_replaced(
    slurm: SlurmCluster, share: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zmqworkers.scale.slurm_jobs")
    # Two attempts: a loss blamed on its task would still leave it an attempt,
    # and only the count of attempts taken back tells the two apart.
    with _cluster(share, secrets.token_hex(32), max_attempts=2) as cluster:
        jobs = _jobs(cluster, slurm, share)
        try:
            jobs.scale(jobs=2)
            runs = share / "runs"
            runs.mkdir()
            stream = cluster.imap_unordered(nap_square_slow_again, range(300), str(runs))
            got = [next(stream) for _ in range(20)]
            wait_for(lambda: len({w["id"] for w in cluster.workers()}) == 2, timeout=60)
            victim = next(
                w for w in cluster.workers() if w["in_flight"] and w["id"].startswith("slurm")
            )
            job_id = victim["id"][len("slurm") :].split("-")[0]
            # As a node that fails: the worker dies mid-call with no goodbye,
            # then Slurm kills what is left of its job.
            os.kill(victim["pid"], signal.SIGKILL)
            killed = slurm.run("scancel", "--signal=KILL", job_id)
            assert killed.returncode == 0, killed.stderr
            got += list(stream)
            wait_for(lambda: len(jobs.submitted) == 3, timeout=30)
            # The job's end is seen on a poll of its own, which may come
            # after the replacement was submitted.
            excused = wait_for(
                lambda: cluster.counters()["attempts_excused"], timeout=30, interval=0.1
            )
        finally:
            jobs.close()
    # Each exactly once, and none failed.
    assert sorted(i for i, _ in got) == list(range(300))
    assert all(v == i * i for i, v in got)
    assert isinstance(excused, int) and excused >= 1
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    assert re.search(rf"event=ended job={job_id} state=\S+ early", log_text), log_text


def kill_my_job(_: int) -> None:
    """A task that takes its whole job down: the daemon first, then its own process."""
    os.kill(int(os.environ["ZMQWORKERS_SUPERVISOR_PID"]), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(240)
def test_a_task_that_kills_its_jobs_fails_after_max_attempts(
    slurm: SlurmCluster, share: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its jobs end FAILED: not excused, so each counts an attempt. Before,
    # every ended job was excused and the task went to job after job.
    caplog.set_level(logging.INFO, logger="zmqworkers.scale.slurm_jobs")
    with _cluster(share, secrets.token_hex(32), max_attempts=2) as cluster:
        jobs = _jobs(cluster, slurm, share)
        try:
            jobs.scale(jobs=1)
            with pytest.raises(WorkerLost) as info:
                cluster.submit(kill_my_job, 0).result(timeout=150)
            assert cluster.submit(nap_square, 3).result(timeout=60) == 9
            counters = cluster.counters()
        finally:
            jobs.close()
    assert len(info.value.deaths) == 2, info.value.deaths
    assert counters.get("attempts_excused", 0) == 0, counters
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    assert re.search(r"event=ended job=\d+ state=FAILED early, not excused", log_text), log_text


@pytest.mark.timeout(240)
def test_a_job_at_its_walltime_drains_first_and_is_replaced(
    slurm: SlurmCluster, share: Path
) -> None:
    with _cluster(share, secrets.token_hex(32)) as cluster:
        # One minute: the daemon leaves at 50 s, draining from 40 s.
        jobs = _jobs(cluster, slurm, share, walltime="1", drain_timeout=10)
        try:
            jobs.scale(jobs=1)
            results = list(cluster.map(nap_square, range(600), timeout=170))
            first = jobs.submitted[0]
            states = jobs.commands.states([first])
        finally:
            jobs.close()
    assert results == [x * x for x in range(600)]
    assert states[first] == "COMPLETED", states  # not TIMEOUT: it left by itself
    assert len(jobs.submitted) >= 2
    out = _log_of(share)
    assert "reason=lifetime" in out or "event=drain" in out, out[-2000:]


def test_close_cancels_pending_jobs_too(slurm: SlurmCluster, share: Path) -> None:
    (share / "conn.json").write_text("{}")
    (share / "conn.json").chmod(0o600)
    jobs = _jobs(None, slurm, share, directives=["--begin=now+3600"])
    jobs.scale(jobs=2)
    wait_for(lambda: len(jobs.submitted) == 2, timeout=30, interval=0.1)
    ids = jobs.submitted
    assert set(jobs.commands.states(ids).values()) == {"PENDING"}
    jobs.close()
    assert set(jobs.commands.states(ids).values()) == {"CANCELLED"}


KILLED_CONTROLLER = """\
import secrets, sys, time
from zmqworkers import Cluster
from zmqworkers.slurm import SlurmJobs

conn, output = sys.argv[1:3]
cluster = Cluster(0, bind="tcp://127.0.0.1:0", key=secrets.token_hex(32), connection_file=conn)
jobs = SlurmJobs(cluster, conn, walltime="10:00", death_timeout=5, interval=0.5, output=output)
jobs.scale(jobs=1)
cluster.wait_for_workers(1, timeout=60)
print("ready", jobs.submitted[0], flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(150)
def test_a_killed_controller_leaves_no_job_beyond_the_death_timeout(
    slurm: SlurmCluster, share: Path
) -> None:
    script = share / "controller.py"
    script.write_text(KILLED_CONTROLLER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(share / "conn.json"), str(share / "job-%j.out")],
        env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded by the script's own 60 s wait
        assert line.startswith("ready "), line
        job_id = line.split()[1]
        # SIGKILL: no close(), no atexit, no goodbye to the daemon.
        proc.kill()
        proc.wait(10)
        t0 = time.monotonic()
        assert job_id in slurm.live_jobs()
        wait_for(lambda: job_id not in slurm.live_jobs(), timeout=60, interval=0.2)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert took < 5 + 15, took
    print(f"job left {took:.1f} s after its controller was killed (death timeout 5 s)")


CONTROLLER = """\
import os, secrets, sys
from zmqworkers import Cluster

with Cluster(0, bind="tcp://127.0.0.1:0", key=secrets.token_hex(32),
             connection_file=os.environ["ZMQWORKERS_CONNECTION_FILE"]) as cluster:
    cluster.wait_for_workers(int(os.environ["ZMQWORKERS_WORKERS"]), timeout=90)
    hosts = {w["id"].split("-")[0] for w in cluster.workers()}
    total = sum(cluster.map(abs, range(-100, 100)))
print(f"total={total} jobs={len(hosts)}")
"""


@pytest.mark.timeout(200)
def test_the_slurm_command_runs_a_controller_with_its_jobs_and_cancels_them(
    slurm: SlurmCluster, share: Path
) -> None:
    script = share / "controller.py"
    script.write_text(CONTROLLER)
    done = subprocess.run(
        [
            sys.executable, "-m", "zmqworkers", "--log-level", "INFO", "slurm",
            "--jobs", "2", "--connection-file", str(share / "conn.json"),
            "--walltime", "10:00", "--death-timeout", "60",
            "--output", str(share / "job-%j.out"),
            "--", sys.executable, str(script),
        ],
        env=slurm.env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "total=10000 jobs=2" in done.stdout, (done.stdout, done.stderr)
    submitted = re.findall(r"event=submitted job=(\d+)", done.stderr)
    assert len(submitted) == 2, done.stderr
    assert "event=cancelled" in done.stderr
    # Cancelled when the controller ended: no job is left holding the node.
    wait_for(lambda: not set(submitted) & set(slurm.live_jobs()), timeout=30, interval=0.2)


SEED_ON_SLURM = """\
import os, secrets, sys, time
import numpy as np
from qtpy import QtTest
import zmqworkers
from zmqworkers.errors import WorkerLost
from zmqworkers.slurm import SlurmCommands, SlurmJobs

def test_func(task, slope, offset):
    time.sleep(0.1)  # long enough for the loop below to see who runs it
    return task * slope + offset

conn = sys.argv[1]
worker_controller = zmqworkers.WorkerController(
    0, bind="tcp://127.0.0.1:0", key=secrets.token_hex(32), connection_file=conn)
jobs = SlurmJobs(worker_controller, conn, processes=2, walltime="10:00", death_timeout=60,
                 interval=0.5, output=sys.argv[2])
worker_controller.change_function(test_func, 2, 5)
result_spy = QtTest.QSignalSpy(worker_controller.sig_results)
worker_controller.add_tasks(np.arange(10))
worker_controller.finalize_tasks()
worker_controller.start()
jobs.scale(jobs=1)
deadline = time.monotonic() + 90
workers = set()
while worker_controller.progress < 1 and time.monotonic() < deadline:
    workers |= {w["id"] for w in worker_controller.workers() if w["tasks_done"] or w["in_flight"]}
    time.sleep(0.05)
print("results", sorted((int(a), int(b)) for a, b in result_spy))
print("workers", sorted(workers))
print("jobs", jobs.submitted)
worker_controller.shutdown()
jobs.close()
"""


@pytest.mark.timeout(200)
def test_a_worker_controller_runs_the_seed_example_on_slurm_workers(
    slurm: SlurmCluster, share: Path
) -> None:
    pytest.importorskip("qtpy", reason="needs a Qt binding")
    script = share / "seed_on_slurm.py"
    script.write_text(SEED_ON_SLURM)
    env = dict(slurm.env, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run(
        [sys.executable, str(script), str(share / "conn.json"), str(share / "job-%j.out")],
        env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"results {[(i, 2 * i + 5) for i in range(10)]}" in done.stdout, done.stdout
    (job_id,) = re.findall(r"jobs \['(\d+)'\]", done.stdout)
    # Every result came from the job's two worker processes, none local.
    workers = re.search(r"workers (\[.*\])", done.stdout)
    assert workers, done.stdout
    seen = set(ast.literal_eval(workers.group(1)))
    assert seen and seen <= {f"slurm{job_id}-0", f"slurm{job_id}-1"}, seen
    wait_for(lambda: job_id not in slurm.live_jobs(), timeout=30, interval=0.2)


def test_the_faces_shutdown_cancels_the_jobs(slurm: SlurmCluster, share: Path) -> None:
    with _cluster(share, secrets.token_hex(32)) as cluster:
        jobs = _jobs(cluster, slurm, share, directives=["--begin=now+3600"])
        jobs.scale(jobs=1)
        wait_for(lambda: jobs.jobs(), timeout=30, interval=0.1)
        (job_id,) = jobs.submitted
    # No close(): the watch thread sees the cluster closed within an interval.
    wait_for(lambda: job_id not in slurm.live_jobs(), timeout=15, interval=0.2)
    assert jobs.commands.states([job_id]) == {job_id: "CANCELLED"}


def test_a_job_slurm_no_longer_knows_is_gone(slurm: SlurmCluster) -> None:
    commands = SlurmCommands(timeout=30, env=slurm.env)
    # squeue refuses a list of purged ids outright; sacct has no accounting here.
    assert commands.states(["999999"]) == {"999999": "GONE"}
