"""Where dynflow touches distributed and dask beyond their public API, on the client
and the workers, in one place.

distributed is pinned (``pyproject.toml``, :data:`SUPPORTED_DISTRIBUTED`) because of
these and of the scheduler's: every change dynflow makes to the scheduler's state, and
every scheduler internal it reads, goes through the named operations of
:mod:`dynflow.extension._ops`, which lists them with the releases it was checked
against. The suite runs with the scheduler's and the workers' validation on, which
checks every state they change.

Client:

- :func:`want_keys`: the client's ``client-desires-keys`` message, as
  ``Client._inform_scheduler_of_futures`` sends it for published futures
  (``as_completed`` fetches items the scheduler keeps for it);
- used directly: ``Future(key, client)`` for keys the client did not submit (it tells
  the scheduler nothing; :func:`want_keys` does), ``RunFuture`` overriding the private
  coroutine ``Future._result(raiseit)``, ``distributed.client.default_client``.

Worker:

- :func:`expander_run_id`: the worker state machine's ``TaskState.run_id`` of the
  running expander (the splice refuses a stale one);
- :func:`secede_async`: the worker state machine's ``SecedeEvent`` (an async task gives
  up its slot; ``distributed.secede`` works only in a task's own thread);
- :func:`scheduler_address`, :func:`call_scheduler`, :func:`send_to_scheduler`: the
  worker's connection to its scheduler (``Worker.scheduler``, a pooled RPC to dynflow's
  scheduler handlers) and its batched stream (``Worker.batched_send``, which drops a
  message silently while the stream is closed; the scheduler's stream handler gets it
  with the worker's address);
- :func:`worker_plugin`: a worker plugin by name (``Worker.plugins``);
- :func:`drop_local`: the worker state machine's ``RemoveReplicasEvent`` (a stale
  stream chunk it holds in memory is let go of before a new one is stored under its
  key: ``update_data`` of a key in memory does not replace its value);
- :func:`ready_count`: the worker state machine's ``ready`` tasks (a dynamic task's
  returned graph is computed in place while the worker has a backlog);
- used directly: ``distributed.protocol.serialize.ToPickle`` (task specs sent to the
  scheduler pickled), ``distributed.protocol.pickle`` (failure records).

dask:

- :func:`local_scheduler`: ``dask.base.get_scheduler`` without the warning of releases
  before 2025.4;
- :func:`collection_graph`: a dask collection's graph and the key of its computed value
  (``dask._expr.FinalizeCompute`` over ``dask.base.collections_to_expr``, as
  ``dask.compute`` builds it; before dask 2025.4, ``dask.optimize`` and the collection's
  ``__dask_postcompute__``);
- ``dask._task_spec`` (``Task``, ``Alias``, ``TaskRef``, ``DataNode``, ``List``, ...):
  the lowering and the workers build dask task specs; on the scheduler, only
  :mod:`dynflow.extension._ops` imports it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Worker

__all__ = [
    "SUPPORTED_DISTRIBUTED",
    "call_scheduler",
    "expander_run_id",
    "local_scheduler",
    "scheduler_address",
    "secede_async",
    "send_to_scheduler",
    "want_keys",
    "worker_plugin",
]


#: the distributed releases whose internals this module uses (as pyproject.toml pins them)
SUPPORTED_DISTRIBUTED = ">=2025.1.0,<2026.9"


def supported_distributed(version: str | None) -> bool:
    """Whether distributed ``version`` is one dynflow's splice works with."""
    from packaging.specifiers import SpecifierSet

    return version is not None and version in SpecifierSet(SUPPORTED_DISTRIBUTED)


# -------------------------------------------------------------------------- client
def want_keys(client: Any, keys: list) -> None:
    """Tell the scheduler that ``client`` holds futures of ``keys`` (made for keys that
    exist already): it reports their state, which finishes those futures."""
    client._send_to_scheduler({"op": "client-desires-keys", "keys": list(keys)})


