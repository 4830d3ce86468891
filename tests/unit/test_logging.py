"""The library logs through ``logging`` only, and a worker's records name it and its host."""

from __future__ import annotations

import ast
import io
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from zmqworkers.logs import WorkerRecordFactory, tag_worker_records

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "zmqworkers"
# The command's own output: what it prints is what the user asked to see.
COMMAND_MODULES = {
    "cli/main.py",
    "cli/demo.py",
    "cli/runjob.py",
    "cli/slurm.py",
    "pydidas/command.py",
    "worker/args.py",
}
# The entry points, which own their process's logging.
CONFIGURING_MODULES = {"cli/main.py", "worker/args.py"}
ROOT_LOGGER_CALLS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        yield rel, ast.parse(path.read_text(), filename=str(path))


def calls(tree: ast.AST) -> Iterator[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def test_the_package_is_parsed() -> None:
    names = {rel for rel, _ in modules()}
    assert {"cli/main.py", "logs.py", "worker/loop.py", "qt/monitor.py"} <= names


def test_no_print_outside_the_command_modules() -> None:
    found = []
    for rel, tree in modules():
        if rel in COMMAND_MODULES:
            continue
        for call in calls(tree):
            f = call.func
            if isinstance(f, ast.Name) and f.id == "print":
                found.append(f"{rel}:{call.lineno} print()")
            # sys.stdout.write / sys.stderr.write are print by another name.
            if (
                isinstance(f, ast.Attribute)
                and f.attr == "write"
                and isinstance(f.value, ast.Attribute)
                and f.value.attr in ("stdout", "stderr")
            ):
                found.append(f"{rel}:{call.lineno} sys.{f.value.attr}.write()")
    assert not found, "the library must log, not print:\n" + "\n".join(found)


def test_one_logger_per_module_named_after_it() -> None:
    problems = []
    for rel, tree in modules():
        dotted = "zmqworkers." + rel.removesuffix(".py").replace("/", ".")
        dotted = dotted.removesuffix(".__init__")
        for call in calls(tree):
            f = call.func
            if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)):
                continue
            if f.value.id != "logging":
                continue
            if f.attr == "getLogger":
                arg = call.args[0] if call.args else None
                by_name = isinstance(arg, ast.Name) and arg.id == "__name__"
                spelled = isinstance(arg, ast.Constant) and arg.value == dotted
                # logs.py reaches the root logger's handlers to set their format;
                # The entry points configure logging, levels of the library's loggers too.
                configures = rel in CONFIGURING_MODULES and isinstance(arg, ast.Constant)
                configures = configures and str(arg.value).startswith("zmqworkers.")  # type: ignore[union-attr]
                if not (by_name or spelled or configures or (rel == "logs.py" and arg is None)):
                    problems.append(f"{rel}:{call.lineno} getLogger({ast.unparse(call.args)})")
            elif f.attr in ROOT_LOGGER_CALLS:
                problems.append(f"{rel}:{call.lineno} logging.{f.attr}() logs to the root")
            elif f.attr == "basicConfig" and rel not in CONFIGURING_MODULES:
                problems.append(f"{rel}:{call.lineno} configures logging outside the entry points")
    assert not problems, "\n".join(problems)


def test_the_record_factory_tags_every_record_and_is_replaced_not_stacked() -> None:
    root = logging.getLogger()
    before, handlers = logging.getLogRecordFactory(), root.handlers[:]
    out = io.StringIO()
    root.handlers = [logging.StreamHandler(out)]
    try:
        tag_worker_records("w-one", "host-a")
        tag_worker_records("w-two", "host-b")
        factory = logging.getLogRecordFactory()
        assert isinstance(factory, WorkerRecordFactory)
        assert factory.previous is before
        logging.getLogger("anything.at.all").warning("hi there")
    finally:
        root.handlers = handlers
        logging.setLogRecordFactory(before)
    line = out.getvalue().strip()
    assert re.search(r" WARNING anything\.at\.all \d+ \[w-two on host-b\]: hi there$", line)


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def test_a_worker_daemons_log_lines_carry_its_id_and_host(tmp_path: Path) -> None:
    from zmqworkers import Cluster

    key = secrets.token_hex(16)
    err = tmp_path / "worker.err"
    env = dict(os.environ, ZMQWORKERS_KEY=key, PYTHONPATH=str(ROOT), ZMQWORKERS_LOG_LEVEL="INFO")

    def chatty(task: int) -> int:
        logging.getLogger("userjob").warning("hello from task %d", task)
        return task + 1

    with Cluster(0, key=key) as cluster, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zmqworkers.worker", cluster.address, "--death-timeout", "30"],
            env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        try:
            cluster.wait_for_workers(1, timeout=30)
            wid = cluster.workers()[0]["id"]
            assert cluster.submit(chatty, 41).result(timeout=30) == 42
            wait_for(lambda: "hello from task 41" in err.read_text(), timeout=10)
        finally:
            proc.kill()
            proc.wait(10)
    lines = [line for line in err.read_text().splitlines() if LOG_LINE.match(line)]
    tag = f"[{wid} on {socket.gethostname()}]"
    assert any("zmqworkers.worker" in line and "joined controller" in line for line in lines)
    assert any("userjob" in line and "hello from task 41" in line for line in lines)
    untagged = [line for line in lines if tag not in line]
    assert not untagged, f"log lines without {tag}:\n" + "\n".join(untagged)


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_the_log_level_comes_from_the_environment(level: str) -> None:
    from zmqworkers.cli.main import _parser

    old = os.environ.get("ZMQWORKERS_LOG_LEVEL")
    os.environ["ZMQWORKERS_LOG_LEVEL"] = level
    try:
        assert _parser().parse_args(["keygen", "x"]).log_level == level
    finally:
        if old is None:
            del os.environ["ZMQWORKERS_LOG_LEVEL"]
        else:
            os.environ["ZMQWORKERS_LOG_LEVEL"] = old
