"""The scheduler extension that adds per-item tasks to the live scheduler (the splice).

An expander task (:mod:`dynflow.worker._expander`) measures a map's upstream values on
its worker, then calls the ``dynflow_splice`` handler with only the length. The plan
arrives inside the expander's own task spec: this module imports nothing from the client
side. It changes the scheduler's state only through the named operations of
:mod:`dynflow.extension._ops` (and reads it through that module's read helpers):
this module decides what to make and rewire, those operations make it so. The suite
runs with ``distributed.scheduler.validate`` on.

The splice, in one synchronous pass (it must not interleave with other transitions):

1. check the request before anything is built, in O(sources + stages), never per
   item (:meth:`SpliceExtension._refusal`): its fields' types; that the calling expander
   ``E`` is processing with the caller's run id (a stale or repeated call changes
   nothing); its signature, an HMAC under the key this extension gave its workers only
   (:class:`dynflow.worker._expander.SpliceKey`), so the request comes from a worker and
   ``n`` is the length that worker measured (a caller without the key is refused,
   whatever ``n`` it claims: the scheduler cannot measure the values itself, they live
   on the workers); and that the plan allows it (``Expansion.refuse_splice``: ``n``
   equals the concrete mapped tuples' lengths, listed sources are mapped ones, sub-flow
   tasks come for the sub-flow stages only);
2. create the per-item tasks ``(item name, i)``, skipping keys that already exist, so
   an expander that runs again creates no duplicates, with their priorities (the
   expander's, then item index, then stage: chained maps run item by item), annotations
   and spans, kept out of the scheduler's root-task queue (unless
   ``dynflow.queue-items``) (``create_tasks``);
3. wire them into the collectors ``C`` (dynflow-owned; a user's task is never rewired):
   each collector gets its real task spec and its items as dependencies; the ``E -> C``
   edge stays, so that forgetting ``C`` forgets ``E`` and the upstream tasks
   (``rewire``);
4. tell the other plugins (``announce``), and transition the items to waiting
   (``commit``).

A *dynamic task* (its function returned a graph) calls ``dynflow_graph_splice``
(:meth:`SpliceExtension.graph_splice`) with that graph's task specs and its output key
``O``; in one synchronous pass, while the task ``T`` is still processing:

1. the same staleness check, then the whole graph is checked before anything changes
   (:meth:`SpliceExtension._malformed`: specs keyed by their own keys, no cycle among
   them, annotations per key); a request that fails it is refused and changes nothing
   (a message on a worker's stream, which has no reply, fails the task instead, as
   does a graph that refers to keys the scheduler lacks);
2. the graph's tasks are created (keys that exist are reused: a pure call made twice is
   one task); should creating them fail, those created are forgotten again (as for the
   splice's items), so a failed pass leaves no task behind (``create_tasks``);
3. when ``T`` itself was made by a graph splice (so no client and no run counts it),
   its dependents read ``O`` instead (their task specs have the key substituted,
   dask's ``GraphNode.substitute``; ``repoint_dependents``) and ``T`` is forgotten: no
   alias task runs. The same for tasks made aliases of ``T`` (tail calls: a loop whose
   step returned the next step), so a loop of any length holds a bounded number of
   tasks;
4. the worker's run of ``T`` ends (``end_run``: processing -> released, the worker is
   told ``free-keys``, and the ``task-finished`` it sends, its value None, is refused
   as a stale run's); then ``T``, if still wanted, becomes an alias of ``O``
   (``make_alias``): its task spec is ``Alias(T, O)``, its only dependency ``O`` (its
   old inputs are released if nothing else wants them), and it waits, so it finishes
   when ``O`` does. The run ends before ``T``'s inputs change: the scheduler counts a
   processing task's inputs on its worker.

State: the keys a graph splice made and the keys made aliases (for step 4), dropped
when forgotten;
otherwise none beyond the scheduler's own tasks. Everything a run adds is forgotten by
the scheduler's usual dependent-driven cleanup when the run's keys are released.
"""

from __future__ import annotations

import gc
import hmac
import logging
import secrets
from collections.abc import Hashable
from time import perf_counter, time
from typing import TYPE_CHECKING, Any

