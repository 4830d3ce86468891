"""``zmqworkers run`` on a terminal, without one, and with failing tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "jobmod.py").write_text(
        textwrap.dedent(
            """
            import time

            def work(x, scale=1):
                time.sleep(0.02)
                if x == 7:
                    raise ValueError("seven is not allowed")
                return x * scale

            def square(x):
                return x * x

            def ramp(n):
                import numpy as np

                return np.arange(n)
            """
        )
    )
    return tmp_path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _cli() -> list[str]:
    return [sys.executable, "-m", "zmqworkers"]


def test_progress_bar_on_a_terminal_reaches_100_percent(job_dir: Path) -> None:
    import pexpect  # installed with the test extras: a missing one must fail

    child = pexpect.spawn(
        sys.executable,
        ["-m", "zmqworkers", "run", "jobmod:square", "--range", "0:200", "--workers", "2"],
        cwd=str(job_dir),
        env=_env(),
        encoding="utf-8",
        timeout=60,
        dimensions=(24, 120),
    )
    try:
        child.expect(r"100%\|")
        child.expect(r"200/200")
        child.expect(r"200 of 200 tasks done")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_without_a_terminal_it_logs_and_writes_results(job_dir: Path) -> None:
    out = job_dir / "out.jsonl"
    proc = subprocess.run(
        [*_cli(), "run", "jobmod:square", "--range", "0:50", "--workers", "2",
         "--output", str(out)],
        cwd=job_dir, env=_env(), capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "running jobmod:square over 50 tasks" in proc.stderr
    assert "progress 50/50 (100.0 %)" in proc.stderr
    assert "\r" not in proc.stderr, "no bar redraws in a log"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["task"], r["result"]) for r in rows) == [(i, i * i) for i in range(50)]


def test_failing_task_exits_1_with_a_summary_naming_it(job_dir: Path) -> None:
    proc = subprocess.run(
        [*_cli(), "run", "jobmod:work", "--range", "0:20", "--kwargs", '{"scale": 3}',
         "--workers", "2"],
        cwd=job_dir, env=_env(), capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "20 of 20 tasks done" in proc.stderr
    assert "19 succeeded, 1 failed" in proc.stderr
    assert "task 7 failed: ValueError: seven is not allowed" in proc.stderr


def test_tasks_file_and_npz_output(job_dir: Path) -> None:
    (job_dir / "tasks.json").write_text(json.dumps([1, 2, 3]))
    out = job_dir / "out.npz"
    proc = subprocess.run(
        [*_cli(), "run", "jobmod:square", "--tasks", "tasks.json", "--workers", "1",
         "--output", str(out)],
        cwd=job_dir, env=_env(), capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = np.load(out)
    assert list(data["tasks"]) == [1, 2, 3] and list(data["results"]) == [1, 4, 9]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nomodule:f", "--range", "0:3"], "cannot import 'nomodule'"),
        (["jobmod:nothere", "--range", "0:3"], "has no attribute 'nothere'"),
        (["jobmod:square", "--range", "x"], "--range takes A:B"),
        (["jobmod:square", "--range", "0:3", "--args", "{"], "not valid JSON"),
        (["jobmod:square", "--tasks", "missing.jsonl"], "cannot read tasks"),
        (["jobmod:square", "--range", "0:3", "--output", "r.csv"], ".jsonl or .npz"),
    ],
)
def test_bad_input_is_named(job_dir: Path, argv: list[str], message: str) -> None:
    proc = subprocess.run(
        [*_cli(), "run", *argv, "--workers", "1"],
        cwd=job_dir, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert message in proc.stderr


def test_npz_output_keeps_results_of_different_shapes(job_dir: Path) -> None:
    out = job_dir / "ramps.npz"
    proc = subprocess.run(
        [*_cli(), "run", "jobmod:ramp", "--range", "1:12", "--workers", "1",
         "--output", str(out)],
        cwd=job_dir, env=_env(), capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = np.load(out, allow_pickle=True)
    assert list(data["tasks"]) == list(range(1, 12))  # in task order, 10 after 9
    assert [list(r) for r in data["results"]] == [list(range(n)) for n in range(1, 12)]
