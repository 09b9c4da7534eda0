"""dynflow's page in the Dask dashboard, on every cluster dynflow runs on.

``/dynflow/``: the active and recent runs, and for the chosen one its counts, its
flow-level graph with live per-node counts and colours (the notebook's rendering,
:mod:`dynflow.views._render`), a timeline of its nodes (when each first started and
last finished computing, on one time axis) with percentiles of a map's item compute
times, its failed items, and the items of one of its maps, a page at a time, searched
by label and filtered by state.

The page is HTML rendered on the scheduler and a little JavaScript that asks for it
again every ``dynflow.dashboard.refresh-interval``: a scheduler plugin
(:class:`DashboardPage`) adds its routes to the scheduler's HTTP server when dynflow
installs itself (a client's first run, or the preload), so it exists on a scheduler
started with no flag at all. The preload (``dask scheduler --preload dynflow.scheduler``)
and the embedded cluster also list it in the dashboard's "More..." menu
(``/individual-dynflow``, a bokeh page that shows the same page). The run tracker's JSON
is at ``/dynflow/runs.json`` (:mod:`dynflow.extension._routes`).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin
from tornado import web

from dynflow._protocol import PAGE_PLUGIN, TRACKER, sum_counts
from dynflow.exceptions import index_text
from dynflow.extension._ops import http_application, register_dashboard_page
from dynflow.graph._flowgraph import FlowGraph
from dynflow.views._progress import refresh_interval
from dynflow.views._render import BAR, short_repr_counts
from dynflow.views._reprs import run_html

if TYPE_CHECKING:
    from distributed import Scheduler


__all__ = [
    "MENU_PAGE",
    "PAGE",
    "DashboardPage",
    "items_table",
    "page_url",
    "register_page",
    "timeline",
]

#: the page's path on the scheduler's HTTP server
PAGE = "/dynflow/"
#: its entry in the dashboard's "More..." menu (where the dashboard was started with it)
MENU_PAGE = "/individual-dynflow"


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


def timeline(status: dict[str, Any], graph: FlowGraph, durations: dict[str, list[float]]) -> str:
    """When each node ran: a bar from its first start to its last stop, on one time
    axis from the run's start (Prefect's and Dagster's run timelines), and for a map the
    percentiles of its items' compute times (``durations``: a sample of them)."""
    times = status.get("times") or {}
    if not times:
        return ""
    start = float(status.get("started") or min(t[0] for t in times.values()))
    end = max([t[1] for t in times.values()] + [start + float(status.get("elapsed") or 0)])
    span = max(end - start, 1e-3)
    width, row, left = 520, 18, 220
    rows: list[str] = []
    for n in graph.nodes:
        t = times.get(n.key)
        if t is None:
            continue
        x0 = left + width * (t[0] - start) / span
        w = max(2.0, width * (t[1] - t[0]) / span)
        y = len(rows) * row
        counts = (status.get("nodes") or {}).get(n.key) or {}
        # failures in proportion at the bar's end (a sliver for one item in many)
        units = (counts.get("total") or 0) or 1
        red = min(w, max(2.0, w * counts["failed"] / units)) if counts.get("failed") else 0.0
        label = n.label if len(n.label) <= 30 else n.label[:29] + "…"
        note = f"{t[0] - start:.2f}-{t[1] - start:.2f} s"
        sample = durations.get(n.key)
        if sample:
            note += " · item " + _percentiles(sample)
        rows.append(
            f'<text x="0" y="{y + 12}" font-size="12">{html.escape(label)}</text>'
            f'<rect class="dynflow-timeline-bar" x="{x0:.1f}" y="{y + 3}" width="{w:.1f}" '
            f'height="{row - 6}" rx="2" fill="{BAR["done"]}"/>'
            + (
                f'<rect x="{x0 + w - red:.1f}" y="{y + 3}" width="{red:.1f}" '
                f'height="{row - 6}" fill="{BAR["failed"]}"/>'
                if red
                else ""
            )
            + f'<text x="{left + width + 8}" y="{y + 12}" font-size="11" '
            f'fill="#555">{html.escape(note)}</text>'
        )
    height = len(rows) * row + 16
    axis = (
        f'<line x1="{left}" y1="{height - 14}" x2="{left + width}" y2="{height - 14}" '
        f'stroke="#999"/><text x="{left}" y="{height - 2}" font-size="11">0 s</text>'
        f'<text x="{left + width}" y="{height - 2}" font-size="11" text-anchor="end">'
        f"{span:.2f} s</text>"
    )
    return (
        "<div><strong>Timeline</strong> (first start to last finish of each node's "
        "tasks; item compute times: p50 / p90 / max)</div>"
        f'<svg class="dynflow-timeline" width="{left + width + 320}" height="{height}">'
        + "".join(rows)
        + axis
        + "</svg>"
    )


