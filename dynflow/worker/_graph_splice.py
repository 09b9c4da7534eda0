"""Dynamic tasks, on the worker: a call that returned a graph has it spliced in its place.

A task's function may return a dynflow node (or nodes inside a list, tuple, dict, ...).
The call's hook (:attr:`CallPolicy.returned <dynflow.worker._calls.CallPolicy>`, set by
the lowering) turns it into a :class:`ReturnedGraph`: the task specs of that graph and
the key of its output. :func:`splice_returned` (:func:`splice_returned_async` from an
async task) sends them to the scheduler (``dynflow_graph_splice``, a request the first
time, then a message on the worker's stream), which creates the tasks, makes the calling
task an alias of the output (or has its readers read the output) and ends this run of
it: the call returns None, which the scheduler refuses as a stale run's result. No
worker thread waits for the graph, however deep the recursion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distributed import get_worker
from distributed.protocol.serialize import ToPickle
from distributed.utils import sync

from dynflow._compat import call_scheduler, expander_run_id, scheduler_address, send_to_scheduler
from dynflow._protocol import GRAPH_SPLICE_HANDLER
from dynflow.exceptions import ExtensionError

__all__ = ["ReturnedGraph", "needs_itself", "refuse", "splice_returned", "splice_returned_async"]


@dataclass(frozen=True, slots=True)
class ReturnedGraph:
    """The graph a call returned: task specs by key (dependencies first), the key whose
    value is the call's value, annotations by key, and whether the scheduler may queue
    its root tasks (``dynflow.queue-items``, read on the worker that made it)."""

    task_name: str
    tasks: dict[Any, Any]
    output: Any
    annotations: dict[Any, dict] = field(default_factory=dict)
    queue: bool = False  # let the scheduler queue its root tasks (dynflow.queue-items)


#: schedulers (by address) known to serve the handler: later splices are one-way messages
_SERVED: set[str] = set()


def splice_returned(graph: ReturnedGraph, key: Any) -> None:
    """From task ``key``'s own thread: have ``graph`` run in its place.

    The first splice on a scheduler is a request (which says whether the scheduler has
    the extension); later ones are messages on the worker's stream to the scheduler,
    queued before this task's own ``task-finished`` message, so the thread never waits
    for the scheduler.
    """
    worker = get_worker()
    if scheduler_address(worker) in _SERVED:
        worker.loop.add_callback(send_to_scheduler, worker, _message(graph, key))
    else:
        _check(graph, sync(worker.loop, _request, graph, key))
        _SERVED.add(scheduler_address(worker))


async def splice_returned_async(graph: ReturnedGraph, key: Any) -> None:
    """:func:`splice_returned` of an async task, on the worker's event loop."""
    worker = get_worker()
    if scheduler_address(worker) in _SERVED:
        send_to_scheduler(worker, _message(graph, key))
    else:
        _check(graph, await _request(graph, key))
        _SERVED.add(scheduler_address(worker))


def _message(graph: ReturnedGraph, key: Any) -> dict[str, Any]:
    return {
        "op": GRAPH_SPLICE_HANDLER,
        "key": key,
        "task_run_id": expander_run_id(key),
        "tasks": ToPickle(graph.tasks),
        "output": graph.output,
        "annotations": graph.annotations or None,
        "queue": graph.queue,
    }


async def _request(graph: ReturnedGraph, key: Any) -> Any:
    msg = _message(graph, key)
    del msg["op"]
    return await call_scheduler(get_worker(), GRAPH_SPLICE_HANDLER, **msg)


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


def refuse(message: str) -> None:
    """The task spec the scheduler gives a dynamic task whose graph it cannot run: it
    fails with ``message`` where it runs, as any task error."""
    raise ExtensionError(message)


def needs_itself(task_name: str, key: Any) -> str:
    """The error of a returned graph that holds a call being computed (a cycle)."""
    return (
        f"task {task_name!r} returned a graph that needs the task's own value (key "
        f"{str(key)!r}): it would wait for itself forever. A pure=True task called again "
        "with the same arguments is the same task: change an argument, or use pure=False"
    )
