"""Drawings and HTML views of flow-level graphs: notebooks, files and the dashboard page.

- :func:`to_svg`: a self-contained inline SVG of a :class:`~dynflow.graph._flowgraph.FlowGraph`
  (no scripts, no external assets, no ``<style>`` that could leak into a page), with
  per-node progress bars when counts are given;
- :func:`to_graphviz`: the same as a ``graphviz.Digraph`` (the optional ``graphviz``
  package);
- :func:`visualize`: the public entry, ``df.visualize(node, ...)``.

The HTML views of tasks, nodes, flows and runs are in :mod:`dynflow.views._reprs`.

Everything shown is escaped; nothing needs JavaScript or a network connection.
"""

from __future__ import annotations

import hashlib
import html
import reprlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynflow._public import public
from dynflow.graph._flow import Flow
from dynflow.graph._flowgraph import FlowGraph, GraphNode, NodeCounts
from dynflow.graph._node import Node
from dynflow.graph._task import Task

if TYPE_CHECKING:
    import graphviz


__all__ = [
    "FlowSVG",
    "bar_svg",
    "finished",
    "short_repr_counts",
    "to_graphviz",
    "to_svg",
    "visualize",
]

FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"
#: box fill by kind
FILL = {
    "task": "#f7f7f7",
    "map": "#e6f0fa",
    "subflow-map": "#fdf0e1",
    "flatten": "#f1eaf8",
    "key": "#ffffff",
    "stream": "#e8f6f6",  # a streaming source
    "dynamic": "#eaf6ec",  # the calls dynamic tasks made, by task name
}
#: boxes that stand for many tasks (drawn stacked, with their count)
MANY = ("map", "subflow-map", "dynamic")
#: progress bar colours, in drawing order
BAR = {
    "done": "#2ca02c",
    "cached": "#98df8a",
    "failed": "#d62728",
    "running": "#1f77b4",
    "pending": "#d9d9d9",
}


def finished(counts: Mapping[str, Any]) -> int:
    """Units that finished well: done, or read from the result storage (cached)."""
    return (counts.get("done") or 0) + (counts.get("cached") or 0)


#: edge colour and dash pattern by style
EDGE = {
    "data": ("#555555", None),
    "map": ("#1f5fa8", None),
    "wait": ("#888888", "5,4"),
    "allow_failure": ("#e6550d", None),
}
STATE_COLOURS = {
    "pending": "#888888",
    "running": "#1f77b4",
    "finished": "#2ca02c",
    "failed": "#d62728",
    "cancelled": "#e6550d",
    "lost": "#e6550d",
}
MAX_LABEL = 48
_E = html.escape
SHORT_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
SHORT_REPR.maxstring = SHORT_REPR.maxother = 40
SHORT_REPR.maxlevel, SHORT_REPR.maxlist, SHORT_REPR.maxtuple, SHORT_REPR.maxdict = 2, 4, 4, 4


