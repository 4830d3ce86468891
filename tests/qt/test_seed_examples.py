"""The seed document's two examples, run as they stand, give what the seed says.

Each example runs as a script in a process of its own, as a user would run
it; the process is bounded by a timeout (the examples' polling loops have
none), and its printed results are checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

qtpy = pytest.importorskip("qtpy", reason="needs a Qt binding (qtpy with PyQt5 or PySide6)")
if not qtpy.API_NAME.startswith("PyQt"):
    # The seed's examples read QSignalSpy as a sequence (sorted(spy)), which
    # only PyQt's spy is; the other tests cover the same API on any binding.
    pytest.skip(f"the seed's examples need PyQt, not {qtpy.API_NAME}", allow_module_level=True)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# A spy entry prints as [task, result]; numpy 2 writes np.int64(5), numpy 1 just 5.
PAIR = re.compile(r"\[(?:np\.int64\()?(-?\d+)\)?, (?:np\.int64\()?(-?\d+)\)?\]")


def run_example(name: str) -> str:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(
        [sys.executable, str(HERE / name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stderr}"
    assert "Destroyed while thread" not in proc.stderr
    return proc.stdout


def pairs(line: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in PAIR.findall(line)]


def test_minimal_working_example() -> None:
    out = run_example("seed_example_minimal.py")
    lines = out.splitlines()
    progress = [float(ln.split()[-1]) for ln in lines if ln.startswith("Progress at")]
    assert progress and progress[-1] >= 1 and all(p < 1 for p in progress[:-1])
    results = [pairs(ln) for ln in lines if ln.startswith("[[")]
    assert results == [[(i, 2 * i + 5) for i in range(10)]]
    assert any(ln.startswith("WorkerController is alive:") for ln in lines)


def test_working_example_with_restart() -> None:
    out = run_example("seed_example_restart.py")
    results = [pairs(ln) for ln in out.splitlines() if ln.startswith("Results:")]
    first = [(i, 2 * i + 5) for i in range(10)]
    second = first + [(i, 2 * i + 5) for i in range(10, 20)]
    third = second + [(i, -i) for i in range(20, 30)]
    assert results == [first, second, third]
    # Without finalize_tasks the thread stays alive for more tasks.
    alive = [ln for ln in out.splitlines() if ln.startswith("WorkerController is alive:")]
    assert alive == ["WorkerController is alive:  True"] * 2
