"""The flow-level graph: one box per node a graph is built from, as plain data.

:class:`FlowGraph` is what the notebook displays, what :func:`dynflow.visualize` draws and
what a submitted run sends to the scheduler's run tracker and its dashboard page: a map is
one box, however many items it expands to. It is built from the lazy nodes on the client
(:meth:`FlowGraph.from_outputs`) and travels as a plain dict (:meth:`FlowGraph.to_dict`).

Edge styles:

- ``"data"``: the downstream node receives the upstream value (also through ``unmapped``);
- ``"map"``: the downstream map runs once per item of the upstream value;
- ``"wait"``: ordering only (``wait_for``);
- ``"allow_failure"``: the downstream node receives the map's list through
  :func:`~dynflow.allow_failure` (which is not a box of its own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from dynflow.graph._node import (
    AllowFailureNode,
    FlattenNode,
    KeyNode,
    MapNode,
    Node,
    StreamNode,
    SubflowMapNode,
    find_nodes,
    topological,
)

__all__ = ["EDGE_STYLES", "FlowGraph", "GraphNode", "NodeCounts", "node_kind", "node_label"]

#: the edge styles, strongest first: one edge is kept per pair of nodes
EDGE_STYLES = ("map", "allow_failure", "data", "wait")


class NodeCounts(TypedDict, total=False):
    """Progress of one box of a run: units are tasks, or items for a map."""

    total: int | None  # items of a map, None until it expanded; 1 for a plain task
    pending: int
    running: int
    done: int
    failed: int
    cached: int  # read from the result storage (finished, not counted in done)


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One box of a :class:`FlowGraph`.

    ``kind`` is ``"task"``, ``"map"``, ``"subflow-map"`` (``flow.map``), ``"flatten"``,
    ``"stream"`` (a streaming source: ``items`` is its source task's key) or ``"key"``
    (a value that exists on the cluster already); ``label`` is what the box
    shows: ``"inc"``, ``"inc.map()"``, ``"flatten(inc.map())"``.
    """

    key: str
    name: str
    kind: str
    label: str
    items: str | None = None  # a map's item name: its items are (items, *prefix, i)


def node_kind(node: Node) -> str:
    """The kind of box ``node`` makes (``"allow_failure"`` for a node that makes none)."""
    if isinstance(node, SubflowMapNode):
        return "subflow-map"
    if isinstance(node, MapNode):
        return "map"
    if isinstance(node, StreamNode):
        return "stream"
    if isinstance(node, FlattenNode):
        return "flatten"
    if isinstance(node, AllowFailureNode):
        return "allow_failure"
    if isinstance(node, KeyNode):
        return "key"
    return "task"


def node_label(node: Node) -> str:
    """What ``node``'s box shows.

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def inc(x):
    ...     return x + 1
    >>> node_label(df.flatten(inc.map([1, 2])))
    'flatten(inc.map())'
    """
    if isinstance(node, MapNode):
        return f"{node.name}.map()"
    if isinstance(node, (FlattenNode, AllowFailureNode)):
        return f"{node.name}({node_label(node.source)})"
    return node.name


def _key(node: Node) -> str:
    # a KeyNode made inside a sub-flow may stand for a tuple key
    return node.key if isinstance(node.key, str) else str(node.key)


def _in_edges(node: Node) -> list[tuple[Node, str]]:
    """``node``'s direct upstream nodes with the style of each edge, in argument order."""
    if isinstance(node, MapNode):
        found = []
        for s in node.slots:
            style = "map" if s.mapped and isinstance(s.value, Node) else "data"
            found += [(n, style) for n in find_nodes(s.value)]
    else:
        found = [(n, "data") for n in find_nodes((node.args, node.kwargs))]
    found += [(n, "wait") for n in node.wait_for]
    out = []
    for n, style in found:
        if isinstance(n, AllowFailureNode):  # an edge from its map, not a box
            n, style = n.source, "allow_failure"
        out.append((n, style))
    return out