# --------------------------------------------------------------------------- text
def short_repr_counts(counts: Mapping[str, Any]) -> str:
    """Counts in a few words, for terminals and tables.

    Without a ``total`` key the total is the sum of the counts; a ``total`` of None (a
    map that has not expanded yet) is shown as ``?``.

    Examples
    --------
    >>> short_repr_counts({"total": 5, "pending": 0, "running": 1, "done": 3, "failed": 1})
    '3/5 done, 1 failed, 1 running'
    >>> short_repr_counts({"total": None, "done": 0})
    '0/? done'
    >>> short_repr_counts({"pending": 1000, "done": 1500})
    '1,500/2,500 done'
    >>> short_repr_counts({"total": 10, "done": 3, "cached": 7})
    '10/10 done, 7 cached'
    >>> short_repr_counts({"total": 4, "done": 4, "retries": 3})
    '4/4 done, 3 retries'
    >>> short_repr_counts({"total": 2000, "done": 2000, "tasks": 16})
    '2,000/2,000 done, in 16 tasks'
    >>> short_repr_counts({"total": 1, "running": 1, "yielded": 1200, "streaming": True})
    'streaming, 1,200 yielded'
    >>> short_repr_counts({"total": 1, "done": 1, "yielded": 1200, "streaming": False})
    '1/1 done, 1,200 yielded'
    """
    done, failed, running, pending, cached = (
        counts.get(k) or 0 for k in ("done", "failed", "running", "pending", "cached")
    )
    if "total" in counts:
        total = counts["total"]
        of = "?" if total is None else f"{total:,}"
    else:
        of = f"{done + failed + running + pending + cached:,}"
    parts = [f"{done + cached:,}/{of} done"]  # cached ones are done too
    if cached:
        parts.append(f"{cached:,} cached")
    if failed:
        parts.append(f"{failed:,} failed")
    if running:
        parts.append(f"{running:,} running")
    retries = counts.get("retries") or 0
    if retries:
        parts.append(f"{retries:,} retr{'y' if retries == 1 else 'ies'}")
    tasks = counts.get("tasks")
    if tasks is not None:  # a map whose items are grouped into fewer scheduler tasks
        parts.append(f"in {tasks:,} task{'' if tasks == 1 else 's'}")
    yielded = counts.get("yielded")
    if yielded is not None:  # a stream's source: what it yielded so far
        if counts.get("streaming"):
            parts = [f"streaming, {yielded:,} yielded", *parts[1:]]
            if running:
                parts.remove(f"{running:,} running")
        else:
            parts.append(f"{yielded:,} yielded")
    return ", ".join(parts)


def _box_title(node: GraphNode, counts: Mapping[str, Any] | None) -> str:
    """The box's first line: its label, and a map's item count once counts are known."""
    label = node.label
    if len(label) > MAX_LABEL:
        label = label[: MAX_LABEL - 1] + "…"
    if counts is None or node.kind not in MANY:
        return label
    total = counts.get("total")
    return f"{label} ? items" if total is None else f"{label} ×{total:,}"


