"""HTML views for Jupyter: the ``_repr_html_`` of tasks, nodes, flows and runs.

Self-contained and escaped (no scripts, no network); graphs are drawn by
:func:`dynflow.views._render.to_svg`.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dynflow.exceptions import index_text
from dynflow.graph._flowgraph import FlowGraph, node_kind, node_label
from dynflow.graph._node import MapNode, Node, find_nodes
from dynflow.graph._options import OPTIONS
from dynflow.views._render import (
    BAR,
    SHORT_REPR,
    STATE_COLOURS,
    format_elapsed,
    short_repr_counts,
    to_svg,
)

if TYPE_CHECKING:
    from dynflow.graph._flow import Flow
    from dynflow.graph._task import Task

__all__ = ["flow_html", "live_run_html", "node_html", "run_html", "task_html"]

_E = html.escape

_BOX = (
    'class="dynflow-repr" style="font-family:system-ui,sans-serif;font-size:13px;line-height:1.4"'
)
_TABLE = 'style="border-collapse:collapse;margin:4px 0;text-align:left"'
_CELL = 'style="padding:1px 10px 1px 0;text-align:left;vertical-align:top"'


def _doc_line(fn: Any) -> str:
    doc = inspect.getdoc(fn) or ""
    return next((line.strip() for line in doc.splitlines() if line.strip()), "")


def _signature(fn: Any) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def _rows(rows: Sequence[tuple[str, ...]], header: tuple[str, ...] | None = None) -> str:
    """A small table; cells are HTML already (escape before)."""
    head = "".join(f"<th {_CELL}>{h}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td {_CELL}>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table {_TABLE}>" + (f"<tr>{head}</tr>" if head else "") + body + "</table>"


def _option(name: str, value: Any) -> str:
    if name == "retry_on" and isinstance(value, tuple):
        return ", ".join(t.__name__ for t in value)
    if name == "retry_delay" and isinstance(value, tuple):
        return ", ".join(f"{v:g} s" for v in value)
    if name in ("retry_delay", "timeout") and value is not None:
        return f"{value:g} s"
    if callable(value):
        return getattr(value, "__qualname__", type(value).__name__)
    return SHORT_REPR.repr(value)


def task_html(task: Task) -> str:
    """``task._repr_html_()``: name, signature, options that differ from the defaults, doc."""
    parts = [
        f"<div {_BOX}><div><strong>Task</strong> <code>{_E(task.name)}"
        f"{_E(_signature(task.fn))}</code></div>"
    ]
    rows = [
        (f"<code>{_E(k)}</code>", _E(_option(k, v)))
        for k, v in task.options.items()
        if k != "name" and k in OPTIONS and v != OPTIONS[k][0]
    ]
    if rows:
        parts.append(_rows(rows))
    if doc := _doc_line(task.fn):
        parts.append(f"<div><em>{_E(doc)}</em></div>")
    return "".join(parts) + "</div>"


def flow_html(flow: Flow) -> str:
    """``flow._repr_html_()``: name, signature, docstring's first line."""
    parts = [
        f"<div {_BOX}><div><strong>Flow</strong> <code>{_E(flow.name)}"
        f"{_E(_signature(flow.fn))}</code></div>"
    ]
    if flow.log_prints is not None:
        parts.append(_rows([("<code>log_prints</code>", _E(repr(flow.log_prints)))]))
    if doc := _doc_line(flow.fn):
        parts.append(f"<div><em>{_E(doc)}</em></div>")
    return "".join(parts) + "</div>"


def _value(value: Any) -> str:
    """An argument in a node's summary (escaped HTML)."""
    if isinstance(value, Node):
        return f"<code>{_E(node_label(value))}</code>"
    nodes = find_nodes(value)
    if nodes:
        labels = ", ".join(dict.fromkeys(node_label(n) for n in nodes))
        return f"{_E(type(value).__name__)} holding {len(nodes)} node(s): <code>{_E(labels)}</code>"
    return f"{_E(type(value).__name__)} <code>{_E(SHORT_REPR.repr(value))}</code>"


def _arguments(node: Node) -> list[tuple[str, str, str]]:
    """(argument, how it is passed, what) for each argument of ``node``."""
    if isinstance(node, MapNode):
        out = []
        for s in node.slots:
            if s.mapped and isinstance(s.value, Node):
                out.append((s.label, "mapped", _value(s.value)))
            elif s.mapped:
                what = f"{len(s.value):,} values <code>{_E(SHORT_REPR.repr(list(s.value)))}</code>"
                out.append((s.label, "mapped", what))
            else:
                out.append((s.label, "unmapped", _value(s.value)))
        return out
    try:
        bound = inspect.signature(node.task.fn).bind(*node.args, **node.kwargs).arguments
    except (TypeError, ValueError):
        bound = {f"args[{i}]": a for i, a in enumerate(node.args)} | dict(node.kwargs)
    return [
        (name, "upstream" if find_nodes(v) else "value", _value(v)) for name, v in bound.items()
    ]


