"""The Slurm job script and its options, without Slurm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zmqworkers.errors import ConfigurationError
from zmqworkers.scale.jobscript import JobOptions, job_script, walltime_seconds

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 1800), ("5:30", 330), ("01:00:00", 3600), ("2-0", 172800), ("1-02:03:04", 93784)],
)
def test_walltimes_in_slurms_formats(text: str, seconds: int) -> None:
    assert walltime_seconds(text) == seconds


def test_the_script_names_the_connection_file_and_every_option() -> None:
    script = job_script(
        JobOptions(
            processes=4,
            memory="8G",
            walltime="02:00:00",
            partition="gpu",
            account="proj",
            qos="high",
            job_name="frames",
            directives=("--exclusive", "#SBATCH --constraint=avx2"),
            setup=("module load python",),
            python="/opt/py/bin/python3",
            drain_timeout=30,
        ),
        "/shared/me/conn file.json",
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for line in (
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8G",
        "#SBATCH --time=02:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --job-name=frames",
        "#SBATCH --exclusive",
        "#SBATCH --constraint=avx2",
        "module load python",
    ):
        assert line in lines, line
    daemon = lines[-1]
    assert daemon.startswith("exec /opt/py/bin/python3 -m zmqworkers worker ")
    assert "--connection-file '/shared/me/conn file.json'" in daemon
    # The daemon leaves 10 s before the walltime and drains 30 s before that.
    assert "--lifetime 7190 " in daemon and "--drain-timeout 30 " in daemon
    assert '--name "slurm${SLURM_JOB_ID}"' in daemon
    assert "key" not in daemon.replace("--connection-file", "")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"walltime": "1:2:3:4"}, "is not a Slurm time"),
        ({"processes": 0}, "processes must be a whole number >= 1"),
        ({"partition": "a b"}, "partition must be one word"),
        ({"setup": ("a\nb",)}, "are lines"),
        ({"setup": "module load x"}, "sequences of lines"),
        ({"death_timeout": 0}, "death_timeout must be a number of seconds > 0"),
    ],
)
def test_bad_job_options_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        JobOptions(**kwargs)


def test_the_command_prints_the_script_and_refuses_a_missing_command(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "zmqworkers", "slurm", "--jobs", "2"]
    conn = ["--connection-file", str(tmp_path / "conn.json")]
    shown = subprocess.run(
        [*base, *conn, "--processes", "3", "--print-script"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "#SBATCH --cpus-per-task=3" in shown.stdout
    assert f"--connection-file {tmp_path / 'conn.json'}" in shown.stdout
    missing = subprocess.run([*base, *conn], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "give the controller command after --" in missing.stderr
    nowhere = subprocess.run(
        [*base, "--connection-file", str(tmp_path / "no" / "c.json"), "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nowhere.returncode == 2 and "no folder" in nowhere.stderr
