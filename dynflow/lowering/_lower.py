"""Lowering lazy nodes to a dask graph (a ``HighLevelGraph``, one layer per node).

Two shapes, one per place the graph runs:

- **distributed** (:func:`lower_distributed`): maps are grouped into *expansion groups*
  (:class:`~dynflow.lowering._groups.ExpansionGroups`): a map and the maps chained on it
  item by item share one length and one expander task. A map over ``flatten(m)`` forms
  a nested group, expanded once per item of ``m``. Each top-level group becomes one
  expander task plus a collector task per list that is used; the expander runs on a
  worker once the mapped values exist and has the scheduler add the per-item tasks
  (:mod:`dynflow.worker._expander`, :mod:`dynflow.extension._splice`).
- **local** (:func:`lower_local`, ``scheduler="sync"`` or ``"threads"``): each map is one
  task that calls the function per item, in order; no cluster involved, the same
  values and errors.

Every call's policy carries a :class:`~dynflow.lowering._returned_graph.Returned` hook
(:data:`RETURNED`, or :data:`RETURNED_LOCAL` on a local scheduler, with the cache options
the task passes on): a call that returns nodes (a dynamic task) has their graph run in its
place (:mod:`dynflow.lowering._returned_graph`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import dask.config
from dask._task_spec import Alias, Task, TaskRef, convert_legacy_graph, parse_input
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from dask.utils import parse_bytes, parse_timedelta

from dynflow._protocol import EXPANDER_PREFIX, LIMIT_ANNOTATION, own_limit, raw_key, run_name
from dynflow.graph._node import (
    PARTED,
    AllowFailureNode,
    CollectionNode,
    FlattenNode,
    KeyNode,
    MapNode,
    Node,
    Slot,
    StreamNode,
    SubflowMapNode,
    find_nodes,
    replace_nodes,
    topological,
)
from dynflow.graph._options import CALLER_OPTIONS, absolute_storage, result_storage
from dynflow.lowering._expansion import Collector, Expansion, Nested
from dynflow.lowering._groups import ExpansionGroups
from dynflow.lowering._markers import Concrete, Existing, ItemOf, ParentItem, StageItem
from dynflow.lowering._returned_graph import Returned, guarded
from dynflow.lowering._stage import Stage
from dynflow.lowering._stream import StreamPlan
from dynflow.lowering._subflow_stage import SubflowStage
from dynflow.lowering._values import LargeValues, holds_upstream
from dynflow.worker._calls import CallPolicy, Deferred, call_after
from dynflow.worker._collect import concat_raw, gather_concat, gather_raw, tolerate
from dynflow.worker._expander import expand, run_map, unspliced
from dynflow.worker._source import Listed, bound, partition_items, stream_source

__all__ = ["LowerSubflow", "lower", "lower_distributed", "lower_local", "returned_hook"]


def lower(
    outputs: Sequence[Node], *, distributed: bool, records: bool = False, run: str | None = None
) -> HighLevelGraph:
    """The dask graph computing ``outputs``; their keys are the nodes' keys.

    ``distributed``: for a distributed cluster (maps expand in the scheduler), else for
    a local scheduler. ``records``: failures become values
    (:class:`~dynflow.worker._failure.Failure`) instead of errors, as inside a sub-flow
    run per item. ``run``: the run's id, which the tasks under a stream carry in their
    names (:func:`~dynflow._protocol.run_name`); None: a token of this lowering.
    """
    token = _storage_here()
    try:
        if distributed:
            return lower_distributed(outputs, records, run)
        return lower_local(outputs, records)
    finally:
        if token is not None:
            CALLER_OPTIONS.reset(token)


def _storage_here() -> Any:
    """Where no caller passes a result storage on (a graph built on the client), the
    config's ``dynflow.result-storage``, read here, once, as the storage its tasks pass
    on to the graphs built on workers (sub-flow items, graphs their calls return): the
    token to reset :data:`CALLER_OPTIONS` with, or None."""
    caller = CALLER_OPTIONS.get()
    if "result_storage" in caller:
        return None
    try:
        storage = absolute_storage(result_storage())
    except ValueError:  # a bad config: said by the cached tasks that read it
        return None
    return CALLER_OPTIONS.set({**caller, "result_storage": storage})


def _ref(obj: Any, large: LargeValues | None = None, records: bool = False) -> Any:
    """``obj`` as a task-spec argument: nodes become references to their keys (and,
    given ``large``, large values references to their data tasks, dask collections to
    the tasks computing them)."""
    if large is None:
        return parse_input(replace_nodes(obj, lambda n: Alias(n.key), spec=True))
    return parse_input(large.replace(obj, lambda n: Alias(n.key), spec=True, records=records))


def _node_task(
    node: Node, records: bool, distributed: bool, large: LargeValues | None = None
) -> Task:
    args = [_ref(a, large, records) for a in node.args]
    kwargs = {k: _ref(v, large, records) for k, v in node.kwargs.items()}
    policy = _policy(node, records, distributed)
    if records and any(holds_upstream(v) for v in (*node.args, *node.kwargs.values())):
        policy = replace(policy, nested=True)  # a failure record may sit in a container
    fn = node.task.graph_fn
    if isinstance(node, StreamNode):  # on a local scheduler: the list of what it yields
        stream_config(node.name)  # checked as on a cluster
        fn = Listed(fn, node.name)
        policy = replace(policy, cache=None)  # never cached, as on a cluster
    if node.wait_for:
        waits = parse_input([Alias(n.key) for n in node.wait_for])
        fn, args = call_after, [fn, waits, *args]
    return policy.spec(node.key, fn, *args, blocking=not distributed, **kwargs)


def _policy(node: Node, records: bool, distributed: bool) -> CallPolicy:
    """How ``node``'s calls run; a call that returns a graph has it run in its place,
    its tasks taking the cache options the task passes on (:meth:`Task.passed_on`)."""
    return replace(node.task.policy(records), returned=_returned(node.task, distributed))


#: the calls' hooks for returned graphs, by (distributed, options passed on): one
#: object per kind, shared by the tasks of a graph
_HOOKS: dict[tuple[bool, tuple], Returned] = {}


def _returned(task: Any, distributed: bool) -> Returned:
    """The hook of ``task``'s calls: made once per task and lowering (the options it
    passes on depend on :data:`CALLER_OPTIONS`, one mapping per lowering)."""
    caller = CALLER_OPTIONS.get()
    memo = task.__dict__.get("_dynflow_hook")
    if memo is not None and memo[0] is caller and memo[1] is distributed:
        return memo[2]
    inherit = task.passed_on()
    hook = _HOOKS.get((distributed, inherit))
    if hook is None:
        if len(_HOOKS) > 256:  # options seldom vary: a bound, not an eviction policy
            _HOOKS.clear()
        hook = _HOOKS[distributed, inherit] = Returned(lower, not distributed, inherit)
    task.__dict__["_dynflow_hook"] = (caller, distributed, hook)
    return hook


@dataclass(frozen=True, slots=True)
class LowerSubflow:
    """:func:`lower` for the sub-flows of a flow mapped per item, built on a worker:
    their tasks take the cache options passed on where the map was lowered (by the
    task whose returned graph holds it, and ``dynflow.result-storage`` as read where
    the top graph was built), as the tasks beside the map do."""

    inherit: tuple[tuple[str, Any], ...]

    def __call__(self, outputs: Sequence[Node], *, distributed: bool, records: bool = False) -> Any:
        token = CALLER_OPTIONS.set(dict(self.inherit))
        try:
            return lower(outputs, distributed=distributed, records=records)
        finally:
            CALLER_OPTIONS.reset(token)


def _subflow_lowering() -> Deferred:
    """The lowering of a mapped flow's items (:class:`LowerSubflow`), as a
    :class:`~dynflow.worker._calls.Deferred` made where it is first called: the plan
    holding it is unpickled on the scheduler too, which never calls it and so does not
    import the lowering."""
    inherit = tuple(sorted(CALLER_OPTIONS.get().items()))
    return Deferred("dynflow.lowering._lower.LowerSubflow", (inherit,))


def _annotations(node: Node) -> dict[str, Any]:
    # retries are not dask's: run_call retries with delays (dynflow.worker._calls)
    opts = node.task.options
    out: dict[str, Any] = {}
    if opts["resources"]:
        out["resources"] = dict(opts["resources"])
    if opts["priority"]:
        out["priority"] = opts["priority"]
    if opts["concurrency_limit"]:  # held by the scheduler's concurrency limits
        out[LIMIT_ANNOTATION] = opts["concurrency_limit"]
    return out


def _map_span(node: MapNode) -> dict[str, Any]:
    """A map's items' Dask span, inside the run's (the span being submitted in, as
    ``distributed.span`` annotates it), named after the map's task; none outside one."""
    run = dask.get_annotations().get("span")
    if not run:
        return {}
    return {"span": {"name": (*run["name"], node.name), "ids": (*run["ids"], uuid.uuid4().hex)}}


