"""Expansion plans: how the per-item tasks of one or more chained maps are made.

A plan is built on the client when a graph is lowered, travels inside the expander
task's spec, and is used twice once the mapped values exist: on the worker, to measure
and check them (:meth:`Expansion.measure`), and on the scheduler, to make the per-item
tasks (:meth:`Expansion.build`). Nothing here touches scheduler or worker state.

Per-item arguments are written with dask's task spec: an argument read from a mapped
upstream value ``v`` is ``v[i]``, evaluated on the worker that runs the item.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dask._task_spec import Task, TaskRef

from dynflow.exceptions import MapInputError, MapLengthError

__all__ = ["Arg", "Expansion", "Stage", "collect", "pick"]


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument of a stage.

    kind:
      ``"source"``  mapped over the value of upstream key ``value``: item i gets ``value[i]``
      ``"stage"``   mapped over stage ``value`` of the same expansion: item i gets its item i
      ``"const"``   mapped over a concrete tuple ``value`` known when the graph was built
      ``"static"``  the same ``value`` for every item (may hold task references)
    """

    kind: str
    value: Any
    label: str = ""


@dataclass(frozen=True, slots=True)
class Stage:
    """One map of an expansion: ``fn`` called once per item."""

    key: str  # the map node's key; items are (key, i); the collector is key
    task_name: str
    fn: Callable
    args: tuple[Arg, ...]
    kwargs: Mapping[str, Arg]
    annotations: Mapping[str, Any]
    collect: bool  # whether the map node's list is used (its collector key exists)

    def item(self, i: int, refs: Callable[[str, int], Any]) -> Task:
        """The task spec of item ``i``; ``refs(key, i)`` reads item ``i`` of a source."""

        def arg(a: Arg) -> Any:
            if a.kind == "source":
                return refs(a.value, i)
            if a.kind == "stage":
                return TaskRef((a.value, i))
            if a.kind == "const":
                return a.value[i]
            return a.value

        return Task(
            (self.key, i),
            self.fn,
            *map(arg, self.args),
            **{k: arg(a) for k, a in self.kwargs.items()},
        )


@dataclass(frozen=True, slots=True)
class Expansion:
    """The per-item tasks of maps that share one length, made by one expander.

    ``stages`` are in dependency order; a stage's ``"stage"`` arguments name earlier
    stages. ``sources`` are the upstream keys read item by item, each with the first
    (task name, argument) that maps over it, for error messages.
    """

    expander: str
    stages: tuple[Stage, ...]
    sources: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    consts: tuple[tuple[str, str, int], ...] = ()  # (task name, argument, length)

    @property
    def names(self) -> str:
        return ", ".join(f"{s.task_name}.map()" for s in self.stages)

    # ------------------------------------------------------------ on a worker
    def measure(self, data: Mapping[str, Any]) -> tuple[int, dict[str, list]]:
        """Check the mapped values and return (length, materialized sources).

        A source that cannot be indexed (a set, a dict view) is turned into a list,
        returned in the second item so that the items can read it from the expander.
        """
        lengths: dict[str, int] = {}
        materialized: dict[str, list] = {}
        for key, (task_name, label) in self.sources.items():
            value = data[key]
            if isinstance(value, (str, bytes, bytearray, Mapping)) or not _iterable(value):
                raise MapInputError(
                    f"{task_name}.map(): argument {label!r} must be a list-like value to "
                    f"map over, got {type(value).__name__} from {_describe(key)}"
                )
            if isinstance(value, Iterator):
                raise MapInputError(
                    f"{task_name}.map(): argument {label!r} got a {type(value).__name__} "
                    f"(a one-shot iterator) from {_describe(key)}; return a list instead, "
                    "so the value can be stored, shipped between workers and recomputed"
                )
            if not (hasattr(value, "__getitem__") and hasattr(value, "__len__")):
                value = materialized[key] = list(value)
            lengths[f"{task_name}.{label}"] = len(value)
        for task_name, label, n in self.consts:
            lengths[f"{task_name}.{label}"] = n
        if len(set(lengths.values())) > 1:
            found = ", ".join(f"{k}={n}" for k, n in lengths.items())
            raise MapLengthError(
                f"{self.names}: mapped arguments must have equal lengths, got {found}"
            )
        n = next(iter(lengths.values()))
        return n, materialized

    # --------------------------------------------------------- on the scheduler
    def build(
        self, n: int, materialized: Sequence[str]
    ) -> tuple[list[tuple[Mapping[str, Any], list[Task]]], dict[str, Task]]:
        """Per-item tasks of every stage, and the collectors' new task specs."""
        from_expander = set(materialized)

        def refs(key: str, i: int) -> Task:
            if key in from_expander:
                return Task(None, pick, TaskRef(self.expander), key, i)
            return Task(None, operator.getitem, TaskRef(key), i)

        stages = []
        collectors = {}
        for stage in self.stages:
            items = [stage.item(i, refs) for i in range(n)]
            stages.append((stage.annotations, items))
            if stage.collect:
                collectors[stage.key] = Task(
                    stage.key, collect, *(TaskRef(t.key) for t in items)
                )
        return stages, collectors

    def run_locally(self, data: dict[str, Any]) -> list:
        """Evaluate a single-stage expansion in this process; return its list."""
        (stage,) = self.stages
        n, materialized = self.measure(data)
        data = {**data, **materialized}

        def refs(key: str, i: int) -> Task:
            return Task(None, operator.getitem, TaskRef(key), i)

        return [stage.item(i, refs)(data) for i in range(n)]


def collect(*items: Any) -> list:
    """A map's value: the list of its items' results, in item order."""
    return list(items)


def pick(materialized: Mapping[str, list], key: str, i: int) -> Any:
    """Item ``i`` of a source that the expander turned into a list."""
    return materialized[key][i]


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _describe(key: Any) -> str:
    from dask.utils import key_split

    return f"task {key_split(key)!r}"
