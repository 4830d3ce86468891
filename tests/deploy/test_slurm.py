"""deploy/slurm/zmqworkers.sbatch on a real single-node Slurm, started by the test.

munged, slurmctld and slurmd run from a configuration in a temporary
directory, on free loopback ports, as processes this test owns. The job has
3 tasks: the controller script on the first, a worker daemon on each other.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for
from tests.deploy.helpers import REPO
from tests.deploy.slurm_helpers import SlurmCluster, slurm_cluster

SBATCH_SCRIPT = REPO / "deploy" / "slurm" / "zmqworkers.sbatch"
CONTROLLER = REPO / "deploy" / "slurm" / "example_controller.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    yield from slurm_cluster(tmp_path_factory)


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