class PlannedStage(NamedTuple):
    """One map's part of an expansion, as :func:`plan_stage` makes it."""

    stage: Stage
    sources: dict[Any, tuple[str, str]]  # (template) key read item by item -> (task, arg)
    concretes: list[tuple[str, str, int]]  # (task, argument, length) of concrete tuples
    needs: set[Any]  # (template) keys the expander must hold for the items


def plan_stage(
    node: MapNode,
    how: dict[tuple[str, int], str],
    distributed: bool = True,
    large: LargeValues | None = None,
    per_item: set[str] | frozenset[str] = frozenset(),
    streamed: bool = False,
    names: Mapping[str, str] = {},
) -> PlannedStage:
    """The stage of one map: its plan, sources, concrete tuples and the keys its items
    need. ``how``: the slots that join an expansion group (``"stage"``, ``"nest"``); any
    other mapped node is read whole, raw (:func:`_whole_source`). ``distributed``:
    whether the items run on a cluster (else on a local scheduler); ``large``: where
    large concrete values become data tasks (see :class:`LargeValues`); ``per_item``:
    ``"adaptive"`` maps that must run one task per item (see
    :attr:`~dynflow.lowering._groups.ExpansionGroups.per_item`); ``streamed``: the map
    expands per chunk of a stream, so its ``max_concurrency`` is kept by the scheduler's
    concurrency limits (:func:`~dynflow._protocol.own_limit`), not by lanes per chunk;
    ``names``: the item names of this run for nodes under a stream (see
    :func:`lower_distributed`), else a node's own."""

    def name_of(n: Any) -> str:
        return names.get(n.key, n.item_name)

    sources: dict[Any, tuple[str, str]] = {}
    concretes: list[tuple[str, str, int]] = []
    needs: set[Any] = {n.key for n in node.whole_waits}
    subflow = isinstance(node, SubflowMapNode)

    def ref(v: Any, whole: bool = True) -> Any:
        """A sub-flow is built from plain values and nodes (``Existing`` keys); a task
        call from a task spec. The keys read are needed by the expander, so that they
        still exist when the items are made. ``whole``: every item reads ``v`` (a large
        value becomes a data task); else it is one item's (it travels once anyway)."""

        def fn(n: Node) -> Any:
            needs.add(n.key)
            return Existing(n.key) if subflow else Alias(n.key)

        if large is not None and whole:
            out = large.replace(v, fn, spec=not subflow)
        else:
            out = replace_nodes(v, fn, spec=not subflow)
        return out if subflow else parse_input(out)

    def arg(i: int, slot: Any) -> Any:
        if not slot.mapped:
            return ref(slot.value)
        kind = how.get((node.key, i))
        if kind in ("stage", "wait"):
            return StageItem(name_of(slot.value))
        if kind == "nest":  # per item of a flatten's map, or per chunk of a stream
            v = slot.value
            src: Any = ParentItem(name_of(v if isinstance(v, PARTED) else v.source))
        elif isinstance(slot.value, Node):
            src = _whole_source(slot.value)
        else:
            concretes.append((node.name, slot.label, len(slot.value)))
            return Concrete(tuple(ref(v, whole=False) for v in slot.value))
        sources.setdefault(src, (node.name, slot.label))
        needs.add(src)
        return ItemOf(src)

    npos = len(node.args)
    args = tuple(arg(i, s) for i, s in enumerate(node.args))
    kwargs = {k: arg(npos + j, s) for j, (k, s) in enumerate(node.kwargs.items())}
    # the maps in wait_for, item by item: item i waits for their item i (read like a
    # mapped argument, not passed to the function)
    nslots = len(node.slots)
    waits = tuple(arg(nslots + j, Slot("wait_for", True, w)) for j, w in enumerate(node.item_waits))
    if isinstance(node, SubflowMapNode):  # subflow
        stage: Stage = SubflowStage(
            name_of(node), node.name, node.flow, args, kwargs, {}, lower=_subflow_lowering()
        )
    else:
        annotations = (
            {**_annotations(node), **_map_span(node)} if distributed else _annotations(node)
        )
        batch = None if node.key in per_item else node.batch_size
        if streamed and batch == "adaptive":  # sized per chunk, as the chunks come
            batch = "stream"
        lanes = node.max_concurrency
        if streamed and lanes and LIMIT_ANNOTATION not in annotations:
            annotations[LIMIT_ANNOTATION] = own_limit(node.item_name, lanes)
            lanes = None
        stage = Stage(
            name_of(node),
            node.name,
            node.task.graph_fn,
            args,
            kwargs,
            annotations,
            _policy(node, records=True, distributed=distributed),
            batch,
            lanes,
            bool(dask.config.get("dynflow.queue-items")),
            waits,
        )
    return PlannedStage(stage, sources, concretes, needs)


