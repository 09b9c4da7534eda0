"""What many tests share: the seed pattern's tasks and the "scheduler is empty" check.

The tasks live in an importable module so that workers in other processes (LocalCluster
with processes, CLI workers with this directory on their PYTHONPATH) unpickle them by
reference.
"""

from __future__ import annotations

from distributed import Scheduler
from distributed.utils_test import async_poll_for

import dynflow as df


@df.task
def generate_list(n):
    """The generator of the seed pattern: ``n`` items, known only when it has run."""
    return list(range(n))


@df.task
def process(item, factor=1):
    """The per-item task of the seed pattern."""
    return item * factor


@df.task
def reducer(results):
    """The reducer of the seed pattern."""
    return sum(results)


async def no_tasks_left(s: Scheduler, timeout: float = 5) -> None:
    """Wait until the scheduler holds no task (a run left nothing behind)."""
    await async_poll_for(lambda: not s.tasks, timeout=timeout)
