"""``zmqworkers run``'s bar on real terminals (tmux, ``script``), and ``info --watch``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
JOB = textwrap.dedent(
    """
    import time

    def work(x):
        time.sleep(0.005)
        return 2 * x
    """
)


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "jobmod.py").write_text(JOB)
    return tmp_path


def _env(job_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{job_dir}"
    return env


RUN = [sys.executable, "-m", "zmqworkers", "run", "jobmod:work", "--range", "0:400"]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_on_a_100_column_tmux_terminal_the_bar_stays_whole_below_the_log(job_dir: Path) -> None:
    sock = str(job_dir / "tmux.sock")
    tmux = ["tmux", "-S", sock]
    command = " ".join([*RUN, "--workers", "2"]) + "; echo EXIT=$?; sleep 60"
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "100", "-y", "40", "-c", str(job_dir), command],
        env=_env(job_dir),
        check=True,
        timeout=30,
    )
    try:

        def screen() -> str:
            out = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", "0"], capture_output=True, text=True, timeout=30
            )
            return out.stdout if "EXIT=" in out.stdout else ""

        text = wait_for(screen, timeout=90, interval=0.2)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)
    assert isinstance(text, str)
    lines = text.splitlines()
    assert "EXIT=0" in lines
    bars = [i for i, line in enumerate(lines) if "task/s]" in line]
    assert len(bars) == 1, text  # one bar, drawn in place
    bar = lines[bars[0]]
    # Whole: 100 %, a full bar, the count; no log line glued to it; fits the width.
    assert re.match(r"^100%\|█+\| 400/400 \[", bar), bar
    assert len(bar) <= 100
    joined = [i for i, line in enumerate(lines) if " joined (host " in line]
    assert len(joined) == 2, text
    assert max(joined) < bars[0], "a log line came below the bar"
    assert not any("INFO" in line and "task/s" in line for line in lines)
    assert "400 of 400 tasks done" in lines[bars[0] + 1]


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script (util-linux)")
def test_under_script_with_no_size_the_bar_still_shows_100_percent(job_dir: Path) -> None:
    # stdin is no terminal: script's pseudo-terminal gets no size (0 x 0).
    command = " ".join([*RUN, "--workers", "2"])
    out = subprocess.run(
        ["script", "-q", "-e", "-c", command, "/dev/null"],
        cwd=job_dir,
        env=_env(job_dir),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=90,
    )
    text = out.stdout.decode("utf-8", "replace")
    assert out.returncode == 0, text
    final = [s for s in re.split(r"[\r\n]", text) if "400/400" in s]
    assert final, text
    assert re.search(r"100%\|█+\| 400/400 \[", final[-1]), final[-1]
    assert len(final[-1]) <= 80


def test_info_watch_redraws_until_ctrl_c() -> None:
    import pexpect

    from zmqworkers import Cluster

    key = "ab" * 32
    with Cluster(1, key=key) as c:
        c.wait_for_workers(1)
        wid = c.workers()[0]["id"]
        env = dict(os.environ, PYTHONPATH=str(ROOT), ZMQWORKERS_KEY=key)
        child = pexpect.spawn(
            sys.executable,
            ["-m", "zmqworkers", "info", c.address, "--watch"],
            env=env,
            encoding="utf-8",
            timeout=30,
        )
        try:
            started = time.monotonic()
            for _ in range(3):  # three redraws, each with the worker's row
                child.expect("\x1b\\[H\x1b\\[2J")
                child.expect(re.escape(wid))
                child.expect("Ctrl-C to stop")
            assert time.monotonic() - started >= 1.5  # once a second, not in a spin
            child.sendintr()
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0


def test_run_with_dashboard_logs_its_link(job_dir: Path) -> None:
    out = subprocess.run(
        [*RUN, "--workers", "1", "--dashboard", "--progress", "log"],
        cwd=job_dir,
        env=_env(job_dir),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"dashboard at http://127\.0\.0\.1:\d+/\n", out.stderr), out.stderr
