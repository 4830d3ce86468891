"""deploy/slurm/zmqworkers.sbatch on a real single-node Slurm, started by the test.

munged, slurmctld and slurmd run from a configuration in a temporary
directory, on free loopback ports, as processes this test owns. The job has
3 tasks: the controller script on the first, a worker daemon on each other.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for
from tests.deploy.helpers import REPO, subprocess_env

SBATCH_SCRIPT = REPO / "deploy" / "slurm" / "zmqworkers.sbatch"
CONTROLLER = REPO / "deploy" / "slurm" / "example_controller.py"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "squeue")

pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _conf(d: Path, node: str, ctld_port: int, slurmd_port: int) -> str:
    return f"""\
ClusterName=zmqtest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MinJobAge=300
NodeName={node} NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""


class SlurmCluster:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.conf = directory / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = subprocess_env()
        self.env["SLURM_CONF"] = str(self.conf)

    def spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.dir / f"{name}.out", "wb")  # noqa: SIM115 - child holds it
        try:
            self.procs.append(
                subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
            )
        finally:
            out.close()

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        # Last started, first ended: slurmd, slurmctld, then munged.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        pytest.skip("a private Slurm needs root (slurmd runs jobs as their users)")
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"Slurm or munge not installed ({', '.join(missing)} missing): "
            "run scripts/install-system-deps.sh as root"
        )
    d = tmp_path_factory.mktemp("slurm")
    d.chmod(0o755)  # munge clients must reach the socket
    (d / "state").mkdir()
    (d / "spool").mkdir()
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = _free_ports(2)
    (d / "slurm.conf").write_text(_conf(d, node, ctld_port, slurmd_port))
    # No cgroup plugin is used (proctrack/linuxproc, task/none); slurmd
    # still reads this file and detects the cgroup version by itself.
    (d / "cgroup.conf").write_text("CgroupPlugin=autodetect\n")
    cluster = SlurmCluster(d)
    try:
        cluster.spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={d}/munge.sock",
                f"--key-file={key}",
                f"--pid-file={d}/munged.pid",
                f"--log-file={d}/munged.log",
                f"--seed-file={d}/munged.seed",
            ],
        )
        wait_for(lambda: (d / "munge.sock").exists(), timeout=10)
        cluster.spawn("slurmctld", ["slurmctld", "-D", "-f", str(cluster.conf)])
        cluster.spawn("slurmd", ["slurmd", "-D", "-f", str(cluster.conf)])

        def idle() -> bool:
            for p in cluster.procs:
                if p.poll() is not None:
                    logs = {f.name: f.read_text(errors="replace")[-2000:] for f in d.glob("*.out")}
                    raise AssertionError(f"a Slurm daemon exited early: {logs}")
            out = cluster.run("sinfo", "-h", "-o", "%T", timeout=10)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        wait_for(idle, timeout=30, interval=0.2)
        yield cluster
    finally:
        cluster.stop()


def _daemons_of(job_dir: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(job_dir in arg for arg in p.info["cmdline"] or ()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_sbatch_script_runs_controller_and_two_daemons(slurm: SlurmCluster) -> None:
    work = slurm.dir / "job"
    work.mkdir()
    env = slurm.env
    env["ZMQWORKERS_PYTHON"] = sys.executable
    # Loopback only: the test's traffic stays on this machine.
    env["ZMQWORKERS_BIND"] = "tcp://127.0.0.1:0"
    env["ZMQWORKERS_DRAIN_TIMEOUT"] = "10"
    env["ZMQWORKERS_DEATH_TIMEOUT"] = "60"
    t0 = time.monotonic()
    submitted = slurm.run(
        "sbatch",
        "--parsable",
        "--ntasks=3",
        "--time=5",
        f"--chdir={work}",
        f"--output={work}/job-%j.out",
        str(SBATCH_SCRIPT),
        str(CONTROLLER),
        "2000",
        timeout=30,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]

    def ended() -> str | None:
        show = slurm.run("scontrol", "show", "job", job_id).stdout
        m = re.search(r"JobState=(\S+)", show)
        return show if m and m.group(1) not in ("PENDING", "RUNNING", "COMPLETING") else None

    state = str(wait_for(ended, timeout=60, interval=0.2))
    took = time.monotonic() - t0
    out_files = list(work.glob("job-*.out"))
    output = out_files[0].read_text() if out_files else ""
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, (state, output)
    # The controller's results are right, and the work was done by two daemons.
    assert f"sum={sum(x * x for x in range(2000))} n=2000 ok=True" in output, output
    assert "workers=2 " in output, output
    # --time=5: the daemons drain before 300 s, less the 15 s margin for srun.
    lifetime = re.search(r"2 daemon\(s\) x 1 process\(es\), --lifetime (\d+)", output)
    assert lifetime and 260 <= int(lifetime.group(1)) <= 285, output
    assert len(re.findall(r"event=start .* lifetime=\d+\.0 drain_timeout=10\.0", output)) == 2
    assert "controller exited with status 0" in output
    # Both daemons drained when the controller ended, none was killed.
    assert len(re.findall(r"zmqworkers-daemon event=drained", output)) == 2, output
    assert "event=child_killed" not in output
    # No daemon is left over, and the job's key went with it.
    job_dir = str(work / f".zmqworkers-{job_id}")
    wait_for(lambda: not _daemons_of(job_dir), timeout=10)
    assert not Path(job_dir).exists()
    print(f"slurm job {job_id} took {took:.1f} s")
