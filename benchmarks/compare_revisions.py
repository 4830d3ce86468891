"""This checkout against another revision, side by side, on the same machine.

    python benchmarks/compare_revisions.py --against main
    python benchmarks/compare_revisions.py --against REV --scenarios a:zmq_imap,b:zmq --repeat 3

REV is checked out with ``git worktree add`` into a temporary folder and
installed into a virtualenv of its own there; this checkout runs from the
interpreter that runs this script, with this checkout first on its
PYTHONPATH, and REV's interpreter runs with this checkout taken off its
PYTHONPATH (it would shadow REV's install). Both run the same
scenario code (this checkout's ``benchmarks/run.py --one``), each
measurement in a fresh process, the two revisions interleaved so that load
from elsewhere falls on both alike. Prints the medians and ``this / REV``
ratios, oriented so that above 1 is better.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from run import HIGHER_IS_BETTER, UNITS, child_env, run_child  # noqa: E402

DEFAULT_SCENARIOS = "a:zmq_imap,a:zmq_qt,b:zmq"


def install_revision(rev: str, folder: Path) -> str:
    """Check ``rev`` out into ``folder`` and install it into a virtualenv there."""
    tree = folder / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
        check=True,
        capture_output=True,
    )
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e"]
        + [f"{tree}[qt]"],
        check=True,
    )
    return python


def which_zmqworkers(python: str | None) -> str:
    """Where the measurements made with ``python`` (see run_child) import zmqworkers from."""
    code = "import zmqworkers, os; print(os.path.dirname(zmqworkers.__file__))"
    # From the benchmarks folder: a checkout's root on sys.path would shadow the install.
    proc = subprocess.run(
        [python or sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=HERE,
        env=child_env(python),
    )
    return proc.stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", required=True, help="the revision to compare with")
    p.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help="SCENARIO:SYSTEM,...")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    pairs = [tuple(item.split(":", 1)) for item in a.scenarios.split(",")]
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", a.against],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="zmqworkers-compare-") as tmp:
        try:
            theirs = install_revision(rev, Path(tmp))
            # None: this checkout, first on PYTHONPATH (the interpreter's own
            # install may be another checkout); the revision's interpreter
            # never sees this checkout's path.
            ours: str | None = None
            print(f"this checkout: {which_zmqworkers(ours)}", file=sys.stderr)
            print(f"{rev}: {which_zmqworkers(theirs)}", file=sys.stderr)
            rows = []
            for scenario, system in pairs:
                runs: dict[str, list[float]] = {"this": [], rev: []}
                for _ in range(a.repeat):
                    for name, python in (("this", None), (rev, theirs)):
                        value = run_child(scenario, system, a.quick, None, python=python)
                        if value is not None:
                            runs[name].append(value)
                rows.append((scenario, system, runs))
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(tmp) / "tree")],
                capture_output=True,
            )
    print(f"{'scenario':<14} {'unit':<8} {'this':>12} {rev:>12} {'ratio':>7}")
    for scenario, system, runs in rows:
        if not runs["this"] or not runs[rev]:
            print(f"{scenario}/{system:<12} no result")
            continue
        mine, base = statistics.median(runs["this"]), statistics.median(runs[rev])
        ratio = mine / base if HIGHER_IS_BETTER[scenario] else base / mine
        print(
            f"{scenario + '/' + system:<14} {UNITS[scenario]:<8} {mine:>12.4g} {base:>12.4g} "
            f"{ratio:>6.2f}x"
        )
        # Every run, so the spread under load can be judged.
        for name in ("this", rev):
            print(f"{'':<14} {name:<8} " + " ".join(f"{v:.4g}" for v in runs[name]))


if __name__ == "__main__":
    main()
