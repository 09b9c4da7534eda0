"""Scheduler preload: ``dask scheduler --preload dynflow.scheduler``.

Installs dynflow's scheduler extensions when the scheduler starts (the splice extension,
the run tracker and the dynflow page, ``/dynflow/``), so no client needs to install them
(clients still do: installing is idempotent, and a scheduler started without this
preload gets them at the first run), and lists the page in the dashboard's "More..."
menu (``/individual-dynflow``), which only a preload can do. The scheduler must be able to import
dynflow and the modules of the user's tasks, as for any dask graph.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dynflow._protocol import LIMITS, PAGE_PLUGIN, SPLICE, TRACKER
from dynflow.extension._limits import ConcurrencyLimits
from dynflow.extension._ops import http_application
from dynflow.extension._splice import SpliceExtension
from dynflow.extension._tracker import RunTracker
from dynflow.views._dashboard import DashboardPage, page_url, register_page

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = ["dask_setup"]

logger = logging.getLogger("distributed.scheduler")  # beside the scheduler's own lines


def dashboard_link_of(scheduler: Scheduler) -> str | None:
    """The dynflow page's URL as distributed formats the scheduler's dashboard link
    (``distributed.dashboard.link``); None without a dashboard."""
    from distributed.utils import format_dashboard_link

    if http_application(scheduler) is None:
        return None
    host = scheduler.address.split("://")[-1].rsplit(":", 1)[0]
    try:
        # distributed sets .port on its tornado HTTPServer when it binds, undeclared there
        port: int = scheduler.http_server.port  # type: ignore[attr-defined]
        return page_url(format_dashboard_link(host, port))
    except Exception:  # noqa: BLE001 - a log line, never a failed start
        return None


# the dashboard reads its pages when the scheduler starts, after preloads are imported
register_page()


async def dask_setup(scheduler: Scheduler) -> None:
    """Called by distributed when the scheduler starts with this preload."""
    await scheduler.register_scheduler_plugin(SpliceExtension(), name=SPLICE, idempotent=True)
    await scheduler.register_scheduler_plugin(RunTracker(), name=TRACKER, idempotent=True)
    await scheduler.register_scheduler_plugin(ConcurrencyLimits(), name=LIMITS, idempotent=True)
    await scheduler.register_scheduler_plugin(DashboardPage(), name=PAGE_PLUGIN, idempotent=True)
    link = dashboard_link_of(scheduler)
    if link is not None:
        logger.info("dynflow page at: %s", link)
