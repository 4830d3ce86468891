"""benchmarks/run.py's peer venv sees the packages of the interpreter that runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_peer_venv_made_from_a_venv_sees_that_venvs_packages(tmp_path: Path) -> None:
    # A user's venv, isolated from the base interpreter, holding a package
    # that the base interpreter does not have.
    user = tmp_path / "user"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(user)], check=True)
    user_py = user / "bin" / "python"
    purelib = subprocess.run(
        [str(user_py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "only_in_user_venv.py").write_text("VALUE = 7\n")
    # An editable install's .pth file must be processed too.
    elsewhere = tmp_path / "src"
    elsewhere.mkdir()
    (elsewhere / "editable_in_user_venv.py").write_text("VALUE = 8\n")
    (Path(purelib) / "__editable__.demo.pth").write_text(f"{elsewhere}\n")

    # The benchmark's venv, made by the user's interpreter as run.py does it.
    bench = tmp_path / "bench"
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from benchmarks.run import make_peer_venv; print(make_peer_venv(Path(sys.argv[2])))"
    )
    root = str(Path(__file__).resolve().parents[2])
    made = subprocess.run(
        [str(user_py), "-c", code, root, str(bench)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    bench_py = made.stdout.strip().splitlines()[-1]
    assert Path(bench_py).parent.parent == bench
    seen = subprocess.run(
        [
            bench_py,
            "-c",
            "import only_in_user_venv as a, editable_in_user_venv as b; print(a.VALUE, b.VALUE)",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split() == ["7", "8"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_quick_benchmark_runs_with_what_the_test_command_installs() -> None:
    # Every scenario the README quotes, each system once; a measurement
    # that fails makes the run exit non-zero.
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "run.py"),
            "--quick",
            "--installed-only",
            "--repeat",
            "1",
            "--scenarios",
            "a,b,c,d,g",
        ],
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for ours, peer in (
        ("zmq_qt", "zmq_imap"),
        ("zmq", "raw_ipc"),
        ("zmq", "memcpy"),
        ("zmq_daemons", "raw"),
        ("zmq", "pool_fork"),
    ):
        shown = f"{ours:22s} vs {peer:22s}"
        assert shown in out, f"{shown!r} missing from the ratios:\n{out}"


def test_another_revisions_measurements_do_not_see_this_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # compare_revisions.py runs another revision from its own venv: this
    # checkout on that process's PYTHONPATH would shadow the revision's
    # install, and both sides of the comparison would run this code.
    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root))
    from benchmarks.run import child_env

    other = tmp_path / "elsewhere"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), str(other)]))
    assert child_env(None)["PYTHONPATH"] == str(root)
    assert child_env(sys.executable)["PYTHONPATH"] == str(other)
    monkeypatch.setenv("PYTHONPATH", str(root))
    assert "PYTHONPATH" not in child_env(sys.executable)
    # And what such a process imports: not this checkout's package. Its
    # interpreter is a bare venv's, as the other revision's is: this one's
    # own install may well be this checkout (an editable one).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    code = "import importlib.util as u; s = u.find_spec('zmqworkers'); print(s and s.origin)"
    found = subprocess.run(
        [python, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=child_env(python),
    ).stdout.strip()
    assert found == "None", found
