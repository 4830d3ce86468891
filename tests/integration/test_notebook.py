"""A real Jupyter kernel: the cluster's HTML repr and tqdm's notebook bar over futures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CELLS = [
    "from zmqworkers import Cluster, progress\n"
    "c = Cluster(2, dashboard='127.0.0.1:0')\n"
    "c.wait_for_workers(2)",
    "futs = [c.submit(pow, 2, i) for i in range(50)]\n"
    "done = list(progress(futs, desc='powers'))\n"
    "print(len(done), sorted(f.result() for f in done) == [2**i for i in range(50)])",
    "c",
    "c.shutdown()\nc",
]


@pytest.fixture
def kernel_env() -> Iterator[None]:
    """The kernel, a process of its own, inherits this environment while it starts."""
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved.get("PYTHONPATH")]))
    # qtpy (imported by the Qt tests in this process) sets QT_API, which tqdm
    # takes for a Qt console, where it draws text bars.
    os.environ.pop("QT_API", None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_notebook_shows_the_cluster_and_a_widget_bar(tmp_path: Path, kernel_env: None) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    client = NotebookClient(
        nb, timeout=90, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [cell.outputs for cell in nb.cells]
    # tqdm.auto chose the notebook bar: an ipywidgets view, not text.
    kinds = [o.get("data", {}) for o in outputs[1]]
    assert any("application/vnd.jupyter.widget-view+json" in d for d in kinds), outputs[1]
    printed = "".join(o.get("text", "") for o in outputs[1] if o.output_type == "stream")
    assert "50 True" in printed
    shown = outputs[2][0]["data"]["text/html"]
    assert "<table" in shown and shown.count("<tr>") == 3  # a header and two workers
    assert "50 done, 0 failed of 50" in shown
    assert 'href="http://127.0.0.1:' in shown and ">dashboard</a>" in shown
    assert "shut down" in outputs[3][0]["data"]["text/html"]