def format_elapsed(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


# ---------------------------------------------------------------------------- SVG
def _attrs(**attrs: Any) -> str:
    """XML attributes: ``data_key`` is written ``data-key``, ``class_`` ``class``; no Nones."""
    return "".join(
        f' {k.rstrip("_").replace("_", "-")}="{_E(str(v))}"'
        for k, v in attrs.items()
        if v is not None
    )


def _bar(x: float, y: float, width: float, counts: Mapping[str, Any]) -> list[str]:
    """A stacked progress bar: done, cached, failed, running, then pending."""
    values = {k: max(0, counts.get(k) or 0) for k in BAR}
    total = counts.get("total")
    whole = max(total or 0, sum(values.values()))
    out = [f"<rect{_attrs(x=x, y=y, width=width, height=6, rx=2, fill=BAR['pending'])}/>"]
    shown = [k for k in BAR if k != "pending" and whole and values[k]]
    # in proportion, but a part that is there is never invisible (1 failed in 10,000)
    widths = {k: max(2.0, width * values[k] / whole) for k in shown}
    excess = sum(widths.values()) - width
    if excess > 0 and widths:
        widest = max(widths, key=widths.__getitem__)
        widths[widest] = max(0.0, widths[widest] - excess)
    at = x
    for k in shown:
        w = round(widths[k], 2)
        out.append(f"<rect{_attrs(x=round(at, 2), y=y, width=w, height=6, fill=BAR[k])}/>")
        at += w
    return out


def bar_svg(counts: Mapping[str, Any], width: int = 240) -> str:
    """A node's progress bar alone, as an inline ``<svg>`` ``width`` pixels wide (the
    notebook's progress rows): done, cached, failed and running in proportion, as
    in the graph's boxes."""
    rects = "".join(_bar(0, 0, width, counts))
    return f'<svg width="{width}" height="6" style="vertical-align:middle">{rects}</svg>'


def to_svg(graph: FlowGraph, counts: Mapping[str, NodeCounts] | None = None) -> str:
    """The graph as a standalone inline ``<svg>``, top to bottom.

    Parameters
    ----------
    graph : FlowGraph
        What to draw: one rounded box per node (a map's box is stacked), one arrow per
        edge (``"wait"`` dashed, ``"allow_failure"`` orange, ``"map"`` thick blue).
    counts : mapping, optional
        Per node key, its :class:`~dynflow.graph._flowgraph.NodeCounts`: each box then shows a
        progress bar and its counts, and a map's box its item count (``×1,000``; ``?
        items`` before it expanded).

    Boxes are ``<g class="dynflow-node" data-key="...">``, arrows
    ``<path class="dynflow-edge" data-source="..." data-target="..." data-style="...">``.
    """
    pos = graph.layout()
    stacked = {n.key for n in graph.nodes if n.kind in MANY}
    live = counts is not None
    per_node = {n.key: (counts or {}).get(n.key) for n in graph.nodes}
    titles = {n.key: _box_title(n, per_node[n.key] if live else None) for n in graph.nodes}
    lines = {k: short_repr_counts(c) for k, c in per_node.items() if c is not None}
    bw = max(
        [140.0]
        + [len(t) * 7.3 + 24 for t in titles.values()]
        + [len(t) * 6.1 + 20 for t in lines.values()]
    )
    bh = 62.0 if live else 36.0
    gap_x, gap_y, pad, stack = 28.0, 44.0, 12.0, 4.0
    cols = max((x for x, _ in pos.values()), default=-1) + 1
    rows = max((y for _, y in pos.values()), default=-1) + 1
    width = round(2 * pad + max(cols, 1) * (bw + gap_x) - gap_x + stack, 1)
    height = round(2 * pad + max(rows, 1) * (bh + gap_y) - gap_y + stack, 1)

    def box(key: str) -> tuple[float, float]:
        x, y = pos[key]
        return pad + x * (bw + gap_x), pad + y * (bh + gap_y)

    seed = repr((graph.to_dict(), sorted(lines.items())))
    uid = "dynflow-" + hashlib.blake2s(seed.encode(), digest_size=4).hexdigest()
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg"{_attrs(width=width, height=height)}'
        f' viewBox="0 0 {width} {height}" font-family="{FONT}" font-size="12"'
        ' class="dynflow-graph" role="img">',
        "<defs>",
    ]
    for style, (colour, _) in EDGE.items():
        out.append(
            f'<marker id="{uid}-{style}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" '
            'markerHeight="9" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
        )
    out.append("</defs>")
    if not graph.nodes:
        out.append(f'<text x="{pad}" y="{pad + 14}" fill="#888">(empty graph)</text>')

    for u, v, style in graph.edges:
        (ux, uy), (vx, vy) = box(u), box(v)
        x1, y1 = round(ux + bw / 2, 1), round(uy + bh + (stack if u in stacked else 0), 1)
        x2, y2 = round(vx + bw / 2, 1), round(vy - 1, 1)
        dy = round((y2 - y1) / 2, 1)
        colour, dash = EDGE.get(style, EDGE["data"])
        path = f"M{x1},{y1} C{x1},{y1 + dy} {x2},{y2 - dy} {x2},{y2}"
        out.append(
            "<path"
            + _attrs(
                class_="dynflow-edge",
                data_source=u,
                data_target=v,
                data_style=style,
                d=path,
                fill="none",
                stroke=colour,
                stroke_width=2.2 if style == "map" else 1.4,
                stroke_dasharray=dash,
                marker_end=f"url(#{uid}-{style if style in EDGE else 'data'})",
            )
            + "/>"
        )

    for n in graph.nodes:
        x, y = box(n.key)
        c = per_node[n.key]
        stroke = "#666666"
        if c is not None:
            if c.get("failed"):
                stroke = BAR["failed"]
            elif c.get("running"):
                stroke = BAR["running"]
            elif c.get("total") is not None and finished(c) == c.get("total"):
                stroke = BAR["done"]
        fill = FILL.get(n.kind, FILL["task"])
        dash = "4,3" if n.kind == "key" else None
        tip = f"{n.label} ({n.kind})\n{n.key}" + (f"\n{lines[n.key]}" if n.key in lines else "")
        out.append(f"<g{_attrs(class_='dynflow-node', data_key=n.key, data_kind=n.kind)}>")
        out.append(f"<title>{_E(tip)}</title>")
        rect = {"width": round(bw, 1), "height": bh, "rx": 6, "fill": fill, "stroke": stroke}
        if n.key in stacked:
            out.append(f"<rect{_attrs(x=round(x + stack, 1), y=y + stack, **rect)}/>")
        out.append(f"<rect{_attrs(x=round(x, 1), y=y, stroke_dasharray=dash, **rect)}/>")
        out.append(
            f"<text{_attrs(x=round(x + bw / 2, 1), y=y + 22, text_anchor='middle')}>"
            f"{_E(titles[n.key])}</text>"
        )
        if c is not None:
            out += _bar(round(x + 10, 1), y + 32, round(bw - 20, 1), c)
            out.append(
                f"<text{_attrs(x=round(x + bw / 2, 1), y=y + 53, text_anchor='middle')}"
                f' font-size="10" fill="#444">{_E(lines[n.key])}</text>'
            )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


