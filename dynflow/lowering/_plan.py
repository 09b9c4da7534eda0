"""Expansion plans: how the per-item tasks of one or more maps are made.

A plan (:class:`Expansion`) is built on the client when a graph is lowered, travels
inside its expander task's spec, and is used twice once the mapped values exist: on the
worker, to measure and check them (:meth:`Expansion.measure`), and on the scheduler, to
make the per-item tasks (:meth:`Expansion.build`). Nothing here touches scheduler or
worker state.

Plans nest. A map over ``flatten(m)`` (or a map inside a sub-flow run per item) expands
once per item ``i`` of its parent, with a *prefix* ``(i,)``: its items are
``(key, i, j)`` and its per-parent list is ``(key, i)``. A key template written
``ParentItem(k)`` means ``(k, *prefix)``: the parent's item the nested expansion belongs to.

Per-item arguments are written with dask's task spec: an argument read from a mapped
upstream value ``v`` is ``v[i]``, evaluated on the worker that runs the item.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from dask._task_spec import Alias, GraphNode, List, Task, TaskRef, parse_input
from dask.local import get_sync
from dask.utils import key_split

from dynflow._containers import find, substitute
from dynflow._context import BATCH_INDEX
from dynflow._protocol import RAW_PREFIX, at, lane_key
from dynflow._sequences import positional, unmappable
from dynflow.exceptions import MapInputError, MapLengthError
from dynflow.graph._node import KeyNode
from dynflow.graph._task import Task as DynflowTask
from dynflow.worker._call_context import at_index
from dynflow.worker._calls import CallPolicy, call_after
from dynflow.worker._collect import gather, gather_concat, gather_failed
from dynflow.worker._expander import expand, unspliced
from dynflow.worker._failure import Failure

if TYPE_CHECKING:
    from dynflow.graph._flow import Flow

__all__ = [
    "Collector",
    "Concrete",
    "Existing",
    "Expansion",
    "Nested",
    "ParentItem",
    "ItemOf",
    "Stage",
    "StageItem",
    "StageTasks",
    "SubflowStage",
    "pick",
    "resolve",
]

Prefix = tuple[int, ...]


class StageTasks(NamedTuple):
    """The tasks a splice adds for one stage, with the annotations they all get."""

    annotations: Mapping[str, Any]
    tasks: Sequence[GraphNode]  # tasks, and aliases (a sub-flow's output as its item)
    queue: bool = False  # may the scheduler queue them as root tasks


class ParentItem(NamedTuple):
    """The key ``(key, *prefix)``: the parent item a nested expansion belongs to."""

    key: str


def resolve(key: Any, prefix: Prefix) -> Any:
    """The concrete key of an upstream key: ``ParentItem`` keys are per parent, others absolute."""
    return (key.key, *prefix) if isinstance(key, ParentItem) else key


class ItemOf(NamedTuple):
    """Marker in a stage argument: item ``i`` of the value of (template) key ``key``."""

    key: Any


class StageItem(NamedTuple):
    """Marker in a stage argument: item ``i`` of stage ``key`` of the same expansion."""

    key: str


class Existing(NamedTuple):
    """Marker in a sub-flow's argument: the value of existing key ``key``."""

    key: Any


class Concrete(NamedTuple):
    """Marker in a stage argument: item ``i`` of a tuple known when the graph was built
    (``values[i - offset]``: a batch carries only its own slice)."""

    values: tuple
    offset: int = 0


_MARKERS = (ItemOf, StageItem, Concrete)


def _is_marker(obj: Any) -> bool:
    return type(obj) in _MARKERS


def _resolve(obj: Any, prefix: Prefix, i: int, refs: ItemRefs) -> Any:
    """Argument ``obj`` of item ``i``: markers replaced by task-spec references."""

    def leaf(m: Any) -> Any:
        t = type(m)
        if t is ItemOf:
            return refs(resolve(m.key, prefix), i)
        if t is StageItem:
            return refs.stage_item(m.key, prefix, i, whole=False)
        return m.values[i - m.offset]  # Concrete

    if type(obj) is StageItem:  # a whole argument: a plain reference
        return refs.stage_item(obj.key, prefix, i, whole=True)
    return substitute(obj, _is_marker, leaf, spec=True)


