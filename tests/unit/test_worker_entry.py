"""``python -m zmqworkers.worker`` and ``zmqworkers worker``: one parser, one run, no CLI import."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)")
# The installed command, beside this interpreter.
ZMQWORKERS = str(Path(sys.executable).with_name("zmqworkers"))


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for name in ("ZMQWORKERS_KEY", "ZMQWORKERS_CURVE", "ZMQWORKERS_LOG_LEVEL"):
        env.pop(name, None)
    cmd = list(argv) if argv[0] == ZMQWORKERS else [sys.executable, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def _options(help_text: str) -> set[str]:
    return set(OPTION.findall(help_text))


def test_both_entry_points_list_the_same_options() -> None:
    own = _run("-m", "zmqworkers.worker", "--help")
    cli = _run(ZMQWORKERS, "worker", "--help")
    assert own.returncode == 0 and cli.returncode == 0, own.stderr + cli.stderr
    options = _options(own.stdout)
    assert {"--connection-file", "--drain-timeout", "--parent-pid", "--log-level"} <= options
    assert options == _options(cli.stdout)
    assert "address" in own.stdout and "address" in cli.stdout


def test_both_entry_points_refuse_bad_input_alike() -> None:
    for argv in (["--prefetch", "-1", "tcp://127.0.0.1:1"], ["--insecure"]):
        own = _run("-m", "zmqworkers.worker", *argv)
        cli = _run(ZMQWORKERS, "worker", *argv)
        assert own.returncode == cli.returncode == 2, (own.stderr, cli.stderr)
        assert own.stderr == cli.stderr
        assert own.stderr.startswith("zmqworkers worker: ")


def test_the_worker_entry_point_does_not_import_the_cli() -> None:
    code = (
        "import runpy, sys\n"
        "sys.argv = ['zmqworkers.worker', '--help']\n"
        "try:\n"
        "    runpy.run_module('zmqworkers.worker', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print(sorted(m for m in sys.modules if m.startswith('zmqworkers.')))\n"
        "cli = [m for m in sys.modules if m.split('.')[:2] == ['zmqworkers', 'cli']]\n"
        "sys.exit(1 if cli else 0)\n"
    )
    proc = _run("-c", code)
    assert proc.returncode == 0, f"the worker imported the CLI: {proc.stdout} {proc.stderr}"
    assert "zmqworkers.worker.args" in proc.stdout


@pytest.mark.parametrize(
    "limits",
    [{}, {"max_tasks": 7}, {"max_memory": 300_000_000}, {"max_tasks": 1, "max_memory": 65536}],
)
@pytest.mark.parametrize("curve", [None, "/some/certificates"])
def test_a_forked_workers_arguments_are_what_its_command_line_parses_to(
    monkeypatch: pytest.MonkeyPatch, limits: dict[str, int], curve: str | None
) -> None:
    # The fork server hands a local worker its arguments as values, without
    # argparse; a spawned one parses the same command line. Both must come
    # to the same options, default for default.
    from zmqworkers.worker.args import local_worker_args, local_worker_argv, worker_parser

    if curve is None:
        monkeypatch.delenv("ZMQWORKERS_CURVE", raising=False)
    else:
        monkeypatch.setenv("ZMQWORKERS_CURVE", curve)
    given = ("ipc:///tmp/zmqworkers-x/tasks", 4321, 3)
    argv = local_worker_argv(*given, **limits)
    # The parser reads $ZMQWORKERS_CURVE when it is built: a fresh one.
    worker_parser.cache_clear()
    try:
        parsed = vars(worker_parser().parse_args(argv))
    finally:
        worker_parser.cache_clear()
    assert vars(local_worker_args(*given, **limits)) == parsed
    assert parsed["parent_pid"] == 4321 and parsed["prefetch"] == 3
    assert parsed["curve"] == curve