def _percentiles(sample: list[float]) -> str:
    values = sorted(sample)

    def at(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return " / ".join(_ms(v) for v in (at(0.5), at(0.9), values[-1]))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def view(scheduler: Scheduler, args: dict[str, str]) -> dict[str, Any]:
    """What the page shows now, for its controls ``args`` (``run``, ``node``,
    ``offset``, ``q``, ``state``): ``{"runs": [[id, label]], "run", "html", "maps":
    [[key, label]], "node", "items"}``, the parts as HTML."""
    tracker = scheduler.extensions.get(TRACKER)
    runs = tracker.list_runs() if tracker is not None else []
    out: dict[str, Any] = {
        "runs": [
            [r["id"], f"{r['name']} {r['id'][:8]}, {_clock(r.get('started'))} ({r['state']})"]
            for r in runs
        ],
        "run": "",
        "html": "<p>No dynflow runs yet.</p>",
        "maps": [],
        "node": "",
        "items": "",
    }
    if tracker is None or not runs:
        return out
    ids = [r["id"] for r in runs]
    chosen = args.get("run", "")
    if chosen not in ids:
        active = [r["id"] for r in runs if r["state"] in ("pending", "running")]
        chosen = (active or ids)[0]
    out["run"] = chosen
    status = tracker.run_status(chosen, graph=True)
    parts = [_runs_table(runs, chosen)]
    if status is not None:
        # "running" is assigned to a worker; of those, the ones not executing yet are
        # queued there (the workers' heartbeats say which execute)
        executing = tracker.executing(chosen)
        for key, c in status["nodes"].items():
            if c.get("running"):
                c["queued"] = max(0, c["running"] - executing.get(key, 0))
        graph = FlowGraph.from_dict(status["graph"])
        nodes = [n for n in status["graph"]["nodes"] if n.get("items") is not None]
        out["maps"] = [[n["key"], n.get("label") or n["key"]] for n in nodes]
        run = tracker.runs.get(chosen)
        durations = {}
        if run is not None:
            durations = {k: run.nodes[k].durations() for k, _ in out["maps"] if k in run.nodes}
        parts.append(run_html(graph, status))
        parts.append(timeline(status, graph, durations))
        keys = [k for k, _ in out["maps"]]
        node = args.get("node", "")
        out["node"] = node if node in keys else (keys[0] if keys else "")
        if out["node"]:
            try:
                offset = max(0, int(args.get("offset") or 0))
            except ValueError:
                offset = 0
            page = tracker.run_items(
                chosen,
                out["node"],
                offset,
                ITEMS_PER_PAGE,
                args.get("q", ""),
                args.get("state", ""),
            )
            out["items"] = "" if page is None else items_table(page, offset)
    out["html"] = "".join(parts)
    return out


class _ViewHandler(web.RequestHandler):
    """``/dynflow/view.json?run=&node=&offset=&q=&state=``: the page's parts."""

    def initialize(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        args = {k: self.get_argument(k, "") for k in ("run", "node", "offset", "q", "state")}
        self.write(json.dumps(view(self.scheduler, args), default=str))


class _PageHandler(web.RequestHandler):
    """``/dynflow/``: the page (its parts come from ``view.json``)."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(_SHELL.replace("REFRESH_MS", str(int(1000 * refresh_interval()))))


class DashboardPage(SchedulerPlugin):
    """Adds the page's routes to the scheduler's HTTP server (where it has one), when
    dynflow installs itself there: ``client.register_plugin`` or the preload."""

    name = PAGE_PLUGIN
    idempotent = True

    async def start(self, scheduler: Scheduler) -> None:
        app = http_application(scheduler)
        if app is None or getattr(app, "_dynflow_page", False):
            return
        app._dynflow_page = True
        args = {"scheduler": scheduler}
        app.add_handlers(
            r".*",
            [
                (r"/dynflow/?", _PageHandler),
                (r"/dynflow/view\.json", _ViewHandler, args),
            ],
        )


ITEM_STATE_OPTIONS = "".join(
    f'<option value="{s}">{s or "any"}</option>' for s in ("", *ITEM_STATES)
)

# the page: controls, and the parts view.json gives, asked for again every REFRESH_MS
# (relative URLs: it works behind the dashboard's proxy prefix too)
_SHELL = (
    """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Dask: dynflow</title>
<style>body{font-family:system-ui,sans-serif;margin:16px;font-size:14px}
select,input,button{font-size:13px;margin-right:8px}</style></head>
<body>
<div><label>Run <select id="run"></select></label></div>
<div id="main"><p>Loading...</p></div>
<div id="controls"><label>Items of <select id="node"></select></label>
<label>State <select id="state">"""
    + ITEM_STATE_OPTIONS
    + """</select></label>
<label>Label contains <input id="q" size="20"></label>
<button id="back">&#9664;</button><button id="forward">&#9654;</button></div>
<div id="items"></div>
<script>
const $ = (id) => document.getElementById(id);
let offset = 0, busy = false;
function options(el, pairs, value) {
  const now = JSON.stringify(pairs);
  if (el.dataset.pairs !== now) {
    el.innerHTML = "";
    for (const [v, label] of pairs) { const o = document.createElement("option");
      o.value = v; o.textContent = label; el.appendChild(o); }
    el.dataset.pairs = now;
  }
  el.value = value;
}
async function refresh() {
  if (busy) return; busy = true;
  try {
    const q = new URLSearchParams({run: $("run").value || "", node: $("node").value || "",
      offset: String(offset), q: $("q").value, state: $("state").value});
    const r = await fetch("view.json?" + q);
    const v = await r.json();
    options($("run"), v.runs, v.run);
    options($("node"), v.maps, v.node);
    $("main").innerHTML = v.html;
    $("items").innerHTML = v.items;
    $("controls").style.display = v.maps.length ? "" : "none";
  } catch (e) { /* the scheduler is away: try again */ } finally { busy = false; }
}
for (const id of ["run", "node", "state"]) $(id).onchange = () => { offset = 0; refresh(); };
$("q").oninput = () => { offset = 0; refresh(); };
$("back").onclick = () => { offset = Math.max(0, offset - """
    + str(ITEMS_PER_PAGE)
    + """); refresh(); };
$("forward").onclick = () => { offset += """
    + str(ITEMS_PER_PAGE)
    + """; refresh(); };
refresh(); setInterval(refresh, REFRESH_MS);
</script></body></html>
"""
)


def menu_doc(scheduler: Scheduler, extra: dict, doc: Any) -> None:
    """The "More..." menu's entry (a bokeh document, signature of distributed's
    dashboard apps): the page itself, in a frame."""
    from bokeh.layouts import column
    from bokeh.models.widgets.markups import Div

    doc.title = "Dask: dynflow"
    frame = '<iframe src="dynflow/" style="width:100%;height:90vh;border:0"></iframe>'
    doc.add_root(column(Div(text=frame, sizing_mode="stretch_width"), sizing_mode="stretch_width"))


def page_url(dashboard_link: str) -> str:
    """The dynflow page's URL, from a client's ``dashboard_link`` (which ends in
    ``/status``, after any proxy prefix).

    >>> page_url("http://127.0.0.1:8787/status")
    'http://127.0.0.1:8787/dynflow/'
    >>> page_url("https://hub.example.org/user/me/proxy/8787/status")
    'https://hub.example.org/user/me/proxy/8787/dynflow/'
    """
    base = dashboard_link.split("?", 1)[0].rstrip("/")
    if base.endswith("/status"):
        base = base[: -len("/status")]
    return base + PAGE


def register_page() -> None:
    """Add the page to the dashboard's "More..." menu of schedulers started after this
    (distributed reads its bokeh pages once, at start)."""
    register_dashboard_page(MENU_PAGE, menu_doc)
