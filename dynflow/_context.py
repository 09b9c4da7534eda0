"""What the code running in a thread or a coroutine knows about where it is.

Context variables shared by the layers: set while a flow's body builds a graph (client
side), and while a call runs (on a worker, or in this process with a local scheduler).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = [
    "BATCH_INDEX",
    "BUILDING",
    "CREATED",
    "CURRENT_KEY",
    "FLOW_OPTIONS",
    "LOCAL_KEYS",
    "RUNNING_ASYNC",
    "RUNNING_TASK",
]

# ---------------------------------------------------------------- building a graph
#: the name of the flow whose body is being run to build a graph, if any
BUILDING: ContextVar[str | None] = ContextVar("dynflow_building", default=None)
#: options of the flow being built that its tasks inherit (``{"log_prints": True}``)
FLOW_OPTIONS: ContextVar[dict[str, Any]] = ContextVar("dynflow_flow_options", default={})  # noqa: B039
#: the nodes made while a flow's body runs (each one runs when the flow runs)
CREATED: ContextVar[list[Any] | None] = ContextVar("dynflow_created", default=None)

# ---------------------------------------------------------------- running a call
#: the task whose call is running (nodes made inside it say so when misused)
RUNNING_TASK: ContextVar[str | None] = ContextVar("dynflow_running_task", default=None)
#: whether that call is a coroutine's (it must await, never block)
RUNNING_ASYNC: ContextVar[bool] = ContextVar("dynflow_running_async", default=False)
#: the index of the item a batch task is running (a batch runs several items in turn)
BATCH_INDEX: ContextVar[tuple[int, ...] | None] = ContextVar("dynflow_batch_index", default=None)
#: the key of the task a call runs in, where the worker cannot tell (async tasks on the
#: event loop, the helper thread of a call with a timeout)
CURRENT_KEY: ContextVar[Any] = ContextVar("dynflow_current_key", default=None)
#: on a local scheduler, the keys of the calls running in this thread, outermost first
#: (a call that returns a graph computes it inside itself there: a graph that holds one
#: of these keys needs its own value)
LOCAL_KEYS: ContextVar[tuple] = ContextVar("dynflow_local_keys", default=())
