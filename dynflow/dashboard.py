"""dynflow's page in the Dask dashboard, and its JSON data.

- ``/individual-dynflow``: a bokeh page served by the scheduler's dashboard (listed in
  its "More..." menu): the active and recent runs, and for the chosen one its flow-level
  graph with live per-node counts and colours (the same rendering as the notebook's,
  :mod:`dynflow.render`). The dashboard reads its pages once, when the scheduler starts,
  so the page is registered on import of :mod:`dynflow.scheduler` (``dask scheduler
  --preload dynflow.scheduler``) and before dynflow starts its embedded LocalCluster.
- ``/dynflow/runs.json`` and ``/dynflow/runs/<id>.json``: the run tracker's data, added
  to the scheduler's HTTP server when the tracker starts (also on a scheduler started
  without the preload).
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

import dask.config
from tornado import web

from dynflow.flowgraph import FlowGraph
from dynflow.render import short_repr_counts
from dynflow.reprs import run_html

if TYPE_CHECKING:
    from distributed import Scheduler

    from dynflow.tracker import RunTracker

__all__ = ["PAGE", "add_routes", "dynflow_doc", "register_page"]

#: the page's path in the dashboard
PAGE = "/individual-dynflow"


class _RunsHandler(web.RequestHandler):
    def initialize(self, tracker: RunTracker) -> None:
        self.tracker = tracker

    def get(self, run_id: str | None = None) -> None:
        self.set_header("Content-Type", "application/json")
        if run_id is None:
            self.write(json.dumps(self.tracker.list_runs(), default=str))
            return
        run = self.tracker.run_status(run_id, graph=True)
        if run is None:
            raise web.HTTPError(404, f"no dynflow run {run_id!r}")
        self.write(json.dumps(run, default=str))


def add_routes(scheduler: Scheduler, tracker: RunTracker) -> None:
    """Serve the tracker's data as JSON from the scheduler's HTTP server, if it has one."""
    app = getattr(scheduler, "http_application", None)
    if app is None:
        return
    args = {"tracker": tracker}
    app.add_handlers(
        r".*",
        [
            (r"/dynflow/runs\.json", _RunsHandler, args),
            (r"/dynflow/runs/([0-9a-f]+)\.json", _RunsHandler, args),
        ],
    )


def _runs_table(runs: list[dict[str, Any]], chosen: str | None) -> str:
    rows = []
    for r in runs:
        total = {"done": 0, "failed": 0, "running": 0, "pending": 0}
        for counts in r["nodes"].values():
            for k in total:
                total[k] += counts.get(k) or 0
        mark = "&#9654; " if r["id"] == chosen else ""
        rows.append(
            "<tr>"
            + "".join(
                f'<td style="padding:2px 16px 2px 0">{cell}</td>'
                for cell in (
                    mark + html.escape(r["name"]),
                    html.escape(r["state"]),
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
            for h in ("run", "state", "elapsed", "tasks and items")
        )
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def dynflow_doc(scheduler: Scheduler, extra: dict, doc: Any) -> None:
    """The bokeh document of the dynflow page (signature of distributed's dashboard apps)."""
    from bokeh.layouts import column
    from bokeh.models import Div, Select

    from dynflow.tracker import TRACKER

    select = Select(title="Run", options=[], value="", width=500)
    table = Div(text="", sizing_mode="stretch_width")
    detail = Div(text="<p>No dynflow runs yet.</p>", sizing_mode="stretch_width")

    def update() -> None:
        tracker = scheduler.extensions.get(TRACKER)
        runs = tracker.list_runs() if tracker is not None else []
        options = [(r["id"], f"{r['name']} ({r['state']})") for r in runs]
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
    doc.add_periodic_callback(update, dask.config.get("dynflow.dashboard.refresh-ms"))


def register_page() -> None:
    """Add the page to the dashboard's applications (for schedulers started after this)."""
    from distributed.dashboard.scheduler import applications

    applications.setdefault(PAGE, dynflow_doc)
