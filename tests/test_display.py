"""Flow-level graphs and their displays: FlowGraph, SVG, graphviz, visualize, HTML reprs.

Nothing here runs a graph: the displays are made from lazy nodes and from counts given
by hand in the shape the run tracker reports them.
"""

from __future__ import annotations

import json
import shutil
import sys
import xml.etree.ElementTree as ET

import pytest

import dynflow as df
from dynflow.graph._flowgraph import FlowGraph, GraphNode
from dynflow.views._render import FlowSVG, short_repr_counts, to_graphviz, to_svg, visualize
from dynflow.views._reprs import flow_html, node_html, run_html, task_html

SVG_NS = "{http://www.w3.org/2000/svg}"


@df.task
def generate_list(n):
    return list(range(n))


@df.task(retries=2, timeout="30s")
def process(item, factor=1):
    """Scale one item.

    Longer description, not shown.
    """
    return item * factor


@df.task
def reducer(results):
    return sum(results)


@df.task
def services(account):
    return [f"{account}/a", f"{account}/b"]


@df.task
def shout(s):
    return s.upper()


@df.task
def setup():
    return "ready"


@df.flow
def pipeline(x):
    """Process one item twice."""
    return process(process(x))


def tagged(x, note=""):
    """<b>bold</b> docstring."""
    return x


def node_set(graph: FlowGraph) -> set[tuple[str, str, str]]:
    return {(n.key, n.kind, n.label) for n in graph.nodes}


# ---------------------------------------------------------------------- FlowGraph
def test_seed_pattern_graph():
    items = generate_list(5)
    factor = setup()
    a = process.map(items, factor=df.unmapped(factor))
    b = process.map(a)
    out = reducer(b)
    g = FlowGraph.from_outputs([out])
    assert node_set(g) == {
        (items.key, "task", "generate_list"),
        (factor.key, "task", "setup"),
        (a.key, "map", "process.map()"),
        (b.key, "map", "process.map()"),
        (out.key, "task", "reducer"),
    }
    assert set(g.edges) == {
        (items.key, a.key, "map"),
        (factor.key, a.key, "data"),
        (a.key, b.key, "map"),
        (b.key, out.key, "data"),
    }
    assert g.outputs == (out.key,)
    assert g.nodes[-1].key == out.key  # topological order
    assert g.node(a.key).name == "process"


def test_flatten_is_a_box():
    parents = services.map(["x", "y"])
    flat = df.flatten(parents)
    m = shout.map(flat)
    g = FlowGraph.from_outputs([m])
    assert node_set(g) == {
        (parents.key, "map", "services.map()"),
        (flat.key, "flatten", "flatten(services.map())"),
        (m.key, "map", "shout.map()"),
    }
    assert set(g.edges) == {(parents.key, flat.key, "data"), (flat.key, m.key, "map")}


def test_allow_failure_is_an_edge():
    m = process.map([1, 0, 2])
    out = reducer(df.allow_failure(m))
    g = FlowGraph.from_outputs([out])
    assert {n.key for n in g.nodes} == {m.key, out.key}
    assert g.edges == ((m.key, out.key, "allow_failure"),)
    # an allow_failure output keeps its key (what the scheduler computes); m is its box
    af = df.allow_failure(m)
    g2 = FlowGraph.from_outputs([af])
    assert [n.key for n in g2.nodes] == [m.key]
    assert g2.edges == ()
    assert g2.outputs == (af.key,)


def test_wait_for_and_deduplicated_edges():
    s = setup()
    x = generate_list(3)
    out = reducer([x, x], wait_for=[s, x])  # x: data (twice) and wait -> one data edge
    g = FlowGraph.from_outputs([out, out])
    assert set(g.edges) == {(x.key, out.key, "data"), (s.key, out.key, "wait")}
    assert len(g.edges) == 2
    assert g.outputs == (out.key,)


def test_map_with_wait_for_and_nodes_in_a_concrete_list():
    s = setup()
    x, y = generate_list(1), generate_list(2)
    m = process.map([x, y], wait_for=[s])  # the items are the nodes' values
    g = FlowGraph.from_outputs([m])
    assert set(g.edges) == {(x.key, m.key, "data"), (y.key, m.key, "data"), (s.key, m.key, "wait")}


def test_subflow_map():
    items = generate_list(3)
    runs = pipeline.map(items)
    out = reducer(runs)
    g = FlowGraph.from_outputs([out])
    assert node_set(g) == {
        (items.key, "task", "generate_list"),
        (runs.key, "subflow-map", "pipeline.map()"),
        (out.key, "task", "reducer"),
    }
    assert set(g.edges) == {(items.key, runs.key, "map"), (runs.key, out.key, "data")}


