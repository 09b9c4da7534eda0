"""Dynamic tasks, on the worker: a call that returned a graph has it spliced in its place.

A task's function may return a dynflow node (or nodes inside a list, tuple, dict, ...).
The call's hook (:attr:`CallPolicy.returned <dynflow.cluster._calls.CallPolicy>`, set by
the lowering) turns it into a :class:`ReturnedGraph`: the task specs of that graph and
the key of its output. :func:`splice_returned` (:func:`splice_returned_async` from an
async task) sends them to the scheduler (``dynflow_graph_splice``), which creates the
tasks and makes the calling task an alias of the output, then ends this run of the task
with distributed's :class:`~distributed.Reschedule`: no worker thread waits for the
graph, however deep the recursion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

from distributed import Reschedule, get_worker
from distributed.protocol.serialize import ToPickle
from distributed.utils import sync

from dynflow._compat import expander_run_id
from dynflow._protocol import GRAPH_SPLICE_HANDLER
from dynflow.exceptions import ExtensionError

__all__ = ["ReturnedGraph", "splice_returned", "splice_returned_async"]


@dataclass(frozen=True, slots=True)
class ReturnedGraph:
    """The graph a call returned: task specs by key (dependencies first), the key whose
    value is the call's value, and annotations by key."""

    task_name: str
    tasks: dict[Any, Any]
    output: Any
    annotations: dict[Any, dict] = field(default_factory=dict)


def splice_returned(graph: ReturnedGraph, key: Any) -> NoReturn:
    """From task ``key``'s own thread: have ``graph`` run in its place (then reschedule)."""
    worker = get_worker()
    reply = sync(worker.loop, _request, graph, key)
    _check(graph, reply)
    raise Reschedule()


async def splice_returned_async(graph: ReturnedGraph, key: Any) -> NoReturn:
    """:func:`splice_returned` of an async task, on the worker's event loop."""
    _check(graph, await _request(graph, key))
    raise Reschedule()


async def _request(graph: ReturnedGraph, key: Any) -> Any:
    worker = get_worker()
    handler = getattr(worker.scheduler, GRAPH_SPLICE_HANDLER)
    return await handler(
        key=key,
        task_run_id=expander_run_id(key),
        tasks=ToPickle(graph.tasks),
        output=graph.output,
        annotations=graph.annotations or None,
    )


def _check(graph: ReturnedGraph, reply: Any) -> None:
    if not isinstance(reply, dict):
        raise ExtensionError(
            f"task {graph.task_name!r} returned a graph, but the scheduler has no dynflow "
            f"extension to run it (it answered {reply!r}); compute with node.compute() or "
            "df.compute(), which install it, or start the scheduler with "
            "`dask scheduler --preload dynflow.scheduler`"
        )
    if reply.get("status") == "error":
        raise ExtensionError(f"task {graph.task_name!r}: {reply.get('message')}")
