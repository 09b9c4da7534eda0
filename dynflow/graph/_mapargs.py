"""The arguments of ``task.map(...)`` and ``flow.map(...)``: which are mapped, which are
passed whole, and the map's options, checked when the map is built."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from dask.base import is_dask_collection

from dynflow._sequences import unmappable
from dynflow.exceptions import MapInputError, MapLengthError
from dynflow.graph._bindable import Bindable
from dynflow.graph._node import CollectionNode, Node, Slot, unmapped
from dynflow.graph._options import (
    Default,
    batch_size_config,
    check_map_options,
    dynflow_keywords,
    wait_for_nodes,
)

__all__ = ["MapCall", "add_waits", "bind_map", "map_slots", "positional_labels"]


class MapCall(NamedTuple):
    """A map's call, checked: its argument slots, the nodes it waits for, its options."""

    slots: tuple[Slot, ...]
    kwslots: dict[str, Slot]
    wait_for: tuple[Node, ...]
    min_success_ratio: float
    batch_size: Any
    max_concurrency: Any


def bind_map(
    owner: Bindable, keywords: tuple[str, ...], args: tuple, kwargs: dict, defaults: Mapping
) -> MapCall:
    """``owner.map(*args, **kwargs)`` (a task or a flow) checked: dynflow's ``keywords``
    taken from the call (unless the function has a parameter of that name), the rest
    bound to the signature and classified, the options from the call or ``defaults``
    (``TypeError``/``MapInputError``/``MapLengthError`` naming the map)."""
    ours = dynflow_keywords(owner._signature, kwargs, keywords)
    bound = owner._bind(".map()", owner._with_instance(args, mapped=True), kwargs)
    slots, kwslots = map_slots(owner.name, owner._signature, bound)
    ratio = ours.get("min_success_ratio", defaults["min_success_ratio"])
    batch = ours.get("batch_size", defaults.get("batch_size"))
    if batch is Default.BATCH_SIZE:  # unset: the config where the map is made
        batch = batch_size_config(owner.name)
    concurrency = ours.get("max_concurrency", defaults.get("max_concurrency"))
    check_map_options(owner.name, ratio, batch, concurrency)
    waits = add_waits(owner.name, ".map()", defaults["wait_for"], ours)
    return MapCall(slots, kwslots, waits, ratio, batch, concurrency)


def add_waits(name: str, how: str, waits: tuple[Node, ...], ours: Mapping[str, Any]) -> tuple:
    """``waits`` (the task's or flow's ``wait_for``), then the call's, if it has one."""
    if "wait_for" not in ours:
        return waits
    try:
        return waits + wait_for_nodes(ours["wait_for"])
    except TypeError:
        raise TypeError(
            f"{name}{how}: wait_for must hold nodes (a node or an iterable of nodes), got "
            f"{ours['wait_for']!r}"
        ) from None


def map_slots(
    name: str, signature: inspect.Signature, bound: inspect.BoundArguments
) -> tuple[tuple[Slot, ...], dict[str, Slot]]:
    """Classify the arguments of ``name.map(...)`` as mapped or static (build-time checks)."""
    labels = positional_labels(signature, len(bound.args))
    slots = tuple(_slot(name, lbl, v) for lbl, v in zip(labels, bound.args, strict=True))
    kwslots = {k: _slot(name, k, v) for k, v in bound.kwargs.items()}
    mapped = [s for s in (*slots, *kwslots.values()) if s.mapped]
    if not mapped:
        # a value that is not iterable (None, a number) where a list was meant
        for s in (*slots, *kwslots.values()):
            if not isinstance(s.value, (str, bytes, bytearray, Node)) and (
                why := unmappable(s.value)
            ):
                raise MapInputError(
                    f"{name}.map(): no argument to map over: argument {s.label!r} is a "
                    f"{type(s.value).__name__}, {why}; pass a list, a node or a map node "
                    "(arguments wrapped in unmapped() are passed to every item)"
                )
        raise TypeError(
            f"{name}.map(): no argument to map over; pass a list, a node or a "
            "map node (arguments wrapped in unmapped() are passed to every item)"
        )
    concrete = {s.label: len(s.value) for s in mapped if isinstance(s.value, tuple)}
    if len(set(concrete.values())) > 1:
        found = ", ".join(f"{k}={n}" for k, n in concrete.items())
        raise MapLengthError(f"{name}.map(): mapped arguments must have equal lengths, got {found}")
    return slots, kwslots


def _slot(name: str, label: str, value: Any) -> Slot:
    if isinstance(value, unmapped):
        return Slot(label, False, value.value)
    if isinstance(value, Node):
        return Slot(label, True, value)
    if is_dask_collection(value):
        return Slot(label, True, collection_node(name, label, value))
    if isinstance(value, (str, bytes, bytearray)):
        return Slot(label, False, value)
    if not isinstance(value, Iterable):
        return Slot(label, False, value)
    # a one-shot iterator is fine here: it is read once, now, on the client
    why = None if isinstance(value, Iterator) else unmappable(value)
    if why is not None:
        raise MapInputError(
            f"{name}.map(): argument {label!r} is a {type(value).__name__}, {why}; or "
            "wrap it in unmapped(...) to pass it whole to every item"
        )
    return Slot(label, True, tuple(value))


def collection_node(name: str, label: str, value: Any) -> CollectionNode:
    """The node of a dask collection mapped over: a Bag (its elements), an Array along
    its first axis (its rows: blocks along the other axes are joined first, by dask's
    ``rechunk``), a dask Series (its values, as ``to_bag()`` gives them).

    Raises
    ------
    MapInputError
        A dask DataFrame (ambiguous, as a pandas one: rows or columns?), a 0-d array,
        or another kind of collection, naming the map and the argument.
    """
    frame = sys.modules.get("dask.dataframe")  # only what is imported can be an instance
    if frame is not None and isinstance(value, frame.Series):
        value = value.to_bag()
    bag, array = (sys.modules.get(f"dask.{m}") for m in ("bag", "array"))
    kind = None
    if bag is not None and isinstance(value, bag.Bag):
        kind = "bag"
    elif array is not None and isinstance(value, array.Array) and value.ndim > 0:
        kind = "array"
        if any(n > 1 for n in value.numblocks[1:]):
            value = value.rechunk({d: -1 for d in range(1, value.ndim)})
    if kind is None:
        if frame is not None and isinstance(value, frame.DataFrame):
            why = (
                "ambiguous to map over (iterating a DataFrame gives its column names); map "
                "over frame.to_bag() for its rows (tuples; to_bag(format='dict') for dicts) "
                "or frame[column] for a column"
            )
        elif array is not None and isinstance(value, array.Array):
            why = "0-dimensional: it has no first axis to map over"
        else:
            why = "not a collection dynflow maps over: map over a dask Bag or Array"
        raise MapInputError(
            f"{name}.map(): argument {label!r} is a dask {type(value).__name__}, {why}"
        )
    assert COLLECTION_TASK is not None  # set when dynflow.graph._task is imported
    return CollectionNode(COLLECTION_TASK, value, kind)


#: the task every collection node carries (its pure option; the node is named after its
#: collection), made by :mod:`dynflow.graph._task`, which imports this module
COLLECTION_TASK: Any = None


def positional_labels(sig: inspect.Signature, n: int) -> list[str]:
    labels: list[str] = []
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            labels.append(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            labels += [f"{p.name}[{j}]" for j in range(n - len(labels))]
            break
        else:
            break
    return labels[:n]
