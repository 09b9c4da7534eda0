"""Named concurrency limits, cluster-wide: at most ``n`` calls carrying a name run at once.

``@df.task(concurrency_limit="vendor-api")`` annotates each of the task's scheduler
tasks (a call, a map item, a batch of items) with ``dynflow_limit: "vendor-api"``;
``df.set_concurrency_limit("vendor-api", 5)`` sets ``n`` here. As Airflow's pools and
Prefect's global concurrency limits, but a waiting call holds no worker thread (as
distributed's ``Semaphore`` would): it waits in the scheduler.

How: when a limited task arrives (a client's graph, or a splice; the plugin's
``update_graph``, which runs before the scheduler transitions the new tasks), it is
*held* (:func:`~dynflow.extension._ops.hold`): it gets a worker restriction no worker
meets, so once its inputs exist the scheduler itself puts it in ``no-worker``, where it
waits. Each limit keeps the held tasks in the order they became ready; while fewer than
``n`` of its tasks are granted, the next one is let go (its own restrictions back,
:func:`~dynflow.extension._ops.unhold`) and runs where the scheduler decides. A granted
task gives its slot back when its run ends in any way: it finished or failed, its client
released it (a client that dies releases all), or its worker died (it is held again,
and waits its turn to run again). Lowering a limit lets fewer go from then on; the
granted ones run on. A task whose limit was never set fails with
:class:`~dynflow.exceptions.ConcurrencyLimitError` naming it (clients check their graphs
before sending them: :meth:`ConcurrencyLimits.known`).

Held tasks are in ``no-worker`` for distributed: they count as ready work for adaptive
scaling, and ``distributed.scheduler.no-workers-timeout``, if set, fails them.
"""

from __future__ import annotations

from collections import deque
from time import time
from typing import TYPE_CHECKING, Any

from dask._task_spec import Task, TaskRef
from dask.utils import key_split
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import log_errors

from dynflow._protocol import (
    LIMIT_ANNOTATION,
    LIMITS,
    LIMITS_HANDLER,
    SET_LIMIT_HANDLER,
    own_limit_size,
)
from dynflow.extension import _ops as ops
from dynflow.worker._failure import limit_never_set

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = ["ConcurrencyLimits"]

#: the worker restriction of a held task: no worker has this address
HELD = "dynflow-held://"


