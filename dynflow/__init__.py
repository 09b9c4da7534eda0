"""dynflow: dynamic fan-out / map / reduce pipelines on Dask.

``@task`` functions become lazy graph nodes, ``@flow`` functions compose them, and
``task.map(upstream)`` expands per item inside the live distributed scheduler once the
upstream value exists on the cluster.
"""

from __future__ import annotations

from dynflow import config as _config  # noqa: F401  (loads dynflow.yaml defaults)
from dynflow.exceptions import (
    DynflowError,
    ExtensionError,
    LazyValueError,
    MapInputError,
    MapItemError,
    MapLengthError,
    RemoteError,
    SchedulerLostError,
    SerializationError,
    TaskInterruptedError,
    TaskTimeoutError,
)
from dynflow.flow import Flow, flow
from dynflow.node import FlattenNode, MapNode, Node, allow_failure, unmapped
from dynflow.progress import progress
from dynflow.render import visualize
from dynflow.run import Run, RunFuture
from dynflow.runner import cancel, compute, get_client, submit, submit_async
from dynflow.task import Task, flatten, task

__all__ = [
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
    "Run",
    "RunFuture",
    "SchedulerLostError",
    "SerializationError",
    "Task",
    "TaskInterruptedError",
    "TaskTimeoutError",
    "allow_failure",
    "cancel",
    "compute",
    "flatten",
    "flow",
    "get_client",
    "progress",
    "submit",
    "submit_async",
    "task",
    "unmapped",
    "visualize",
]

__version__ = "0.1.0"
