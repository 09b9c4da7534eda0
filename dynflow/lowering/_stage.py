"""A map's per-item stage: ``fn`` called once per item, alone or in batches.

A :class:`Stage` is part of an expansion plan (:mod:`dynflow.lowering._expansion`), built
on the client when a graph is lowered: the scheduler's splice asks it for its item tasks
(:meth:`Stage.items`: one task per item, or per batch, with ``max_concurrency`` lanes); a
batch runs on a worker (:func:`run_batch`), its items called one after another as their
own tasks would be.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import dask.config
from dask._task_spec import Alias, GraphNode, List, Task, TaskRef, parse_input
from dask.utils import parse_timedelta

from dynflow._containers import find, substitute
from dynflow._context import BATCH_INDEX
from dynflow._protocol import lane_key
from dynflow.lowering._markers import (
    MARKERS,
    Concrete,
    ItemOf,
    ItemRefs,
    Prefix,
    StageItem,
    is_marker,
    resolve,
    resolve_item,
)
from dynflow.worker._call_context import at_index
from dynflow.worker._calls import CallPolicy, call_after

__all__ = ["AdaptiveRule", "Stage", "adaptive_rule", "batch_size", "ranges", "run_batch"]


@dataclass(frozen=True, slots=True)
class Stage:
    """``fn`` called once per item; ``args``/``kwargs`` may hold item markers."""

    key: str  # items are (key, *prefix, i)
    task_name: str
    fn: Callable
    args: tuple
    kwargs: Mapping[str, Any]
    annotations: Mapping[str, Any]
    policy: CallPolicy | None = None  # retries, timeout; items return Failure records
    # items per scheduler task: None, an int, "auto", "adaptive" or "stream" (batch_size)
    batch: int | str | None = None
    max_concurrency: int | None = None  # at most this many items running at once
    # let the scheduler queue the items as root tasks (``dynflow.queue-items``)
    queue: bool = False
    # item markers of the maps in wait_for: item i waits for their item i, unread
    waits: tuple = ()

    #: whether the stage is a whole sub-flow per item (built on the worker)
    subflow = False

    def call(
        self,
        key: Any,
        prefix: Prefix,
        i: int,
        refs: ItemRefs,
        after: Any = None,
        blocking: bool = False,
    ) -> Task:
        """The task spec of item ``i`` (``key``: its key, or None inside a batch).

        ``after``: a key this item must wait for without reading its value (a lane).
        ``blocking``: run a coroutine function to completion (local schedulers).
        """
        waited = [resolve_item(w, prefix, i, refs) for w in self.waits]
        extra: tuple[Any, ...]
        if after is not None:
            waited.append(TaskRef(after))
        if waited:  # waited for, not passed: a failure among them fails the item
            fn, extra = call_after, (self.fn, waited[0] if len(waited) == 1 else List(*waited))
        else:
            fn, extra = self.fn, ()
        assert self.policy is not None
        return self.policy.spec(
            key,
            fn,
            *extra,
            *(resolve_item(a, prefix, i, refs) for a in self.args),
            blocking=blocking,
            **{name: resolve_item(v, prefix, i, refs) for name, v in self.kwargs.items()},
        )

    def items(self, prefix: Prefix, n: int, refs: ItemRefs) -> list[Task]:
        """Item tasks ``(key, *prefix, i)``; batched (``refs.batches`` gives this stage
        a size): tasks ``(key, *prefix, b)`` of lists.

        With ``max_concurrency=k`` the tasks run in ``k`` lanes: task ``t`` waits for a
        tiny "done" task of task ``t - k``, so at most ``k`` run at once, cluster-wide,
        and a waiting task is only a scheduler task (no worker thread is held). A batch
        runs its items one after another, so ``k`` batches also mean ``k`` items.
        """
        size = refs.batches.get(self.key)
        if size is None:

            def make(t: int, after: Any) -> Task:
                return self.call((self.key, *prefix, t), prefix, t, refs, after)

            count = n
        else:
            spans = ranges(n, size)

            def make(t: int, after: Any) -> Task:
                start, stop = spans[t]
                return self._batch((self.key, *prefix, t), prefix, start, stop, refs, after)

            count = len(spans)
        if not self.max_concurrency:
            return [make(t, None) for t in range(count)]
        k, lane = self.max_concurrency, lane_key(self.key)
        out = []
        for t in range(count):
            out.append(make(t, (lane, *prefix, t - k) if t >= k else None))
            if t + k < count:
                out.append(Task((lane, *prefix, t), done, TaskRef((self.key, *prefix, t))))
        return out

    def _batch(
        self,
        key: Any,
        prefix: Prefix,
        start: int,
        stop: int,
        refs: ItemRefs,
        after: Any = None,
    ) -> Task:
        """One task for items ``start:stop`` (``after``: a key it waits for, unread).

        Its spec is small whatever its size: the items' own specs are made where it runs
        (:func:`run_batch`), which sets each item's index as it runs it; only the
        batch's dependencies, and its slice of concrete mapped values, are listed here.
        """
        markers = find((self.args, self.kwargs, self.waits), is_marker)
        deps = set(self.call(None, prefix, start, refs).dependencies)
        for m in markers:
            if type(m) is StageItem:
                deps.update(refs.stage_key(m.key, prefix, i) for i in range(start, stop))
            elif type(m) is Concrete:
                for v in m.values[start:stop]:
                    deps.update(getattr(v, "dependencies", ()))
        stage = self
        if any(type(m) is Concrete for m in markers):

            def part(m: Any) -> Any:
                return Concrete(m.values[start:stop], start) if type(m) is Concrete else m

            args, kwargs = substitute((self.args, self.kwargs), is_marker, part)
            stage = dataclasses.replace(self, args=args, kwargs=kwargs)
        data = parse_input({d: Alias(d) for d in deps})
        if after is None:
            return Task(key, run_batch, stage, prefix, start, stop, refs, data)
        return Task(
            key, call_after, run_batch, TaskRef(after), stage, prefix, start, stop, refs, data
        )


def done(_result: Any) -> None:
    """A lane's token that an item finished (its result is not passed on)."""
    return None


