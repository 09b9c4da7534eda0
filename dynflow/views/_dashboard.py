"""dynflow's page in the Dask dashboard.

``/individual-dynflow``: a bokeh page served by the scheduler's dashboard (listed in its
"More..." menu): the active and recent runs, and for the chosen one its flow-level graph
with live per-node counts and colours (the same rendering as the notebook's,
:mod:`dynflow.views._render`). The dashboard reads its pages once, when the scheduler
starts, so the page is registered on import of :mod:`dynflow.scheduler` (``dask scheduler
--preload dynflow.scheduler``) and before dynflow starts its embedded LocalCluster. The
same data is JSON at ``/dynflow/runs.json`` (the run tracker's routes,
:mod:`dynflow.extension._tracker`).
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dynflow._protocol import TRACKER, sum_counts
from dynflow.exceptions import index_text
from dynflow.extension._ops import register_dashboard_page
from dynflow.graph._flowgraph import FlowGraph
from dynflow.views._progress import refresh_interval
from dynflow.views._render import short_repr_counts
from dynflow.views._reprs import run_html

if TYPE_CHECKING:
    from distributed import Scheduler


__all__ = ["PAGE", "dynflow_doc", "items_table", "page_url", "register_page"]

#: the page's path in the dashboard
PAGE = "/individual-dynflow"


_TABLE = "border-collapse:collapse;margin-bottom:1em"


def _table(css: str, header: tuple[str, ...], rows: Sequence[tuple[str, ...]], pad: str) -> str:
    """An HTML table of the page; cells are HTML already (escape before)."""
    cell = f'style="text-align:left;padding:{pad}"'
    head = "".join(f"<th {cell}>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td {cell}>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{css}" style="{_TABLE}">' + f"<tr>{head}</tr>" + body + "</table>"


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
            (
                mark + html.escape(r["name"]),
                f"<code>{html.escape(r['id'][:8])}</code>",
                _clock(r.get("started")),
                html.escape(str(r.get("host") or "")),
                state,
                f"{r['elapsed']:.1f} s",
                html.escape(short_repr_counts(total)),
            )
        )
    header = ("run", "id", "started", "host", "state", "elapsed", "tasks and items")
    return _table("dynflow-runs", header, rows, "2px 16px 2px 0")


#: the states an item is listed in, and how many items a page shows
ITEM_STATES = ("pending", "running", "done", "cached", "failed")
ITEMS_PER_PAGE = 50


def items_table(page: dict[str, Any], offset: int) -> str:
    """A page of a map's items (:meth:`RunTracker.run_items`) as an HTML table."""
    rows = []
    for it in page["items"]:
        seconds = it.get("seconds")
        rows.append(
            (
                f"index {html.escape(index_text(it['index']))}",
                html.escape(str(it.get("label") or "")),
                html.escape(it["state"]),
                "" if seconds is None else f"{seconds * 1e3:.1f} ms",
                html.escape(str(it.get("error") or ""))[:300],
            )
        )
    shown = f"{offset + 1:,}-{offset + len(page['items']):,}" if page["items"] else "none"
    header = ("item", "label", "state", "compute", "error")
    return (
        f"<div>items {shown} of {page['matched']:,} matching "
        f"({page['total'] if page['total'] is not None else '?'} in all)</div>"
        + _table("dynflow-items", header, rows, "1px 14px 1px 0")
    )


def _clock(t: float | None) -> str:
    """A run's start, as the time of day on the scheduler (``14:03:27``)."""
    return "" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


#: what a bokeh ``Select`` offers: values, or ``(value, label)`` pairs
_Choices = list[str | tuple[Any, str]]


def dynflow_doc(scheduler: Scheduler, extra: dict, doc: Any) -> None:
    """The bokeh document of the dynflow page (signature of distributed's dashboard apps)."""
    from bokeh.layouts import column, row
    from bokeh.models.widgets.buttons import Button
    from bokeh.models.widgets.inputs import Select, TextInput
    from bokeh.models.widgets.markups import Div

    select = Select(title="Run", options=[], value="", width=500)
    table = Div(text="", sizing_mode="stretch_width")
    detail = Div(text="<p>No dynflow runs yet.</p>", sizing_mode="stretch_width")
    # the items of one map of the chosen run: by state and label, a page at a time
    which = Select(title="Items of", options=[], value="", width=300)
    states: _Choices = ["", *ITEM_STATES]
    state = Select(title="State", options=states, value="", width=120)
    search = TextInput(title="Label contains", value="", width=250)
    back, forward = Button(label="◀", width=40), Button(label="▶", width=40)
    items = Div(text="", sizing_mode="stretch_width")
    at = {"offset": 0}

    def show_items() -> None:
        tracker = scheduler.extensions.get(TRACKER)
        if tracker is None or not which.value:
            items.text = ""
            return
        page = tracker.run_items(
            select.value, which.value, at["offset"], ITEMS_PER_PAGE, search.value, state.value
        )
        items.text = "" if page is None else items_table(page, at["offset"])

    def move(step: int) -> None:
        at["offset"] = max(0, at["offset"] + step * ITEMS_PER_PAGE)
        show_items()

    def refilter(attr: str, old: Any, new: Any) -> None:
        at["offset"] = 0
        show_items()

    def update() -> None:
        tracker = scheduler.extensions.get(TRACKER)
        runs = tracker.list_runs() if tracker is not None else []
        options: _Choices = [
            (r["id"], f"{r['name']} {r['id'][:8]}, {_clock(r.get('started'))} ({r['state']})")
            for r in runs
        ]
        if options != select.options:
            select.options = options
        ids = [r["id"] for r in runs]
        if select.value not in ids:
            active = [r["id"] for r in runs if r["state"] in ("pending", "running")]
            select.value = (active or ids or [""])[0]
        if tracker is None or not runs:
            return
        table.text = _runs_table(runs, select.value)
        run = tracker.run_status(select.value, graph=True)
        if run is not None:
            detail.text = run_html(FlowGraph.from_dict(run["graph"]), run)
            nodes = [n for n in run["graph"]["nodes"] if n.get("items") is not None]
            maps: _Choices = [(n["key"], n.get("label") or n["key"]) for n in nodes]
            if maps != which.options:
                which.options = maps
            keys = [n["key"] for n in nodes]
            if which.value not in keys:
                which.value = keys[0] if keys else ""
        show_items()

    select.on_change("value", lambda attr, old, new: update())
    for widget in (which, state, search):
        widget.on_change("value", refilter)
    back.on_click(lambda: move(-1))
    forward.on_click(lambda: move(1))
    doc.title = "Dask: dynflow"
    doc.add_root(
        column(
            select,
            table,
            detail,
            row(which, state, search, back, forward),
            items,
            sizing_mode="stretch_width",
        )
    )
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