@dataclass(frozen=True, slots=True)
class FlowGraph:
    """The flow-level graph of some outputs: boxes in topological order, and styled edges.

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def inc(x):
    ...     return x + 1
    >>> @df.task
    ... def total(xs):
    ...     return sum(xs)
    >>> g = FlowGraph.from_outputs([total(inc.map([1, 2, 3]))])
    >>> [n.label for n in g.nodes]
    ['inc.map()', 'total']
    >>> [style for _, _, style in g.edges]
    ['data']
    """

    nodes: tuple[GraphNode, ...]
    edges: tuple[tuple[str, str, str], ...]  # (upstream key, downstream key, style)
    outputs: tuple[str, ...]

    @classmethod
    def from_outputs(cls, outputs: Sequence[Node]) -> FlowGraph:
        """The graph of every node ``outputs`` need; one edge per pair of boxes.

        An output that is an ``allow_failure(m)`` node keeps its own key in ``outputs``
        (it is what the scheduler computes); its box is ``m``'s.
        """
        for n in outputs:
            if not isinstance(n, Node):
                raise TypeError(f"FlowGraph.from_outputs() expects nodes, got {type(n).__name__}")
        boxes: list[GraphNode] = []
        edges: dict[tuple[str, str], str] = {}
        for node in topological(outputs):
            kind = node_kind(node)
            if kind == "allow_failure":
                continue
            key = _key(node)
            # a map's item name; a stream's source key (the task that streams)
            items = node.item_name if isinstance(node, MapNode) else None
            if isinstance(node, StreamNode):
                items = node.source_key
            boxes.append(GraphNode(key, node.name, kind, node_label(node), items))
            for up, style in _in_edges(node):
                pair = (_key(up), key)
                old = edges.get(pair)
                if old is None or EDGE_STYLES.index(style) < EDGE_STYLES.index(old):
                    edges[pair] = style
        return cls(
            tuple(boxes),
            tuple((u, v, s) for (u, v), s in edges.items()),
            tuple(dict.fromkeys(_key(n) for n in outputs)),
        )

    def live(self, info: Mapping[str, Any] | None) -> FlowGraph:
        """This graph, or the run tracker's copy in ``info`` (a run's state) when it has
        more: the boxes of the calls dynamic tasks made (kind ``"dynamic"``)."""
        if info and info.get("graph"):
            return FlowGraph.from_dict(info["graph"])
        return self

    def node(self, key: str) -> GraphNode:
        """The box with key ``key``."""
        for n in self.nodes:
            if n.key == key:
                return n
        raise KeyError(key)

    # ------------------------------------------------------------------ layout
    def layers(self) -> dict[str, int]:
        """Each box's layer: the length of the longest path to it from a source.

        A source is then moved down to just above its first consumer, so that a
        ``wait_for`` or a static argument does not make a long arrow across the drawing.
        """
        parents: dict[str, list[str]] = {n.key: [] for n in self.nodes}
        children: dict[str, list[str]] = {n.key: [] for n in self.nodes}
        for u, v, _ in self.edges:
            parents[v].append(u)
            children[u].append(v)
        layer: dict[str, int] = {}
        for key in parents:  # iterative longest path, any node order
            stack = [key]
            while stack:
                k = stack[-1]
                todo = [p for p in parents[k] if p not in layer]
                if todo:
                    stack.extend(todo)
                    continue
                stack.pop()
                layer[k] = 1 + max((layer[p] for p in parents[k]), default=-1)
        for k, ps in parents.items():
            if not ps and children[k]:
                layer[k] = min(layer[c] for c in children[k]) - 1
        return layer

    def layout(self) -> dict[str, tuple[float, float]]:
        """Grid positions of the boxes, top to bottom: ``{key: (x, y)}``.

        ``y`` is the layer (:meth:`layers`); within a layer boxes are ordered by the mean
        position of their parents (fewer crossings), then by topological order, one unit
        apart and centred on the widest layer.

        Examples
        --------
        >>> g = FlowGraph(
        ...     (GraphNode("a", "a", "task", "a"), GraphNode("b", "b", "task", "b"),
        ...      GraphNode("c", "c", "task", "c")),
        ...     (("a", "c", "data"), ("b", "c", "data")), ("c",))
        >>> g.layout()
        {'a': (0.0, 0.0), 'b': (1.0, 0.0), 'c': (0.5, 1.0)}
        """
        layer = self.layers()
        order = {n.key: i for i, n in enumerate(self.nodes)}
        parents: dict[str, list[str]] = {n.key: [] for n in self.nodes}
        for u, v, _ in self.edges:
            parents[v].append(u)
        rows: dict[int, list[str]] = {}
        for n in self.nodes:
            rows.setdefault(layer[n.key], []).append(n.key)
        width = max((len(r) for r in rows.values()), default=0)
        pos: dict[str, tuple[float, float]] = {}
        for y in sorted(rows):

            def barycenter(k: str) -> tuple[float, int]:
                xs = [pos[p][0] for p in parents[k]]
                return (sum(xs) / len(xs) if xs else -1.0, order[k])

            row = sorted(rows[y], key=barycenter)
            shift = (width - len(row)) / 2
            for i, k in enumerate(row):
                pos[k] = (i + shift, float(y))
        return {n.key: pos[n.key] for n in self.nodes}

    # ------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        """The graph as lists, dicts and strings (JSON and msgpack safe)."""
        return {
            "nodes": [
                {"key": n.key, "name": n.name, "kind": n.kind, "label": n.label, "items": n.items}
                for n in self.nodes
            ],
            "edges": [list(e) for e in self.edges],
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FlowGraph:
        """The graph :meth:`to_dict` made (lists may have become tuples, or back)."""
        return cls(
            tuple(
                GraphNode(n["key"], n["name"], n["kind"], n["label"], n.get("items"))
                for n in d["nodes"]
            ),
            tuple((u, v, s) for u, v, s in d["edges"]),
            tuple(d.get("outputs", ())),
        )
