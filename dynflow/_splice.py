"""The scheduler extension that adds per-item tasks to the live scheduler.

This is the ONE module of dynflow that touches the scheduler's private state
(``TaskState`` fields, ``new_task``, ``transitions``, ``_apply_annotations``). It is
pinned to the distributed versions in ``pyproject.toml`` and tested with
``distributed.scheduler.validate`` on. It imports nothing from the client side: the
expansion plan arrives inside the expander's own task spec.

The worker half, :func:`request_splice`, is what an expander task awaits.

The splice, in one synchronous pass (it must not interleave with other transitions):

1. check that the calling expander ``E`` is processing with the caller's run id (a
   stale or repeated call changes nothing);
2. create the per-item tasks ``(map key, i)``, skipping keys that already exist, so an
   expander that runs again creates no duplicates;
3. wire them into the collectors ``C`` (dynflow-owned; a user's task is never rewired)
   and give each collector its real task spec; the ``E -> C`` edge stays, so that
   forgetting ``C`` forgets ``E`` and the upstream tasks;
4. set priorities (the expander's, then item index, then stage: chained maps run item
   by item), annotations and spans, tell the other plugins, and transition the items
   to waiting.

State: none beyond the scheduler's own tasks. Everything a run adds is forgotten by the
scheduler's usual dependent-driven cleanup when the run's keys are released.
"""

from __future__ import annotations

import gc
import logging
from time import time
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.graph_layout import GraphLayout
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import log_errors

if TYPE_CHECKING:
    from distributed import Scheduler
    from distributed.scheduler import TaskState

logger = logging.getLogger(__name__)

__all__ = ["NAME", "SpliceExtension", "request_splice"]

#: the name the extension is registered under, on the scheduler and as a plugin
NAME = "dynflow"


