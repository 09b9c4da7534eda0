"""``flatten`` and ``allow_failure``: nodes that wrap a map node's list."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, overload

from dynflow._public import public
from dynflow._sequences import Product, concatenate, positional, unmappable
from dynflow.exceptions import MapInputError
from dynflow.graph._node import AllowFailureNode, FlattenNode, Node
from dynflow.graph._task import Task

__all__ = ["allow_failure", "allow_failure_node", "flatten", "product"]

T = TypeVar("T")


def _flatten(lists: Iterable[Iterable[Any]]) -> list:
    """Concatenate ``lists`` (the value of a whole-used ``flatten`` node)."""
    return concatenate("flatten()", lists)


def _allow_failure_marker(results: list) -> list:  # pragma: no cover - never a task
    return results


def _product(*values: Any) -> Product:
    """The cross product of ``values`` (each list-like), items made when read."""
    factors = []
    for k, value in enumerate(values):
        why = unmappable(value)
        if why is not None:
            raise MapInputError(
                f"product(): argument {k} is a {type(value).__name__}, {why}; pass lists, "
                "nodes or map nodes"
            )
        factors.append(value if positional(value) else list(value))
    return Product(*factors)


_FLATTEN: Task = Task(_flatten, name="flatten", pure=True)
_ALLOW_FAILURE: Task = Task(_allow_failure_marker, name="allow_failure", pure=True)
_PRODUCT: Task = Task(_product, name="product", pure=True)


def flatten(node: Iterable[Iterable[T]]) -> list[T]:
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
    return FlattenNode(_FLATTEN, (node,), {})  # type: ignore[return-value] # seen as the list


@overload
def allow_failure(node: list[T]) -> list[T | BaseException]: ...
@overload
def allow_failure(node: T) -> T | BaseException: ...
def allow_failure(node: Any) -> Any:
    """Let a consumer run when ``node`` failed: it receives the exception object instead.

    Of a map node, the consumer receives the list with the exception object in place of
    each failed item (without it, a task that receives a map's list does not run when
    items failed: it fails with :class:`~dynflow.MapItemError`). Of any other node (a
    task call, a flow's output), the consumer receives the node's value, or, if the node
    or anything it needed failed, that exception (with its remote traceback). Other
    consumers of the node are unaffected: they fail as before. (Prefect's
    ``allow_failure``, Flyte's ``return_exceptions``.)

    Parameters
    ----------
    node : Node
        The map or the node whose failures the consumer accepts.

    Returns
    -------
    AllowFailureNode

    Raises
    ------
    TypeError
        ``node`` is not a node, or is ``flatten(m)`` (use ``allow_failure(m)`` and
        flatten in the consumer).

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
    return allow_failure_node(node)


def allow_failure_node(node: Node) -> AllowFailureNode:
    """:func:`allow_failure` typed as it runs: a node in, a node out, for dynflow's own
    code (the public function is typed as what a flow's body sees, values; README
    "Types")."""
    if isinstance(node, AllowFailureNode):
        return node
    if not isinstance(node, Node) or isinstance(node, FlattenNode):
        raise TypeError(
            f"allow_failure() expects a node (a map node, a task call, a flow's output), "
            f"got {type(node).__name__}"
            + ("; apply it to the map: allow_failure(m)" if isinstance(node, FlattenNode) else "")
        )
    return AllowFailureNode(_ALLOW_FAILURE, (node,), {})


def product(*values: Iterable[Any]) -> list[tuple[Any, ...]]:
    """The cross product of ``values``, to map over: items ``(a_i, b_j)``, row-major.

    ``f.map(df.product(a, b))`` calls ``f((a_i, b_j))`` for every pair (Airflow's
    ``expand`` over several arguments; ``f.map(a, b)`` zips them instead). Each value
    may be a list, a node or a map node (read whole); lengths are known only when they
    run, on the cluster. The pairs are never made as a list: item ``k`` is computed
    where it runs.

    Parameters
    ----------
    *values : list-like or Node
        Two or more factors.

    Returns
    -------
    Node
        Its value is a sequence of tuples, ``len(a) * len(b) * ...`` long.

    Raises
    ------
    TypeError
        Fewer than two values.
    MapInputError
        A concrete value that cannot be mapped over (when built), or a node's value
        that cannot be (when it runs).

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def label(pair):
    ...     return f"{pair[0]}{pair[1]}"
    >>> label.map(df.product([1, 2], ["a", "b"])).compute(scheduler="sync")
    ['1a', '1b', '2a', '2b']
    """
    if len(values) < 2:
        raise TypeError(f"product() needs two or more values, got {len(values)}")
    for k, value in enumerate(values):
        if not isinstance(value, Node) and (why := unmappable(value)) is not None:
            raise MapInputError(
                f"product(): argument {k} is a {type(value).__name__}, {why}; pass lists, "
                "nodes or map nodes"
            )
    return _PRODUCT(*values)


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(allow_failure, flatten, product)