def test_from_outputs_rejects_non_nodes():
    with pytest.raises(TypeError, match="expects nodes, got int"):
        FlowGraph.from_outputs([1])


def _big_graph() -> tuple[FlowGraph, list]:
    items = generate_list(5)
    a = process.map(items, factor=df.unmapped(setup()))
    b = process.map(a)
    flat = shout.map(df.flatten(services.map(b)))
    out = reducer(df.allow_failure(flat), wait_for=[setup()])
    runs = pipeline.map(b)
    return FlowGraph.from_outputs([out, runs, reducer(b)]), [items, a, b, flat, out, runs]


def test_layout_is_layered_and_deterministic():
    g, nodes = _big_graph()
    pos = g.layout()
    assert set(pos) == {n.key for n in g.nodes}
    for u, v, _ in g.edges:
        assert pos[u][1] < pos[v][1]
    # one box per grid point, and the same layout every time
    assert len(set(pos.values())) == len(pos)
    assert g.layout() == pos
    assert FlowGraph.from_dict(g.to_dict()).layout() == pos
    # the longest path from a source; a source sits just above its first consumer
    items, a, b, flat, out, runs = nodes
    assert [pos[n.key][1] for n in (items, a, b, runs)] == [0, 1, 2, 3]
    targets = {v for _, v, _ in g.edges}
    for k in {n.key for n in g.nodes} - targets:
        assert pos[k][1] == min(pos[v][1] for u, v, _ in g.edges if u == k) - 1
    (waited,) = [u for u, v, s in g.edges if s == "wait"]
    assert pos[waited][1] == pos[out.key][1] - 1


def test_layout_orders_a_layer_by_its_parents():
    nodes = tuple(GraphNode(k, k, "task", k) for k in ("a", "b", "c", "d"))
    # c's parent is b (right), d's parent is a (left): d goes left of c
    g = FlowGraph(nodes, (("b", "c", "data"), ("a", "d", "data")), ("c", "d"))
    pos = g.layout()
    assert pos["d"][0] < pos["c"][0]
    assert pos["a"][0] < pos["b"][0]


def test_to_dict_round_trip():
    g, _ = _big_graph()
    d = g.to_dict()
    text = json.dumps(d)
    assert FlowGraph.from_dict(json.loads(text)) == g
    assert FlowGraph.from_dict(d) == g
    assert set(d) == {"nodes", "edges", "outputs"}
    assert all(isinstance(e, list) for e in d["edges"])
    empty = FlowGraph.from_outputs([])
    assert FlowGraph.from_dict(empty.to_dict()) == empty


# ---------------------------------------------------------------------------- SVG
def _counts(g: FlowGraph, **overrides) -> dict:
    counts = {
        n.key: {"total": 1, "pending": 0, "running": 0, "done": 1, "failed": 0} for n in g.nodes
    }
    for key, c in overrides.items():
        counts[key] = c
    return counts


def _parse(svg: str) -> tuple[list, list]:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    boxes = [e for e in root.iter() if e.get("class") == "dynflow-node"]
    edges = [e for e in root.iter() if e.get("class") == "dynflow-edge"]
    return boxes, edges