from dask.utils import key_split
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import log_errors

from dynflow._protocol import (
    GRAPH_SPLICE_HANDLER,
    SPLICE,
    SPLICE_HANDLER,
    SPLICE_KEY_PLUGIN,
    SPLICE_TOPIC,
    STREAM_CHUNK_HANDLER,
    STREAM_END_HANDLER,
    STREAM_START_HANDLER,
)
from dynflow.extension import _ops as ops
from dynflow.extension._durations import ItemDurations
from dynflow.extension._sources import Sources
from dynflow.worker._expander import SpliceKey, expand, splice_digest
from dynflow.worker._graph_splice import needs_itself, refuse

if TYPE_CHECKING:
    from distributed import Scheduler
    from distributed.scheduler import Recs, TaskState

    from dynflow.lowering._expansion import Expansion

logger = logging.getLogger(__name__)

__all__ = ["SpliceExtension"]

#: what a ``dynflow_splice`` request holds (``subflow_tasks``, ``failed``, ``digest``
#: may be left out)
SPLICE_FIELDS = frozenset(
    {"expander", "task_run_id", "n", "listed", "subflow_tasks", "failed", "digest"}
)
SPLICE_REQUIRED = frozenset({"expander", "task_run_id", "n", "listed"})


def _error(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message}


def _is_key(obj: Any) -> bool:
    """Whether ``obj`` can be a task key (hashable: a str, a number, a tuple of them)."""
    if isinstance(obj, tuple):
        return all(_is_key(x) for x in obj)
    return isinstance(obj, (str, bytes, int, float)) and isinstance(obj, Hashable)