def node_html(node: Node) -> str:
    """``node._repr_html_()``: label, kind, key, arguments, and the graph it ends."""
    kind = node_kind(node)
    parts = [
        f"<div {_BOX}><div><strong>{_E(node_label(node))}</strong> "
        f'<span style="color:#666">{_E(kind)}, lazy (nothing has run)</span></div>',
        f"<div>key <code>{_E(str(node.key))}</code></div>",
    ]
    rows = [(f"<code>{_E(a)}</code>", _E(how), what) for a, how, what in _arguments(node)]
    rows += [("<code>wait_for</code>", "ordering", _value(n)) for n in node.wait_for]
    if isinstance(node, MapNode):
        opts = {
            "batch_size": node.batch_size,
            "max_concurrency": node.max_concurrency,
            "min_success_ratio": None if node.min_success_ratio == 1 else node.min_success_ratio,
        }
        rows += [(f"<code>{k}</code>", "option", _E(repr(v))) for k, v in opts.items() if v]
    if rows:
        parts.append(_rows(rows, ("argument", "passed", "value")))
    graph = FlowGraph.from_outputs([node])
    if len(graph.nodes) > 1:
        parts.append(f'<div style="overflow:auto">{to_svg(graph)}</div>')
    return "".join(parts) + "</div>"


def live_run_html(run: Any, status: Mapping[str, Any]) -> str:
    """:func:`run_html` of a submitted run (a ``dynflow.Run``): its graph with the boxes
    dynamic tasks added, and a link to the dynflow page where it is known."""
    return run_html(run.graph.live(status), {**status, "link": run.link})


def run_html(graph: FlowGraph, status: Mapping[str, Any]) -> str:
    """A run's live state: header, a table of per-node counts, recent failures, the graph.

    ``status`` is ``{"state", "name", "nodes": {key: NodeCounts}, "elapsed"}`` as the
    run tracker reports it (``"failures": {key: [{"index", "label", "error"}]}``
    optional).
    """
    state = str(status.get("state", "unknown"))
    counts: Mapping[str, Any] = status.get("nodes") or {}
    colour = STATE_COLOURS.get(state, "#888888")
    overall = {k: sum(c.get(k) or 0 for c in counts.values()) for k in BAR}
    reason = status.get("reason")
    link = status.get("link")
    parts = [
        f"<div {_BOX}><div><strong>{_E(str(status.get('name', 'run')))}</strong> "
        f'<span style="color:#fff;background:{colour};border-radius:3px;padding:0 5px">'
        f"{_E(state)}</span> {_E(format_elapsed(float(status.get('elapsed') or 0.0)))}, "
        f"{_E(short_repr_counts(overall))}"
        + (f" &mdash; {_E(str(reason))}" if reason else "")
        + (f' (<a href="{_E(link)}" target="_blank">dashboard</a>)' if link else "")
        + "</div>"
    ]
    rows = []
    for n in graph.nodes:
        c = counts.get(n.key, {})
        total = c.get("total")
        if total == 0:
            continue  # nothing to run (a flatten whose items are mapped directly)
        failed = c.get("failed") or 0
        rows.append(
            (
                f"<code>{_E(n.label)}</code>",
                "?" if total is None else f"{total:,}",
                f"{c.get('pending') or 0:,}",
                f"{c.get('running') or 0:,}"
                + (f" ({c['queued']:,} queued)" if c.get("queued") else ""),
                f"{c.get('done') or 0:,}",
                f'<span style="color:{BAR["failed"]}">{failed:,}</span>' if failed else "0",
                f"{c.get('cached') or 0:,}",
            )
        )
    parts.append(_rows(rows, ("node", "total", "pending", "running", "done", "failed", "cached")))
    labels = {n.key: n.label for n in graph.nodes}
    listed = []
    for k, fs in (status.get("failures") or {}).items():
        for f in list(fs)[:5]:  # the tracker keeps up to 20 per node
            index = f.get("index")
            where = "" if index is None else f"index {index_text(index)}"
            if f.get("label"):
                where = f"{where} ({f['label']})" if where else str(f["label"])
            listed.append(
                f"<li><code>{_E(labels.get(k, str(k)))}</code> {_E(str(where))}: "
                f"{_E(str(f.get('error', '')))}</li>"
            )
    if listed:
        parts.append(f'<div>Failures</div><ul style="margin:2px 0">{"".join(listed)}</ul>')
    parts.append(f'<div style="overflow:auto">{to_svg(graph, counts or None)}</div>')
    return "".join(parts) + "</div>"
