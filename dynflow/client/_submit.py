"""Computing and submitting nodes: one graph, one run, on the cluster or locally.

Each public function has one asynchronous implementation; the synchronous API runs it
with ``client.sync`` (distributed's own pattern), which with an asynchronous client
returns it to be awaited.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar, overload

import cloudpickle
from distributed import Client, Future, get_worker, span, worker_client

from dynflow._compat import local_scheduler
from dynflow._context import RUNNING_ASYNC, RUNNING_TASK
from dynflow._public import public
from dynflow.client._connect import announce, get_client, install
from dynflow.client._limits import check_limits
from dynflow.client._run import (
    Run,
    RunFuture,
    client_error,
    output_value,
    remember,
    stop_iteration,
    user_traceback,
)
from dynflow.exceptions import SerializationError
from dynflow.graph._mapargs import positional_labels
from dynflow.graph._node import MapNode, Node, replace_nodes, topological
from dynflow.lowering._lower import lower

__all__ = ["cancel", "compute", "submit", "submit_async", "user_traceback"]

#: the local schedulers ``compute(scheduler=...)`` accepts; no cluster is used
LOCAL_SCHEDULERS = ("sync", "synchronous", "single-threaded", "threads", "threading")


def _check_nodes(nodes: Sequence[Any]) -> tuple[Node, ...]:
    for n in nodes:
        if not isinstance(n, Node):
            raise TypeError(
                f"expected dynflow nodes (the result of calling a @task), got "
                f"{type(n).__name__} {n!r}"
            )
    return tuple(nodes)


def _diagnose_pickling(nodes: Sequence[Node], error: BaseException) -> SerializationError:
    """Find which task function or argument cannot be pickled."""

    def fails(obj: Any) -> BaseException | None:
        try:
            cloudpickle.dumps(obj)
        except Exception as e:
            return e
        return None

    for node in topological(nodes):
        if (e := fails(node.task.fn)) is not None:
            return SerializationError(
                f"task {node.name!r}: its function cannot be pickled to send it to the cluster: {e}"
            )
        named = list(zip(_labels(node), (*node.args, *node.kwargs.values()), strict=True))
        for label, value in named:
            if isinstance(node, MapNode):
                value = value.value
            if isinstance(value, Node):
                continue
            if (e := fails(replace_nodes(value, lambda n: None))) is not None:
                return SerializationError(
                    f"task {node.name!r}: argument {label!r} ({type(value).__name__}) "
                    f"cannot be pickled to send it to the cluster: {e}"
                )
    return SerializationError(f"the graph cannot be pickled: {error}")


def _labels(node: Node) -> list[str]:
    if isinstance(node, MapNode):
        return [s.label for s in node.slots]
    pos = positional_labels(node.task._signature, len(node.args))
    return [*pos, *node.kwargs]


def submit(*nodes: Node, client: Client | None = None, name: str | None = None) -> list[RunFuture]:
    """Start computing ``nodes`` in one graph (one run); return a future for each.

    The futures are ``distributed.Future`` objects (:class:`~dynflow.RunFuture`) and work
    with distributed's own tools: ``wait``, ``as_completed``, ``client.gather``. Each
    knows its run (``future.run``): pass it to :func:`dynflow.progress`, display it in a
    notebook, or ask ``future.run.info()`` for the per-node counts.

    Parameters
    ----------
    *nodes : Node
        The nodes to compute.
    client : distributed.Client, optional
        The cluster to use (see :func:`get_client`).
    name : str, optional
        The run's name in progress bars and the dashboard; default: the nodes' names.

    Returns
    -------
    list of RunFuture
        One future per node, in order.

    Raises
    ------
    TypeError
        Something other than a node was given.
    SerializationError
        A task's function or argument cannot be pickled (naming which).
    RuntimeError
        ``client`` is asynchronous: use :func:`submit_async`.

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def inc(x):
    ...     return x + 1
    >>> (fut,) = df.submit(inc(1))  # doctest: +SKIP
    >>> fut.result()  # doctest: +SKIP
    2
    """
    nodes = _check_nodes(nodes)
    client = get_client(client)
    if client.asynchronous:
        raise RuntimeError(
            "with an asynchronous client, call `await dynflow.submit_async(...)` or "
            "`await node.compute(client=...)`"
        )
    return client.sync(_submit, nodes, client, name)


async def submit_async(*nodes: Node, client: Client, name: str | None = None) -> list[RunFuture]:
    """:func:`submit` for an asynchronous client (``Client(asynchronous=True)``).

    Returns
    -------
    list of RunFuture
        One future per node.
    """
    return await _submit(_check_nodes(nodes), client, name)


async def _submit(
    nodes: tuple[Node, ...],
    client: Client,
    name: str | None,
    before_send: Callable[[Run], Awaitable[Any]] | None = None,
) -> list[RunFuture]:
    """Install, register the run, then send its graph (``before_send(run)`` first: what
    must be in place on the scheduler before any task can finish)."""
    await install(client)
    await check_limits(client, nodes)
    run = Run.of(nodes, client, name)
    await run.register()
    run.link = await announce(client)
    try:
        if before_send is not None:
            await before_send(run)
        # the run is a Dask span named after it (each map one inside it: the lowering
        # reads the span), so Dask's own views break time down per run and per map.
        # Nothing is awaited inside: dask's annotations are process-wide
        with span(run.name) as run.span_id:
            graph = lower(nodes, distributed=True, run=run.id)
            with _quiet_pickle_errors():  # dynflow says which task and argument instead
                futures = client.get(graph, [n.key for n in nodes], sync=False)
    except BaseException as e:
        with contextlib.suppress(Exception):  # the run never started: forget it
            await run.forget()
        if isinstance(e, (pickle.PicklingError, TypeError, AttributeError)) and (
            "pickle" in str(e).lower() or "serializ" in str(e).lower()
        ):
            raise _diagnose_pickling(nodes, e) from e
        raise
    out: list[RunFuture[Any]] = [RunFuture(f.key, client, run) for f in futures]
    for f in futures:
        f.release()
    return out


class _NoPickleErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to serialize")


@contextlib.contextmanager
def _quiet_pickle_errors() -> Iterator[None]:
    """While a graph is sent: distributed's log of a graph that fails to pickle (three
    chained tracebacks) is left out; the ``SerializationError`` raised says which
    task and which argument."""
    log = logging.getLogger("distributed.protocol.pickle")
    quiet = _NoPickleErrors()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")


@overload
def compute(
    a: Node[T1],
    /,
    *,
    client: Client | None = ...,
    scheduler: str | None = ...,
    name: str | None = ...,
) -> tuple[T1]: ...
@overload
def compute(
    a: T1,
    /,
    *,
    client: Client | None = ...,
    scheduler: str | None = ...,
    name: str | None = ...,
) -> tuple[T1]: ...
@overload
def compute(
    a: T1,
    b: T2,
    /,
    *,
    client: Client | None = ...,
    scheduler: str | None = ...,
    name: str | None = ...,
) -> tuple[T1, T2]: ...
@overload
def compute(
    a: T1,
    b: T2,
    c: T3,
    /,
    *,
    client: Client | None = ...,
    scheduler: str | None = ...,
    name: str | None = ...,
) -> tuple[T1, T2, T3]: ...
@overload
def compute(
    *nodes: Any, client: Client | None = ..., scheduler: str | None = ..., name: str | None = ...
) -> tuple[Any, ...]: ...
def compute(
    *nodes: Any,
    client: Client | None = None,
    scheduler: str | None = None,
    name: str | None = None,
) -> Any:
    """Compute several nodes in one graph, sharing upstream work; return their values.

    Parameters
    ----------
    *nodes : Node
        The nodes to compute.
    client : distributed.Client, optional
        The cluster to use (see :func:`get_client`). With an asynchronous client the
        result is awaitable.
    scheduler : str, optional
        ``"sync"`` runs everything in this process, in order, without a cluster (for
        debugging with ``pdb``); ``"threads"`` uses a local thread pool.
    name : str, optional
        The run's name in progress bars and the dashboard.

    Returns
    -------
    tuple
        One value per node (awaitable with an asynchronous client).

    Raises
    ------
    MapItemError
        Items of a map whose list is needed failed.
    SchedulerLostError
        The connection to the scheduler was lost during the run.
    SerializationError
        A task's function or argument cannot be pickled.
    Exception
        A plain task's own exception, with its remote traceback.

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def inc(x):
    ...     return x + 1
    >>> a = inc(1)
    >>> df.compute(a, inc(a), scheduler="sync")
    (2, 3)
    """
    with user_traceback():  # the user's frames, not dynflow's
        nodes = _check_nodes(nodes)
        if client is None and scheduler is None and RUNNING_TASK.get() is not None:
            if _in_task_thread():
                # inside a task: its cluster; the task secedes while it waits, so its slot
                # runs the graph's tasks meanwhile (a one-thread worker does not deadlock)
                with worker_client() as c:
                    return compute(*nodes, client=c, name=name)
            if not _on_worker():  # inside a task run by a local scheduler: locally too
                values = compute(*nodes, scheduler="sync")
                return _awaitable(values) if RUNNING_ASYNC.get() else values
        if scheduler is not None:
            if client is not None:
                raise TypeError("compute(): pass either client= or scheduler=, not both")
            if scheduler not in LOCAL_SCHEDULERS:
                raise ValueError(
                    f"compute(): scheduler={scheduler!r}; expected one of "
                    f"{', '.join(LOCAL_SCHEDULERS)} (or client= for a cluster)"
                )
            get = local_scheduler(scheduler)
            graph = lower(nodes, distributed=False)
            try:
                return tuple(map(output_value, get(dict(graph), [n.key for n in nodes])))
            except BaseException as e:  # recreate_error_locally knows its graph, as on a cluster
                remember(e, nodes, None, None)
                raise
        client = get_client(client)
        if client.asynchronous:
            return client.sync(_compute, nodes, client, name)  # to be awaited
        try:
            return client.sync(_compute, nodes, client, name)
        except RuntimeError as e:
            error = stop_iteration(e)
            if error is e:
                raise
            raise error from None


async def _compute(nodes: tuple[Node, ...], client: Client, name: str | None) -> tuple:
    futures = await _submit(nodes, client, name)
    try:
        return tuple(map(output_value, await client.gather(futures, asynchronous=True)))
    except BaseException as e:
        error = client_error(e, client, ", ".join(n.name for n in nodes))
        remember(error, nodes, client, futures[0].run if futures else None)
        if error is e:
            raise
        raise error from error.__cause__
    finally:
        # an exception's traceback keeps this frame alive; release the keys now
        for f in futures:
            f.release()


def _on_worker() -> bool:
    try:
        get_worker()
    except ValueError:
        return False
    return True


async def _awaitable(value: Any) -> Any:
    return value


def _in_task_thread() -> bool:
    """Whether this is a worker thread running a task (which may secede)."""
    try:
        get_worker().get_current_task()
    except (ValueError, KeyError):
        return False
    return True


def cancel(*futures: Future, client: Client | None = None) -> Any:
    """Cancel submitted runs: every item not yet started is dropped from the cluster.

    Equivalent to ``future.cancel()`` for each future; items already running finish
    and are then released.
    """
    for f in futures:
        if not isinstance(f, Future):
            raise TypeError(
                f"cancel() expects the futures returned by submit(), got {type(f).__name__}"
            )
    client = client or (futures[0].client if futures else get_client())
    return client.cancel(list(futures))


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(cancel, compute, submit, submit_async)
