"""Bad command lines end at once with status 2 and a message naming the problem.

The fuzz run draws command lines for every command from each option's
values: good ones, bad ones (negative, zero, NaN, infinity, not a number,
missing files, files others could write) and none. Each runs as a real
process under a time bound and must end within it, with a documented exit
status and no traceback. Values that would make a command wait on purpose
are left out, and only those: a valid ``--bind`` (serving daemons until
stopped), a worker without ``--death-timeout`` (waiting for a controller),
``--gui`` (a window until closed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.deploy.helpers import subprocess_env
from zmqworkers.security.keys import write_key_file

# 0 done, 1 failed (tasks, no answer), 2 bad usage, 3 refused for another
# version, 4 death timeout without a controller: docs/operations.md.
EXIT_STATUSES = {0, 1, 2, 3, 4}
BOUND = 45.0


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zmqworkers", *args],
        env=subprocess_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=BOUND,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    (root / "fz.py").write_text("def f(x):\n    return x\n")
    key = write_key_file(root / "key")
    loose = root / "loose-key"
    loose.write_text(key.read_text())
    loose.chmod(0o644)
    tasks = root / "tasks.jsonl"
    tasks.write_text("1\n2\n")
    (root / "empty.jsonl").write_text("")
    (root / "bad.json").write_text("{")
    return {
        "root": root,
        "key": key,
        "loose": loose,
        "tasks": tasks,
        "empty": root / "empty.jsonl",
        "bad": root / "bad.json",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "fz:f", "--range", "0:5", "--workers", "0"], "--workers must be 1 or more"),
        (["info", "tcp://127.0.0.1:9", "--timeout", "-1"], "--timeout: '-1' is not a finite"),
        (
            ["run", "fz:f", "--range", "0:5", "--output", "/nonexistent/dir/o.jsonl"],
            "cannot write --output /nonexistent/dir/o.jsonl: No such file or directory",
        ),
        (["run", "fz:f", "--range", "10:0"], "--range 10:0 holds no tasks"),
        (["run", "fz:f", "--tasks", "empty.jsonl"], "--tasks empty.jsonl holds no tasks"),
        (["keygen", "/nonexistent/dir/key"], "cannot write /nonexistent/dir/key"),
        (
            ["run", "fz:f", "--range", "0:5", "--dashboard", "127.0.0.1:99999"],
            "dashboard must be 'HOST:PORT' with a port from 0 to 65535",
        ),
        (
            ["run", "fz:f", "--range", "0:5", "--forward-logs", "LOUD"],
            "forward_logs must be a logging level such as 'WARNING' or 'INFO', not 'LOUD'",
        ),
    ],
)
def test_bad_command_line_exits_2_naming_the_problem(
    files: dict[str, Path], args: list[str], message: str
) -> None:
    out = _cli(args, files["root"])
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


SECONDS = ["0", "0.3", "-1", "nan", "inf", "x", "1e400"]
COUNTS = ["-1", "0", "1", "2", "x", "1.5"]


def _options(files: dict[str, Path]) -> dict[str, dict[str, list[str]]]:
    root = files["root"]
    key_files = [str(files["key"]), str(files["loose"]), str(root / "missing"), ""]
    return {
        "worker": {
            "--key-file": key_files,
            "--connection-file": [str(files["bad"]), str(root / "missing"), str(files["loose"])],
            "--connection-wait": SECONDS,
            "--processes": COUNTS,
            "--lifetime": SECONDS,
            "--drain-timeout": SECONDS,
            "--max-restarts": COUNTS,
            "--prefetch": COUNTS,
            "--heartbeat-interval": ["0.2", "0", "-1", "nan", "x"],
            "--heartbeat-misses": COUNTS,
            "--death-timeout": ["0.5", "0", "-1", "nan", "inf", "x"],
            "--log-level": ["DEBUG", "INFO", "nonsense"],
            "--name": ["n", "", "a b"],
            "--curve": [str(root / "missing"), str(root)],
            "--status-file": [str(root / "status.json"), "/nonexistent/dir/s.json"],
            "--insecure": [],
        },
        "run": {
            "--args": ["[]", "[1]", "{}", "x"],
            "--kwargs": ["{}", "[]", "x"],
            "--workers": COUNTS,
            "--bind": ["garbage", "udp://127.0.0.1:5999", "tcp://127.0.0.1:*", "ipc://"],
            "--key-file": key_files,
            "--output": ["o.jsonl", "o.npz", "o.txt", "/nonexistent/dir/o.jsonl"],
            "--progress": ["auto", "bar", "log", "x"],
        },
        "info": {
            "--key-file": key_files,
            "--connection-file": [str(files["bad"]), str(root / "missing")],
            "--timeout": ["0.3", "0", "-1", "nan", "inf", "x"],
            "--json": [],
        },
        "status": {"--max-age": SECONDS, "--ready": []},
        "keygen": {"--curve": [], "--name": ["w", "", "../x"]},
        "demo": {"--workers": COUNTS, "--tasks": COUNTS, "--delay": SECONDS},
    }


# What a command needs first, or what pins it to ending by itself.
def _base(command: str, files: dict[str, Path], draw: st.DrawFn) -> list[str]:
    root = files["root"]
    if command == "worker":
        address = draw(st.sampled_from(["tcp://127.0.0.1:9", "garbage", "tcp://h", None]))
        pinned = ["--key-file", str(files["key"]), "--death-timeout", "0.5"]
        pinned += ["--connection-wait", "0.3"]
        return ([address] if address else []) + pinned
    if command == "run":
        func = draw(st.sampled_from(["fz:f", "fz:nothing", "no_such_module:f", "garbage"]))
        source = draw(
            st.sampled_from(
                [
                    ["--range", "0:3"],
                    ["--range", "10:0"],
                    ["--range", "0:3:0"],
                    ["--range", "a:b"],
                    ["--tasks", str(files["tasks"])],
                    ["--tasks", str(files["empty"])],
                    ["--tasks", str(files["bad"])],
                    [],
                ]
            )
        )
        return [func, *source, "--workers", "1"]
    if command == "info":
        address = draw(st.sampled_from(["tcp://127.0.0.1:9", "garbage", None]))
        return ([address] if address else []) + [
            "--key-file",
            str(files["key"]),
            "--timeout",
            "0.5",
        ]
    if command == "status":
        return [draw(st.sampled_from([str(files["bad"]), str(root / "missing")]))]
    if command == "keygen":
        return [str(root / f"k{draw(st.integers(0, 10**9))}")]
    return ["--tasks", "3", "--delay", "0"]


@st.composite
def command_lines(draw: st.DrawFn, files: dict[str, Path]) -> list[str]:
    table = _options(files)
    command = draw(st.sampled_from(sorted(table)))
    args = [command, *_base(command, files, draw)]
    names = draw(st.lists(st.sampled_from(sorted(table[command])), max_size=4, unique=True))
    for name in names:
        values = table[command][name]
        args += [name, draw(st.sampled_from(values))] if values else [name]
    if draw(st.booleans()):
        args.insert(0, "--log-level=" + draw(st.sampled_from(["DEBUG", "ERROR", "x"])))
    return args


def test_fuzzed_command_lines_end_in_time_without_a_traceback(files: dict[str, Path]) -> None:
    # Workers from the fuzz run dial 127.0.0.1:9, where nothing listens.
    assert os.path.isfile(files["root"] / "fz.py")

    @seed(18)
    @settings(
        max_examples=int(os.environ.get("ZMQWORKERS_CLI_FUZZ_EXAMPLES", "40")),
        deadline=timedelta(seconds=BOUND + 15),
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(command_lines(files))
    def one(args: list[str]) -> None:
        out = _cli(args, files["root"])
        print("FUZZ", out.returncode, args, out.stderr.strip().splitlines()[-1:])
        assert out.returncode in EXIT_STATUSES, (args, out.returncode, out.stderr)
        assert "Traceback" not in out.stderr, (args, out.stderr)

    one()
