"""Scheduler preload: ``dask scheduler --preload dynflow.scheduler``.

Installs dynflow's scheduler extension when the scheduler starts, so no client needs
to install it (clients still may: installing is idempotent). The scheduler must be able
to import dynflow and the modules of the user's tasks, as for any dask graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynflow._splice import NAME, SpliceExtension

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = ["dask_setup"]


async def dask_setup(scheduler: Scheduler) -> None:
    """Called by distributed when the scheduler starts with this preload."""
    await scheduler.register_scheduler_plugin(SpliceExtension(), name=NAME, idempotent=True)
