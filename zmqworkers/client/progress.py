"""Progress over futures, and the cluster as a notebook shows it.

``progress`` takes tqdm's bar through ``tqdm.auto``: a widget in a Jupyter
notebook (with ipywidgets), text on a terminal.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, as_completed
from typing import Any

from zmqworkers.client.info import format_usage


def progress(
    futures: Iterable[Future[Any]], desc: str | None = None, timeout: float | None = None
) -> Iterator[Future[Any]]:
    """Yield ``futures`` as they complete, with a progress bar (``tqdm.auto``).

    ::

        for fut in zmqworkers.progress(cluster.submit(f, x) for x in xs):
            ...

    ``timeout`` is as for ``concurrent.futures.as_completed``.
    """
    from tqdm.auto import tqdm

    pending = list(futures)
    with tqdm(total=len(pending), desc=desc, unit="task") as bar:
        failed = 0
        for fut in as_completed(pending, timeout=timeout):
            if not fut.cancelled() and fut.exception() is not None:
                failed += 1
                bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)
            yield fut


def status_html(status: dict[str, Any] | None, dashboard_url: str | None) -> str:
    """A cluster's snapshot as a small HTML table (``Cluster._repr_html_``)."""
    e = html.escape
    if status is None:
        return "<p><b>zmqworkers Cluster</b>: shut down</p>"
    stats = status.get("stats", {})
    head = (
        f"<p><b>zmqworkers Cluster</b> {e(status['controller'])} at "
        f"<code>{e(status['address'])}</code>: {len(status['workers'])} worker(s), "
        f"{status['queued']} queued, {status['in_flight']} in flight, "
        f"{status['done']} done, {status['failed']} failed of {stats.get('submitted', 0)}"
    )
    if dashboard_url:
        head += f' · <a href="{e(dashboard_url)}" target="_blank">dashboard</a>'
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{e(str(v))}</td>"
            for v in (
                w["id"],
                w["host"],
                w["pid"],
                w["state"],
                w["tasks_done"],
                w["in_flight"],
                format_usage("rss", w.get("rss")),
                format_usage("cpu", w.get("cpu")),
            )
        )
        + "</tr>"
        for w in status["workers"]
    )
    table = (
        "<table><thead><tr><th>worker</th><th>host</th><th>pid</th><th>state</th>"
        f"<th>done</th><th>held</th><th>RSS</th><th>CPU</th></tr></thead><tbody>{rows}"
        "</tbody></table>"
    )
    return head + "</p>" + (table if rows else "")