@dataclass(frozen=True, slots=True)
class Stage:
    """``fn`` called once per item; ``args``/``kwargs`` may hold item markers."""

    key: str  # items are (key, *prefix, i)
    task_name: str
    fn: Callable
    args: tuple
    kwargs: Mapping[str, Any]
    annotations: Mapping[str, Any]
    policy: CallPolicy | None = None  # retries, timeout; items return Failure records
    batch: int | str | None = None  # items per scheduler task: None, an int or "auto"
    max_concurrency: int | None = None  # at most this many items running at once
    # let the scheduler queue the items as root tasks (``dynflow.queue-items``)
    queue: bool = False
    # item markers of the maps in wait_for: item i waits for their item i, unread
    waits: tuple = ()

    def call(
        self,
        key: Any,
        prefix: Prefix,
        i: int,
        refs: ItemRefs,
        after: Any = None,
        blocking: bool = False,
    ) -> Task:
        """The task spec of item ``i`` (``key``: its key, or None inside a batch).

        ``after``: a key this item must wait for without reading its value (a lane).
        ``blocking``: run a coroutine function to completion (local schedulers).
        """
        waited = [_resolve(w, prefix, i, refs) for w in self.waits]
        extra: tuple[Any, ...]
        if after is not None:
            waited.append(TaskRef(after))
        if waited:  # waited for, not passed: a failure among them fails the item
            fn, extra = call_after, (self.fn, waited[0] if len(waited) == 1 else List(*waited))
        else:
            fn, extra = self.fn, ()
        assert self.policy is not None
        return self.policy.spec(
            key,
            fn,
            *extra,
            *(_resolve(a, prefix, i, refs) for a in self.args),
            blocking=blocking,
            **{name: _resolve(v, prefix, i, refs) for name, v in self.kwargs.items()},
        )

    def items(self, prefix: Prefix, n: int, refs: ItemRefs, nthreads: int = 1) -> list[Task]:
        """Item tasks ``(key, *prefix, i)``; batched: tasks ``(key, *prefix, b)`` of lists.

        With ``max_concurrency=k`` the tasks run in ``k`` lanes: task ``t`` waits for a
        tiny "done" task of task ``t - k``, so at most ``k`` run at once, cluster-wide,
        and a waiting task is only a scheduler task (no worker thread is held). A batch
        runs its items one after another, so ``k`` batches also mean ``k`` items.
        """
        if self.batch is None:

            def make(t: int, after: Any) -> Task:
                return self.call((self.key, *prefix, t), prefix, t, refs, after)

            count = n
        else:
            ranges = _ranges(n, batch_size(self.batch, n, nthreads))

            def make(t: int, after: Any) -> Task:
                start, stop = ranges[t]
                return self._batch((self.key, *prefix, t), prefix, start, stop, refs, after)

            count = len(ranges)
        if not self.max_concurrency:
            return [make(t, None) for t in range(count)]
        k, lane = self.max_concurrency, lane_key(self.key)
        out = []
        for t in range(count):
            out.append(make(t, (lane, *prefix, t - k) if t >= k else None))
            if t + k < count:
                out.append(Task((lane, *prefix, t), done, TaskRef((self.key, *prefix, t))))
        return out

    def _batch(
        self,
        key: Any,
        prefix: Prefix,
        start: int,
        stop: int,
        refs: ItemRefs,
        after: Any = None,
    ) -> Task:
        """One task for items ``start:stop`` (``after``: a key it waits for, unread).

        Its spec is small whatever its size: the items' own specs are made where it runs
        (:func:`run_batch`), which sets each item's index as it runs it; only the
        batch's dependencies, and its slice of concrete mapped values, are listed here.
        """
        markers = find((self.args, self.kwargs, self.waits), _is_marker)
        deps = set(self.call(None, prefix, start, refs).dependencies)
        for m in markers:
            if type(m) is StageItem:
                deps.update(refs.stage_key(m.key, prefix, i) for i in range(start, stop))
            elif type(m) is Concrete:
                for v in m.values[start:stop]:
                    deps.update(getattr(v, "dependencies", ()))
        stage = self
        if any(type(m) is Concrete for m in markers):

            def part(m: Any) -> Any:
                return Concrete(m.values[start:stop], start) if type(m) is Concrete else m

            args, kwargs = substitute((self.args, self.kwargs), _is_marker, part)
            stage = dataclasses.replace(self, args=args, kwargs=kwargs)
        data = parse_input({d: Alias(d) for d in deps})
        if after is None:
            return Task(key, run_batch, stage, prefix, start, stop, refs, data)
        return Task(
            key, call_after, run_batch, TaskRef(after), stage, prefix, start, stop, refs, data
        )


