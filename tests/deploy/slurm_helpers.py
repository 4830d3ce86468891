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
from tests.multihost.netns import Network

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


def _conf(
    d: Path,
    ctld: tuple[str, str],
    nodes: list[tuple[str, str]],
    ctld_port: int,
    slurmd_port: int,
    cpus: int = 8,
    share: str = "FORCE",
) -> str:
    node_lines = "\n".join(
        f"NodeName={name} NodeAddr={addr} CPUs={cpus} State=UNKNOWN" for name, addr in nodes
    )
    names = ",".join(name for name, _ in nodes)
    return f"""\
ClusterName=zmqtest
SlurmctldHost={ctld[0]}({ctld[1]})
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool-%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
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
{node_lines}
PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP OverSubscribe={share}
"""


class SlurmCluster:
    """The daemons of a private Slurm, and its client commands.

    ``client`` prefixes every client command (``ip netns exec NS`` where
    slurmctld is reachable only inside a namespace host).
    """

    def __init__(self, directory: Path, client: list[str] | None = None) -> None:
        self.client = client or []
        self.dir = directory
        self.conf = directory / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = subprocess_env()
        self.env["SLURM_CONF"] = str(self.conf)

    def spawn(self, name: str, cmd: list[str], prefix: list[str] | None = None) -> None:
        cmd = [*(prefix or []), *cmd]
        out = open(self.dir / f"{name}.out", "wb")  # noqa: SIM115 - child holds it
        try:
            self.procs.append(
                subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
            )
        finally:
            out.close()

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.client, *cmd], env=self.env, capture_output=True, text=True, timeout=timeout
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


def _check_binaries() -> None:
    if os.geteuid() != 0:
        pytest.skip("a private Slurm needs root (slurmd runs jobs as their users)")
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"Slurm or munge not installed ({', '.join(missing)} missing): "
            "run scripts/install-system-deps.sh as root"
        )


def _prepare(d: Path) -> Path:
    d.chmod(0o755)  # munge clients must reach the socket
    (d / "state").mkdir()
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    # No cgroup plugin is used (proctrack/linuxproc, task/none); slurmd
    # still reads this file and detects the cgroup version by itself.
    (d / "cgroup.conf").write_text("CgroupPlugin=autodetect\n")
    return key


def _start(
    cluster: SlurmCluster,
    key: Path,
    ctld_prefix: list[str],
    slurmds: list[tuple[str, list[str]]],
) -> None:
    """munged (its socket is a file, reached from every namespace), slurmctld, the slurmds."""
    d = cluster.dir
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
    cluster.spawn("slurmctld", ["slurmctld", "-D", "-f", str(cluster.conf)], ctld_prefix)
    for node, prefix in slurmds:
        (d / f"spool-{node}").mkdir()
        cluster.spawn(
            f"slurmd-{node}", ["slurmd", "-D", "-N", node, "-f", str(cluster.conf)], prefix
        )

    def idle() -> bool:
        for p in cluster.procs:
            if p.poll() is not None:
                logs = {f.name: f.read_text(errors="replace")[-2000:] for f in d.glob("*.out")}
                raise AssertionError(f"a Slurm daemon exited early: {logs}")
        out = cluster.run("sinfo", "-h", "-N", "-o", "%T", timeout=10)
        states = out.stdout.split()
        return out.returncode == 0 and states == ["idle"] * len(slurmds)

    wait_for(idle, timeout=30, interval=0.2)


def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """One node: this machine, on loopback."""
    _check_binaries()
    d = tmp_path_factory.mktemp("slurm")
    key = _prepare(d)
    node = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = _free_ports(2)
    (d / "slurm.conf").write_text(
        _conf(d, (node, "127.0.0.1"), [(node, "127.0.0.1")], ctld_port, slurmd_port)
    )
    cluster = SlurmCluster(d)
    try:
        _start(cluster, key, [], [(node, [])])
        yield cluster
    finally:
        cluster.stop()


def netns_slurm_cluster(
    tmp_path_factory: pytest.TempPathFactory, net: Network, nodes: list[str]
) -> Iterator[SlurmCluster]:
    """slurmctld on the namespace host "ctl", a slurmd on each of ``nodes``.

    Client commands run on "ctl" too: the addresses live only in the namespaces.
    """
    _check_binaries()
    d = tmp_path_factory.mktemp("slurm")
    key = _prepare(d)
    ctl = net.hosts["ctl"]
    # slurmctld knows itself by the machine's name, which every namespace shares.
    nodes_at = [(n, net.hosts[n].ip) for n in nodes]
    # Private to the namespaces: fixed ports clash with nothing.
    (d / "slurm.conf").write_text(
        # One CPU each, not shared: one job of one CPU per host.
        _conf(d, (socket.gethostname().split(".")[0], ctl.ip), nodes_at, 6817, 6818, 1, "NO")
    )

    def on(host: str) -> list[str]:
        return ["ip", "netns", "exec", net.hosts[host].netns]

    def slurmd_on(host: str) -> list[str]:
        # The network namespace alone: `ip netns exec` would also mount a
        # fresh /sys without the cgroup hierarchy slurmd reads as it starts.
        return ["nsenter", f"--net=/run/netns/{net.hosts[host].netns}"]

    cluster = SlurmCluster(d, client=on("ctl"))
    try:
        _start(cluster, key, on("ctl"), [(n, slurmd_on(n)) for n in nodes])
        yield cluster
    finally:
        cluster.stop()
