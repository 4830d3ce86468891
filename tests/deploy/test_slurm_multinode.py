"""SlurmJobs with jobs on other hosts: slurmds on network-namespace hosts.

slurmctld and the controller run on the namespace host "ctl", one slurmd on
each of h1, h2 and h3 (tests/multihost/netns.py): the daemons Slurm starts
dial the controller across the bridge, as from compute nodes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.slurm_helpers import SlurmCluster, netns_slurm_cluster
from tests.multihost.netns import Network, why_unavailable

pytestmark = pytest.mark.slow

NODES = ["h1", "h2", "h3"]


@pytest.fixture(scope="module")
def net() -> Iterator[Network]:
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    network = Network()
    try:
        for name in ("ctl", *NODES):
            network.add_host(name)
        yield network
    finally:
        network.close()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory, net: Network) -> Iterator[SlurmCluster]:
    yield from netns_slurm_cluster(tmp_path_factory, net, NODES)


CONTROLLER = """\
import logging, secrets, sys, threading, time
from zmqworkers import Cluster
from zmqworkers.slurm import SlurmJobs

logging.basicConfig(level=logging.INFO, format="%(message)s")

def nap_square(x):
    time.sleep(0.1)
    return x * x

address, conn, output = sys.argv[1:4]
most, stop = set(), threading.Event()
with Cluster(0, bind=address, key=secrets.token_hex(32), connection_file=conn) as cluster:
    jobs = SlurmJobs(cluster, conn, processes=1, walltime="10:00", drain_timeout=10,
                     death_timeout=60, interval=0.5, output=output)

    def sample():
        while not stop.wait(0.2):
            prefixes = {w["id"].rsplit("-", 1)[0] for w in cluster.workers()}
            if len(prefixes) > len(most):
                most.clear(); most.update(prefixes)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        jobs.adapt(minimum=0, maximum=3, cooldown=2, idle_wait=3)
        t0 = time.monotonic()
        results = list(cluster.map(nap_square, range(600), timeout=150))
        ran = time.monotonic() - t0
        print("ok", results == [x * x for x in range(600)], cluster.counters()["delivered"])
        t1 = time.monotonic()
        deadline = t1 + 60
        while jobs.jobs() and time.monotonic() < deadline:
            time.sleep(0.2)
        print("left", sorted(jobs.jobs()), f"gone_after={time.monotonic() - t1:.1f}")
        print("submitted", " ".join(jobs.submitted), f"ran={ran:.1f}")
    finally:
        stop.set()
        jobs.close()
print("most", len(most))
"""


@pytest.mark.timeout(240)
def test_adapt_grows_to_3_jobs_on_3_hosts_and_retires_them(
    slurm: SlurmCluster, net: Network, tmp_path: Path
) -> None:
    share = tmp_path / "share"
    share.mkdir(mode=0o700)
    script = share / "controller.py"
    script.write_text(CONTROLLER)
    address = f"tcp://{net.hosts['ctl'].ip}:0"
    try:
        done = subprocess.run(
            [
                *slurm.client, sys.executable, str(script), address,
                str(share / "conn.json"), str(share / "job-%j.out"),
            ],
            env=slurm.env, capture_output=True, text=True, timeout=200,
        )  # fmt: skip
    finally:
        slurm.cancel_every_job()
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "ok True 600" in out, (out, done.stderr[-3000:])
    assert "left []" in out, out
    assert "most 3" in out, out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("submitted ")]
    submitted = line.split()[1:-1]
    assert len(submitted) == 3, line
    # The three jobs ran on three hosts, none of them the controller's.
    listing = slurm.run("squeue", "-h", "-t", "all", "-o", "%i %N").stdout
    nodes = dict(ln.split() for ln in listing.splitlines() if len(ln.split()) == 2)
    assert {nodes[j] for j in submitted} == set(NODES), listing
    # Each decision is one line saying why.
    assert re.search(r"decision=submit .*submit \d", done.stderr), done.stderr[-3000:]
    assert "decision=retire" in done.stderr
    logs = "".join(p.read_text(errors="replace") for p in share.glob("job-*.out"))
    assert logs.count("event=drained") == 3, logs[-3000:]
    print(" ".join(re.findall(r"(?:gone_after|ran)=\S+", out)))
