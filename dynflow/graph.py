"""Lowering lazy nodes to a dask graph (a ``HighLevelGraph``, one layer per node).

Two shapes, one per place the graph runs:

- **distributed**: each group of maps that share a length (a map and the maps chained
  on it item by item) becomes one *expander* task plus one *collector* task per map
  whose list is used. The expander runs on a worker once the mapped values exist and
  has the scheduler add the per-item tasks (:mod:`dynflow.expand`, :mod:`dynflow._splice`).
- **local** (``scheduler="sync"`` or ``"threads"``): each map is one task that calls the
  function per item in order; no cluster involved, results identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dask._task_spec import Alias, Task, TaskRef, parse_input
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from dynflow.node import MapNode, Node, find_nodes, replace_nodes
from dynflow.plan import Arg, Expansion, Stage

__all__ = ["lower", "topological"]


def topological(outputs: Sequence[Node]) -> list[Node]:
    """All nodes the outputs need, each after its dependencies."""
    order: list[Node] = []
    done: set[str] = set()
    stack: list[tuple[Node, bool]] = [(n, False) for n in reversed(outputs)]
    while stack:
        node, expanded = stack.pop()
        if node.key in done:
            continue
        if expanded:
            done.add(node.key)
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((d, False) for d in reversed(node.dependencies) if d.key not in done)
    return order


def _ref(obj: Any) -> Any:
    """``obj`` as a task-spec argument: nodes become references to their keys."""
    return parse_input(replace_nodes(obj, lambda n: Alias(n.key)))


def _node_task(node: Node) -> Task:
    args = [_ref(a) for a in node._args]
    kwargs = {k: _ref(v) for k, v in node._kwargs.items()}
    if node._wait_for:
        waits = parse_input([Alias(n.key) for n in node._wait_for])
        return Task(node.key, call_after, node.task.graph_fn, waits, *args, **kwargs)
    return Task(node.key, node.task.graph_fn, *args, **kwargs)


def call_after(fn: Any, _waited: list, /, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; ``_waited`` holds the ``wait_for`` results, used only for ordering."""
    return fn(*args, **kwargs)


def _annotations(node: Node) -> dict[str, Any]:
    opts = node.task.options
    out: dict[str, Any] = {}
    if opts["retries"]:
        out["retries"] = opts["retries"]
    if opts["resources"]:
        out["resources"] = dict(opts["resources"])
    if opts["priority"]:
        out["priority"] = opts["priority"]
    return out


class _Families:
    """Union of maps chained item by item into one expansion, without creating cycles.

    A map joins the expansion of a map node it maps over unless that expansion's
    expander would then (through static arguments, ``wait_for`` or other sources)
    depend on one of its own collectors; then the upstream list is read whole.
    """

    def __init__(self) -> None:
        self.family: dict[str, int] = {}  # map key -> family id
        self.members: dict[int, set[str]] = {}  # family id -> map keys
        self.ext: dict[int, set[str]] = {}  # family id -> map keys its expander needs
        self.upstream: dict[str, frozenset[str]] = {}  # node key -> map keys it needs
        self.joined: set[tuple[str, int]] = set()  # (map key, slot index) read item-wise
        self._next_id = 0

    def visit(self, node: Node) -> None:
        up: set[str] = set()
        for d in node.dependencies:
            up |= self.upstream[d.key]
        if not isinstance(node, MapNode):
            self.upstream[node.key] = frozenset(up)
            return
        up.add(node.key)
        self.upstream[node.key] = frozenset(up)

        slots = node.slots
        cands = {i: s.value for i, s in enumerate(slots) if isinstance(s.value, MapNode)}
        cands = {i: u for i, u in cands.items() if slots[i].mapped}
        others = [n for i, s in enumerate(slots) for n in find_nodes(s) if i not in cands]
        base: set[str] = set()
        for n in (*others, *node._wait_for):
            base |= self.upstream[n.key]
        joinable = dict(cands)
        while True:
            ext = set(base)
            for i, u in cands.items():
                if i not in joinable:
                    ext |= self.upstream[u.key]
            fams = {self.family[u.key] for u in joinable.values()}
            for f in fams:
                ext |= self.ext[f]
            bad = {i for i, u in joinable.items() if self.members[self.family[u.key]] & ext}
            if not bad:
                break
            for i in bad:
                del joinable[i]
        fid = self._next_id
        self._next_id += 1
        self.family[node.key] = fid
        self.members[fid] = {node.key}
        self.ext[fid] = ext
        for f in fams:
            for k in self.members.pop(f):
                self.family[k] = fid
                self.members[fid].add(k)
            self.ext.pop(f)
        self.joined |= {(node.key, i) for i in joinable}