def _whole(
    order: list[Node], outputs: Sequence[Node], how: dict
) -> tuple[set[str], set[str], dict[str, FlattenNode]]:
    """What the graph must compute besides the per-item tasks.

    Returns the keys of nodes whose whole value is used (each needs a task of its own),
    the keys of maps whose *raw* list is read (failure records included: a map over a
    map it cannot join item by item still passes failures on, as one that joins
    does), and the ``flatten(m)`` nodes mapped over whole, read raw too.

    An ``allow_failure(m)`` node used whole makes a map ``m`` need a tolerant list, not
    its strict one: it is in the set itself, ``m`` is not (unless used otherwise). Of a
    plain node, it needs the node's value (or failure record).
    """
    whole = {n.key for n in outputs}
    raw: set[str] = set()
    flat: dict[str, FlattenNode] = {}
    for node in reversed(order):
        if isinstance(node, AllowFailureNode):
            if node.key in whole and not isinstance(node.source, MapNode):
                whole.add(node.source.key)
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
            whole.update(n.key for n in node.whole_waits)
            for j, w in enumerate(node.item_waits):
                if (node.key, len(node.slots) + j) not in how:
                    raw.add(w.key)  # read whole, raw: item i waits for item i of it
        elif node.key in whole or isinstance(node, StreamNode):  # a source reads its inputs
            whole.update(d.key for d in node.dependencies)
    return whole, raw, flat


