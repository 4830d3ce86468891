"""The README's two set-up commands work as written on a fresh clone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set up.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no bash block under '## Set up'"
    lines = [ln.split("#", 1)[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln]


def test_readme_names_two_commands_and_ci_runs_the_test_command() -> None:
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    assert "zmqworkers demo" in cmds[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[1] in ci, f".ci/run must call the README's test command {cmds[1]!r}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_command_works_on_a_fresh_clone(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True, timeout=60
    )
    # A fresh environment that sees the already-installed dependencies, so
    # the command runs as written without fetching anything it need not.
    env_dir = tmp_path / "env"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    bindir = env_dir / "bin"
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(env_dir)
    env.pop("PYTHONPATH", None)
    env.pop("ZMQWORKERS_KEY", None)
    demo = readme_commands()[0]
    proc = subprocess.run(
        ["bash", "-c", demo],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "100.0 %" in proc.stdout
    assert "map(pow, range(10), 2) = [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in proc.stdout
    # It ran the clone's code from the fresh environment, not the checkout's.
    assert (bindir / "zmqworkers").exists()
    assert sys.executable != str(bindir / "python")
