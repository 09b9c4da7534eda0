"""The scheduler extension that adds per-item tasks to the live scheduler (the splice).

An expander task (:mod:`dynflow.cluster._expand`) measures a map's upstream values on
its worker, then calls the ``dynflow_splice`` handler with only the length. The plan
arrives inside the expander's own task spec: this module imports nothing from the client
side. It changes the scheduler's state through the few private names listed in
:mod:`dynflow._compat`; the suite runs with ``distributed.scheduler.validate`` on.

The splice, in one synchronous pass (it must not interleave with other transitions):

1. check that the calling expander ``E`` is processing with the caller's run id (a
   stale or repeated call changes nothing);
2. create the per-item tasks ``(item name, i)``, skipping keys that already exist, so
   an expander that runs again creates no duplicates (:meth:`SpliceExtension._create`);
3. wire them into the collectors ``C`` (dynflow-owned; a user's task is never rewired)
   and give each collector its real task spec; the ``E -> C`` edge stays, so that
   forgetting ``C`` forgets ``E`` and the upstream tasks (:meth:`SpliceExtension._wire`);
4. set priorities (the expander's, then item index, then stage: chained maps run item
   by item), annotations and spans, keep the items out of the scheduler's root-task
   queue (unless ``dynflow.queue-items``), tell the other plugins, and transition the
   items to waiting.

State: none beyond the scheduler's own tasks. Everything a run adds is forgotten by the
scheduler's usual dependent-driven cleanup when the run's keys are released.
"""

from __future__ import annotations

import gc
import logging
from time import perf_counter, time
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.graph_layout import GraphLayout
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import log_errors

from dynflow._compat import (
    add_layout_edges,
    apply_annotations,
    bypass_queuing,
    new_task,
    observe_spans,
    update_graph_extras,
)
from dynflow._protocol import SPLICE, SPLICE_HANDLER, SPLICE_TOPIC

if TYPE_CHECKING:
    from distributed import Scheduler
    from distributed.scheduler import TaskState

    from dynflow.lowering._plan import StageTasks

logger = logging.getLogger(__name__)

__all__ = ["SpliceExtension"]


