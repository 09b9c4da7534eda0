"""Finding the cluster, and computing or submitting nodes on it.

The cluster is found in this order: an explicit ``client=``; the current default
distributed Client; the dask config key ``dynflow.address``; else an embedded
``LocalCluster``, started once per process on first use and closed at exit.
"""

from __future__ import annotations

import ast
import atexit
import logging
import os
import pickle
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import cloudpickle
import dask
import dask.config
import distributed
from dask.base import get_scheduler
from distributed import Client, Future, LocalCluster, get_worker, worker_client
from distributed.client import default_client

from dynflow._splice import NAME, SpliceExtension
from dynflow.dashboard import register_page
from dynflow.exceptions import SerializationError
from dynflow.graph import lower, topological
from dynflow.items import print_forwarded
from dynflow.node import MapNode, Node, replace_nodes
from dynflow.run import Run, RunFuture, client_error
from dynflow.task import _positional_labels
from dynflow.tracker import TRACKER, RunTracker, forward_topic

logger = logging.getLogger(__name__)

__all__ = ["cancel", "compute", "get_client", "submit", "submit_async"]

#: the local schedulers ``compute(scheduler=...)`` accepts; no cluster is used
LOCAL_SCHEDULERS = ("sync", "synchronous", "single-threaded", "threads", "threading")

_lock = threading.Lock()
_embedded: dict[str, Any] = {}  # "cluster", "client": the embedded LocalCluster, once made
_address_clients: dict[str, Client] = {}  # address from config -> the client made for it
# client -> id of the scheduler it installed the extension on (a restarted scheduler at
# the same address has a new id and needs it again)
_installed: weakref.WeakKeyDictionary[Client, str] = weakref.WeakKeyDictionary()


def get_client(client: Client | None = None) -> Client:
    """The client dynflow uses: ``client``, else the cluster's it runs on, else one found.

    In this order: ``client``; inside a task on a worker, the worker's client (the
    cluster the task runs on: never a new one); the default ``distributed.Client``; the
    config key ``dynflow.address``, then distributed's own ``scheduler-address``
    (``DASK_SCHEDULER_ADDRESS``); else the embedded ``LocalCluster``, started once per
    process on first use and closed at exit.

    Parameters
    ----------
    client : distributed.Client, optional
        Returned as is when given.

    Returns
    -------
    distributed.Client

    Examples
    --------
    >>> import dynflow as df
    >>> c = df.get_client()  # doctest: +SKIP
    """
    if client is not None:
        return client
    try:
        get_worker()
    except ValueError:
        pass
    else:  # inside a task: its own cluster
        return distributed.get_client()
    try:
        return default_client()
    except ValueError:
        pass
    address = dask.config.get("dynflow.address", None) or dask.config.get("scheduler-address", None)
    with _lock:
        if address:
            c = _address_clients.get(address)
            if c is None or c.status in ("closed", "closing"):
                timeout = dask.config.get("dynflow.connect-timeout")
                c = Client(address, timeout=timeout, set_as_default=False)
                _address_clients[address] = c
                atexit.register(_close_address_clients)
            return c
        if not _embedded or _embedded["client"].status in ("closed", "closing"):
            _start_embedded()
        return _embedded["client"]


def _start_embedded() -> None:
    def cfg(key: str) -> Any:  # one key at a time: dask normalises "_" and "-" in those
        return dask.config.get(f"dynflow.local-cluster.{key}")

    kwargs: dict[str, Any] = {"processes": cfg("processes")}
    if kwargs["processes"]:
        _check_main_guard()
    if cfg("n-workers") is not None:
        kwargs["n_workers"] = cfg("n-workers")
    if cfg("threads-per-worker") is not None:
        kwargs["threads_per_worker"] = cfg("threads-per-worker")
    register_page()  # the dashboard reads its pages when the scheduler starts
    scheduler_config = {}
    if cfg("worker-saturation") is not None:  # read when the (in-process) scheduler starts
        scheduler_config["distributed.scheduler.worker-saturation"] = cfg("worker-saturation")
    with dask.config.set(scheduler_config):
        cluster = LocalCluster(dashboard_address=cfg("dashboard-address"), **kwargs)
    client = Client(cluster, set_as_default=False)
    _embedded.update(cluster=cluster, client=client)
    atexit.register(_close_embedded)
    logger.info("dynflow started a local Dask cluster; dashboard: %s", client.dashboard_link)


