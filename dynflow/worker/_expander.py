"""What dynflow's own tasks do when they run on a worker (or locally).

- :func:`expand` is the expander of a group of maps. It is a coroutine function, so a
  distributed worker runs it on its event loop: it holds no worker thread while it
  waits for the scheduler. It measures and checks the mapped values where they are,
  then asks the scheduler to add the per-item tasks. The list itself stays on the
  worker; only its length travels.
- :func:`request_splice` is the expander's call to the scheduler, signed with the key
  the scheduler gave its workers (:class:`SpliceKey`, :func:`splice_digest`): the
  scheduler adds items only for a request that one of its workers made, with the length
  that worker measured; any other caller is refused, whatever length it claims.
- :func:`unspliced` is the collector's placeholder; the scheduler replaces it with the
  real collector before it can run.
- :func:`run_map` is a whole map run in this process, for local schedulers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol.serialize import ToPickle

from dynflow._compat import call_scheduler, expander_run_id, worker_plugin
from dynflow._protocol import SPLICE_HANDLER, SPLICE_KEY_PLUGIN, at
from dynflow.exceptions import ExtensionError
from dynflow.worker._failure import Failure

if TYPE_CHECKING:
    from dynflow.lowering._expansion import Expansion

logger = logging.getLogger(__name__)

__all__ = ["SpliceKey", "expand", "request_splice", "run_map", "splice_digest", "unspliced"]


class SpliceKey(WorkerPlugin):
    """Worker plugin holding the key a worker's expanders sign their splice requests
    with (``dynflow-splice-key``). The splice extension makes a fresh key when it starts
    and gives it to the scheduler's workers, present and future, through the worker
    plugins: a client cannot read it (short of running code on the cluster, which can
    do anything anyway)."""

    idempotent = False  # a new key (a scheduler restarted) replaces the old one

    def __init__(self, key: bytes) -> None:
        self.key = key


def splice_digest(
    key: bytes,
    expander: Any,
    task_run_id: int,
    n: int,
    listed: Sequence[Any],
    subflow_tasks: Mapping[int, Sequence[Any]] | None,
    failed: bool,
) -> str:
    """The signature of a splice request: an HMAC, under ``key``, of what the expander
    measured (its key and run id, the length, the sources it listed, how many task
    groups each sub-flow stage sent, whether its source failed). The worker signs, the
    scheduler recomputes it from what arrived: O(sources + stages), never per item.
    Tuples and lists are the same here (msgpack turns one into the other)."""
    counts = sorted((int(i), len(v)) for i, v in (subflow_tasks or {}).items())
    claim = (_canon(expander), task_run_id, n, _canon(list(listed)), bool(failed), counts)
    return hmac.new(key, repr(claim).encode(), hashlib.sha256).hexdigest()


def _canon(obj: Any) -> Any:
    """``obj`` with its lists made tuples (a key as it was before msgpack)."""
    return tuple(_canon(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


async def expand(
    expansion: Expansion, prefix: tuple[int, ...], data: dict[Any, Any]
) -> dict[Any, list] | Failure:
    """Measure the mapped values and have the scheduler add the per-item tasks.

    ``prefix`` locates a nested expansion (the parent items it belongs to); ``()`` at
    top level. Returns the sources that had to be turned into lists (usually none);
    items that read such a source read it from this task's result. A mapped source
    that is a failure record: that record (the collectors hand it on).
    """
    failure = expansion.failed_source(data, prefix)
    if failure is None:
        try:
            n, listed = expansion.measure(data, prefix)
        except Exception as e:
            if prefix:  # a parent item that is no list: the flatten fails, as locally
                raise
            # no list to map over: the map's source failed (see gather_failed)
            failure = Failure(e, expansion.names)
    if failure is None:
        subflow_tasks = expansion.build_subflows(n, prefix, listed)
    else:  # a failed source or parent item: no items; the collectors' list is the failure
        n, listed, subflow_tasks = 0, {}, {}
    key = at(expansion.expander, prefix)
    reply = await request_splice(key, n, list(listed), subflow_tasks, failure is not None)
    if not isinstance(reply, dict):
        raise ExtensionError(
            f"{expansion.names}: the scheduler has no dynflow extension (it answered "
            f"{reply!r}). Compute dynflow nodes with node.compute()/submit() or "
            "df.compute(), which install it, or start the scheduler with "
            "`dask scheduler --preload dynflow.scheduler`."
        )
    logger.debug("%s: %s, %d items", key, reply.get("status"), n)
    if reply.get("status") == "error":  # refused: the items would never exist
        raise ExtensionError(f"{expansion.names}: {reply.get('message')}")
    return failure if failure is not None else listed


def unspliced(_expanded: Any, task_name: str) -> list:
    """Placeholder of a map's collector; running it means the expansion never happened."""
    raise ExtensionError(
        f"{task_name}.map(): the per-item tasks were never added to the scheduler "
        "(the expander finished without splicing them)"
    )


def run_map(expansion: Expansion, data: dict[str, Any]) -> list | Failure:
    """A whole map, item after item, in this process (local schedulers).

    Returns the items' raw results, failure records included (a mapped source that
    failed: its failure record, in place of the list); collectors apply the map's
    failure semantics.
    """
    return expansion.run_locally(data)


async def request_splice(
    expander: Any, n: int, listed: list, subflow_tasks: dict[int, list], failed: bool
) -> Any:
    """From the expander task running on this worker: ask the scheduler to splice.

    Returns the extension's reply (a dict), or None when the scheduler has no
    extension. Awaiting it holds no worker thread: expanders run on the event loop. The
    request is signed (:func:`splice_digest`) with this worker's :class:`SpliceKey`; a
    worker without one sends no signature, and the scheduler says so.
    """
    worker = get_worker()
    run_id = expander_run_id(expander)
    plugin = worker_plugin(worker, SPLICE_KEY_PLUGIN)
    digest = None
    if isinstance(plugin, SpliceKey):
        digest = splice_digest(plugin.key, expander, run_id, n, listed, subflow_tasks, failed)
    return await call_scheduler(
        worker,
        SPLICE_HANDLER,
        expander=expander,
        task_run_id=run_id,
        n=n,
        listed=listed,
        subflow_tasks=ToPickle(subflow_tasks) if subflow_tasks else None,
        failed=failed,
        digest=digest,
    )