class FlowSVG:
    """An SVG drawing of a flow graph: shown inline by Jupyter, saved with :meth:`save`."""

    __slots__ = ("svg",)

    def __init__(self, svg: str) -> None:
        self.svg = svg

    def _repr_svg_(self) -> str:
        return self.svg

    def _repr_html_(self) -> str:
        return f'<div class="dynflow-graph" style="overflow:auto">{self.svg}</div>'

    def save(self, filename: str | Path) -> None:
        """Write the drawing to ``filename``: ``.svg`` or ``.html``."""
        path = Path(filename)
        suffix = path.suffix.lower()
        if suffix == ".svg":
            path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + self.svg, "utf-8")
        elif suffix in (".html", ".htm"):
            path.write_text(_html_page(self.svg), "utf-8")
        else:
            raise ValueError(
                f"cannot save an SVG drawing as {path.name!r}: use a .svg or .html file name "
                "(other formats need engine='graphviz')"
            )

    def __repr__(self) -> str:
        return f"<FlowSVG {len(self.svg):,} characters>"


def _html_page(body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>dynflow graph</title>'
        f"</head>\n<body>\n{body}\n</body></html>\n"
    )


# ----------------------------------------------------------------------- graphviz
def _import_graphviz() -> Any:
    try:
        import graphviz
    except ImportError as e:
        raise ImportError(
            "engine='graphviz' needs the graphviz package (pip install graphviz) and the "
            "Graphviz programs; engine='svg' needs neither"
        ) from e
    return graphviz


