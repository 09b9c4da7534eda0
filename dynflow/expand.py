"""What dynflow's own tasks do when they run on a worker (or locally).

- :func:`expand` is the expander of a group of maps. It is a coroutine function, so a
  distributed worker runs it on its event loop: it holds no worker thread while it
  waits for the scheduler. It measures and checks the mapped values where they are,
  then asks the scheduler to add the per-item tasks. The list itself stays on the
  worker; only its length travels.
- :func:`unspliced` is the collector's placeholder; the scheduler replaces it with the
  real collector before it can run.
- :func:`run_map` is a whole map run in this process, for local schedulers.
"""

from __future__ import annotations

import logging
from typing import Any

from dynflow._splice import request_splice
from dynflow.exceptions import ExtensionError
from dynflow.plan import Expansion, at

logger = logging.getLogger(__name__)

__all__ = ["expand", "run_map", "unspliced"]


async def expand(
    expansion: Expansion, prefix: tuple[int, ...], data: dict[Any, Any]
) -> dict[Any, list]:
    """Measure the mapped values and have the scheduler add the per-item tasks.

    ``prefix`` locates a nested expansion (the parent items it belongs to); ``()`` at
    top level. Returns the sources that had to be turned into lists (usually none);
    items that read such a source read it from this task's result.
    """
    failure = expansion.failed_source(data, prefix)
    if failure is None:
        n, materialized = expansion.measure(data, prefix)
        shipped = expansion.prebuild(n, prefix, materialized)
    else:  # a failed parent item: no children; the collectors' list is the failure
        n, materialized, shipped = 0, {}, {}
    key = at(expansion.expander, prefix)
    reply = await request_splice(key, n, list(materialized), shipped, failure is not None)
    if not isinstance(reply, dict):
        raise ExtensionError(
            f"{expansion.names}: the scheduler has no dynflow extension (it answered "
            f"{reply!r}). Compute dynflow nodes with node.compute()/submit() or "
            "df.compute(), which install it, or start the scheduler with "
            "`dask scheduler --preload dynflow.scheduler`."
        )
    logger.debug("%s: %s, %d items", key, reply.get("status"), n)
    return failure if failure is not None else materialized


def unspliced(_expanded: Any, task_name: str) -> list:
    """Placeholder of a map's collector; running it means the expansion never happened."""
    raise ExtensionError(
        f"{task_name}.map(): the per-item tasks were never added to the scheduler "
        "(the expander finished without splicing them)"
    )


def run_map(expansion: Expansion, data: dict[str, Any]) -> list:
    """A whole map, item after item, in this process (local schedulers).

    Returns the items' raw results, failure records included; collectors apply the
    map's failure semantics.
    """
    return expansion.run_locally(data)