def _stage(node: MapNode, joined: set[tuple[str, int]], collect: bool) -> tuple:
    """The plan of one map, its sources, consts and the keys its items need."""
    sources: dict[str, tuple[str, str]] = {}
    consts: list[tuple[str, str, int]] = []
    needs: set[str] = {n.key for n in node._wait_for}

    def arg(i: int, slot: Any) -> Arg:
        if not slot.mapped:
            needs.update(n.key for n in find_nodes(slot.value))
            return Arg("static", _ref(slot.value), slot.label)
        if (node.key, i) in joined:
            return Arg("stage", slot.value.key, slot.label)
        if isinstance(slot.value, Node):
            sources.setdefault(slot.value.key, (node.name, slot.label))
            needs.add(slot.value.key)
            return Arg("source", slot.value.key, slot.label)
        needs.update(n.key for n in find_nodes(slot.value))
        consts.append((node.name, slot.label, len(slot.value)))
        return Arg("const", tuple(_ref(v) for v in slot.value), slot.label)

    npos = len(node._args)
    args = tuple(arg(i, s) for i, s in enumerate(node._args))
    kwargs = {k: arg(npos + j, s) for j, (k, s) in enumerate(node._kwargs.items())}
    stage = Stage(node.key, node.name, node.task.graph_fn, args, kwargs, _annotations(node), collect)
    return stage, sources, consts, needs


def lower(outputs: Sequence[Node], *, distributed: bool) -> HighLevelGraph:
    """The dask graph computing ``outputs``; their keys are the nodes' keys."""
    from dynflow.expand import expand, run_map, unspliced

    order = topological(outputs)
    fams = _Families()
    if distributed:
        for node in order:
            fams.visit(node)
    whole = {n.key for n in outputs if isinstance(n, MapNode)}
    for node in order:
        if isinstance(node, MapNode):
            for i, s in enumerate(node.slots):
                if s.mapped and isinstance(s.value, Node) and (node.key, i) not in fams.joined:
                    whole.add(s.value.key)
                whole.update(n.key for n in find_nodes(s.value) if not s.mapped)
            whole.update(n.key for n in node._wait_for)
        else:
            whole.update(d.key for d in node.dependencies)

    layers: dict[str, Any] = {}
    deps: dict[str, set[str]] = {}
    annotations: dict[str, dict] = {}
    family_stages: dict[int, list] = {}
    for node in order:
        if not isinstance(node, MapNode):
            layers[node.key] = {node.key: _node_task(node)}
            deps[node.key] = {d.key for d in node.dependencies}
            annotations[node.key] = _annotations(node)
            continue
        planned = _stage(node, fams.joined, collect=node.key in whole)
        if not distributed:
            stage, sources, consts, needs = planned
            exp = Expansion(node.key, (stage,), sources, tuple(consts))
            data = parse_input({k: Alias(k) for k in sorted(needs)})
            layers[node.key] = {node.key: Task(node.key, run_map, exp, data)}
            deps[node.key] = needs
            continue
        family_stages.setdefault(fams.family[node.key], []).append(planned)

    for planned in family_stages.values():
        stages = tuple(p[0] for p in planned)
        sources: dict[str, tuple[str, str]] = {}
        consts: list[tuple[str, str, int]] = []
        needs: set[str] = set()
        for _, s, c, n in planned:
            for k, v in s.items():
                sources.setdefault(k, v)
            consts += c
            needs |= n
        ekey = "dynflow-expand-" + tokenize(*(s.key for s in stages))
        exp = Expansion(ekey, stages, sources, tuple(consts))
        data = parse_input({k: Alias(k) for k in sorted(needs)})
        layers[ekey] = {ekey: Task(ekey, expand, exp, data)}
        deps[ekey] = needs
        for s in stages:
            if s.collect:
                layers[s.key] = {s.key: Task(s.key, unspliced, TaskRef(ekey), s.task_name)}
                deps[s.key] = {ekey}

    hlg_layers = {
        k: MaterializedLayer(v, annotations=annotations.get(k) or None)
        for k, v in layers.items()
    }
    # dependencies between layers are only needed for culling, which nothing does here
    return HighLevelGraph(hlg_layers, {k: deps[k] & layers.keys() for k in layers})