def _whole_source(node: Node) -> Any:
    """The key a map reads for a mapped node it does not join item by item: maps and
    ``flatten(map)`` raw, so that failed items pass on as failure records."""
    if isinstance(node, MapNode) or (
        isinstance(node, FlattenNode) and isinstance(node.source, MapNode)
    ):
        return raw_key(node.key)
    return node.key


class _Graph:
    """The layers being built: one per key, with its dependencies and annotations."""

    def __init__(self) -> None:
        self.layers: dict[Any, dict[Any, Task]] = {}
        self.deps: dict[Any, set] = {}
        self.annotations: dict[Any, dict] = {}

    def add(self, task: Any, deps: set, annotations: dict | None = None) -> None:
        self.layers[task.key] = {task.key: task}
        self.deps[task.key] = set(deps) | task.dependencies
        if annotations:
            self.annotations[task.key] = annotations

    def add_plain(
        self,
        order: list[Node],
        whole: set[str],
        flat_raws: set[str],
        recorded: set[str],
        distributed: bool,
        large: LargeValues | None = None,
    ) -> None:
        """The tasks of plain nodes used whole (``recorded``: failures as records), of
        ``allow_failure`` of a plain node, and the raw lists of flattens read whole;
        ``large``: where large concrete arguments become data tasks."""
        for node in order:
            if isinstance(node, FlattenNode) and node.key in flat_raws:
                key, source = raw_key(node.key), raw_key(node.source.key)
                self.add(Task(key, concat_raw, node.source.name, TaskRef(source)), {source})
            elif node.key not in whole or isinstance(node, (MapNode, KeyNode)):
                continue
            elif distributed and isinstance(node, PARTED):
                continue  # its source or partitions, and its lists: lower_distributed
            elif isinstance(node, CollectionNode):  # on a local scheduler: its whole list
                chunks = self.add_collection(node)
                # raw: a failed partition's record stands for its items, as on a cluster
                args = (node.name, "raw", 1.0, *(TaskRef(k) for k in chunks))
                self.add(Task(node.key, gather_concat, *args), set(chunks))
            elif isinstance(node, AllowFailureNode):
                if not isinstance(node.source, MapNode):
                    source = node.source.key
                    self.add(Task(node.key, tolerate, TaskRef(source)), {source})
            else:
                task = _node_task(node, node.key in recorded, distributed, large)
                self.add(task, {d.key for d in node.dependencies}, _annotations(node))

    def add_layer(self, name: str, tasks: dict[Any, Any]) -> None:
        """Tasks in a layer of their own (a dask collection's graph, tuple keys)."""
        self.layers[name] = tasks
        self.deps[name] = set()

    def add_collections(self, large: LargeValues) -> None:
        """The graphs of the dask collections found in arguments, a layer each."""
        for key, tasks in large.collections.items():
            self.add_layer(key, tasks)

    def add_collection(self, node: CollectionNode) -> list[Any]:
        """The graph of the collection ``node`` maps over, and a task per partition that
        gives its items (``(item name, i)``); returns those tasks' keys."""
        coll = node.collection
        # a partition that fails is a failure record standing for its items (as a
        # flatten's failed parent item), so allow_failure and min_success_ratio apply
        tasks = guarded(convert_legacy_graph(dict(coll.__dask_graph__())), node.name)
        chunks = []
        for i, pkey in enumerate(node.partition_keys()):
            ckey = (node.item_name, i)
            tasks[ckey] = Task(ckey, partition_items, node.kind, TaskRef(pkey))
            chunks.append(ckey)
        self.add_layer(f"{node.key}-graph", tasks)
        return chunks

    def hlg(self) -> HighLevelGraph:
        """The graph: one layer, or where tasks carry annotations (resources,
        priority) one layer per task, each with its annotations. (A layer per task
        costs dask's ``HighLevelGraph`` time quadratic in the number of layers: a
        3,000-node graph took 5 s to send.)"""
        if not self.annotations:
            tasks = {k: t for layer in self.layers.values() for k, t in layer.items()}
            name = f"dynflow-{uuid.uuid4().hex}"
            return HighLevelGraph({name: MaterializedLayer(tasks)}, {name: set()})
        layers = {
            k: MaterializedLayer(v, annotations=self.annotations.get(k) or None)
            for k, v in self.layers.items()
        }
        return HighLevelGraph(layers, {k: self.deps[k] & layers.keys() for k in layers})


