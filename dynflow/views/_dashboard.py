"""dynflow's page in the Dask dashboard.

``/individual-dynflow``: a bokeh page served by the scheduler's dashboard (listed in its
"More..." menu): the active and recent runs, and for the chosen one its flow-level graph
with live per-node counts and colours (the same rendering as the notebook's,
:mod:`dynflow.views._render`). The dashboard reads its pages once, when the scheduler
starts, so the page is registered on import of :mod:`dynflow.scheduler` (``dask scheduler
--preload dynflow.scheduler``) and before dynflow starts its embedded LocalCluster. The
same data is JSON at ``/dynflow/runs.json`` (the run tracker's routes,
:mod:`dynflow.cluster._tracker`).
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

from dynflow._compat import register_dashboard_page
from dynflow._protocol import TRACKER, sum_counts
from dynflow.graph._flowgraph import FlowGraph
from dynflow.views._progress import refresh_interval
from dynflow.views._render import short_repr_counts
from dynflow.views._reprs import run_html

if TYPE_CHECKING:
    from distributed import Scheduler


__all__ = ["PAGE", "dynflow_doc", "page_url", "register_page"]

#: the page's path in the dashboard
PAGE = "/individual-dynflow"


def _runs_table(runs: list[dict[str, Any]], chosen: str | None) -> str:
    rows = []
    for r in runs:
        counts = sum_counts(r["nodes"].values())
        total = {k: counts[k] for k in ("done", "failed", "running", "pending", "cached")}
        mark = "&#9654; " if r["id"] == chosen else ""
        state = html.escape(r["state"])
        if r.get("reason"):
            state += f" <small>({html.escape(str(r['reason'])[:120])})</small>"
        rows.append(
            "<tr>"
            + "".join(
                f'<td style="padding:2px 16px 2px 0">{cell}</td>'
                for cell in (
                    mark + html.escape(r["name"]),
                    f"<code>{html.escape(r['id'][:8])}</code>",
                    _clock(r.get("started")),
                    html.escape(str(r.get("host") or "")),
                    state,
                    f"{r['elapsed']:.1f} s",
                    html.escape(short_repr_counts(total)),
                )
            )
            + "</tr>"
        )
    return (
        '<table class="dynflow-runs" style="border-collapse:collapse;margin-bottom:1em">'
        "<tr>"
        + "".join(
            f'<th style="text-align:left;padding:2px 16px 2px 0">{h}</th>'
            for h in ("run", "id", "started", "host", "state", "elapsed", "tasks and items")
        )
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def _clock(t: float | None) -> str:
    """A run's start, as the time of day on the scheduler (``14:03:27``)."""
    return "" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


def dynflow_doc(scheduler: Scheduler, extra: dict, doc: Any) -> None:
    """The bokeh document of the dynflow page (signature of distributed's dashboard apps)."""
    from bokeh.layouts import column
    from bokeh.models import Div, Select

    select = Select(title="Run", options=[], value="", width=500)
    table = Div(text="", sizing_mode="stretch_width")
    detail = Div(text="<p>No dynflow runs yet.</p>", sizing_mode="stretch_width")

    def update() -> None:
        tracker = scheduler.extensions.get(TRACKER)
        runs = tracker.list_runs() if tracker is not None else []
        options = [
            (r["id"], f"{r['name']} {r['id'][:8]}, {_clock(r.get('started'))} ({r['state']})")
            for r in runs
        ]
        if options != select.options:
            select.options = options
        ids = [r["id"] for r in runs]
        if select.value not in ids:
            active = [r["id"] for r in runs if r["state"] in ("pending", "running")]
            select.value = (active or ids or [""])[0]
        if not runs:
            return
        table.text = _runs_table(runs, select.value)
        run = tracker.run_status(select.value, graph=True)
        if run is not None:
            detail.text = run_html(FlowGraph.from_dict(run["graph"]), run)

    select.on_change("value", lambda attr, old, new: update())
    doc.title = "Dask: dynflow"
    doc.add_root(column(select, table, detail, sizing_mode="stretch_width"))
    update()
    doc.add_periodic_callback(update, 1000 * refresh_interval())


def page_url(dashboard_link: str) -> str:
    """The dynflow page's URL, from a client's ``dashboard_link`` (which ends in
    ``/status``, after any proxy prefix).

    >>> page_url("http://127.0.0.1:8787/status")
    'http://127.0.0.1:8787/individual-dynflow'
    >>> page_url("https://hub.example.org/user/me/proxy/8787/status")
    'https://hub.example.org/user/me/proxy/8787/individual-dynflow'
    """
    base = dashboard_link.split("?", 1)[0].rstrip("/")
    if base.endswith("/status"):
        base = base[: -len("/status")]
    return base + PAGE


def register_page() -> None:
    """Add the page to the dashboard's applications (for schedulers started after this)."""
    register_dashboard_page(PAGE, dynflow_doc)