def run_batch(
    stage: Stage, prefix: Prefix, start: int, stop: int, refs: ItemRefs, data: dict
) -> list:
    """A batch, on the worker: each item run in turn (results per item), as its own
    task would run it. Where every mapped argument is a whole argument (the usual case),
    items are called directly (:func:`_direct`); else each item's spec is made and run."""
    direct = _direct(stage, prefix, refs, data)
    out = []
    if direct is not None:
        for i in range(start, stop):
            token = BATCH_INDEX.set((*prefix, i))
            try:
                out.append(direct(i))
            finally:
                BATCH_INDEX.reset(token)
        return out
    for i in range(start, stop):
        with at_index((*prefix, i)):
            out.append(stage.call(None, prefix, i, refs)(data))
    return out


def _direct(
    stage: Stage, prefix: Prefix, refs: ItemRefs, data: Mapping[Any, Any]
) -> Callable[[int], Any] | None:
    """Item ``i``'s call, ``direct(i)``, made without a task spec: the arguments every
    item shares are evaluated once, and each mapped argument read for ``i`` as its item
    marker says (the values :meth:`Stage.call`'s spec would give). None when a marker
    sits inside a container (a spec evaluates that)."""
    parts = (*stage.waits, *stage.args, *stage.kwargs.values())
    if any(type(a) not in MARKERS and find(a, is_marker) for a in parts):
        return None

    def reader(a: Any) -> Callable[[int], Any]:
        t = type(a)
        if t is ItemOf:
            key = resolve(a.key, prefix)
            if key in refs.from_expander:
                values = data[refs.expander][key]
            else:
                values = data[key]
            return values.__getitem__
        if t is StageItem:
            size = refs.batches.get(a.key)
            if size is None:
                return lambda i: data[(a.key, *prefix, i)]
            return lambda i: data[(a.key, *prefix, i // size)][i % size]
        if t is Concrete:

            def concrete(i: int) -> Any:
                v = a.values[i - a.offset]
                return v(data) if isinstance(v, GraphNode) else v

            return concrete
        value = a(data) if isinstance(a, GraphNode) else a  # the same for every item
        return lambda i: value

    waits = [reader(w) for w in stage.waits]
    args = [reader(a) for a in stage.args]
    kwargs = [(name, reader(v)) for name, v in stage.kwargs.items()]
    policy, fn = stage.policy, stage.fn
    assert policy is not None

    def direct(i: int) -> Any:
        values = [r(i) for r in args]
        named = {name: r(i) for name, r in kwargs}
        if waits:  # waited for, not passed: as Stage.call's call_after
            waited = [w(i) for w in waits]
            return policy.run(
                call_after, fn, waited[0] if len(waited) == 1 else waited, *values, **named
            )
        return policy.run(fn, *values, **named)

    return direct


#: ``"auto"``: about this many tasks per worker thread
TASKS_PER_THREAD = 8


def batch_size(
    batch: int | str | None, n: int, nthreads: int, seconds: float | None = None
) -> int | None:
    """Items per task of a map of ``n`` items on ``nthreads`` worker threads (None: one
    task per item), for its ``batch_size`` option ``batch``.

    - ``"auto"``: ``ceil(n / (8 * nthreads))``, so each thread of the cluster gets about
      eight tasks (enough to balance uneven items and to survive a lost worker cheaply).
    - ``"adaptive"`` (the thresholds are the ``dynflow.adaptive`` config, read here):
      one task per item for ``n <= min-items`` (256) and for items whose measured
      compute time ``seconds`` (per item, from earlier maps of the task; None: not
      measured yet) is ``slow-item`` (10 ms) or more; else ``ceil(target / seconds)``
      items (``target``: 50 ms of compute per task), but no fewer than
      ``tasks-per-thread`` (8) tasks per worker thread, so every thread has work and
      stealing can even out a heavy tail; unmeasured, that smallest count of tasks.
    - ``"stream"`` (``"adaptive"`` for a map expanded per chunk of a stream or of a
      dask collection, where ``n`` is one chunk's items and the chunks keep coming):
      as ``"adaptive"`` until the task's items are measured; then one task per item
      for items of ``slow-item`` or more, else ``ceil(target / seconds)`` items per
      task, at most the chunk (no minimum count of tasks: the next chunks give the
      threads work).
    - an int: that many.

    Raises
    ------
    ValueError
        A ``dynflow.adaptive`` config value that does not fit, naming its key.
    """
    if batch is None:
        return None
    if batch == "auto":
        return max(1, -(-n // (TASKS_PER_THREAD * max(1, nthreads))))
    if batch == "stream" and seconds is not None:  # "adaptive" per chunk, measured
        rule = adaptive_rule()
        if seconds >= rule.slow_item:
            return None
        size = min(n, math.ceil(rule.target / max(seconds, 1e-9)))
        return size if size > 1 else None
    if batch in ("adaptive", "stream"):
        rule = adaptive_rule()
        if n <= rule.min_items or (seconds is not None and seconds >= rule.slow_item):
            return None
        most = max(1, -(-n // (rule.tasks_per_thread * max(1, nthreads))))
        size = most if seconds is None else min(most, math.ceil(rule.target / max(seconds, 1e-9)))
        return size if size > 1 else None
    return int(batch)


class AdaptiveRule(NamedTuple):
    """The ``dynflow.adaptive`` config, checked (seconds for the durations)."""

    min_items: int
    slow_item: float
    target: float
    tasks_per_thread: int


def adaptive_rule() -> AdaptiveRule:
    """``dynflow.adaptive`` as an :class:`AdaptiveRule` (``ValueError`` naming the key)."""
    # each key on its own: dask.config.get matches "min-items" and "min_items" (an
    # environment variable's spelling), a sub-dict's keys do not
    config = {
        name: dask.config.get(f"dynflow.adaptive.{name}", default=None)
        for name in ("min-items", "slow-item", "target", "tasks-per-thread")
    }
    out = []
    for name, kind in (
        ("min-items", int),
        ("slow-item", float),
        ("target", float),
        ("tasks-per-thread", int),
    ):
        value = config.get(name) if isinstance(config, Mapping) else None
        try:
            if kind is float:
                parsed: Any = parse_timedelta(value)
                ok = parsed is not None and parsed >= 0
            else:
                parsed = value
                least = 0 if name == "min-items" else 1
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
        except (TypeError, ValueError, KeyError):
            ok = False
        if not ok:
            what = "a duration such as '10ms'" if kind is float else f"an int >= {least}"
            raise ValueError(
                f"the dask config key dynflow.adaptive.{name} is {value!r}; expected {what}"
            )
        out.append(parsed)
    return AdaptiveRule(*out)


def ranges(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]
