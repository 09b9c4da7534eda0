"""Streaming sources, on the scheduler: a stream's chunks become tasks as they come.

A stream's source task (:func:`dynflow.worker._source.stream_source`) sends, on its
worker's stream, one message per chunk of items it stored on that worker
(``dynflow_stream_chunk``), and one when it ends (``dynflow_stream_end``); a source run
asks first how many items the scheduler has of it (``dynflow_stream_start``: a run
after a lost worker, or a retry, skips them). The plan arrives inside the source's own
task spec (:class:`dynflow.lowering._stream.StreamPlan`): this module imports nothing
from the client side, and changes the scheduler only through
:mod:`dynflow.extension._ops`.

Per chunk ``c``, in one synchronous pass, for a message from the worker running the
source's current run (any other is ignored, and that worker told to let go of the copy
it stored: distributed's ``update_data`` does not report a key to the scheduler, so it
would stay there, and a later run of the same key would read it):

1. the chunk's task ``(chunk name, c)`` is created in memory on that worker
   (``put_in_memory``); its spec runs the source again up to it, should that copy be
   lost with its worker before every reader has it;
2. the expanders of the maps nested per chunk, and their lists' placeholders, are
   created and wait (they read the chunk: each measures it and has the items spliced,
   as for a map over ``flatten(m)``);
3. each of the stream's lists (a map's, over every chunk; the stream's own) gains the
   chunk's list as a dependency (``rewire``), so no chunk's list is let go of before
   the whole list is made.

At the end, each list gets its real spec: the chunks' lists concatenated, or, when the
source failed, its failure once every chunk's items ran. Events on topic
``dynflow-source`` (the stream's key, the items so far, whether it ended) let the run
views show it. State: per source key, the chunks and items it handed on, dropped when
the source task is forgotten. (The keys under a stream are each run's own, see
:func:`dynflow.lowering._lower.lower_distributed`: how items fall into chunks depends on
timing, so no two runs share a chunk's key.)
"""

from __future__ import annotations

import logging
from time import time
from typing import TYPE_CHECKING, Any

from distributed.utils import log_errors

from dynflow._protocol import SOURCE_TOPIC, SPLICE
from dynflow.extension import _ops as ops
from dynflow.worker._source import stream_source

if TYPE_CHECKING:
    from distributed import Scheduler
    from distributed.scheduler import Recs, TaskState

logger = logging.getLogger(__name__)

__all__ = ["Sources"]


