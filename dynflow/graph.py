"""Lowering lazy nodes to a dask graph (a ``HighLevelGraph``, one layer per node).

Two shapes, one per place the graph runs:

- **distributed**: maps are grouped into *families* that expand together: a map and the
  maps chained on it item by item share one length and one expander task. A map over
  ``flatten(m)`` forms a *child* family of ``m``'s, expanded once per item of ``m``.
  Each top-level family becomes one expander task plus a collector task per map whose
  list is used; the expander runs on a worker once the mapped values exist and has the
  scheduler add the per-item tasks (:mod:`dynflow.expand`, :mod:`dynflow._splice`).
- **local** (``scheduler="sync"`` or ``"threads"``): each map is one task that calls the
  function per item, in order; no cluster involved, results identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dask._task_spec import Alias, Task, TaskRef, parse_input
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from dynflow.expand import expand, run_map, unspliced
from dynflow.failures import call_after, concat_raw, gather_list
from dynflow.node import (
    AllowFailureNode,
    FlattenNode,
    KeyNode,
    MapNode,
    Node,
    SubflowMapNode,
    find_nodes,
    replace_nodes,
)
from dynflow.plan import (
    Collector,
    Const,
    Expansion,
    Ext,
    Nested,
    Rel,
    Src,
    Stage,
    Stg,
    SubflowStage,
)

__all__ = ["lower", "topological"]

EXPANDER_PREFIX = "dynflow-expand"


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
    return parse_input(replace_nodes(obj, lambda n: Alias(n.key), spec=True))


def _node_task(node: Node, records: bool, distributed: bool) -> Task:
    args = [_ref(a) for a in node._args]
    kwargs = {k: _ref(v) for k, v in node._kwargs.items()}
    policy = node.task.policy(records)
    fn = node.task.graph_fn
    if node._wait_for:
        waits = parse_input([Alias(n.key) for n in node._wait_for])
        fn, args = call_after, [fn, waits, *args]
    return policy.spec(node.key, fn, *args, blocking=not distributed, **kwargs)


def _annotations(node: Node) -> dict[str, Any]:
    # retries are not dask's: run_call retries with delays (dynflow.failures)
    opts = node.task.options
    out: dict[str, Any] = {}
    if opts["resources"]:
        out["resources"] = dict(opts["resources"])
    if opts["priority"]:
        out["priority"] = opts["priority"]
    return out


class _Families:
    """Which maps expand together, and at which level, without creating cycles.

    A map joins the family of a map node it maps over (``"stage"``: item ``i`` reads
    item ``i``), or starts a child family of the family of ``m`` when it maps over
    ``flatten(m)`` (``"nest"``). It does not join when that would make an expander
    depend, through static arguments, ``wait_for`` or other sources, on one of its own
    family's collectors; then the upstream value is read whole.
    """

    def __init__(self) -> None:
        self.family: dict[str, int] = {}  # map key -> family id (follow `alias`)
        self.alias: dict[int, int] = {}  # merged family id -> the id it merged into
        self.parent: dict[int, int | None] = {}  # family -> parent family (None: top)
        self.members: dict[int, list[str]] = {}  # family -> its maps' keys
        self.ext: dict[int, set[str]] = {}  # family -> map keys its expander needs
        self.upstream: dict[str, frozenset[str]] = {}  # node key -> map keys it needs
        self.how: dict[tuple[str, int], str] = {}  # (map key, slot) -> "stage" / "nest"
        self.pos: dict[str, int] = {}  # map key -> position in topological order

    def find(self, f: int) -> int:
        while f in self.alias:
            f = self.alias[f]
        return f

    def parent_of(self, f: int) -> int | None:
        p = self.parent[self.find(f)]
        return None if p is None else self.find(p)

    def root(self, f: int) -> int:
        f = self.find(f)
        while (p := self.parent_of(f)) is not None:
            f = p
        return f

    def closure(self, root: int) -> tuple[set[str], set[str]]:
        """Members and needs of ``root`` and every family below it."""
        members: set[str] = set()
        ext: set[str] = set()
        for f in self.members:
            if self.root(f) == root:
                members.update(self.members[f])
                ext |= self.ext[f]
        return members, ext

    def visit(self, node: Node) -> None:
        up: set[str] = set()
        for d in node.dependencies:
            up |= self.upstream[d.key]
        if not isinstance(node, MapNode):
            self.upstream[node.key] = frozenset(up)
            return
        self.upstream[node.key] = frozenset(up | {node.key})
        self.pos[node.key] = len(self.pos)

        cands: dict[int, tuple[str, int | None]] = {}  # slot -> (how, level)
        for i, s in enumerate(node.slots):
            if not s.mapped:
                continue
            if isinstance(s.value, MapNode) and s.value.batch_size is None:
                cands[i] = ("stage", self.parent_of(self.family[s.value.key]))
            elif (
                isinstance(s.value, FlattenNode)
                and isinstance(s.value.source, MapNode)
                and s.value.source.batch_size is None
            ):
                cands[i] = ("nest", self.find(self.family[s.value.source.key]))
        others = [n for i, s in enumerate(node.slots) for n in find_nodes(s) if i not in cands]
        base: set[str] = set()
        for n in (*others, *node._wait_for):
            base |= self.upstream[n.key]

        joinable = dict(cands)
        while True:
            level = next(iter(joinable.values()))[1] if joinable else None
            joinable = {i: c for i, c in joinable.items() if c[1] == level}
            ext = set(base)
            for i in cands.keys() - joinable.keys():
                ext |= self.upstream[node.slots[i].value.key]
            members = {node.key}
            for i in joinable:
                root = self.root(self._family_of_slot(node, i))
                m, e = self.closure(root)
                members |= m
                ext |= e
            bad = {
                i
                for i in joinable
                if self.closure(self.root(self._family_of_slot(node, i)))[0] & ext
            }
            if not bad:
                break
            for i in bad:
                del joinable[i]

        fid = len(self.parent)
        self.parent[fid] = level if joinable else None
        self.members[fid] = [node.key]
        self.ext[fid] = ext - members
        self.family[node.key] = fid
        for i, (how, _) in joinable.items():
            self.how[(node.key, i)] = how
            if how == "stage":
                f = self.find(self.family[node.slots[i].value.key])
                if f != fid:
                    self.members[fid] = self.members.pop(f) + self.members[fid]
                    self.ext[fid] |= self.ext.pop(f)
                    self.alias[f] = fid

    def _family_of_slot(self, node: MapNode, i: int) -> int:
        v = node.slots[i].value
        return self.family[(v.source if isinstance(v, FlattenNode) else v).key]

    def families(self) -> list[int]:
        return list(self.members)

    def children(self, f: int) -> list[int]:
        return [g for g in self.members if self.parent_of(g) == f]

    def depth_chain(self, f: int) -> list[int]:
        """``f`` and its ancestors, innermost first."""
        chain = [self.find(f)]
        while (p := self.parent_of(chain[-1])) is not None:
            chain.append(p)
        return chain


def _stage(node: MapNode, how: dict[tuple[str, int], str], raw: Any = None) -> tuple:
    """The stage of one map: its plan, sources, consts and the keys its items need."""
    sources: dict[Any, tuple[str, str]] = {}
    consts: list[tuple[str, str, int]] = []
    needs: set[Any] = {n.key for n in node._wait_for}
    subflow = isinstance(node, SubflowMapNode)
    # a sub-flow is built from plain values and nodes; a task call from a task spec
    ref = (lambda v: replace_nodes(v, lambda n: Ext(n.key))) if subflow else _ref

    def arg(i: int, slot: Any) -> Any:
        if not slot.mapped:
            needs.update(n.key for n in find_nodes(slot.value))
            return ref(slot.value)
        kind = how.get((node.key, i))
        if kind == "stage":
            return Stg(slot.value.item_name)
        if kind == "nest":
            src: Any = Rel(slot.value.source.item_name)
        elif isinstance(slot.value, Node):
            src = raw(slot.value) if raw else slot.value.key
        else:
            needs.update(n.key for n in find_nodes(slot.value))
            consts.append((node.name, slot.label, len(slot.value)))
            return Const(tuple(ref(v) for v in slot.value))
        sources.setdefault(src, (node.name, slot.label))
        needs.add(src)
        return Src(src)

    npos = len(node._args)
    args = tuple(arg(i, s) for i, s in enumerate(node._args))
    kwargs = {k: arg(npos + j, s) for j, (k, s) in enumerate(node._kwargs.items())}
    if subflow:
        stage: Stage = SubflowStage(node.item_name, node.name, node.flow, args, kwargs, {})
    else:
        stage = Stage(
            node.item_name,
            node.name,
            node.task.graph_fn,
            args,
            kwargs,
            _annotations(node),
            node.task.policy(records=True),
            node.batch_size,
            node.max_concurrency,
        )
    return stage, sources, consts, needs


def _whole(
    order: list[Node], outputs: Sequence[Node], how: dict
) -> tuple[set[str], set[str], dict[str, FlattenNode]]:
    """What the graph must compute besides the per-item tasks.

    Returns the keys of nodes whose whole value is used (each needs a task of its own),
    the keys of maps whose *raw* list is read (failure records included: a map over a
    map it cannot join item by item still passes failures on, as one that joins
    does), and the ``flatten(m)`` nodes mapped over whole, read raw too.

    An ``allow_failure(m)`` node used whole makes ``m`` need a tolerant list, not its
    strict one: it is in the set itself, ``m`` is not (unless used otherwise).
    """
    whole = {n.key for n in outputs}
    raw: set[str] = set()
    flat: dict[str, FlattenNode] = {}
    for node in reversed(order):
        if isinstance(node, AllowFailureNode):
            continue
        if isinstance(node, MapNode):
            for i, s in enumerate(node.slots):
                if s.mapped and (node.key, i) in how:
                    continue
                v = s.value
                if s.mapped and isinstance(v, MapNode):
                    raw.add(v.key)
                elif s.mapped and isinstance(v, FlattenNode) and isinstance(v.source, MapNode):
                    flat[v.key] = v
                    raw.add(v.source.key)
                else:
                    whole.update(n.key for n in find_nodes(s))
            whole.update(n.key for n in node._wait_for)
        elif node.key in whole:
            whole.update(d.key for d in node.dependencies)
    return whole, raw, flat


def _raw_key(key: str) -> str:
    """The key of a map's raw list (failure records included), or of a flatten's."""
    return f"dynflow-raw-{key}"


def _whole_source(node: Node) -> Any:
    """The key a map reads for a mapped node it does not join item by item: maps and
    ``flatten(map)`` raw, so that failed items pass on as failure records."""
    if isinstance(node, MapNode) or (
        isinstance(node, FlattenNode) and isinstance(node.source, MapNode)
    ):
        return _raw_key(node.key)
    return node.key


def lower(outputs: Sequence[Node], *, distributed: bool, records: bool = False) -> HighLevelGraph:
    """The dask graph computing ``outputs``; their keys are the nodes' keys.

    ``records``: failures become values (:class:`~dynflow.failures.Failure`) instead of
    errors, as inside a sub-flow run per item.
    """
    order = topological(outputs)
    fams = _Families()
    if distributed:
        for node in order:
            fams.visit(node)
    whole, raw_lists, flat_raws = _whole(order, outputs, fams.how)
    top_mode = "record" if records else "strict"
    # map key -> the allow_failure nodes that need its tolerant list
    tolerant: dict[str, list[Node]] = {}
    for node in order:
        if isinstance(node, AllowFailureNode) and node.key in whole:
            tolerant.setdefault(node.source.key, []).append(node)

    layers: dict[str, Any] = {}
    deps: dict[str, set] = {}
    annotations: dict[str, dict] = {}
    planned: dict[str, tuple] = {}
    for node in order:
        if isinstance(node, MapNode):
            if distributed:
                planned[node.key] = _stage(node, fams.how, raw=_whole_source)
                continue
            stage, sources, consts, needs = _stage(node, {}, raw=_whole_source)
            raw = _raw_key(node.key)
            exp = Expansion(raw, (stage,), (), sources, tuple(consts), ())
            data = parse_input({k: Alias(k) for k in sorted(needs)})
            layers[raw] = {raw: Task(raw, run_map, exp, data)}
            deps[raw] = needs
            lists = [(node.key, top_mode)] if node.key in whole else []
            lists += [(af.key, "tolerant") for af in tolerant.get(node.key, [])]
            for key, mode in lists:
                args = (node.name, mode, node.min_success_ratio, TaskRef(raw))
                layers[key] = {key: Task(key, gather_list, *args)}
                deps[key] = {raw}
        elif node.key in flat_raws:
            key, source = _raw_key(node.key), _raw_key(node.source.key)
            layers[key] = {key: Task(key, concat_raw, node.source.name, TaskRef(source))}
            deps[key] = {source}
        if node.key in whole and not isinstance(node, (MapNode, KeyNode, AllowFailureNode)):
            layers[node.key] = {node.key: _node_task(node, records, distributed)}
            deps[node.key] = {d.key for d in node.dependencies}
            annotations[node.key] = _annotations(node)

    if distributed:
        # the collectors each family makes: a whole-used map's list at its own level,
        # concatenated at every level above it
        collectors: dict[int, list[Collector]] = {f: [] for f in fams.families()}
        ratios = {n.key: n.min_success_ratio for n in order if isinstance(n, MapNode)}
        batches = {n.key: n.batch_size for n in order if isinstance(n, MapNode)}
        for f in fams.families():
            for key in fams.members[f]:
                lists = [(key, top_mode)] if key in whole else []
                if key in raw_lists:
                    lists.append((_raw_key(key), "raw"))
                lists += [(af.key, "tolerant") for af in tolerant.get(key, [])]
                stage = planned[key][0]
                name = stage.task_name
                chain = fams.depth_chain(f)
                for ckey, mode in lists:
                    c = Collector(
                        ckey, stage.key, name, mode=mode, ratio=ratios[key], batch=batches[key]
                    )
                    collectors[chain[0]].append(c)
                    for g in chain[1:]:
                        collectors[g].append(Collector(ckey, ckey, name, True, mode, ratios[key]))

        def expansion(f: int) -> Expansion:
            stages: list[Stage | Nested] = []
            sources: dict[Any, tuple[str, str]] = {}
            consts: list[tuple[str, str, int]] = []
            needs: set[Any] = set()
            for key in sorted(fams.members[f], key=fams.pos.__getitem__):
                stage, s, c, n = planned[key]
                stages.append(stage)
                for k, v in s.items():
                    sources.setdefault(k, v)
                consts += c
                needs |= n
            for g in fams.children(f):
                child = expansion(g)
                stages.append(Nested(child, {}))
                needs |= {k for k in child.needs if not isinstance(k, Rel)}
            # named after everything the expansion makes, so that no two different
            # expansions (e.g. of the same map, chained differently) share a key
            made = [*fams.members[f], *(c.key for c in collectors[f])]
            made += [s.expansion.expander for s in stages if isinstance(s, Nested)]
            ekey = f"{EXPANDER_PREFIX}-" + tokenize(*made)
            return Expansion(
                ekey,
                tuple(stages),
                tuple(collectors[f]),
                sources,
                tuple(consts),
                tuple(sorted(needs, key=str)),
            )

        for f in fams.families():
            if fams.parent_of(f) is not None:
                continue
            exp = expansion(f)
            ekey = exp.expander
            data = parse_input({k: Alias(k) for k in exp.needs})
            layers[ekey] = {ekey: Task(ekey, expand, exp, (), data)}
            deps[ekey] = set(exp.needs)
            for c in exp.collectors:
                task = Task(c.key, unspliced, TaskRef(ekey), c.task_name)
                layers[c.key] = {c.key: task}
                deps[c.key] = {ekey}

    hlg_layers = {
        k: MaterializedLayer(v, annotations=annotations.get(k) or None) for k, v in layers.items()
    }
    return HighLevelGraph(hlg_layers, {k: deps[k] & layers.keys() for k in layers})
