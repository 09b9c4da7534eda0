"""``flatten`` and ``allow_failure``: nodes that wrap a map node's list."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dynflow._sequences import concatenate
from dynflow.graph._node import AllowFailureNode, FlattenNode, MapNode, Node
from dynflow.graph._task import Task

__all__ = ["allow_failure", "flatten"]


def _flatten(lists: Iterable[Iterable[Any]]) -> list:
    """Concatenate ``lists`` (the value of a whole-used ``flatten`` node)."""
    return concatenate("flatten()", lists)


def _allow_failure_marker(results: list) -> list:  # pragma: no cover - never a task
    return results


_FLATTEN: Task = Task(_flatten, name="flatten", pure=True)
_ALLOW_FAILURE: Task = Task(_allow_failure_marker, name="allow_failure", pure=True)


def flatten(node: Node) -> FlattenNode:
    """The elements of the items of ``node`` (a map node of lists), in order.

    ``g.map(flatten(m))`` runs ``g`` once per element; on a cluster, the elements of
    item ``i`` of ``m`` are expanded as soon as ``m[i]`` is done. Each item may be any
    sequence (list, tuple, NumPy array, range): its elements are concatenated, never
    added element-wise.

    Parameters
    ----------
    node : Node
        Usually a map node whose items are lists.

    Returns
    -------
    FlattenNode
        Used whole, its value is the concatenated list.

    Raises
    ------
    TypeError
        ``node`` is not a node.
    MapInputError
        When it runs: an item is not a list-like value (a number, a string, a dict).

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def services(account):
    ...     return [f"{account}/a", f"{account}/b"]
    >>> @df.task
    ... def shout(s):
    ...     return s.upper()
    >>> m = shout.map(df.flatten(services.map(["x", "y"])))
    >>> m.compute(scheduler="sync")
    ['X/A', 'X/B', 'Y/A', 'Y/B']
    """
    if not isinstance(node, Node):
        raise TypeError(f"flatten() expects a node (usually a map node), got {type(node).__name__}")
    return FlattenNode(_FLATTEN, (node,), {})


def allow_failure(node: MapNode) -> AllowFailureNode:
    """Hand a consumer the map's list with the exception object in place of each failed item.

    Without it, a task that receives a map node's list does not run when items failed:
    it fails with :class:`~dynflow.MapItemError`, naming the map and the indices.
    (Prefect's ``allow_failure``, Flyte's ``return_exceptions``.)

    Parameters
    ----------
    node : MapNode
        The map whose failures the consumer accepts.

    Returns
    -------
    AllowFailureNode
        Its value is the map's list, an exception in place of each failed item.

    Raises
    ------
    TypeError
        ``node`` is not a map node.

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def inv(x):
    ...     return 1 / x
    >>> @df.task
    ... def count_ok(results):
    ...     return sum(not isinstance(r, Exception) for r in results)
    >>> count_ok(df.allow_failure(inv.map([1, 0, 2]))).compute(scheduler="sync")
    2
    """
    if not isinstance(node, MapNode):
        raise TypeError(
            f"allow_failure() expects a map node (the result of task.map), got "
            f"{type(node).__name__}"
        )
    return AllowFailureNode(_ALLOW_FAILURE, (node,), {})