def done(_result: Any) -> None:
    """A lane's token that an item finished (its result is not passed on)."""
    return None


def run_batch(
    stage: Stage, prefix: Prefix, start: int, stop: int, refs: ItemRefs, data: dict
) -> list:
    """A batch, on the worker: each item run in turn (results per item), as its own
    task would run it. Where every mapped argument is a whole argument (the usual case),
    items are called directly (:func:`_direct`); else each item's spec is made and run."""
    direct = _direct(stage, prefix, refs, data)
    out = []
    if direct is not None:
        for i in range(start, stop):
            token = BATCH_INDEX.set((*prefix, i))
            try:
                out.append(direct(i))
            finally:
                BATCH_INDEX.reset(token)
        return out
    for i in range(start, stop):
        with at_index((*prefix, i)):
            out.append(stage.call(None, prefix, i, refs)(data))
    return out


def _direct(
    stage: Stage, prefix: Prefix, refs: ItemRefs, data: Mapping[Any, Any]
) -> Callable[[int], Any] | None:
    """Item ``i``'s call, ``direct(i)``, made without a task spec: the arguments every
    item shares are evaluated once, and each mapped argument read for ``i`` as its item
    marker says (the values :meth:`Stage.call`'s spec would give). None when a marker
    sits inside a container (a spec evaluates that)."""
    parts = (*stage.waits, *stage.args, *stage.kwargs.values())
    if any(type(a) not in _MARKERS and find(a, _is_marker) for a in parts):
        return None

    def reader(a: Any) -> Callable[[int], Any]:
        t = type(a)
        if t is ItemOf:
            key = resolve(a.key, prefix)
            if key in refs.from_expander:
                values = data[refs.expander][key]
            else:
                values = data[key]
            return values.__getitem__
        if t is StageItem:
            size = refs.batches.get(a.key)
            if size is None:
                return lambda i: data[(a.key, *prefix, i)]
            return lambda i: data[(a.key, *prefix, i // size)][i % size]
        if t is Concrete:

            def concrete(i: int) -> Any:
                v = a.values[i - a.offset]
                return v(data) if isinstance(v, GraphNode) else v

            return concrete
        value = a(data) if isinstance(a, GraphNode) else a  # the same for every item
        return lambda i: value

    waits = [reader(w) for w in stage.waits]
    args = [reader(a) for a in stage.args]
    kwargs = [(name, reader(v)) for name, v in stage.kwargs.items()]
    policy, fn = stage.policy, stage.fn
    assert policy is not None

    def direct(i: int) -> Any:
        values = [r(i) for r in args]
        named = {name: r(i) for name, r in kwargs}
        if waits:  # waited for, not passed: as Stage.call's call_after
            waited = [w(i) for w in waits]
            return policy.run(
                call_after, fn, waited[0] if len(waited) == 1 else waited, *values, **named
            )
        return policy.run(fn, *values, **named)

    return direct


class ItemRefs(NamedTuple):
    """How an item reads its inputs.

    Item ``i`` of a mapped value: ``value[i]``, or from the expander's result when the
    expander had to turn the value into a list. Item ``i`` of a stage of the same
    expansion: that item's task, or, when the stage is batched (``batches``: stage key
    -> items per task), item ``i % size`` of its batch ``i // size``.
    """

    expander: Any
    from_expander: frozenset
    batches: Mapping[str, int] = {}  # noqa: RUF012 - never mutated

    def __call__(self, key: Any, i: int) -> Task:
        if key in self.from_expander:
            return Task(None, pick, TaskRef(self.expander), key, i)
        return Task(None, operator.getitem, TaskRef(key), i)

    def stage_key(self, key: str, prefix: Prefix, i: int) -> Any:
        """The key of the task that holds item ``i`` of stage ``key``."""
        size = self.batches.get(key)
        return (key, *prefix, i) if size is None else (key, *prefix, i // size)

    def stage_item(self, key: str, prefix: Prefix, i: int, whole: bool) -> Any:
        """Item ``i`` of stage ``key``, as a task-spec argument (``whole``: the argument
        itself, not a part of a container)."""
        size = self.batches.get(key)
        if size is not None:
            return Task(None, operator.getitem, TaskRef((key, *prefix, i // size)), i % size)
        return TaskRef((key, *prefix, i)) if whole else Alias((key, *prefix, i))


def batch_size(batch: int | str, n: int, nthreads: int) -> int:
    """Items per task: ``batch`` itself, or for ``"auto"`` about 8 tasks per worker thread.

    ``"auto"``: ``ceil(n / (8 * nthreads))``, so each thread of the cluster gets about
    eight tasks (enough to balance uneven items and to survive a lost worker cheaply),
    and never fewer than one item per task.
    """
    if batch == "auto":
        return max(1, -(-n // (8 * max(1, nthreads))))
    return int(batch)


def _ranges(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


@dataclass(frozen=True, slots=True)
class SubflowStage(Stage):
    """A whole sub-flow per item (``fn`` is the flow); item ``i`` is its output.

    The sub-flows are built where user code may run: on the worker, by the expander
    (:meth:`build_subflows`); the scheduler only adds the tasks it is sent. ``lower`` is
    the lowering they are built with (:func:`dynflow.lowering._lower.lower`, which makes
    this plan: it travels by reference, as the plan's functions do).
    """

    lower: Callable[..., Any] | None = None

    def items(self, prefix: Prefix, n: int, refs: ItemRefs, nthreads: int = 1) -> list[Task]:
        raise RuntimeError("internal error: sub-flow stages are built on the worker")

    def build_item(self, i: int, src: Callable, stg: Callable, ext: Callable) -> Any:
        """Build item ``i``'s sub-flow; return its output node.

        ``src(key, i)``, ``stg(key, i)`` and ``ext(key)`` give the values that stand for
        the markers ``ItemOf``, ``StageItem`` and ``Existing`` in the flow's arguments.
        """

        def leaf(m: Any) -> Any:
            t = type(m)
            if t is ItemOf:
                return src(m.key, i)
            if t is StageItem:
                return stg(m.key, i)
            if t is Existing:
                return ext(m.key)
            return value(m.values[i - m.offset])  # Concrete

        def value(obj: Any) -> Any:
            return substitute(obj, _is_flow_marker, leaf)

        flow = cast("Flow[..., Any]", self.fn)  # a sub-flow stage's function is its flow
        return flow.build(
            *(value(a) for a in self.args), **{k: value(v) for k, v in self.kwargs.items()}
        )

    def build_subflows(
        self, prefix: Prefix, n: int, item: Callable[[Any, int], Any]
    ) -> list[StageTasks]:
        """Each item's sub-flow, lowered (by :attr:`lower`)."""
        assert self.lower is not None
        out: list[StageTasks] = []
        for i in range(n):
            output = self.build_item(
                i,
                src=lambda key, j: item(resolve(key, prefix), j),
                stg=lambda key, j: key_node((key, *prefix, j)),
                ext=key_node,
            )
            graph = self.lower([output], distributed=True, records=True)
            for layer in graph.layers.values():
                out.append(StageTasks(layer.annotations or {}, list(layer.values())))
            out.append(StageTasks(self.annotations, [Alias((self.key, *prefix, i), output.key)]))
        return out

    def run_locally(self, data: Mapping[Any, Any], n: int) -> list:
        """Each item's sub-flow computed in this process, in order."""

        lower = self.lower
        assert lower is not None

        def run(i: int) -> Any:
            node = self.build_item(
                i, src=lambda key, j: data[key][j], stg=_no_stage, ext=data.__getitem__
            )
            # as on a cluster: its failures are records, naming the task they came from
            return get_sync(dict(lower([node], distributed=False, records=True)), node.key)

        return [run(i) for i in range(n)]


def _is_flow_marker(obj: Any) -> bool:
    return type(obj) in (ItemOf, StageItem, Concrete, Existing)


def _no_stage(key: Any, i: int) -> Any:  # pragma: no cover - local maps have no stages
    raise RuntimeError("internal error: a local sub-flow map reads no other stage")


def key_node(key: Any) -> Any:
    """A node standing for existing key ``key`` (inside a sub-flow built per item)."""
    return KeyNode(DynflowTask(_never_called, name=key_split(key)), key)


def _never_called(*_: Any) -> Any:  # pragma: no cover - a KeyNode has no task
    raise RuntimeError("internal error: a KeyNode's task was run")


@dataclass(frozen=True, slots=True)
class Nested:
    """A nested expansion per item: its expander and its collectors' placeholders."""

    expansion: Expansion
    annotations: Mapping[str, Any]

    def items(self, prefix: Prefix, n: int, refs: ItemRefs, nthreads: int = 1) -> list[Task]:
        child = self.expansion
        out = []
        for i in range(n):
            sub = (*prefix, i)
            ekey = at(child.expander, sub)
            data = parse_input({k: Alias(k) for k in child.needs_at(sub)})
            out.append(Task(ekey, expand, child, sub, data))
            out += [
                Task(at(c.key, sub), unspliced, TaskRef(ekey), c.task_name)
                for c in child.collectors
            ]
        return out


@dataclass(frozen=True, slots=True)
class Collector:
    """The list ``key`` (at a prefix) of the items ``(of, *prefix, i)``, or their concatenation.

    ``mode`` is how failed items are treated in the top-level list (see
    :func:`dynflow.worker._collect.gather`); lists at nested levels keep the records as they are.
    """

    key: str
    of: str
    task_name: str
    concat: bool = False
    mode: str = "strict"
    ratio: float = 1.0
    batch: int | str | None = None  # the batching of the stage it gathers

    def task(self, prefix: Prefix, n: int, failed: Any = None, nthreads: int = 1) -> Task:
        """The collector's spec; ``failed``: the expander's key, whose value is a Failure."""
        mode = self.mode if not prefix else "raw"
        if failed is not None:  # no items: the source's failure, by mode
            args = (self.task_name, mode, self.ratio, TaskRef(failed))
            return Task(at(self.key, prefix), gather_failed, *args)
        if self.batch is not None:
            n = len(_ranges(n, batch_size(self.batch, n, nthreads)))
            refs = (TaskRef((self.of, *prefix, b)) for b in range(n))
        else:
            refs = (TaskRef((self.of, *prefix, i)) for i in range(n))
        fn = gather_concat if self.concat or self.batch is not None else gather
        return Task(at(self.key, prefix), fn, self.task_name, mode, self.ratio, *refs)


@dataclass(frozen=True, slots=True)
class Expansion:
    """The per-item tasks of maps that share one length, made by one expander.

    ``stages`` are in dependency order. ``sources`` are the (template) keys read item
    by item, each with the first (task name, argument) that maps over it, for error
    messages; ``consts`` the lengths of concrete mapped tuples; ``needs`` every
    (template) key the expander must hold so the items can use it.
    """

    expander: str
    stages: tuple[Stage | Nested, ...]
    collectors: tuple[Collector, ...]
    sources: Mapping[Any, tuple[str, str]]
    consts: tuple[tuple[str, str, int], ...]
    needs: tuple[Any, ...]

    @property
    def names(self) -> str:
        names = dict.fromkeys(f"{s.task_name}.map()" for s in self.stages if isinstance(s, Stage))
        return ", ".join(names) or "map"

    def needs_at(self, prefix: Prefix) -> list:
        return [resolve(k, prefix) for k in self.needs]

    def failed_source(self, data: Mapping[Any, Any], prefix: Prefix) -> Failure | None:
        """The failure record a mapped source holds, if one does (a failed parent item)."""
        for tkey in self.sources:
            value = data[resolve(tkey, prefix)]
            if type(value) is Failure:
                return value
        return None

    # ------------------------------------------------------------ on a worker
    def measure(self, data: Mapping[Any, Any], prefix: Prefix = ()) -> tuple[int, dict]:
        """Check the mapped values; return (length, sources turned into lists).

        A source that cannot be indexed (a set, a dict view) is turned into a list and
        returned, so the items can read it from the expander.
        """
        lengths: dict[str, int] = {}
        listed: dict[Any, list] = {}
        # maps joined in one expansion (chained, or waited for item by item): name the
        # map each argument belongs to
        several = len({t for t, _ in self.sources.values()} | {t for t, _, _ in self.consts}) > 1

        def named(task_name: str, label: str) -> str:
            return f"{task_name}.map() {label}" if several else label

        for tkey, (task_name, label) in self.sources.items():
            key = resolve(tkey, prefix)
            value = data[key]
            why = unmappable(value)
            if why is not None:
                raise MapInputError(
                    f"{task_name}.map(): argument {label!r} must be a list-like value to "
                    f"map over, got {type(value).__name__} from {_describe(key)} ({why})"
                )
            if not positional(value):
                value = listed[key] = list(value)
            text = f"{named(task_name, label)}={len(value)} (from {_describe(key)})"
            lengths.setdefault(text, len(value))
        for task_name, label, n in self.consts:
            lengths.setdefault(f"{named(task_name, label)}={n}", n)
        if len(set(lengths.values())) > 1:
            raise MapLengthError(
                f"{self.names}: mapped arguments must have equal lengths, got " + ", ".join(lengths)
            )
        return next(iter(lengths.values())), listed

    # --------------------------------------------------------- on the scheduler
    def build_subflows(self, n: int, prefix: Prefix, listed: Mapping[Any, list]) -> dict[int, list]:
        """On the worker: the tasks of the sub-flow stages, ``{stage index: [...]}``."""
        if not any(isinstance(s, SubflowStage) for s in self.stages):
            return {}
        ekey = at(self.expander, prefix)

        def item(key: Any, i: int) -> Any:
            if key in listed:
                return _PICK(key_node(ekey), key, i)
            return _ITEM(key_node(key), i)

        return {
            s_index: stage.build_subflows(prefix, n, item)
            for s_index, stage in enumerate(self.stages)
            if isinstance(stage, SubflowStage)
        }

    def build(
        self,
        n: int,
        prefix: Prefix,
        listed: list,
        subflow_tasks: Mapping[int, list],
        failed: bool = False,
        nthreads: int = 1,
    ) -> tuple[list[StageTasks], dict[Any, Task]]:
        """Per-item tasks of every stage (in order), and the collectors' task specs.

        ``subflow_tasks`` holds the sub-flow stages' tasks, built by :meth:`build_subflows`.
        ``failed``: a mapped source was a failure record (the expander's value): no
        items, and each collector's list is that failure. ``nthreads``: the cluster's
        worker threads, for ``batch_size="auto"``.
        """
        ekey = at(self.expander, prefix)
        if failed:
            return [], {at(c.key, prefix): c.task(prefix, 0, ekey) for c in self.collectors}
        batches = {
            s.key: batch_size(s.batch, n, nthreads)
            for s in self.stages
            if isinstance(s, Stage) and s.batch is not None
        }
        refs = ItemRefs(ekey, frozenset(listed), batches)

        stages: list[StageTasks] = []
        for s_index, s in enumerate(self.stages):
            if s_index in subflow_tasks:
                stages += subflow_tasks[s_index]
            else:
                items = s.items(prefix, n, refs, nthreads)
                stages.append(StageTasks(s.annotations, items, getattr(s, "queue", False)))
        collectors = {
            at(c.key, prefix): c.task(prefix, n, nthreads=nthreads) for c in self.collectors
        }
        return stages, collectors

    def refuse_splice(
        self, n: int, prefix: Prefix, listed: Any, subflow_tasks: Mapping[Any, Any], failed: bool
    ) -> str | None:
        """Why a splice request at ``prefix`` is not one this plan's expander can make
        (None: it can), checked on the scheduler before anything is built, in
        O(sources + stages), never per item: no items for a failed source; ``n`` the
        length of every concrete mapped tuple; ``listed`` among the mapped sources; the
        sub-flow stages' tasks for exactly those stages, at least one group per item."""
        if failed:
            if n or listed or subflow_tasks:
                return (
                    "a failed source has no items: expected n=0, no listed sources and no "
                    f"sub-flow tasks, got n={n}, {len(listed)} listed, "
                    f"{len(subflow_tasks)} sub-flow stages"
                )
            return None
        for task_name, label, length in self.consts:
            if n != length:
                return (
                    f"{task_name}.map() argument {label!r} has {length} items; the request "
                    f"says n={n}"
                )
        sources = {resolve(k, prefix) for k in self.sources}
        if len(listed) > len(sources) or any(k not in sources for k in listed):
            return (
                f"listed sources must be among the mapped ones "
                f"{sorted(map(str, sources))[:5]}, got {sorted(map(str, listed))[:5]}"
            )
        expected = {i for i, s in enumerate(self.stages) if isinstance(s, SubflowStage)}
        if set(subflow_tasks) != expected:
            return (
                f"sub-flow tasks are expected for stages {sorted(expected)}, got "
                f"{sorted(map(str, subflow_tasks))[:5]}"
            )
        for i in expected:
            groups = subflow_tasks[i]
            if not isinstance(groups, list) or len(groups) < n:
                got = f"{len(groups)}" if isinstance(groups, list) else type(groups).__name__
                return (
                    f"sub-flow stage {i} must send a list of at least {n} task groups (one "
                    f"per item at least), got {got}"
                )
        return None

    def lengths(self, n: int, prefix: Prefix, nthreads: int = 1) -> dict[str, tuple]:
        """``{stage key: (prefix, n, items per task or None)}`` for progress tracking."""
        return {
            s.key: (prefix, n, None if s.batch is None else batch_size(s.batch, n, nthreads))
            for s in self.stages
            if isinstance(s, Stage)
        }

    def run_locally(self, data: dict[Any, Any]) -> list | Failure:
        """Evaluate a single-stage, top-level expansion in this process."""
        (stage,) = self.stages
        assert isinstance(stage, Stage)
        if (failure := self.failed_source(data, ())) is not None:
            return failure  # in place of the list: see gather_failed
        try:
            n, listed = self.measure(data)
        except Exception as e:  # no list to map over: the source failed, as on a cluster
            return Failure(e, self.names)
        data = {**data, **listed}
        if isinstance(stage, SubflowStage):
            return stage.run_locally(data, n)
        refs = ItemRefs(None, frozenset())

        # one call per item, in order: the same list; one at a time, so no lanes either
        out = []
        for i in range(n):
            with at_index((i,)):  # the item's index, for its label
                out.append(stage.call((stage.key, i), (), i, refs, blocking=True)(data))
        return out


def pick(listed: Mapping[Any, list], key: Any, i: int) -> Any:
    """Item ``i`` of a source that the expander turned into a list."""
    return listed[key][i]


def _describe(key: Any) -> str:
    """Where a mapped value comes from, in the user's terms: a task, a map, a flatten."""
    if isinstance(key, str) and key.startswith(RAW_PREFIX):  # a map's or flatten's raw list
        name = key_split(key[len(RAW_PREFIX) :])
        return f"{name}()" if name.endswith(".map") else f"{name}(...)"
    return f"task {key_split(key)!r}"


#: a sub-flow's mapped input, read by the sub-flow built per item: item ``i`` of an
#: upstream value, or of a source the expander turned into a list
_ITEM: DynflowTask = DynflowTask(operator.getitem, name="dynflow-item")
_PICK: DynflowTask = DynflowTask(pick, name="dynflow-item")