def _lists(
    node_key: str, whole: set[str], raw_lists: set[str], tolerant: dict, recorded: set[str]
) -> list[tuple[str, str]]:
    """The lists of map ``node_key`` the graph uses: ``[(key, mode), ...]``."""
    top_mode = "record" if node_key in recorded else "strict"
    lists = [(node_key, top_mode)] if node_key in whole else []
    if node_key in raw_lists:
        lists.append((raw_key(node_key), "raw"))
    lists += [(af.key, "tolerant") for af in tolerant.get(node_key, [])]
    return lists


def _tolerant(order: list[Node], whole: set[str]) -> dict[str, list[Node]]:
    """Map key -> the ``allow_failure`` nodes that need its tolerant list."""
    tolerant: dict[str, list[Node]] = {}
    for node in order:
        if (
            isinstance(node, AllowFailureNode)
            and node.key in whole
            and isinstance(node.source, MapNode)
        ):
            tolerant.setdefault(node.source.key, []).append(node)
    return tolerant


def _recorded(order: list[Node], whole: set[str], records: bool) -> set[str]:
    """Keys whose failure is a value (a failure record) rather than a dask error.

    Everything, inside a sub-flow run per item (``records``); else the plain nodes an
    ``allow_failure`` consumer tolerates and everything upstream of them (of a map: of
    its sources), so that a failure anywhere above reaches the consumer as an exception
    object. Other consumers of those nodes raise the failure's exception, as if it had
    been a dask error.
    """
    if records:
        return {n.key for n in order}
    out: set[str] = set()
    stack: list[Node] = []
    for n in order:
        if isinstance(n, AllowFailureNode) and n.key in whole:
            if isinstance(n.source, MapNode):
                stack.extend(n.source.dependencies)  # its list is tolerant already
            else:
                stack.append(n.source)
    while stack:
        node = stack.pop()
        if node.key not in out:
            out.add(node.key)
            stack.extend(node.dependencies)
    return out


