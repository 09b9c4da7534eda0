"""dynflow: dynamic fan-out / map / reduce pipelines on Dask.

``@task`` functions become lazy graph nodes, ``@flow`` functions compose them, and
``task.map(upstream)`` expands per item inside the live distributed scheduler once the
upstream value exists on the cluster.

The package, from the bottom layer up (each imports only those below it)::

    exceptions, _protocol, _context, ...   errors; what client, workers, scheduler share
    worker/     runs in tasks on the workers: calls, caching, failure records, expander
    extension/  runs in the scheduler: the splice, the run tracker, streams
    graph/      what the user builds: tasks, nodes, flows, the flow-level graph
    lowering/   nodes -> dask task specs: expansion groups and plans
    views/      drawings, HTML reprs, progress bars, the dashboard page
    client/     finding the cluster, submit/compute, runs and their futures
    scheduler   the preload: ``dask scheduler --preload dynflow.scheduler``

The names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dynflow import _config

_config.load_defaults()

if TYPE_CHECKING:
    from dynflow.client._as_completed import AsCompleted, as_completed
    from dynflow.client._connect import dashboard_link, get_client
    from dynflow.client._limits import concurrency_limits, set_concurrency_limit
    from dynflow.client._recreate import recreate_error_locally
    from dynflow.client._run import Run, RunFuture
    from dynflow.client._submit import cancel, compute, submit, submit_async
    from dynflow.exceptions import (
        ConcurrencyLimitError,
        DynflowError,
        ExtensionError,
        LazyValueError,
        MapInputError,
        MapItemError,
        MapLengthError,
        RemoteError,
        ResultStorageError,
        SchedulerLostError,
        SerializationError,
        TaskInterruptedError,
        TaskTimeoutError,
    )
    from dynflow.graph._flow import Flow, flow
    from dynflow.graph._node import FlattenNode, MapNode, Node, quote, unmapped
    from dynflow.graph._task import Task, task
    from dynflow.graph._wrappers import allow_failure, flatten, product
    from dynflow.views._progress import progress
    from dynflow.views._render import visualize

#: public name -> the module that defines it
_EXPORTS = {
    "ConcurrencyLimitError": "dynflow.exceptions",
    "DynflowError": "dynflow.exceptions",
    "ExtensionError": "dynflow.exceptions",
    "FlattenNode": "dynflow.graph._node",
    "Flow": "dynflow.graph._flow",
    "LazyValueError": "dynflow.exceptions",
    "MapInputError": "dynflow.exceptions",
    "MapItemError": "dynflow.exceptions",
    "MapLengthError": "dynflow.exceptions",
    "MapNode": "dynflow.graph._node",
    "Node": "dynflow.graph._node",
    "RemoteError": "dynflow.exceptions",
    "ResultStorageError": "dynflow.exceptions",
    "Run": "dynflow.client._run",
    "RunFuture": "dynflow.client._run",
    "SchedulerLostError": "dynflow.exceptions",
    "SerializationError": "dynflow.exceptions",
    "Task": "dynflow.graph._task",
    "TaskInterruptedError": "dynflow.exceptions",
    "TaskTimeoutError": "dynflow.exceptions",
    "AsCompleted": "dynflow.client._as_completed",
    "allow_failure": "dynflow.graph._wrappers",
    "as_completed": "dynflow.client._as_completed",
    "cancel": "dynflow.client._submit",
    "compute": "dynflow.client._submit",
    "concurrency_limits": "dynflow.client._limits",
    "dashboard_link": "dynflow.client._connect",
    "flatten": "dynflow.graph._wrappers",
    "flow": "dynflow.graph._flow",
    "get_client": "dynflow.client._connect",
    "product": "dynflow.graph._wrappers",
    "quote": "dynflow.graph._node",
    "progress": "dynflow.views._progress",
    "recreate_error_locally": "dynflow.client._recreate",
    "set_concurrency_limit": "dynflow.client._limits",
    "submit": "dynflow.client._submit",
    "submit_async": "dynflow.client._submit",
    "task": "dynflow.graph._task",
    "unmapped": "dynflow.graph._node",
    "visualize": "dynflow.views._render",
}

__all__ = [
    "AsCompleted",
    "ConcurrencyLimitError",
    "DynflowError",
    "ExtensionError",
    "FlattenNode",
    "Flow",
    "LazyValueError",
    "MapInputError",
    "MapItemError",
    "MapLengthError",
    "MapNode",
    "Node",
    "RemoteError",
    "ResultStorageError",
    "Run",
    "RunFuture",
    "SchedulerLostError",
    "SerializationError",
    "Task",
    "TaskInterruptedError",
    "TaskTimeoutError",
    "allow_failure",
    "as_completed",
    "cancel",
    "compute",
    "concurrency_limits",
    "dashboard_link",
    "flatten",
    "flow",
    "get_client",
    "product",
    "progress",
    "quote",
    "recreate_error_locally",
    "set_concurrency_limit",
    "submit",
    "submit_async",
    "task",
    "unmapped",
    "visualize",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dynflow' has no attribute {name!r}")
    # not kept in this namespace: the exported objects say they are dynflow's
    # (``__module__``, dynflow._public), and doctest would collect their examples here too
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
