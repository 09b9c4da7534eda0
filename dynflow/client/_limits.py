"""``df.set_concurrency_limit`` and ``df.concurrency_limits``: named limits, cluster-wide.

The limits live in the scheduler (:mod:`dynflow.extension._limits`); tasks carry a
limit's name (``@df.task(concurrency_limit="vendor-api")``). Before a graph is sent,
:func:`check_limits` asks the scheduler for the names it carries, so a limit that was
never set is an error at submit, naming it and the task.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from distributed import Client

from dynflow._protocol import LIMITS_HANDLER, SET_LIMIT_HANDLER
from dynflow.client._connect import get_client, install
from dynflow.exceptions import ConcurrencyLimitError
from dynflow.graph._node import Node, topological

__all__ = ["check_limits", "concurrency_limits", "set_concurrency_limit"]


def set_concurrency_limit(name: str, n: int, client: Client | None = None) -> Any:
    """At most ``n`` calls of tasks carrying ``concurrency_limit=name`` run at once.

    Cluster-wide: across maps, runs and clients (as Airflow's pools and Prefect's global
    concurrency limits). A call waiting for a slot waits in the scheduler and holds no
    worker thread (distributed's ``Semaphore`` would hold one). Setting a limit again
    changes it: a lower one applies to calls that have not started yet; a higher one
    starts waiting calls at once. A call's slot is given back when it ends, however it
    ends: its client or worker dying gives it back. A batch of map items (see
    ``batch_size``) runs its items one after another and holds one slot. The limit
    lives as long as the scheduler.

    Parameters
    ----------
    name : str
        The limit's name, as tasks give it.
    n : int
        Calls at once, ``>= 0`` (0: none starts until it is raised).
    client : distributed.Client, optional
        The cluster (see :func:`dynflow.get_client`). With an asynchronous client, await
        the result.

    Raises
    ------
    TypeError
        ``name`` is not a non-empty str, or ``n`` not an int ``>= 0``.

    Examples
    --------
    >>> import dynflow as df
    >>> df.set_concurrency_limit("vendor-api", 5)  # doctest: +SKIP
    >>> @df.task(concurrency_limit="vendor-api")
    ... def fetch(account):
    ...     return account
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"set_concurrency_limit(): name={name!r}; expected a non-empty str")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise TypeError(f"set_concurrency_limit({name!r}, n={n!r}); expected an int >= 0")
    client = get_client(client)

    async def run() -> None:
        await install(client)
        reply = await getattr(client.scheduler, SET_LIMIT_HANDLER)(name=name, n=n)
        if reply.get("status") != "OK":
            raise TypeError(reply.get("message"))

    return client.sync(run)


def concurrency_limits(client: Client | None = None) -> Any:
    """The limits set on the cluster: ``{name: {"limit", "running", "waiting"}}``
    (calls running under it now, calls ready and waiting for a slot). With an
    asynchronous client, await the result."""
    client = get_client(client)

    async def run() -> dict[str, dict[str, int]]:
        await install(client)
        return dict(await getattr(client.scheduler, LIMITS_HANDLER)())

    return client.sync(run)


def limit_names(nodes: Sequence[Node]) -> dict[str, str]:
    """``{limit name: the first task that carries it}`` among ``nodes`` and upstream."""
    out: dict[str, str] = {}
    for node in topological(nodes):
        task = getattr(node, "task", None)
        if task is not None and task.options.get("concurrency_limit") is not None:
            out.setdefault(task.options["concurrency_limit"], task.name)
    return out


async def check_limits(client: Client, nodes: Sequence[Node]) -> None:
    """Raise :class:`ConcurrencyLimitError` for a limit ``nodes`` carry that the
    scheduler does not know (the extension is installed already)."""
    names = limit_names(nodes)
    if not names:
        return
    known = await getattr(client.scheduler, LIMITS_HANDLER)(names=list(names))
    missing = [n for n in names if n not in known]
    if missing:
        raise ConcurrencyLimitError(never_set(missing, names))


def never_set(missing: Iterable[str], tasks: dict[str, str]) -> str:
    parts = [f"{m!r} (task {tasks[m]!r})" for m in missing]
    first = next(iter(missing))
    return (
        f"concurrency limit {', '.join(parts)} was never set on this cluster; call "
        f"df.set_concurrency_limit({first!r}, n) first"
    )