def lower_local(outputs: Sequence[Node], records: bool = False) -> HighLevelGraph:
    """The graph for a local scheduler: each map one task, calling the function per
    item in this process (its raw list), and a task per list of it that is used."""
    order = topological(outputs)
    whole, raw_lists, flat_raws = _whole(order, outputs, {})
    tolerant = _tolerant(order, whole)
    recorded = _recorded(order, whole, records)
    g = _Graph()
    large = LargeValues(data=False)  # dask collections in arguments only
    for node in order:
        if not isinstance(node, MapNode):
            continue
        planned = plan_stage(node, {}, distributed=False, large=large)
        raw = raw_key(node.key)
        exp = Expansion(raw, (planned.stage,), (), planned.sources, tuple(planned.concretes), ())
        data = parse_input({k: Alias(k) for k in sorted(planned.needs)})
        g.add(Task(raw, run_map, exp, data), planned.needs)
        for key, mode in _lists(node.key, whole, set(), tolerant, recorded):
            args = (node.name, mode, node.min_success_ratio, TaskRef(raw))
            g.add(Task(key, gather_raw, *args), {raw})
    g.add_plain(order, whole, set(flat_raws), recorded, distributed=False, large=large)
    g.add_collections(large)
    return g.hlg()


def lower_distributed(
    outputs: Sequence[Node], records: bool = False, run: str | None = None
) -> HighLevelGraph:
    """The graph for a distributed cluster: an expander and placeholder collectors per
    top-level expansion group, whose items the scheduler adds when the expander runs."""
    order = topological(outputs)
    groups = ExpansionGroups()
    for node in order:
        groups.visit(node)
    whole, raw_lists, flat_raws = _whole(order, outputs, groups.how)
    tolerant = _tolerant(order, whole)
    recorded = _recorded(order, whole, records)
    large = LargeValues()
    maps = {n.key: n for n in order if isinstance(n, MapNode)}
    # streams and dask collections: their maps expand once per chunk
    streams = {n.key: n for n in order if isinstance(n, PARTED)}
    # maps expanded per chunk (in a group below a stream's or a collection's)
    streamed = {
        key
        for key in maps
        if any(
            m in streams for f in groups.depth_chain(groups.group[key]) for m in groups.members[f]
        )
    }
    # under a stream, every key is this run's own: how a stream's items fall into
    # chunks depends on timing, so chunk c (and item j of it, its batches, its lists)
    # of one run is not chunk c of another; a worker may still run a cancelled run's
    # task when the same key is asked for again, and distributed then takes its value
    # for the new run's. Sources, chunks, item names and nested lists of streams get a
    # run's id (their lists, the nodes' keys, stay the same).
    run = run or uuid.uuid4().hex
    under = {
        key
        for key in maps
        if any(
            isinstance(streams.get(m), StreamNode)
            for f in groups.depth_chain(groups.group[key])
            for m in groups.members[f]
        )
    }
    names = {key: run_name(maps[key].item_name, run) for key in under}
    names.update(
        (k, run_name(n.item_name, run)) for k, n in streams.items() if isinstance(n, StreamNode)
    )
    planned = {
        n.key: plan_stage(
            n,
            groups.how,
            large=large,
            per_item=groups.per_item,
            streamed=n.key in streamed,
            names=names,
        )
        for n in maps.values()
    }

    # the collectors each group makes: a used list at its own level, concatenated at
    # every level above it
    collectors: dict[int, list[Collector]] = {f: [] for f in groups.groups()}
    for f in groups.groups():
        chain = groups.depth_chain(f)
        for key in groups.members[f]:
            if key in streams:  # its own list, if used whole: the chunks concatenated
                sn = streams[key]
                if key in whole:
                    mode = "record" if key in recorded else "strict"
                    of = names.get(key, sn.item_name)
                    collectors[f].append(Collector(key, of, sn.name, True, mode))
                continue
            stage, node = planned[key].stage, maps[key]
            for ckey, mode in _lists(key, whole, raw_lists, tolerant, recorded):
                ratio = node.min_success_ratio
                # the lists below the top (per chunk, per item): this run's own under a stream
                low = run_name(ckey, run) if key in under else ckey
                keys = [low] * (len(chain) - 1) + [ckey]
                c = Collector(keys[0], stage.key, stage.task_name, mode=mode, ratio=ratio)
                collectors[chain[0]].append(c)
                for level, up in enumerate(chain[1:], 1):
                    collectors[up].append(
                        Collector(keys[level], keys[level - 1], stage.task_name, True, mode, ratio)
                    )

    def expansion(f: int) -> Expansion:
        stages: list[Stage | Nested] = []
        sources: dict[Any, tuple[str, str]] = {}
        concretes: list[tuple[str, str, int]] = []
        needs: set[Any] = set()
        for key in sorted(groups.members[f], key=groups.pos.__getitem__):
            if key in streams:
                continue
            p = planned[key]
            stages.append(p.stage)
            for k, v in p.sources.items():
                sources.setdefault(k, v)
            concretes += p.concretes
            needs |= p.needs
        for child_group in groups.children(f):
            child = expansion(child_group)
            stages.append(Nested(child, {}))
            needs |= {k for k in child.needs if not isinstance(k, ParentItem)}
        # named after everything the expansion makes, so that no two different
        # expansions (e.g. of the same map, chained differently) share a key
        made = [*groups.members[f], *(c.key for c in collectors[f])]
        made += [s.expansion.expander for s in stages if isinstance(s, Nested)]
        stream = next((streams[k] for k in groups.members[f] if k in streams), None)
        return Expansion(
            run_name(stream.source_key, run)
            if isinstance(stream, StreamNode)
            else f"{EXPANDER_PREFIX}-" + tokenize(*made),
            tuple(stages),
            tuple(collectors[f]),
            sources,
            tuple(concretes),
            tuple(sorted(needs, key=str)),
        )

    g = _Graph()
    for f in groups.groups():
        if groups.parent_of(f) is not None:
            continue
        exp = expansion(f)
        stream = next((streams[k] for k in groups.members[f] if k in streams), None)
        if isinstance(stream, CollectionNode):  # its partitions: known now
            chunks = g.add_collection(stream)
            static: dict[Any, Task] = {}
            for nest in exp.stages:
                assert isinstance(nest, Nested)
                for i in range(len(chunks)):
                    static.update((t.key, t) for t in nest.item((i,)))
            for c in exp.collectors:
                static[c.key] = c.task((), len(chunks))
            g.add_layer(f"{stream.key}-items", static)
            continue
        if isinstance(stream, StreamNode):
            plan = _stream_plan(stream, exp, stream.key not in whole, large, names[stream.key])
            deps = set(exp.needs) | set(plan.call.dependencies)
            data = parse_input({k: Alias(k) for k in sorted(deps, key=str)})
            g.add(Task(exp.expander, stream_source, plan, data), deps, _annotations(stream))
        else:
            data = parse_input({k: Alias(k) for k in exp.needs})
            g.add(Task(exp.expander, expand, exp, (), data), set(exp.needs))
        for c in exp.collectors:
            g.add(Task(c.key, unspliced, TaskRef(exp.expander), c.task_name), {exp.expander})
    g.add_plain(order, whole, set(flat_raws), recorded, distributed=True, large=large)
    for data in large.tasks.values():
        g.add(data, set())
    g.add_collections(large)
    return g.hlg()