class SpliceExtension(SchedulerPlugin):
    """Scheduler plugin serving the ``dynflow_splice`` RPC for expander tasks."""

    name = NAME
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None
        # for the dashboard and tests: splices served, and tasks they added in total
        self.splices = 0
        self.tasks_added = 0

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        scheduler.handlers["dynflow_splice"] = self.splice
        scheduler.extensions[NAME] = self

    async def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.handlers.pop("dynflow_splice", None)
            self.scheduler.extensions.pop(NAME, None)

    @log_errors
    def splice(self, **kwargs: Any) -> dict[str, Any]:
        """The ``dynflow_splice`` handler: :meth:`_splice` with the garbage collector paused.

        Creating ~100k task states triggers full collections that walk the whole
        scheduler heap (measured: ~40% of a 100k splice, and per-item cost growing with
        N); the pass is synchronous and short, so the collector resumes right after.
        """
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._splice(**kwargs)
        finally:
            if paused:
                gc.enable()

    def _splice(
        self,
        expander: Any,
        run_id: int,
        n: int,
        materialized: list,
        shipped: dict[int, list] | None = None,
        failed: bool = False,
    ) -> dict[str, Any]:
        """Add the ``n`` items of every stage of ``expander``'s expansion."""
        s = self.scheduler
        assert s is not None
        stimulus_id = f"dynflow-splice-{time()}"
        ets = s.tasks.get(expander)
        if ets is None or ets.state != "processing" or ets.run_id != run_id:
            return {"status": "stale"}
        collectors = list(ets.dependents)  # the collectors (placeholders) of this expansion
        if not any(c.state == "waiting" for c in collectors):
            return {"status": "unwanted"}

        expansion, prefix = ets.run_spec.args[0], ets.run_spec.args[1]
        stages, specs = expansion.build(
            n, prefix, materialized, shipped or {}, failed, s.total_nthreads
        )
        computation = s.computations[-1] if s.computations else None
        span = (ets.annotations or {}).get("span")
        new: list[TaskState] = []
        for stage_index, (stage_annotations, items) in enumerate(stages):
            created: list[TaskState] = []
            for i, spec in enumerate(items):
                if spec.key in s.tasks:
                    continue
                ts = s.new_task(spec.key, spec, "released", computation)
                ts.priority = (*ets.priority, i, stage_index)
                created.append(ts)
            ann = dict(stage_annotations)
            if span:
                ann["span"] = span
            s._apply_annotations(tasks=created, annotations_by_type={}, global_annotations=ann)
            new += created
        for ts in new:  # all created first: items may depend on items of later stages
            for dep in ts.run_spec.dependencies:
                ts.add_dependency(s.tasks[dep])

        recommendations: dict[Any, str] = {ts.key: "waiting" for ts in reversed(new)}
        fresh = {ts.key for ts in new}
        rewired: dict[Any, list] = {}  # collector key -> the dependencies the splice adds
        for cts in collectors:
            spec = specs.get(cts.key)
            if spec is None or cts.state != "waiting":
                continue
            for dep in spec.dependencies:
                dts = s.tasks[dep]
                if dts not in cts.dependencies:
                    rewired.setdefault(cts.key, []).append(dep)
                cts.add_dependency(dts)
                if not dts.who_has:
                    cts.waiting_on.add(dts)
                if dts.key in fresh:
                    continue  # released -> waiting will add cts to its waiters
                if dts.state == "erred":
                    cts.exception_blame = dts.exception_blame
                    recommendations[cts.key] = "erred"
                    continue
                if dts.waiters is None:
                    dts.waiters = set()
                dts.waiters.add(cts)
                if dts.state == "released":
                    recommendations.setdefault(dts.key, "waiting")
            cts.run_spec = spec

        spans = s.extensions.get("spans")
        if spans is not None and new:
            spans.observe_tasks(new, code=(), span_metadata={"collections": []})
        lengths = expansion.lengths(0 if failed else n, prefix, s.total_nthreads)
        self._tell_plugins(new, rewired, stimulus_id, lengths)
        s.transitions(recommendations, stimulus_id)
        self.splices += 1
        self.tasks_added += len(new)
        return {"status": "OK", "added": len(new)}

    def _tell_plugins(
        self, new: list[TaskState], rewired: dict[Any, list], stimulus_id: str, lengths: dict
    ) -> None:
        """``update_graph`` for the other plugins, as if a client had sent the items.

        ``tasks`` holds the new items and the rewired collectors (keys a client sends
        again are in ``tasks`` too). No client can change an existing key's
        dependencies, so plugins that keep edges never hear of the new ``item ->
        collector`` edges: distributed's ``GraphLayout`` (the dashboard's /graph page)
        is told directly, else it fails on every collector it forgets.
        ``dynflow_stages`` (``{map key: (prefix, n, batch size)}``) tells dynflow's run
        tracker the maps' lengths.
        """
        s = self.scheduler
        assert s is not None
        touched = new + [s.tasks[k] for k in rewired]
        keys = [ts.key for ts in touched]
        annotations: dict[str, dict] = {}
        for ts in new:
            for k, v in (ts.annotations or {}).items():
                annotations.setdefault(k, {})[ts.key] = v
        priority = {ts.key: ts.priority for ts in touched}
        for plugin in list(s.plugins.values()):
            if plugin is self:
                continue
            try:
                plugin.update_graph(
                    s,
                    client=NAME,
                    tasks=keys,
                    keys=set(),
                    annotations=annotations,
                    priority=priority,
                    stimulus_id=stimulus_id,
                    dynflow_stages=lengths,
                )
                if isinstance(plugin, GraphLayout):
                    _add_edges(plugin, rewired)
            except Exception:  # as update_graph does: a plugin must not break the splice
                logger.exception("plugin %r failed in update_graph after a splice", plugin)


def _add_edges(layout: GraphLayout, rewired: dict[Any, list]) -> None:
    """Give ``GraphLayout`` the splice's new ``dependency -> collector`` edges (private
    state of distributed's layout plugin, written as its ``update_graph`` writes it)."""
    for ckey, deps in rewired.items():
        for dep in deps:
            edge = (dep, ckey)
            if edge not in layout.index_edge:
                layout.index_edge[edge] = layout.next_edge_index
                layout.next_edge_index += 1
                layout.new_edges.append(edge)


async def request_splice(
    expander: Any, n: int, materialized: list, shipped: dict[int, list], failed: bool
) -> Any:
    """From the expander task running on this worker: ask the scheduler to splice.

    Returns the extension's reply (a dict), or None when the scheduler has no
    extension. Awaiting it holds no worker thread: expanders run on the event loop.
    """
    from distributed import get_worker
    from distributed.protocol.serialize import ToPickle

    worker = get_worker()
    ts = worker.state.tasks.get(expander)
    return await worker.scheduler.dynflow_splice(
        expander=expander,
        run_id=ts.run_id if ts is not None else -1,
        n=n,
        materialized=materialized,
        shipped=ToPickle(shipped) if shipped else None,
        failed=failed,
    )