# -------------------------------------------------------------------------- dask
def local_scheduler(name: str) -> Callable[..., Any]:
    """dask's ``get`` function of the local scheduler ``name`` ("sync", "threads", ...).

    Before dask 2025.4 ``get_scheduler`` warns when a distributed client exists, even
    though the local scheduler was asked for by name; newer releases do not.
    """
    import warnings

    from dask.base import get_scheduler

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Running on a single-machine scheduler", UserWarning)
        return get_scheduler(scheduler=name)


def collection_graph(value: Any, key: str) -> dict[Any, Any]:
    """The tasks that compute dask collection ``value`` as ``dask.compute`` would
    (optimized), with task ``key`` giving its value (a Bag's list, an Array's ndarray,
    a DataFrame's pandas frame, a Delayed's value)."""
    from dask._task_spec import Alias, Task, convert_legacy_graph, parse_input
    from dask.core import flatten

    try:
        from dask._expr import FinalizeCompute
        from dask.base import collections_to_expr
    except ImportError:  # dask before 2025.4: the collection's own postcompute
        import dask

        (optimized,) = dask.optimize(value)
        tasks = convert_legacy_graph(dict(optimized.__dask_graph__()))
        func, extra = optimized.__dask_postcompute__()
        refs = parse_input(_key_refs(optimized.__dask_keys__()))
        tasks[key] = Task(key, func, refs, *extra)
        return tasks
    expr = FinalizeCompute(collections_to_expr(value)).optimize()
    tasks = convert_legacy_graph(dict(expr.__dask_graph__()))
    (final,) = flatten(expr.__dask_keys__())
    tasks[key] = Alias(key, final)
    return tasks


def _key_refs(keys: Any) -> Any:
    from dask._task_spec import TaskRef

    if isinstance(keys, list):
        return [_key_refs(k) for k in keys]
    return TaskRef(keys)


# -------------------------------------------------------------------------- worker
def expander_run_id(key: Any) -> int:
    """The worker's run id of the task ``key`` it runs (-1 if it does not know it)."""
    from distributed import get_worker

    ts = get_worker().state.tasks.get(key)
    return ts.run_id if ts is not None else -1


def secede_async(key: Any) -> None:
    """Free the worker slot of the async task ``key``, which runs on the event loop.

    As ``distributed.secede()`` does for a task in a worker thread: the worker then
    runs other tasks while this one awaits, and it finishes as a long-running task.
    """
    from distributed import get_worker
    from distributed.worker_state_machine import SecedeEvent

    worker = get_worker()
    worker.handle_stimulus(
        SecedeEvent(key=key, compute_duration=0.0, stimulus_id=f"dynflow-secede-{time()}")
    )


def scheduler_address(worker: Worker) -> str:
    """The address of ``worker``'s scheduler."""
    return worker.scheduler.address


def call_scheduler(worker: Worker, handler: str, **kwargs: Any) -> Awaitable[Any]:
    """Call the scheduler's handler ``handler`` from ``worker`` (its pooled RPC); the
    reply, awaited on the worker's event loop."""
    return getattr(worker.scheduler, handler)(**kwargs)


def send_to_scheduler(worker: Worker, msg: dict[str, Any]) -> None:
    """Send ``msg`` (``{"op": handler, ...}``) on ``worker``'s batched stream to the
    scheduler, in order with the worker's own messages (``task-finished``, ...). On the
    worker's event loop; dropped silently while the stream is closed."""
    worker.batched_send(msg)


def ready_count(worker: Worker) -> int:
    """Tasks ``worker`` holds ready to run and waiting for a thread
    (``WorkerState.ready``)."""
    return len(worker.state.ready)


def drop_local(worker: Worker, key: Any, stimulus_id: str) -> bool:
    """``worker`` lets go of ``key``'s data, if it holds it in memory and no task that
    reads it runs (the state machine refuses that); False when it does not."""
    from distributed.worker_state_machine import RemoveReplicasEvent

    ts = worker.state.tasks.get(key)
    if ts is None or ts.state != "memory":
        return ts is None
    if any(d.state in ("executing", "long-running") for d in ts.dependents):
        return False
    worker.handle_stimulus(RemoveReplicasEvent(keys=[key], stimulus_id=stimulus_id))
    return True


def worker_plugin(worker: Worker, name: str) -> Any:
    """``worker``'s plugin ``name`` (None if it has none)."""
    return worker.plugins.get(name)