def _count(value: Any) -> int:
    """A config value that is a count: an int, or its text (an environment variable)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"expected an int, got {value!r}")
    return int(value)


def stream_config(name: str) -> tuple[tuple[int, int], float, tuple[int, int]]:
    """The ``dynflow.stream`` config, checked, for stream ``name``: ``((window-items,
    window-bytes), interval in seconds, (chunk-items, chunk-bytes))``.

    Raises
    ------
    ValueError
        A value that does not fit, naming the stream and the keys.
    """
    # each key on its own: dask.config.get matches "window-items" and "window_items" (an
    # environment variable's spelling), a sub-dict's keys do not
    config = {
        key: dask.config.get(f"dynflow.stream.{key}", default=None)
        for key in ("window-items", "window-bytes", "interval", "chunk-items", "chunk-bytes")
    }
    try:
        window = (_count(config["window-items"]), parse_bytes(config["window-bytes"]))
        raw = config["interval"]
        # a number is seconds (dask's parse_timedelta garbles a negative one)
        number = isinstance(raw, (int, float)) and not isinstance(raw, bool)
        interval = float(raw) if number else parse_timedelta(raw)
        chunk = (_count(config["chunk-items"]), parse_bytes(config["chunk-bytes"]))
        if min(*window, *chunk) < 1:
            raise ValueError("counts and sizes must be at least 1")
        if interval is None or interval < 0:
            raise ValueError("the interval must be a duration of 0 or more")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"stream {name!r}: the dask config dynflow.stream is {config!r}; expected "
            "window-items and chunk-items ints >= 1, window-bytes and chunk-bytes sizes "
            f"such as '64MiB', interval a duration such as '10ms' (0: flush at once) ({e})"
        ) from None
    return window, float(interval), chunk


def _stream_plan(
    node: StreamNode, expansion: Expansion, windowed: bool, large: LargeValues, chunk_name: str
) -> StreamPlan:
    """The plan of ``node``'s source (``windowed``: its list is not used whole, so it
    runs at most ``dynflow.stream.window-*`` ahead of its maps)."""
    window, interval, chunk = stream_config(node.name)
    args = [_ref(a, large) for a in node.args]
    kwargs = {k: _ref(v, large) for k, v in node.kwargs.items()}
    fn = node.task.graph_fn
    if node.wait_for:
        waits = parse_input([Alias(n.key) for n in node.wait_for])
        fn, args = call_after, [fn, waits, *args]
    return StreamPlan(
        node.name,
        node.key,
        chunk_name,
        Task(None, bound, fn, *args, **kwargs),
        node.task.policy(records=False),
        expansion,
        window if windowed else None,
        interval,
        *chunk,
    )


def returned_hook(local: bool, inherit: tuple[tuple[str, Any], ...]) -> Returned:
    """The hook :class:`Returned` pickles as (a :class:`~dynflow.worker._calls.Deferred`
    of this), made again where a call first uses it."""
    return Returned(lower, local, inherit)


#: the calls' hook for returned graphs (dynamic tasks), lowered by :func:`lower`, for a
#: task that passes no cache options on (:func:`_policy` gives each task its own)
RETURNED = Returned(lower)
#: the same on a local scheduler: the graph is computed inside the call
RETURNED_LOCAL = Returned(lower, local=True)