def to_graphviz(
    graph: FlowGraph, counts: Mapping[str, NodeCounts] | None = None
) -> graphviz.Digraph:
    """The graph as a ``graphviz.Digraph`` (needs the optional ``graphviz`` package).

    Node names are ``n0``, ``n1``, ... in the graph's order; each node's tooltip is its key.
    """
    gv = _import_graphviz()
    dot = gv.Digraph(
        graph_attr={"rankdir": "TB"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica"},
        edge_attr={"color": EDGE["data"][0]},
    )
    names = {n.key: f"n{i}" for i, n in enumerate(graph.nodes)}
    for n in graph.nodes:
        c = (counts or {}).get(n.key)
        label = _box_title(n, c if counts is not None else None)
        if c is not None:
            label += "\n" + short_repr_counts(c)
        attrs = {"fillcolor": FILL.get(n.kind, FILL["task"]), "tooltip": n.key}
        if n.kind in MANY:
            attrs["shape"] = "box3d"
            attrs["style"] = "filled"
        elif n.kind == "key":
            attrs["style"] = "rounded,dashed"
        if c is not None and c.get("failed"):
            attrs["color"] = BAR["failed"]
        dot.node(names[n.key], label, **attrs)
    for u, v, style in graph.edges:
        colour, dash = EDGE.get(style, EDGE["data"])
        attrs = {"color": colour}
        if dash:
            attrs["style"] = "dashed"
        if style == "map":
            attrs["penwidth"] = "2"
        dot.edge(names[u], names[v], **attrs)
    return dot


def _graphviz_usable(missing_ok: bool) -> bool:
    """Whether the graphviz package imports and its ``dot`` program is found."""
    try:
        _import_graphviz()
    except ImportError:
        if missing_ok:
            return False
        raise
    if shutil.which("dot") is None:
        if missing_ok:
            return False
        raise RuntimeError(
            "engine='graphviz': the Graphviz program `dot` is not on PATH; install Graphviz "
            "(https://graphviz.org/download/) or use engine='svg'"
        )
    return True


def visualize(
    *outputs: Node, filename: str | Path | None = None, engine: str = "auto"
) -> FlowSVG | graphviz.Digraph:
    """Draw the flow-level graph of ``outputs``: one box per task call or map.

    Parameters
    ----------
    *outputs : Node
        The nodes to draw, with everything they need.
    filename : str or Path, optional
        Also write the drawing there: ``.svg`` or ``.html``; with graphviz, any format
        ``dot`` writes (``.png``, ``.pdf``, ...).
    engine : {"auto", "svg", "graphviz"}
        ``"auto"``: graphviz when the ``graphviz`` package and its ``dot`` program are
        installed, else dynflow's own SVG.

    Returns
    -------
    FlowSVG or graphviz.Digraph
        Displayed inline by Jupyter.

    Raises
    ------
    TypeError
        No node, or something other than a node, was given.
    ValueError
        An unknown ``engine``, or a file name the engine cannot write.
    ImportError, RuntimeError
        ``engine="graphviz"`` without the graphviz package, or without its ``dot``
        program.

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def inc(x):
    ...     return x + 1
    >>> drawing = visualize(inc.map([1, 2]), engine="svg")
    >>> drawing.svg.startswith("<svg")
    True
    """
    if not outputs:
        raise TypeError("visualize() needs at least one node")
    for o in outputs:
        if not isinstance(o, Node):
            raise TypeError(f"visualize() expects dynflow nodes, got {_what(o)}")
    if engine not in ("auto", "svg", "graphviz"):
        raise ValueError(f"visualize(): engine={engine!r}; expected 'auto', 'svg' or 'graphviz'")
    graph = FlowGraph.from_outputs(outputs)
    if engine == "graphviz" or (engine == "auto" and _graphviz_usable(missing_ok=True)):
        _graphviz_usable(missing_ok=False)  # a clear error when forced but missing
        dot = to_graphviz(graph)
        if filename is not None:
            path = Path(filename)
            if path.suffix.lower() in (".html", ".htm"):
                path.write_text(_html_page(dot.pipe(format="svg", encoding="utf-8")), "utf-8")
            elif not path.suffix:
                raise ValueError(f"visualize(): filename {str(filename)!r} has no extension")
            else:
                dot.render(outfile=path, cleanup=True)
        return dot
    drawing = FlowSVG(to_svg(graph))
    if filename is not None:
        drawing.save(filename)
    return drawing


def _what(obj: Any) -> str:
    """How an argument that is not a node is named in errors, with a hint for tasks/flows."""

    if isinstance(obj, Task):
        return f"the task {obj.name!r} itself; call it (or its .map) to build a node"
    if isinstance(obj, Flow):
        return f"the flow {obj.name!r} itself; use {obj.name}.build(...) to get its output node"
    return f"{type(obj).__name__} {SHORT_REPR.repr(obj)}"


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(visualize)
