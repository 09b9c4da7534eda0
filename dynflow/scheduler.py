"""Scheduler preload: ``dask scheduler --preload dynflow.scheduler``.

Installs dynflow's scheduler extensions when the scheduler starts (the splice extension
and the run tracker), so no client needs to install them (clients still may: installing
is idempotent), and adds the dynflow page to the scheduler's dashboard
(``/individual-dynflow``, in the "More..." menu). The scheduler must be able to import
dynflow and the modules of the user's tasks, as for any dask graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynflow._protocol import SPLICE, TRACKER
from dynflow.cluster._splice import SpliceExtension
from dynflow.cluster._tracker import RunTracker
from dynflow.views._dashboard import register_page

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = ["dask_setup"]

# the dashboard reads its pages when the scheduler starts, after preloads are imported
register_page()


async def dask_setup(scheduler: Scheduler) -> None:
    """Called by distributed when the scheduler starts with this preload."""
    await scheduler.register_scheduler_plugin(SpliceExtension(), name=SPLICE, idempotent=True)
    await scheduler.register_scheduler_plugin(RunTracker(), name=TRACKER, idempotent=True)
