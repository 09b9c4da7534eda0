"""Expansion plans: how the per-item tasks of one or more maps are made.

A plan (:class:`Expansion`) is built on the client when a graph is lowered, travels
inside its expander task's spec, and is used twice once the mapped values exist: on the
worker, to measure and check them (:meth:`Expansion.measure`) and to build sub-flow
stages, and on the scheduler, to make the per-item tasks (:meth:`Expansion.build`) from
its stages (:mod:`dynflow.lowering._stage`, :mod:`dynflow.lowering._subflow_stage`) and
its collectors (a local scheduler runs it in one task instead:
:meth:`Expansion.run_locally`). Nothing here touches scheduler or worker state.

Plans nest. A map over ``flatten(m)`` (or a map inside a sub-flow run per item) expands
once per item ``i`` of its parent, with a *prefix* ``(i,)``: its items are
``(key, i, j)`` and its per-parent list is ``(key, i)`` (:mod:`dynflow.lowering._markers`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from dask._task_spec import Alias, GraphNode, Task, TaskRef, parse_input
from dask.utils import key_split

from dynflow._protocol import RAW_PREFIX, at
from dynflow._sequences import positional, unmappable
from dynflow.exceptions import MapInputError, MapLengthError
from dynflow.lowering._markers import ItemRefs, Prefix, resolve
from dynflow.lowering._stage import Stage, batch_size, ranges
from dynflow.worker._call_context import at_index
from dynflow.worker._collect import gather, gather_concat, gather_failed
from dynflow.worker._expander import expand, unspliced
from dynflow.worker._failure import Failure

if TYPE_CHECKING:
    from dynflow.lowering._subflow_stage import SubflowStage

__all__ = ["Collector", "Expansion", "Nested", "StageTasks"]


class StageTasks(NamedTuple):
    """The tasks a splice adds for one stage, with the annotations they all get."""

    annotations: Mapping[str, Any]
    tasks: Sequence[GraphNode]  # tasks, and aliases (a sub-flow's output as its item)
    queue: bool = False  # may the scheduler queue them as root tasks


@dataclass(frozen=True, slots=True)
class Nested:
    """A nested expansion per item: its expander and its collectors' placeholders."""

    expansion: Expansion
    annotations: Mapping[str, Any]

    def items(self, prefix: Prefix, n: int, refs: ItemRefs) -> list[Task]:
        return [t for i in range(n) for t in self.item((*prefix, i))]

    def item(self, sub: Prefix) -> list[Task]:
        """The expander of parent item ``sub`` (its full index) and its collectors'
        placeholders."""
        child = self.expansion
        ekey = at(child.expander, sub)
        data = parse_input({k: Alias(k) for k in child.needs_at(sub)})
        out = [Task(ekey, expand, child, sub, data)]
        out += [
            Task(at(c.key, sub), unspliced, TaskRef(ekey), c.task_name) for c in child.collectors
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

    def task(
        self, prefix: Prefix, n: int, failed: Any = None, batches: Mapping[str, int] = {}
    ) -> Task:
        """The collector's spec; ``failed``: the expander's key, whose value is a Failure;
        ``batches``: items per task of the batched stages (as :class:`ItemRefs`)."""
        mode = self.mode if not prefix else "raw"
        if failed is not None:  # no items: the source's failure, by mode
            args = (self.task_name, mode, self.ratio, TaskRef(failed))
            return Task(at(self.key, prefix), gather_failed, *args)
        size = batches.get(self.of)
        if size is not None:
            n = len(ranges(n, size))
        refs = (TaskRef((self.of, *prefix, t)) for t in range(n))
        fn = gather_concat if self.concat or size is not None else gather
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

    def build_subflows(self, n: int, prefix: Prefix, listed: Mapping[Any, list]) -> dict[int, list]:
        """On the worker: the tasks of the sub-flow stages, ``{stage index: [...]}``."""
        ekey = at(self.expander, prefix)
        return {
            s_index: cast("SubflowStage", stage).build_subflows(prefix, n, ekey, listed)
            for s_index, stage in enumerate(self.stages)
            if isinstance(stage, Stage) and stage.subflow
        }

    # --------------------------------------------------------- on the scheduler
    def build(
        self,
        n: int,
        prefix: Prefix,
        listed: list,
        subflow_tasks: Mapping[int, list],
        failed: bool = False,
        batches: Mapping[str, int] = {},
    ) -> tuple[list[StageTasks], dict[Any, Task]]:
        """Per-item tasks of every stage (in order), and the collectors' task specs.

        ``subflow_tasks`` holds the sub-flow stages' tasks, built by :meth:`build_subflows`.
        ``failed``: a mapped source was a failure record (the expander's value): no
        items, and each collector's list is that failure. ``batches``: items per task of
        the batched stages (:meth:`batches`; the others: one task per item).
        """
        ekey = at(self.expander, prefix)
        if failed:
            return [], {at(c.key, prefix): c.task(prefix, 0, ekey) for c in self.collectors}
        refs = ItemRefs(ekey, frozenset(listed), batches)

        stages: list[StageTasks] = []
        for s_index, s in enumerate(self.stages):
            if s_index in subflow_tasks:
                stages += subflow_tasks[s_index]
            else:
                items = s.items(prefix, n, refs)
                stages.append(StageTasks(s.annotations, items, getattr(s, "queue", False)))
        collectors = {
            at(c.key, prefix): c.task(prefix, n, batches=batches) for c in self.collectors
        }
        return stages, collectors

    def batches(
        self,
        n: int,
        nthreads: int,
        seconds: Callable[[str], float | None] = lambda _: None,
        decided: Callable[[str], tuple[bool, int | None]] = lambda _: (False, None),
    ) -> dict[str, int]:
        """Items per task of each stage that groups its ``n`` items (the others run one
        task per item), decided once per splice (:func:`~dynflow.lowering._stage.batch_size`):
        ``nthreads``, the cluster's worker threads; ``seconds(task_name)``, a task's
        measured compute seconds per item (None: not measured); ``decided(stage key)``,
        ``(True, size)`` where an earlier splice of the same items decided already
        (kept: its tasks keep their keys)."""
        out = {}
        for s in self.stages:
            if isinstance(s, Stage) and s.batch is not None:
                known, size = decided(s.key)
                if not known:
                    size = batch_size(s.batch, n, nthreads, seconds(s.task_name))
                if size is not None:
                    out[s.key] = size
        return out

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
        expected = {i for i, s in enumerate(self.stages) if isinstance(s, Stage) and s.subflow}
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

    def task_names(self) -> dict[str, str]:
        """``{stage key: task name}`` of the stages that call a task per item (not the
        sub-flow stages), whose items' compute time is measured."""
        return {s.key: s.task_name for s in self.stages if isinstance(s, Stage) and not s.subflow}

    def lengths(self, n: int, prefix: Prefix, batches: Mapping[str, int]) -> dict[str, tuple]:
        """``{stage key: (prefix, n, items per task or None)}`` for progress tracking."""
        return {s.key: (prefix, n, batches.get(s.key)) for s in self.stages if isinstance(s, Stage)}

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
        if stage.subflow:
            return cast("SubflowStage", stage).run_locally(data, n)
        refs = ItemRefs(None, frozenset())

        # one call per item, in order: the same list; one at a time, so no lanes either
        out = []
        for i in range(n):
            with at_index((i,)):  # the item's index, for its label
                out.append(stage.call((stage.key, i), (), i, refs, blocking=True)(data))
        return out


def _describe(key: Any) -> str:
    """Where a mapped value comes from, in the user's terms: a task, a map, a flatten."""
    if isinstance(key, str) and key.startswith(RAW_PREFIX):  # a map's or flatten's raw list
        name = key_split(key[len(RAW_PREFIX) :])
        return f"{name}()" if name.endswith(".map") else f"{name}(...)"
    return f"task {key_split(key)!r}"
