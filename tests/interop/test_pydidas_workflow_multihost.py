"""pydidas workflows on daemons in other hosts (network namespaces).

The controller runs on host ``ctl``: pydidas's ExecuteWorkflowRunner with
``install(BIND, key_file=...)`` (tests/interop/workflow_fixtures.py), or
``zmqworkers pydidas-workflow --bind``. A 2-process daemon on ``h1`` does
the work. Shared memory cannot cross hosts; the files must still hold
the numpy result, and pydidas's layout.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop import workflow_fixtures as wf
from tests.multihost.conftest import KEY, controller_address, host_env, start_worker
from tests.multihost.netns import Network, why_unavailable

pytestmark = [pytest.mark.multihost, pytest.mark.slow]

RUN_SECONDS = 150


@pytest.fixture
def hosts() -> Iterator[Network]:
    """A controller host and a worker host (the multihost suite's ``net``, smaller)."""
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    network = Network()
    try:
        for name in ("ctl", "h1"):
            network.add_host(name)
        yield network
    finally:
        network.close()


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "net.key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    return path


def run_controller(net: Network, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    proc = net.start(
        "ctl", argv, env=host_env("ctl"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(timeout=RUN_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"the controller did not finish in {RUN_SECONDS} s: {err.decode()[-2000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def runner_argv(net: Network, key_path: Path, workflow: wf.Workflow, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.interop.workflow_fixtures",
        controller_address(net),
        str(key_path),
        str(workflow.tree),
        str(workflow.scan),
        str(workflow.exp),
        str(out),
    ]


@pytest.mark.parametrize("which", ["real", "dummy"])
def test_process_scan_on_a_daemon_in_another_host(
    hosts: Network, key_path: Path, tmp_path: Path, which: str
) -> None:
    workflow = (wf.real_workflow if which == "real" else wf.dummy_workflow)(tmp_path / "in")
    start_worker(hosts, "h1", "h1-d", "--processes", "2")
    runs = 2 if which == "real" else 1
    for run in range(runs):
        out = tmp_path / f"out{run}"
        done = run_controller(hosts, runner_argv(hosts, key_path, workflow, out))
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        wf.check_outputs(out, workflow)


def test_command_on_a_daemon_in_another_host(
    hosts: Network, key_path: Path, tmp_path: Path
) -> None:
    workflow = wf.real_workflow(tmp_path / "in")
    out = tmp_path / "out"
    start_worker(hosts, "h1", "h1-d", "--processes", "2")
    argv = [sys.executable, "-m", "zmqworkers", "pydidas-workflow"]
    argv += ["--workflow", str(workflow.tree), "--scan", str(workflow.scan)]
    argv += ["--diffraction-exp", str(workflow.exp), "--output-dir", str(out)]
    argv += ["--bind", controller_address(hosts), "--key-file", str(key_path)]
    done = run_controller(hosts, argv)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert "serving worker daemons at" in done.stderr.decode()
    wf.check_outputs(out, workflow)