def test_svg_has_a_box_per_node_and_an_arrow_per_edge():
    g, _ = _big_graph()
    svg = to_svg(g)
    boxes, edges = _parse(svg)
    assert [b.get("data-key") for b in boxes] == [n.key for n in g.nodes]
    assert {(e.get("data-source"), e.get("data-target"), e.get("data-style")) for e in edges} == (
        set(g.edges)
    )
    assert len(edges) == len(g.edges)
    assert all(e.get("marker-end", "").startswith("url(#") for e in edges)
    styles = {e.get("data-style"): e for e in edges}
    assert styles["wait"].get("stroke-dasharray")
    assert styles["allow_failure"].get("stroke") != styles["data"].get("stroke")
    assert (
        "<script" not in svg
        and "<style" not in svg
        and "http://" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    # without counts: no item counts, no progress
    assert "×" not in svg and "? items" not in svg and " done" not in svg


def test_svg_item_counts_and_progress():
    m = process.map(generate_list(5))
    later = shout.map(m)
    g = FlowGraph.from_outputs([later])
    counts = _counts(
        g,
        **{
            m.key: {"total": 5, "pending": 0, "running": 1, "done": 3, "failed": 1},
            later.key: {"total": None, "pending": 0, "running": 0, "done": 0, "failed": 0},
        },
    )
    svg = to_svg(g, counts)
    boxes, _ = _parse(svg)
    text = {b.get("data-key"): " ".join(b.itertext()) for b in boxes}
    assert "process.map() ×5" in text[m.key]
    assert "3/5 done, 1 failed, 1 running" in text[m.key]
    assert "shout.map() ? items" in text[later.key]
    assert "×" not in text[later.key]
    big = to_svg(g, _counts(g, **{m.key: {"total": 1000, "done": 1000}}))
    assert "process.map() ×1,000" in big
    # the bar: done, failed and running segments in their colours
    rects = [r.get("fill") for b in boxes if b.get("data-key") == m.key for r in b.iter()]
    assert {"#2ca02c", "#d62728", "#1f77b4"} <= set(rects)


def test_svg_of_an_empty_graph():
    svg = to_svg(FlowGraph.from_outputs([]), {})
    boxes, edges = _parse(svg)  # a well-formed <svg> element
    assert boxes == [] and edges == []
    root = ET.fromstring(svg)
    assert [t.text for t in root.iter(f"{SVG_NS}text")] == ["(empty graph)"]
    assert float(root.get("width")) > 0 and float(root.get("height")) > 0


# ---------------------------------------------------------------------- visualize
def test_visualize_svg(tmp_path):
    out = reducer(process.map(generate_list(3)))
    drawing = visualize(out, engine="svg", filename=tmp_path / "g.svg")
    assert isinstance(drawing, FlowSVG)
    written = (tmp_path / "g.svg").read_text("utf-8")
    ET.fromstring(written.encode())
    assert drawing.svg in written
    assert drawing._repr_svg_() == drawing.svg
    assert drawing.svg in drawing._repr_html_()
    visualize(out, engine="svg", filename=str(tmp_path / "g.html"))
    page = (tmp_path / "g.html").read_text("utf-8")
    assert page.startswith("<!DOCTYPE html>") and drawing.svg in page
    with pytest.raises(ValueError, match=r"\.svg or \.html"):
        drawing.save(tmp_path / "g.png")


def test_visualize_several_outputs():
    a, b = generate_list(2), setup()
    boxes, _ = _parse(visualize(a, b, engine="svg").svg)
    assert {x.get("data-key") for x in boxes} == {a.key, b.key}


def test_visualize_rejects_non_nodes():
    with pytest.raises(TypeError, match="got int 1"):
        visualize(1)
    with pytest.raises(TypeError, match="the task 'process' itself"):
        visualize(process)
    with pytest.raises(TypeError, match=r"pipeline\.build"):
        visualize(generate_list(1), pipeline)
    with pytest.raises(TypeError, match="at least one node"):
        visualize()
    with pytest.raises(ValueError, match="engine='png'"):
        visualize(setup(), engine="png")


def test_forced_graphviz_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # import graphviz fails
    with pytest.raises(ImportError, match="pip install graphviz"):
        visualize(setup(), engine="graphviz")
    with pytest.raises(ImportError, match="pip install graphviz"):
        to_graphviz(FlowGraph.from_outputs([setup()]))
    assert isinstance(visualize(setup()), FlowSVG)  # auto falls back


def test_forced_graphviz_without_dot(monkeypatch):
    pytest.importorskip("graphviz")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="`dot` is not on PATH"):
        visualize(setup(), engine="graphviz")
    assert isinstance(visualize(setup()), FlowSVG)  # auto falls back


def test_to_graphviz():
    graphviz = pytest.importorskip("graphviz")
    m = process.map(generate_list(3))
    out = reducer(df.allow_failure(m), wait_for=[setup()])
    g = FlowGraph.from_outputs([out])
    dot = to_graphviz(g, _counts(g, **{m.key: {"total": 3, "done": 2, "failed": 1}}))
    assert isinstance(dot, graphviz.Digraph)
    src = dot.source
    assert src.count(" -> ") == len(g.edges)
    assert "process.map() ×3" in src and "2/3 done, 1 failed" in src
    assert "dashed" in src and m.key in src


@pytest.mark.skipif(shutil.which("dot") is None, reason="the Graphviz `dot` program is missing")
def test_visualize_graphviz_file(tmp_path):
    graphviz = pytest.importorskip("graphviz")
    out = reducer(process.map(generate_list(3)))
    dot = visualize(out, engine="graphviz", filename=tmp_path / "g.svg")
    assert isinstance(dot, graphviz.Digraph)
    assert (tmp_path / "g.svg").read_text("utf-8").lstrip().startswith("<?xml")
    assert isinstance(visualize(out), graphviz.Digraph)  # auto picks graphviz


# --------------------------------------------------------------------------- HTML
def test_task_html():
    text = task_html(process)
    assert "process(item, factor=1)" in text
    assert "retries" in text and "timeout" in text and "30 s" in text
    assert "Scale one item." in text and "Longer description" not in text
    assert "pure" not in text and "priority" not in text  # defaults are not listed
    assert "retries" not in task_html(reducer)


