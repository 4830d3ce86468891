"""A private Slurm for tests: munged, slurmctld and slurmd run by the test as processes it owns.

The configuration sits in a temporary directory, on free loopback ports.
The one node says it has more CPUs than this machine (slurmd is told to
trust the configuration) and every CPU may be shared, so several jobs of
one CPU run at once on a two-core machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.deploy.helpers import subprocess_env

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "squeue")


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
KillWait=5
InactiveLimit=0
NodeName={node} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
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

    def live_jobs(self) -> list[str]:
        out = self.run("squeue", "-h", "-t", "PD,CF,R,CG,S", "-o", "%i", timeout=10)
        return out.stdout.split() if out.returncode == 0 else []

    def cancel_every_job(self, timeout: float = 30) -> None:
        """scancel whatever a test left, and wait (bounded) until none is left."""
        if self.procs and all(p.poll() is None for p in self.procs):
            left = self.live_jobs()
            if left:
                self.run("scancel", "--signal=KILL", *left, timeout=10)
                self.run("scancel", *left, timeout=10)
            deadline = time.monotonic() + timeout
            while self.live_jobs() and time.monotonic() < deadline:
                time.sleep(0.2)

    def stop(self) -> None:
        self.cancel_every_job()
        # Last started, first ended: slurmd, slurmctld, then munged.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
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