class ConcurrencyLimits(SchedulerPlugin):
    """Scheduler plugin holding each limit's tasks; see the module docstring."""

    name = LIMITS
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None
        self.limits: dict[str, int] = {}
        # every live task that carries a limit -> its limit's name (until forgotten)
        self.limited: dict[Any, str] = {}
        # held tasks -> their own restrictions (given back when let go)
        self.held: dict[Any, tuple] = {}
        # per limit: held tasks in the order they became ready (some may have left
        # since: skipped when their turn comes), and the tasks let go and not ended
        self.ready: dict[str, deque] = {}
        self.granted: dict[str, set] = {}
        self.most: dict[str, int] = {}  # per limit: most tasks granted at once (tests)
        self._soon = False  # a grant pass is scheduled

    def _handlers(self) -> dict[str, Any]:
        return {SET_LIMIT_HANDLER: self.set_limit, LIMITS_HANDLER: self.known}

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        ops.install(scheduler, LIMITS, self, self._handlers())

    async def close(self) -> None:
        if self.scheduler is not None:
            ops.uninstall(self.scheduler, LIMITS, self._handlers())

    # ------------------------------------------------------------------ handlers
    @log_errors
    def set_limit(self, name: str, n: int) -> dict[str, Any]:
        """Set limit ``name`` to ``n`` calls at once (``n >= 0``; 0 lets none start)."""
        if not isinstance(name, str) or not name:
            return {"status": "error", "message": f"a limit's name is a str, got {name!r:.100}"}
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            message = f"limit {name!r}: expected an int >= 0, got {n!r:.100}"
            return {"status": "error", "message": message}
        self.limits[name] = n
        self.ready.setdefault(name, deque())
        self.granted.setdefault(name, set())
        self._grant_soon()
        return {"status": "OK"}

    def known(self, names: list[str] | None = None) -> dict[str, dict[str, int]]:
        """``{name: {"limit", "running", "waiting"}}`` of the limits set (of ``names``)."""
        out = {}
        for name, n in self.limits.items():
            if names is None or name in names:
                waiting = sum(1 for k in self.ready.get(name, ()) if k in self.held)
                out[name] = {"limit": n, "running": len(self.granted[name]), "waiting": waiting}
        return out

    # ------------------------------------------------------------------ plugin
    def update_graph(self, scheduler: Scheduler, *, annotations: Any = None, **kwargs: Any) -> None:
        """Hold the new tasks that carry a limit, before they are transitioned."""
        by_key = (annotations or {}).get(LIMIT_ANNOTATION)
        if not by_key:
            return
        recs: dict = {}
        for key, name in by_key.items():
            ts = ops.get_task(scheduler, key)
            if ts is None or key in self.limited or ops.state(ts) != "released":
                continue  # known already (the same key sent again), or running
            if name not in self.limits and (size := own_limit_size(str(name))) is not None:
                self.set_limit(name, size)  # a map's own max_concurrency
            if name not in self.limits:
                # never set: the call fails saying so, instead of waiting forever (it
                # reads the same inputs, so nothing else changes)
                inputs = [TaskRef(k) for k in ops.dependency_keys(ts)]
                spec = Task(key, limit_never_set, str(name), key_split(key), *inputs)
                ops.respec(scheduler, ts, spec, recs)
                continue
            self.limited[key] = name
            self.held[key] = ops.hold(ts, HELD)
        if recs:  # inputs let go of by a failing call: after this graph's transitions
            self._later(recs)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        name = self.limited.get(key)
        if name is None:
            return
        granted = self.granted[name]
        if finish == "forgotten":
            del self.limited[key]
            self.held.pop(key, None)
            if key in granted:
                granted.discard(key)
                self._grant_soon()
            return
        if key in granted:
            if finish in ("processing", "no-worker"):
                return  # running, or waiting for a worker: it keeps its slot
            granted.discard(key)  # its run ended (memory, erred, released, waiting)
            self._grant_soon()
            if finish in ("released", "waiting"):
                self._hold_again(key)  # it may run again: in its turn
            return
        if key in self.held:
            if finish == "no-worker":  # ready: in line
                self.ready[name].append(key)
                self._grant_soon()
        elif finish in ("released", "waiting"):
            self._hold_again(key)  # a result lost, to be computed again

    # ------------------------------------------------------------------ granting
    def _hold_again(self, key: Any) -> None:
        assert self.scheduler is not None
        ts = ops.get_task(self.scheduler, key)
        if ts is not None and key not in self.held:
            self.held[key] = ops.hold(ts, HELD)

    def _grant_soon(self) -> None:
        """Grant after the transitions running now (a plugin hook cannot transition)."""
        if not self._soon and self.scheduler is not None:
            self._soon = True
            self.scheduler.loop.add_callback(self._grant)

    def _later(self, recs: dict) -> None:
        assert self.scheduler is not None
        s = self.scheduler
        s.loop.add_callback(ops.commit, s, recs, f"dynflow-limit-{time()}")

    @log_errors
    def _grant(self) -> None:
        self._soon = False
        s = self.scheduler
        if s is None:
            return
        recs: dict = {}
        for name, n in self.limits.items():
            ready, granted = self.ready[name], self.granted[name]
            while ready and len(granted) < n:
                key = ready.popleft()
                ts = ops.get_task(s, key)
                saved = self.held.get(key)
                if ts is None or saved is None or ops.state(ts) != "no-worker":
                    continue  # gone, or let go already
                del self.held[key]
                ops.unhold(ts, saved, recs)
                granted.add(key)
            self.most[name] = max(self.most.get(name, 0), len(granted))
        ops.commit(s, recs, f"dynflow-limit-{time()}")