def test_flow_html():
    text = flow_html(pipeline)
    assert "pipeline(x)" in text and "Process one item twice." in text


def test_node_html():
    items = generate_list(4)
    m = process.map(items, factor=df.unmapped([10, 20]), wait_for=[setup()])
    text = node_html(m)
    assert "process.map()" in text and m.key in text and "map" in text
    assert "mapped" in text and "generate_list" in text
    assert "unmapped" in text and "list" in text and "[10, 20]" in text
    assert "wait_for" in text and "setup" in text
    assert text.count('class="dynflow-node"') == 3  # its graph
    single = node_html(generate_list(3))
    assert "generate_list" in single and "int" in single and "<svg" not in single
    concrete = node_html(process.map(list(range(100))))
    assert "100 values" in concrete and "..." in concrete
    assert "allow_failure(process.map())" in node_html(df.allow_failure(m))


def test_run_html():
    m = process.map(generate_list(5))
    later = shout.map(m)
    out = reducer(later)
    g = FlowGraph.from_outputs([out])
    status = {
        "state": "running",
        "name": "my-run",
        "elapsed": 75.0,
        "nodes": _counts(
            g,
            **{
                m.key: {"total": 5, "pending": 1, "running": 1, "done": 2, "failed": 1},
                later.key: {"total": None, "pending": 0, "running": 0, "done": 0, "failed": 0},
                out.key: {"total": 1, "pending": 1, "running": 0, "done": 0, "failed": 0},
            },
        ),
        "failures": {m.key: [{"index": 3, "label": None, "error": "ZeroDivisionError()"}]},
    }
    text = run_html(g, status)
    assert "my-run" in text and "running" in text and "1 min 15 s" in text
    assert "ZeroDivisionError()" in text and "index 3" in text
    rows = [r for r in text.split("<tr>")[2:]]
    assert len([r for r in rows if "<code>" in r]) == len(g.nodes)
    later_row = next(r for r in rows if "shout.map()" in r)
    assert ">?<" in later_row
    assert "process.map() ×5" in text and "shout.map() ? items" in text
    # a run the scheduler no longer knows, as Run._repr_html_ passes it
    unknown = run_html(g, {"name": "r", "state": "unknown", "nodes": {}, "elapsed": 0.0})
    assert "unknown" in unknown and "0.0 s" in unknown


def test_short_repr_counts():
    assert short_repr_counts({"total": 5, "pending": 0, "running": 1, "done": 3, "failed": 1}) == (
        "3/5 done, 1 failed, 1 running"
    )
    assert short_repr_counts({"total": None, "pending": 0, "done": 2}) == "2/? done"
    assert short_repr_counts({"done": 2, "failed": 0, "running": 1, "pending": 7}) == (
        "2/10 done, 1 running"
    )
    assert short_repr_counts({}) == "0/0 done"


def test_everything_is_escaped():
    evil = df.task(tagged, name="<b>")
    m = evil.map(["<i>"], note=df.unmapped("<script>alert(1)</script>"))
    out = reducer(m)
    g = FlowGraph.from_outputs([out])
    svg = to_svg(g, _counts(g))
    boxes, _ = _parse(svg)  # still well-formed XML
    assert "<b>" not in svg and "&lt;b&gt;.map()" in svg
    html_texts = [
        task_html(evil),
        flow_html(df.flow(tagged, name="<b>")),
        node_html(m),
        node_html(out),
        run_html(g, {"name": "<b>run</b>", "state": "<b>", "nodes": _counts(g), "elapsed": 1}),
        visualize(out, engine="svg")._repr_html_(),
    ]
    for text in html_texts:
        assert "<b>" not in text and "<i>" not in text and "<script" not in text, text
        assert "&lt;b&gt;" in text


@df.flow
def drawn(n):
    return reducer(process.map(generate_list(n)))


@df.flow
def drawn_with_filename(n, filename="in.txt"):
    return reducer(process.map(generate_list(n), df.unmapped(filename)))


def test_flow_visualize_takes_filename_and_engine(tmp_path):
    drawing = drawn.visualize(3, filename=tmp_path / "flow.svg", engine="svg")
    assert drawing.svg in (tmp_path / "flow.svg").read_text()
    assert "process.map()" in drawing.svg
    # a flow parameter of that name gets the value: the drawing's is df.visualize's
    drawing = drawn_with_filename.visualize(3, filename=str(tmp_path / "data.csv"), engine="svg")
    assert "process.map()" in drawing.svg
    assert not (tmp_path / "data.csv").exists()
