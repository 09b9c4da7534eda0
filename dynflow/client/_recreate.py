"""``df.recreate_error_locally``: a failed call run again in this process, with the
inputs it had on the cluster, so that its exception is raised here and a debugger
(``%debug``, ``pdb.pm()``) lands in the user's own frame.

distributed's ``Client.recreate_error_locally`` is the model: it runs a failed task's
function here with its dependencies fetched from the cluster. dynflow finds the failed
call from the graph the error came from (the nodes of the computation or run, which
the error carries on the client, never when pickled): the map and item a
``MapItemError`` names (an item of a flow mapped per item: that item's sub-flow), or
the failed plain task. The call's inputs are computed on the cluster under their own
keys, so values that still exist there are fetched and the rest recomputed; only the
failed item's inputs travel (``upstream[i]``, not the list).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from distributed import Client, Future

from dynflow._public import public
from dynflow.client._run import Outputs, Run
from dynflow.client._submit import compute
from dynflow.exceptions import MapItemError
from dynflow.graph._node import (
    MapNode,
    Node,
    SubflowMapNode,
    find_nodes,
    replace_nodes,
    topological,
)
from dynflow.graph._task import task

__all__ = ["recreate_error_locally"]


@task(name="dynflow-recreate-item")
def _item(values: Any, i: int) -> Any:
    """Item ``i`` of a mapped value, on the cluster: only it travels."""
    if isinstance(values, (list, tuple)):
        return values[i]
    return list(values)[i]


def recreate_error_locally(error: Any, index: int | None = None) -> Any:
    """Run a failed call again in this process, with the inputs it had on the cluster.

    Its exception is then raised here, with the user's function's own frames, so that
    ``%debug`` or ``pdb.pm()`` lands where it failed (distributed's
    ``Client.recreate_error_locally`` is the model).

    Parameters
    ----------
    error : MapItemError, Exception or RunFuture
        What a failed ``df.compute``, ``node.compute()``, ``flow(...)`` or
        ``RunFuture.result()`` raised (in this process), or the failed ``RunFuture``.
    index : int, optional
        For a failed map: the item to run (default: the first failed one). An item of
        a flow mapped per item runs that item's whole sub-flow, here (``scheduler="sync"``).

    Returns
    -------
    object
        The call's value, when it does not fail here (a failure that depended on the
        cluster: a lost worker, a timeout, a flaky service).

    Raises
    ------
    Exception
        The call's own exception (the purpose).
    TypeError
        ``error`` did not come from a dynflow computation in this process, or it does
        not name a call that can run here (an index of a nested map's item).
    """
    if isinstance(error, Future) and hasattr(error, "run"):
        run = error.run
        try:
            error.result()
        except BaseException as e:  # noqa: BLE001 - the failure to recreate
            error = e
        else:
            raise TypeError(f"run {run.name!r} did not fail: there is no error to recreate")
    outputs = getattr(error, "_dynflow_outputs", None) if isinstance(error, BaseException) else None
    if not isinstance(outputs, Outputs) or not outputs.nodes:
        raise TypeError(
            "recreate_error_locally(): expected an error raised in this process by a "
            "dynflow computation (df.compute, node.compute(), calling a flow, "
            f"RunFuture.result()) or a failed RunFuture, got {type(error).__name__}"
        )
    nodes = topological(outputs.nodes)
    if isinstance(error, MapItemError):
        return _recreate_item(error, nodes, index, outputs.client)
    return _recreate_task(error, nodes, outputs)


def _recreate_item(
    error: MapItemError, nodes: list[Node], index: int | None, client: Client | None
) -> Any:
    # the map the first failure came from (a chained map's upstream), or, when that is
    # a task inside the flow mapped per item, the map of that flow
    maps = [n for n in nodes if isinstance(n, MapNode) and n.name == error.origin] or [
        n for n in nodes if isinstance(n, MapNode) and n.name == error.task_name
    ]
    if not maps:
        raise TypeError(
            f"recreate_error_locally(): no map of task {error.origin!r} in the graph the "
            "error came from"
        )
    if index is None:
        index = next((i for i in error.failed if isinstance(i, int)), None)
    if not isinstance(index, int):
        raise TypeError(
            f"recreate_error_locally(): {error.origin}.map(): pass index= the item of the "
            f"map to run (an int); the failed ones are {error.failed[:10]}"
        )
    node = maps[-1]  # the most downstream map of that task

    def item(value: Any) -> Any:
        return value[index] if not isinstance(value, Node) else _item(value, index)

    args = [item(s.value) if s.mapped else s.value for s in node.args]
    kwargs = {k: item(s.value) if s.mapped else s.value for k, s in node.kwargs.items()}
    args, kwargs = _fetch((args, kwargs), client)
    if isinstance(node, SubflowMapNode):
        (value,) = compute(node.flow.build(*args, **kwargs), scheduler="sync")
        return value
    return _call(node, args, kwargs)


def _recreate_task(error: BaseException, nodes: list[Node], outputs: Outputs) -> Any:
    """The plain task whose failure ``error`` is: the upstream-most node the run
    tracker counted as failed (its dependents fail with it)."""
    run: Run | None = outputs.run
    info = None if run is None else run.info()
    failed = {k for k, c in (info or {}).get("nodes", {}).items() if c.get("failed")}
    for node in nodes:
        if node.key in failed and not isinstance(node, MapNode):
            args, kwargs = _fetch((list(node.args), dict(node.kwargs)), outputs.client)
            return _call(node, args, kwargs)
    raise TypeError(
        f"recreate_error_locally(): no failed task is known for {type(error).__name__}: "
        "a plain task's error is recreated from a computation on a cluster (whose run "
        "tracker counts failures); with scheduler='sync' it was raised here already, "
        "and a MapItemError is recreated from either"
    )


def _fetch(obj: Any, client: Client | None) -> Any:
    """``obj`` with its nodes replaced by their values, computed on ``client``'s cluster
    (values still there are fetched) or, without one, here."""
    found = find_nodes(obj)
    if not found:
        return obj
    if client is not None:
        values = compute(*found, client=client)
    else:
        values = compute(*found, scheduler="sync")
    by_key = {n.key: v for n, v in zip(found, values, strict=True)}
    return replace_nodes(obj, lambda n: by_key[n.key])


def _call(node: Node, args: list, kwargs: dict) -> Any:
    """The node's function called here, now: its own frames raise."""
    fn = node.task.fn
    result = fn(*args, **kwargs)
    if inspect.iscoroutine(result):
        return asyncio.run(result)
    return result


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(recreate_error_locally)