def _check_main_guard() -> None:
    """Fail at once when a script starts the embedded cluster from unguarded top-level
    code: its worker processes (started with ``spawn``) import the script again, which
    would start a cluster again in each of them."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not os.path.exists(path):
        return  # interactive, a notebook, python -c: nothing is imported again
    if dask.config.get("distributed.worker.multiprocessing-method") == "fork":
        return  # forked workers do not import the script
    frame = sys._getframe(1)
    while frame is not None and not (
        frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>"
    ):
        frame = frame.f_back
    if frame is None:
        return
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return
    line = frame.f_lineno
    for stmt in tree.body:
        if stmt.lineno <= line <= (stmt.end_lineno or stmt.lineno):
            if not _is_main_guard(stmt):
                raise RuntimeError(
                    f"{os.path.basename(path)}, line {line}: this starts dynflow's local "
                    "Dask cluster from the script's top-level code, which its worker "
                    "processes would run again. Put that code under "
                    '`if __name__ == "__main__":` (or connect to a running cluster: '
                    "dynflow.address)."
                )
            return


def _is_main_guard(stmt: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either way round)."""
    if not isinstance(stmt, ast.If) or not isinstance(stmt.test, ast.Compare):
        return False
    test = stmt.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, *test.comparators]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    consts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and consts == ["__main__"]


def _close_embedded() -> None:
    if _embedded:
        _embedded.pop("client").close()
        _embedded.pop("cluster").close()


def _close_address_clients() -> None:
    while _address_clients:
        _address_clients.popitem()[1].close()


def _scheduler_id(client: Client) -> str | None:
    return client.scheduler_info().get("id")


def _is_installed(client: Client) -> bool:
    return _installed.get(client) == _scheduler_id(client)


def _install(client: Client) -> None:
    """Install the scheduler extensions once per client and scheduler (idempotent).

    Also subscribes the client to its runs' forwarded output (``log_prints``).
    """
    if not _is_installed(client):
        client.register_plugin(SpliceExtension(), name=NAME)
        client.register_plugin(RunTracker(), name=TRACKER)
        client.subscribe_topic(forward_topic(), print_forwarded)
        _installed[client] = _scheduler_id(client)


async def _install_async(client: Client) -> None:
    if not _is_installed(client):
        await client.register_plugin(SpliceExtension(), name=NAME)
        await client.register_plugin(RunTracker(), name=TRACKER)
        client.subscribe_topic(forward_topic(), print_forwarded)
        _installed[client] = _scheduler_id(client)


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
        named = list(zip(_labels(node), (*node._args, *node._kwargs.values()), strict=True))
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
    pos = _positional_labels(node.task._signature, len(node._args))
    return [*pos, *node._kwargs]


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
    _install(client)
    run = Run.of(nodes, client, name)
    graph = lower(nodes, distributed=True)
    client.sync(run.register)
    return _send(nodes, graph, run)


async def submit_async(*nodes: Node, client: Client, name: str | None = None) -> list[RunFuture]:
    """:func:`submit` for an asynchronous client (``Client(asynchronous=True)``)."""
    nodes = _check_nodes(nodes)
    await _install_async(client)
    run = Run.of(nodes, client, name)
    graph = lower(nodes, distributed=True)
    await run.register()
    return _send(nodes, graph, run)


def _send(nodes: tuple[Node, ...], graph: Any, run: Run) -> list[RunFuture]:
    client = run.client
    try:
        futures = client.get(graph, [n.key for n in nodes], sync=False)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        if "pickle" not in str(e).lower() and "serializ" not in str(e).lower():
            raise
        raise _diagnose_pickling(nodes, e) from e
    out = [RunFuture(f.key, client, run) for f in futures]
    for f in futures:
        f.release()
    return out


def compute(
    *nodes: Node,
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
        One value per node.

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
    nodes = _check_nodes(nodes)
    if client is None and scheduler is None and _in_task_thread():
        # inside a task: its cluster; the task secedes while it waits, so its slot
        # runs the graph's tasks meanwhile (a one-thread worker does not deadlock)
        with worker_client() as c:
            return compute(*nodes, client=c, name=name)
    if scheduler is not None:
        if client is not None:
            raise TypeError("compute(): pass either client= or scheduler=, not both")
        if scheduler not in LOCAL_SCHEDULERS:
            raise ValueError(
                f"compute(): scheduler={scheduler!r}; expected one of "
                f"{', '.join(LOCAL_SCHEDULERS)} (or client= for a cluster)"
            )
        get = get_scheduler(scheduler=scheduler)
        graph = lower(nodes, distributed=False)
        return tuple(get(dict(graph), [n.key for n in nodes]))
    client = get_client(client)
    if client.asynchronous:
        return _compute_async(nodes, client, name)
    futures = submit(*nodes, client=client, name=name)
    try:
        return tuple(client.gather(futures))
    except BaseException as e:
        error = client_error(e, client, ", ".join(n.name for n in nodes))
        if error is e:
            raise
        raise error from error.__cause__
    finally:
        for f in futures:
            f.release()


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


async def _compute_async(nodes: tuple[Node, ...], client: Client, name: str | None) -> tuple:
    futures = await submit_async(*nodes, client=client, name=name)
    try:
        return tuple(await client.gather(futures))
    except BaseException as e:
        error = client_error(e, client, ", ".join(n.name for n in nodes))
        if error is e:
            raise
        raise error from error.__cause__
    finally:
        # an exception's traceback keeps this frame alive; release the keys now
        for f in futures:
            f.release()
