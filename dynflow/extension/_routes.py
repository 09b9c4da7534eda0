"""The run tracker's HTTP routes, served by the scheduler's dashboard server.

``/dynflow/runs.json`` (every run), ``/dynflow/runs/<id>.json`` (one run with its
graph) and ``/dynflow/runs/<id>/items.json`` (a page of a map's items) read the
tracker (:mod:`dynflow.extension._tracker`); the dashboard page and any HTTP client
use them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tornado import web

from dynflow.extension import _ops as ops

if TYPE_CHECKING:
    from distributed import Scheduler

    from dynflow.extension._tracker import RunTracker

__all__ = ["add_routes"]


class _ItemsHandler(web.RequestHandler):
    """``/dynflow/runs/<id>/items.json?node=<map key>&offset=&limit=&q=&state=``: a
    page of a map's items (see :meth:`NodeState.list_items`)."""

    def initialize(self, tracker: RunTracker) -> None:
        self.tracker = tracker

    def get(self, run_id: str) -> None:
        self.set_header("Content-Type", "application/json")
        arg = self.get_argument
        try:
            offset, limit = int(arg("offset", "0")), int(arg("limit", "50"))
        except ValueError:
            raise web.HTTPError(400, "offset and limit are integers") from None
        page = self.tracker.run_items(
            run_id, arg("node", ""), offset, limit, arg("q", ""), arg("state", "")
        )
        if page is None:
            raise web.HTTPError(404, f"no map {arg('node', '')!r} in dynflow run {run_id!r}")
        self.write(json.dumps(page, default=str))


class _RunsHandler(web.RequestHandler):
    """``/dynflow/runs.json`` (every run) and ``/dynflow/runs/<id>.json`` (one, with
    its graph), served by the scheduler's HTTP server."""

    def initialize(self, tracker: RunTracker) -> None:
        self.tracker = tracker

    def get(self, run_id: str | None = None) -> None:
        self.set_header("Content-Type", "application/json")
        if run_id is None:
            self.write(json.dumps(self.tracker.list_runs(), default=str))
            return
        run = self.tracker.run_status(run_id, graph=True)
        if run is None:
            raise web.HTTPError(404, f"no dynflow run {run_id!r}")
        self.write(json.dumps(run, default=str))


def add_routes(scheduler: Scheduler, tracker: RunTracker) -> None:
    """Serve the tracker's data as JSON from the scheduler's HTTP server, if it has one."""
    app = ops.http_application(scheduler)
    if app is None:
        return
    args = {"tracker": tracker}
    app.add_handlers(
        r".*",
        [
            (r"/dynflow/runs\.json", _RunsHandler, args),
            (r"/dynflow/runs/([0-9a-f]+)\.json", _RunsHandler, args),
            (r"/dynflow/runs/([0-9a-f]+)/items\.json", _ItemsHandler, args),
        ],
    )