class Sources:
    """The streams of one scheduler (owned by the splice extension)."""

    def __init__(self, scheduler: Scheduler, skip: Any) -> None:
        self.scheduler = scheduler
        self.skip = skip  # the plugin that owns this (not told of its own tasks)
        self.handed: dict[Any, list[int]] = {}  # source key -> [chunks, items]

    @log_errors
    def start(self, key: Any = None, run_id: Any = None) -> dict[str, Any]:
        """``dynflow_stream_start``: how many chunks and items of source ``key`` the
        scheduler has (``status`` ``stale`` for a run that is not the current one)."""
        ts = ops.current_run(self.scheduler, key, run_id) if isinstance(run_id, int) else None
        if ts is None:
            return {"status": "stale"}
        if _plan_of(ts) is None:
            return {"status": "error", "message": f"{str(key)!r} is not a stream's source"}
        chunks, items = self.handed.get(key, (0, 0))
        return {"status": "OK", "chunks": chunks, "items": items}

    def chunk(self, worker: str, **msg: Any) -> None:
        """``dynflow_stream_chunk``, a message on ``worker``'s stream (never raises: a
        stream handler that raises closes the worker's stream)."""
        try:
            self._chunk(worker, **msg)
        except Exception:
            logger.exception("a stream's chunk from worker %s could not be added", worker)

    def end(self, worker: str, **msg: Any) -> None:
        """``dynflow_stream_end``, a message on ``worker``'s stream (never raises)."""
        try:
            self._end(worker, **msg)
        except Exception:
            logger.exception("a stream's end from worker %s could not be handled", worker)

    def forgotten(self, key: Any) -> None:
        self.handed.pop(key, None)

    # ------------------------------------------------------------------ passes
    def _chunk(
        self,
        worker: str,
        key: Any,
        run_id: int,
        chunk: int,
        start: int,
        n: int,
        nbytes: int,
        name: Any = None,
    ) -> None:
        s = self.scheduler
        ts = ops.current_run(s, key, run_id, worker)
        plan = None if ts is None else _plan_of(ts)
        if ts is None or plan is None:
            # a stale run's chunk (stored there already): let go of where it is, or a
            # later run of the same key would find it there
            if isinstance(name, str) and isinstance(chunk, int):
                ops.drop_stray_data(s, worker, (name, chunk), f"dynflow-stale-chunk-{time()}")
            return
        handed = self.handed.setdefault(key, [0, 0])
        if [chunk, start] != handed or n < 1:
            logger.warning(
                "stream %r: chunk %s (from item %s) is not the next one (%s, from %s); ignored",
                plan.task_name, chunk, start, *handed,
            )  # fmt: skip
            return
        stimulus_id = f"dynflow-stream-chunk-{time()}"
        dspec, nested, partial = plan.chunk(chunk, start, n)
        before = (*ops.priority(ts), chunk)
        span = ops.annotation(ts, "span")
        annotations = {"span": span} if span else {}
        new = ops.create_tasks(
            s,
            [
                ops.NewTasks([dspec], before, (0,), annotations),
                ops.NewTasks(nested, before, (1,), annotations),
            ],
        )
        if not new or new[0].key != dspec.key or not ops.put_in_memory(s, new[0], worker, nbytes):
            ops.forget(s, new, stimulus_id)
            return
        handed[0] += 1
        handed[1] += n
        recs: Recs = {t.key: "waiting" for t in reversed(new[1:])}
        rewired = self._rewire(ts, partial, recs)
        self._announce(new, rewired, recs, stimulus_id, plan, False)

    def _end(self, worker: str, key: Any, run_id: int, failed: bool) -> None:
        s = self.scheduler
        ts = ops.current_run(s, key, run_id, worker)
        plan = None if ts is None else _plan_of(ts)
        if ts is None or plan is None:
            return
        chunks, _ = self.handed.setdefault(key, [0, 0])
        # the lists' real specs (final() knows only this plan's collectors)
        specs = {c.key: plan.final(c.key, chunks, bool(failed)) for c in plan.expansion.collectors}
        recs: Recs = {}
        rewired = self._rewire(ts, specs, recs)
        # a failed source stands for its maps' items it did not yield (as a failed
        # expander does: the run views count it, as_completed raises it)
        failed_source = {"source": key, "stages": plan.stage_keys()} if failed else None
        self._announce([], rewired, recs, f"dynflow-stream-end-{time()}", plan, True, failed_source)

    def _rewire(self, ts: TaskState, specs: dict[Any, Any], recs: Recs) -> dict[Any, list]:
        """The source's waiting lists get ``specs`` (their dependencies added)."""
        rewired = {}
        for cts in ops.dependents(ts, ("waiting",)):
            spec = specs.get(cts.key)
            if spec is not None:
                rewired[cts.key] = ops.rewire(self.scheduler, cts, spec, recs)
        return rewired

    def _announce(
        self,
        new: list[TaskState],
        rewired: dict[Any, list],
        recs: Recs,
        stimulus_id: str,
        plan: Any,
        ended: bool,
        failed_source: dict[str, Any] | None = None,
    ) -> None:
        s = self.scheduler
        items = self.handed.get(plan.source, (0, 0))[1]
        ops.announce(
            s,
            new,
            rewired,
            stimulus_id,
            client=SPLICE,
            skip=self.skip,
            dynflow_failed_source=failed_source,
        )
        ops.commit(s, recs, stimulus_id)
        s.log_event(
            SOURCE_TOPIC,
            {"node": plan.node_key, "items": items, "ended": ended, "failed": bool(failed_source)},
        )


def _plan_of(ts: TaskState) -> Any:
    """The stream plan a source task's spec holds (None: not a stream's source)."""
    call = ops.task_call(ts)
    if call is None or call[0] is not stream_source:
        return None
    return call[1][0]