class SpliceExtension(SchedulerPlugin):
    """Scheduler plugin serving the ``dynflow_splice`` handler for expander tasks.

    After each splice it logs an event on topic ``dynflow-splice`` (the expander, ``n``,
    the tasks added, and the pass's start and end on the scheduler's
    ``time.perf_counter``), which benchmarks and monitoring read.
    """

    name = SPLICE
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None
        # for the dashboard and tests: splices served, and tasks they added in total
        self.splices = 0
        self.tasks_added = 0
        self.profiler: Any = None  # a cProfile.Profile enabled around each splice, if set

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        scheduler.handlers[SPLICE_HANDLER] = self.splice
        scheduler.extensions[SPLICE] = self

    async def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.handlers.pop(SPLICE_HANDLER, None)
            self.scheduler.extensions.pop(SPLICE, None)

    @log_errors
    def splice(self, **kwargs: Any) -> dict[str, Any]:
        """The ``dynflow_splice`` handler: :meth:`_splice` with the garbage collector paused.

        Creating ~100k task states triggers full collections that walk the whole
        scheduler heap (measured: ~40% of a 100k splice, and per-item cost growing with
        N); the pass is synchronous and short, so the collector resumes right after.
        """
        paused = gc.isenabled()
        gc.disable()
        start = perf_counter()
        if self.profiler is not None:
            self.profiler.enable()
        try:
            reply = self._splice(**kwargs)
        finally:
            if self.profiler is not None:
                self.profiler.disable()
            end = perf_counter()
            if paused:
                gc.enable()
        assert self.scheduler is not None
        self.scheduler.log_event(
            SPLICE_TOPIC,
            {
                "expander": kwargs.get("expander"),
                "n": kwargs.get("n", 0),
                "added": reply.get("added", 0),
                "status": reply.get("status"),
                "start": start,
                "end": end,
            },
        )
        return reply

    def _splice(
        self,
        expander: Any,
        task_run_id: int,
        n: int,
        listed: list,
        subflow_tasks: dict[int, list] | None = None,
        failed: bool = False,
    ) -> dict[str, Any]:
        """Add the ``n`` items of every stage of ``expander``'s expansion.

        ``task_run_id``: the run id (dask's) of the expander that calls; ``listed``: the
        sources it turned into lists; ``subflow_tasks``: the sub-flows it built, per
        stage; ``failed``: a mapped source was a failure record (no items).
        """
        s = self.scheduler
        assert s is not None
        stimulus_id = f"dynflow-splice-{time()}"
        ets = s.tasks.get(expander)
        if ets is None or ets.state != "processing" or ets.run_id != task_run_id:
            return {"status": "stale"}
        collectors = list(ets.dependents)  # the collectors (placeholders) of this expansion
        if not any(c.state == "waiting" for c in collectors):
            return {"status": "unwanted"}

        expansion, prefix = ets.run_spec.args[0], ets.run_spec.args[1]
        stages, specs = expansion.build(
            n, prefix, listed, subflow_tasks or {}, failed, s.total_nthreads
        )
        new = self._create(ets, stages)
        recommendations: dict[Any, str] = {ts.key: "waiting" for ts in reversed(new)}
        rewired = self._wire(collectors, specs, {ts.key for ts in new}, recommendations)
        observe_spans(s, new)
        lengths = expansion.lengths(0 if failed else n, prefix, s.total_nthreads)
        self._tell_plugins(new, rewired, stimulus_id, lengths, expander if failed else None)
        s.transitions(recommendations, stimulus_id)
        self.splices += 1
        self.tasks_added += len(new)
        return {"status": "OK", "added": len(new)}

    def _create(self, ets: TaskState, stages: list[StageTasks]) -> list[TaskState]:
        """The tasks of every stage, released, with priorities and annotations; keys that
        exist already are skipped (an expander that runs again)."""
        s = self.scheduler
        assert s is not None
        computation = s.computations[-1] if s.computations else None
        span = (ets.annotations or {}).get("span")
        new: list[TaskState] = []
        for stage_index, (stage_annotations, items, queue) in enumerate(stages):
            created: list[TaskState] = []
            for i, spec in enumerate(items):
                if spec.key in s.tasks:
                    continue
                ts = new_task(s, spec, computation)
                ts.priority = (*ets.priority, i, stage_index)
                created.append(ts)
            annotations = dict(stage_annotations)
            if span:
                annotations["span"] = span
            apply_annotations(s, created, annotations)
            if not queue:
                bypass_queuing(created)
            new += created
        for ts in new:  # all created first: items may depend on items of later stages
            for dep in ts.run_spec.dependencies:
                ts.add_dependency(s.tasks[dep])
        return new

    def _wire(
        self,
        collectors: list[TaskState],
        specs: dict[Any, Any],
        fresh: set[Any],
        recommendations: dict[Any, str],
    ) -> dict[Any, list]:
        """Give each waiting collector its real spec and its items as dependencies.

        ``fresh``: the keys just created (their released -> waiting transition adds the
        collector to their waiters). Adds to ``recommendations``; returns each
        collector's new dependencies (``{collector key: [key, ...]}``).
        """
        s = self.scheduler
        assert s is not None
        rewired: dict[Any, list] = {}
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
                    continue
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
        return rewired

    def _tell_plugins(
        self,
        new: list[TaskState],
        rewired: dict[Any, list],
        stimulus_id: str,
        lengths: dict,
        failed: Any = None,
    ) -> None:
        """``update_graph`` for the other plugins, as if a client had sent the items.

        ``tasks`` holds the new items and the rewired collectors (keys a client sends
        again are in ``tasks`` too). No client can change an existing key's
        dependencies, so plugins that keep edges never hear of the new ``item ->
        collector`` edges: distributed's ``GraphLayout`` (the dashboard's /graph page)
        is told directly, else it fails on every collector it forgets.
        ``dynflow_map_lengths`` (``{item name: (prefix, n, items per task or None)}``)
        tells dynflow's run tracker the maps' lengths; ``dynflow_failed_expander``, the
        expander whose source failed (its value is the failure record), if it did.
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
        extras = update_graph_extras(touched)
        for plugin in list(s.plugins.values()):
            if plugin is self:
                continue
            try:
                plugin.update_graph(
                    s,
                    client=SPLICE,
                    tasks=keys,
                    keys=set(),
                    annotations=annotations,
                    priority=priority,
                    stimulus_id=stimulus_id,
                    dynflow_map_lengths=lengths,
                    dynflow_failed_expander=failed,
                    **extras,
                )
                if isinstance(plugin, GraphLayout):
                    add_layout_edges(plugin, ((d, c) for c, ds in rewired.items() for d in ds))
            except Exception:  # as update_graph does: a plugin must not break the splice
                logger.exception("plugin %r failed in update_graph after a splice", plugin)