def _is_int(obj: Any) -> bool:
    return isinstance(obj, int) and not isinstance(obj, bool)


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
        self.aliases: dict[Any, Any] = {}  # dynamic tasks made aliases -> their output key
        self.dynamic_keys: set[Any] = set()  # tasks a graph splice created (while they live)
        # the key expanders sign their requests with: made here, given to the workers only
        self.key = secrets.token_bytes(32)
        # compute seconds per map item, per task name: "adaptive" batch sizes
        self.durations = ItemDurations()
        self.sources: Sources | None = None  # streaming sources' chunks (once started)

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.sources = Sources(scheduler, self)
        try:  # to every worker, present and future (a joining worker gets it as it registers)
            await ops.give_workers_plugin(scheduler, SpliceKey(self.key), SPLICE_KEY_PLUGIN)
        except Exception:  # a worker that could not take it: its splices are refused, saying so
            logger.exception("could not give every worker dynflow's splice key")
        ops.install(
            scheduler,
            SPLICE,
            self,
            {
                SPLICE_HANDLER: self.splice,
                GRAPH_SPLICE_HANDLER: self.graph_splice,
                STREAM_START_HANDLER: self.sources.start,
            },
            # later splices of a worker come as messages on its stream, in order with its
            # "reschedule" of the same task; so do a stream's chunks, before their add-keys
            {
                GRAPH_SPLICE_HANDLER: self.graph_splice_message,
                STREAM_CHUNK_HANDLER: self.sources.chunk,
                STREAM_END_HANDLER: self.sources.end,
            },
        )

    async def close(self) -> None:
        if self.scheduler is not None:
            ops.uninstall(
                self.scheduler,
                SPLICE,
                (SPLICE_HANDLER, GRAPH_SPLICE_HANDLER, STREAM_START_HANDLER),
                (GRAPH_SPLICE_HANDLER, STREAM_CHUNK_HANDLER, STREAM_END_HANDLER),
            )

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
            reply = self._refusal(kwargs) or self._splice(**kwargs)
        finally:
            if self.profiler is not None:
                self.profiler.disable()
            end = perf_counter()
            if paused:
                gc.enable()
        assert self.scheduler is not None
        valid = reply.get("status") != "error"  # a malformed request's fields are not logged
        self.scheduler.log_event(
            SPLICE_TOPIC,
            {
                "expander": kwargs.get("expander") if valid else None,
                "n": kwargs.get("n", 0) if valid else 0,
                "added": reply.get("added", 0),
                "status": reply.get("status"),
                "start": start,
                "end": end,
            },
        )
        return reply

    def _refusal(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Why ``request`` (a ``dynflow_splice`` call's fields) adds nothing: a reply
        (``stale``, ``unwanted``, or an error naming what is wrong and what was
        expected), or None when :meth:`_splice` may build it. O(sources + stages):
        nothing here is per item. See the module docstring, step 1."""
        s = self.scheduler
        assert s is not None
        unknown = sorted(map(str, set(request) - SPLICE_FIELDS))
        missing = sorted(SPLICE_REQUIRED - set(request))
        if unknown or missing:
            return _error(
                f"a splice request has the fields {sorted(SPLICE_FIELDS)}; unknown: "
                f"{unknown[:5]}, missing: {missing}"
            )
        expander, run_id, n = request["expander"], request["task_run_id"], request["n"]
        listed, failed = request["listed"], request.get("failed", False)
        subflow_tasks, digest = request.get("subflow_tasks"), request.get("digest")
        if not _is_key(expander) or not _is_int(run_id):
            return _error(
                f"expander must be a task key and task_run_id an int, got "
                f"{type(expander).__name__} and {type(run_id).__name__}"
            )
        if not _is_int(n) or n < 0:
            return _error(f"n must be an int >= 0 (the items measured), got {n!r:.100}")
        if not isinstance(listed, (list, tuple)):
            return _error("listed must be a list of task keys (the sources made lists)")
        if subflow_tasks is not None and not isinstance(subflow_tasks, dict):
            return _error("subflow_tasks must be {stage index: [task groups]} or None")
        if not isinstance(failed, bool) or not isinstance(digest, (str, type(None))):
            return _error("failed must be a bool and digest a str")
        ets = ops.current_run(s, expander, run_id)
        if ets is None:
            return {"status": "stale"}
        if not ops.dependents(ets, ("waiting",)):
            return {"status": "unwanted"}  # the collectors (placeholders) are done
        plan = _expansion_of(ets)
        if plan is None:
            return _error(f"task {key_split(expander)!r} is not a dynflow expander")
        expansion, prefix = plan
        # no longer than the plan allows, before anything walks them
        if len(listed) > len(expansion.sources) or not all(map(_is_key, listed)):
            return _error(
                f"listed must be a list of at most {len(expansion.sources)} task keys (the "
                f"mapped sources made lists), got {len(listed)}"
            )
        if subflow_tasks is not None and (
            len(subflow_tasks) > len(expansion.stages) or not all(map(_is_int, subflow_tasks))
        ):
            return _error(
                f"subflow_tasks must be {{stage index: [task groups]}} for at most "
                f"{len(expansion.stages)} stages"
            )
        expected = splice_digest(self.key, expander, run_id, n, listed, subflow_tasks, failed)
        if digest is None or not hmac.compare_digest(digest, expected):
            return _error(
                f"the splice request for {key_split(expander)!r} (n={n}) is not signed by a "
                f"worker of this scheduler: only the worker running the expander splices, "
                f"with the length it measured, signed with the {SPLICE_KEY_PLUGIN!r} key "
                f"this scheduler gave its workers"
                + ("" if digest is not None else " (the request has no signature)")
            )
        why = expansion.refuse_splice(n, prefix, listed, subflow_tasks or {}, failed)
        if why is not None:
            return _error(f"{expansion.names}: the splice request does not fit its plan: {why}")
        return None

    def _splice(
        self,
        expander: Any,
        task_run_id: int,
        n: int,
        listed: list,
        subflow_tasks: dict[int, list] | None = None,
        failed: bool = False,
        digest: str | None = None,
    ) -> dict[str, Any]:
        """Add the ``n`` items of every stage of ``expander``'s expansion, for a request
        :meth:`_refusal` accepted.

        ``task_run_id``: the run id (dask's) of the expander that calls; ``listed``: the
        sources it turned into lists; ``subflow_tasks``: the sub-flows it built, per
        stage; ``failed``: a mapped source was a failure record (no items); ``digest``:
        the request's signature (checked already).
        """
        s = self.scheduler
        assert s is not None
        stimulus_id = f"dynflow-splice-{time()}"
        ets = ops.current_run(s, expander, task_run_id)
        plan = None if ets is None else _expansion_of(ets)
        assert ets is not None and plan is not None  # _refusal checked
        expansion, prefix = plan
        # the collectors (placeholders) of this expansion still waiting for their items
        collectors = ops.dependents(ets, ("waiting",))
        threads = ops.total_threads(s)
        batches = (
            {}
            if failed
            else expansion.batches(
                n,
                threads,
                self.durations.seconds,
                lambda stage: self.durations.decided(stage, prefix, n),
            )
        )
        stages, specs = expansion.build(n, prefix, listed, subflow_tasks or {}, failed, batches)
        if not failed:
            for stage_key, task_name in expansion.task_names().items():
                self.durations.planned(stage_key, prefix, task_name, n, batches.get(stage_key))
        span = ops.annotation(ets, "span")
        new = ops.create_tasks(
            s,
            [
                ops.NewTasks(
                    items,
                    ops.priority(ets),
                    (stage_index,),
                    {"span": span, **stage_annotations} if span else stage_annotations,
                    queue,
                )
                for stage_index, (stage_annotations, items, queue) in enumerate(stages)
            ],
        )
        recommendations: Recs = {ts.key: "waiting" for ts in reversed(new)}
        rewired: dict[Any, list[Any]] = {}
        for cts in collectors:
            spec = specs.get(cts.key)
            if spec is not None:
                added = ops.rewire(s, cts, spec, recommendations)
                if added:
                    rewired[cts.key] = added
        self._announce(
            new,
            rewired,
            recommendations,
            stimulus_id,
            lengths=expansion.lengths(0 if failed else n, prefix, batches),
            failed_expander=expander if failed else None,
        )
        self.splices += 1
        self.tasks_added += len(new)
        return {"status": "OK", "added": len(new)}

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "memory" and type(key) is tuple:
            self.durations.finished(key, ops.compute_startstops(kwargs))
        if finish == "forgotten" and self.sources is not None and self.sources.handed:
            self.sources.forgotten(key)
        if finish == "forgotten" and (self.dynamic_keys or self.aliases):
            self.aliases.pop(key, None)
            self.dynamic_keys.discard(key)

    # ------------------------------------------------------------- dynamic tasks
    @log_errors
    def graph_splice(
        self,
        key: Any,
        task_run_id: int,
        tasks: dict[Any, Any],
        output: Any,
        annotations: dict[Any, dict] | None = None,
        queue: bool = False,
    ) -> dict[str, Any]:
        """The ``dynflow_graph_splice`` handler: dynamic task ``key`` returned a graph.

        ``tasks``: its task specs by key, in dependency order; ``output``: the key whose
        value is the task's value; ``annotations``: per key (resources, priority);
        ``queue``: whether the scheduler may queue its root tasks (as a map's items,
        they go to the workers as soon as they are ready otherwise). See the module
        docstring. Returns ``{"status": "OK" | "stale" | "unwanted", "added"}``, or
        ``{"status": "error", "message"}`` for a malformed request, which changed nothing.
        """
        return self._graph_splice(key, task_run_id, tasks, output, annotations, queue)

    def _graph_splice(
        self,
        key: Any,
        task_run_id: int,
        tasks: dict[Any, Any],
        output: Any,
        annotations: dict[Any, dict] | None = None,
        queue: bool = False,
        worker: str | None = None,
    ) -> dict[str, Any]:
        """:meth:`graph_splice`; ``worker``: the worker whose stream the request came on
        (None: a request, whose caller gets the reply)."""
        s = self.scheduler
        assert s is not None
        if not _is_key(key) or not _is_int(task_run_id):
            return _error(
                f"key must be a task key and task_run_id an int, got {type(key).__name__} "
                f"and {type(task_run_id).__name__}"
            )
        ts = ops.current_run(s, key, task_run_id, worker)
        if ts is None:  # stale, or a message from a worker that does not run it
            return {"status": "stale"}
        stimulus_id = f"dynflow-graph-splice-{time()}"
        malformed = self._malformed(tasks, output, annotations, queue)
        if malformed is not None:
            message = f"task {key_split(key)!r} returned a graph the scheduler refuses: {malformed}"
            if worker is None:  # refused: the caller is told, nothing changed
                return _error(message)
            # a message on a worker's stream has no reply: the task fails with it
            self._fail(ts, message, stimulus_id)
            return _error(message)
        # who needs this task's value reads the output instead: its dependents, when the
        # task was made by a splice (no client and no run counts it), or else the
        # aliases of it (a tail call); anything else keeps it, as an alias of the output
        mine = key in self.dynamic_keys
        repoint = [
            d
            for d in ops.dependents(ts, ("waiting", "released"))
            if mine or self.aliases.get(d.key) == key
        ]
        wanted = ops.wanted_by_client(ts) or len(ops.dependents(ts)) > len(repoint)
        recommendations: Recs = {}
        new: list[TaskState] = []
        out: TaskState | None = None
        if wanted or repoint:
            missing = [
                d
                for spec in tasks.values()
                for d in spec.dependencies
                if d not in tasks and not ops.has_task(s, d)
            ]
            if output not in tasks and not ops.has_task(s, output):
                missing.append(output)
            failure: str | None = None
            if missing:  # keys made elsewhere: it fails, naming them
                failure = (
                    f"task {key_split(key)!r} returned a graph that refers to keys the "
                    f"scheduler does not have (made for another graph or cluster): "
                    f"{sorted(map(str, missing))[:5]}"
                )
            elif self._needs_itself(ts, tasks, output):
                failure = needs_itself(key_split(key), key)
            if failure is not None:
                self._fail(ts, failure, stimulus_id)
                return {"status": "error", "message": failure}
            new = self._create_graph(ts, tasks, output, annotations or {}, queue)
            out = ops.get_task(s, output)
            assert out is not None
            # before the run ends: processing -> released keeps a task its waiters read
            ops.repoint_dependents(s, ts, out, repoint, recommendations)
            for d in repoint:
                if d.key in self.aliases:
                    self.aliases[d.key] = output
        # the worker's run ends (free-keys), and its "task-finished" (None) is refused as
        # a stale run's; read by nobody any more, the task is forgotten
        recommendations.update(ops.end_run(s, ts, stimulus_id))
        if wanted:
            assert out is not None
            ops.make_alias(s, ts, out, recommendations)
            self.aliases[key] = output
        rewired = {t.key: [output] for t in [*repoint, *([ts] if wanted else [])]}
        self._announce(
            new,
            rewired,
            recommendations,
            stimulus_id,
            dynamic={"parent": key, "alias": wanted, "tasks": [t.key for t in new]},
        )
        self.tasks_added += len(new)
        return {"status": "OK" if wanted or repoint else "unwanted", "added": len(new)}

    def _fail(self, ts: TaskState, message: str, stimulus_id: str) -> None:
        """Processing ``ts``'s run ends, and it runs again as a task that fails with
        ``message`` (its inputs let go of)."""
        s = self.scheduler
        assert s is not None
        recommendations = ops.end_run(s, ts, stimulus_id)
        ops.make_call(s, ts, refuse, (message,), recommendations)
        ops.commit(s, recommendations, stimulus_id)

    def graph_splice_message(self, worker: str, **msg: Any) -> None:
        """:meth:`graph_splice` from a message on ``worker``'s stream, for a task that
        worker runs. It never raises: an error in a stream handler would close the
        worker's stream (and the scheduler would lose the worker)."""
        try:
            self._graph_splice(**msg, worker=worker)
        except Exception:
            logger.exception("a graph splice from worker %s failed; nothing was added", worker)

    @staticmethod
    def _malformed(tasks: Any, output: Any, annotations: Any, queue: Any) -> str | None:
        """What is wrong with a returned graph, checked before anything changes (None:
        nothing): its task specs, each under its own key; the output key; annotations
        per key of the graph; no cycle among the graph's tasks. O(tasks + edges)."""
        if not isinstance(tasks, dict):
            return f"tasks must be a dict of task specs by key, got {type(tasks).__name__}"
        for k, spec in tasks.items():
            if not _is_key(k) or not ops.is_task_spec(spec) or spec.key != k:
                return (
                    f"tasks must map each key to its task spec (a dask GraphNode with that "
                    f"key), got {str(k)[:100]!r}: {type(spec).__name__} "
                    f"{str(getattr(spec, 'key', None))[:100]!r}"
                )
        if not _is_key(output):
            return f"output must be a task key, got {type(output).__name__}"
        if annotations is not None and not (
            isinstance(annotations, dict)
            and all(k in tasks and isinstance(v, dict) for k, v in annotations.items())
        ):
            return "annotations must be {key of the graph: {annotation: value}}"
        if not isinstance(queue, bool):
            return f"queue must be a bool, got {type(queue).__name__}"
        cycle = _cycle(tasks)
        if cycle is not None:
            return f"its tasks depend on each other in a cycle (through {str(cycle)[:100]!r})"
        return None

    def _create_graph(
        self,
        ts: TaskState,
        tasks: dict[Any, Any],
        output: Any,
        annotations: dict[Any, dict],
        queue: bool,
    ) -> list[TaskState]:
        """Released tasks for the specs ``output`` needs whose keys do not exist yet,
        after ``ts`` in priority, with their annotations and dependencies."""
        s = self.scheduler
        assert s is not None
        # only what the output needs and the scheduler lacks: with pure keys, parts of
        # the graph may exist already (then their inputs are not needed again)
        needed: set[Any] = set()
        todo = [output]
        while todo:
            k = todo.pop()
            if k in needed or ops.has_task(s, k) or k not in tasks:
                continue
            needed.add(k)
            todo.extend(tasks[k].dependencies)
        new = ops.create_tasks(
            s,
            [ops.NewTasks(list(tasks.values()), ops.priority(ts), queue=queue, only=needed)],
            annotations_by_key=annotations,
        )
        self.dynamic_keys.update(t.key for t in new)
        return new

    def _announce(
        self,
        new: list[TaskState],
        rewired: dict[Any, list[Any]],
        recommendations: Recs,
        stimulus_id: str,
        lengths: dict[str, tuple] | None = None,
        failed_expander: Any = None,
        dynamic: dict[str, Any] | None = None,
    ) -> None:
        """A splice's end, map or graph: the other plugins hear of its tasks (the run
        tracker: a map's lengths, a failed expander, a dynamic task's graph), then its
        transitions run."""
        s = self.scheduler
        assert s is not None  # a splice runs in a started scheduler
        ops.announce(
            s,
            new,
            rewired,
            stimulus_id,
            client=SPLICE,
            skip=self,
            dynflow_map_lengths=lengths or {},
            dynflow_failed_expander=failed_expander,
            dynflow_dynamic=dynamic,
        )
        ops.commit(s, recommendations, stimulus_id)

    def _needs_itself(self, ts: TaskState, tasks: dict[Any, Any], output: Any) -> bool:
        """Whether the graph ``tasks`` (output ``output``) returned by ``ts`` needs
        ``ts``'s own value: it holds ``ts``'s key, or reads, through tasks the scheduler
        has and has not computed, ``ts`` or an alias of it (a cycle)."""
        s = self.scheduler
        assert s is not None
        if ts.key in tasks or output == ts.key:
            return True
        start = [d for spec in tasks.values() for d in spec.dependencies if d not in tasks]
        if output not in tasks:
            start.append(output)
        return ops.reaches(s, start, ts.key)


def _expansion_of(ets: TaskState) -> tuple[Expansion, tuple[int, ...]] | None:
    """The expansion and the prefix an expander task's spec holds, or None when the
    task is not a dynflow expander."""
    call = ops.task_call(ets)
    if call is None or call[0] is not expand:
        return None
    return call[1][0], call[1][1]


def _cycle(tasks: dict[Any, Any]) -> Any:
    """A key of ``tasks`` on a cycle of their dependencies among themselves, or None
    (a depth-first walk: each task and edge once)."""
    done: set[Any] = set()
    for root in tasks:
        if root in done:
            continue
        path = {root}
        stack = [(root, iter(tasks[root].dependencies))]
        while stack:
            k, deps = stack[-1]
            for d in deps:
                if d not in tasks or d in done:
                    continue
                if d in path:
                    return d
                path.add(d)
                stack.append((d, iter(tasks[d].dependencies)))
                break
            else:
                stack.pop()
                path.discard(k)
                done.add(k)
    return None
