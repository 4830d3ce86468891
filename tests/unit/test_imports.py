"""Importing the package or the worker never loads Qt; ``__all__`` is complete.

A worker's imports are on the path to the first result, so what only some
workers need (CURVE's zmq.auth, asyncio through zmq.utils.monitor, cloudpickle,
numpy) is loaded on first use. The controller loads cloudpickle at once,
before it forks its fork server.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["zmqworkers", "zmqworkers.worker", "zmqworkers.cli"])
def test_import_does_not_load_qt(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PySide6'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{module} loaded Qt modules: {proc.stdout} {proc.stderr}"


def test_public_names_are_exported() -> None:
    import zmqworkers

    public = {n for n in vars(zmqworkers) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(zmqworkers.__all__), public - set(zmqworkers.__all__)
    for name in zmqworkers.__all__:
        assert getattr(zmqworkers, name) is not None


LAZY = ("asyncio", "zmq.auth", "zmq.utils.monitor", "cloudpickle", "numpy", "blake3")


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("zmqworkers.worker.loop", []),
        # The controller loads cloudpickle with the worker program it forks
        # workers from: its first function is most often sent by value.
        ("zmqworkers.controller.engine", ["cloudpickle"]),
    ],
)
def test_worker_loads_nothing_it_may_not_need(module: str, expected: list[str]) -> None:
    code = f"import sys, {module}\nprint(sorted(m for m in {LAZY!r} if m in sys.modules))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(expected), f"loaded at import: {proc.stdout}"
