"""Fixtures of the pydidas interop tests (run with .venv-pydidas's python).

Shared with the workflow tests; what is here:

- ``key`` / ``key_file``: a fresh shared key, and a file holding it (0600);
- ``daemon(address, processes=2)``: starts ``zmqworkers worker ADDRESS
  --processes N --key-file F`` (this environment's python, cwd the repo, so
  tests/ is importable on the workers) and kills it and its children at the
  end of the test;
- ``image_files``: 24 deterministic ``.npy`` images (30 x 40, float64) in a
  temporary folder, as a list of paths in order;
- ``controllers`` (from tests/qt): controllers a test made, stopped at the end;
- ``qapp_cls``: pytest-qt's application is a ``PydidasQApplication``, which
  pydidas's own runners need.

pydidas runs on PySide6 here: QT_API is set before anything imports qtpy.
"""

from __future__ import annotations

import os

os.environ["QT_API"] = "pyside6"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# pydidas keeps its settings (plugin paths among them) in Qt's settings
# files, and registering a plugin folder writes it there: a run of another
# checkout would leave a path behind that pydidas warns about (an error
# here) once that checkout is gone. Each run, and every worker it starts,
# gets settings of its own.
_SETTINGS = tempfile.mkdtemp(prefix="pydidas-settings-")
os.environ["XDG_CONFIG_HOME"] = _SETTINGS
atexit.register(shutil.rmtree, _SETTINGS, ignore_errors=True)

import secrets  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402
import pytest  # noqa: E402

pydidas = pytest.importorskip("pydidas", reason="run with .venv-pydidas (scripts/pydidas-venv.sh)")

from benchmarks.pydidas_apps import write_images  # noqa: E402
from tests.qt.conftest import controllers  # noqa: E402, F401

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 24
IMAGE_SHAPE = (30, 40)


@pytest.fixture(scope="session")
def qapp_cls() -> type:
    from pydidas_qtcore import PydidasQApplication

    return PydidasQApplication


@pytest.fixture
def key() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def key_file(tmp_path: Path, key: str) -> Path:
    path = tmp_path / "worker.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def daemon(key_file: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(address: str, processes: int = 2) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "zmqworkers", "worker", address]
        cmd += ["--processes", str(processes), "--key-file", str(key_file)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        proc.kill()
        proc.wait(10)
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(children, timeout=10)


@pytest.fixture
def image_files(tmp_path: Path) -> list[Path]:
    return write_images(tmp_path / "images", N_IMAGES, IMAGE_SHAPE)
