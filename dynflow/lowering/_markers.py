"""Item markers: how a plan's arguments say "item ``i`` of ...", and how an item reads it.

A stage's arguments hold markers where the item's value goes: ``ItemOf(key)`` (item
``i`` of a mapped upstream value), ``StageItem(key)`` (item ``i`` of another stage of
the same expansion), ``Concrete(values)`` (item ``i`` of a tuple known when the graph
was built) and, in a sub-flow's arguments, ``Existing(key)``. A key template
``ParentItem(k)`` means ``(k, *prefix)``: the parent's item a nested expansion belongs
to. :class:`ItemRefs` turns markers into dask task-spec references (``v[i]``, evaluated
on the worker that runs the item). Built on the client, read on workers and the
scheduler; nothing here touches their state.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any, NamedTuple

from dask._task_spec import Alias, Task, TaskRef

from dynflow._containers import substitute

__all__ = [
    "MARKERS",
    "Concrete",
    "Existing",
    "ItemOf",
    "ItemRefs",
    "ParentItem",
    "Prefix",
    "StageItem",
    "is_marker",
    "pick",
    "resolve",
    "resolve_item",
]

Prefix = tuple[int, ...]


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


#: the markers a stage's arguments may hold
MARKERS = (ItemOf, StageItem, Concrete)


def is_marker(obj: Any) -> bool:
    return type(obj) in MARKERS


def resolve_item(obj: Any, prefix: Prefix, i: int, refs: ItemRefs) -> Any:
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
    return substitute(obj, is_marker, leaf, spec=True)


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


def pick(listed: Mapping[Any, list], key: Any, i: int) -> Any:
    """Item ``i`` of a source that the expander turned into a list."""
    return listed[key][i]
