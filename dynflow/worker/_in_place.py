"""Dynamic tasks run in place: when a call's returned graph is computed in its own thread
instead of being spliced into the scheduler.

A call that returns a graph (a dynamic task) normally has it spliced in its place
(:mod:`dynflow.worker._graph_splice`): every call it makes is a scheduler task, which
is what spreads a recursion over the cluster. Once the cluster's threads are busy, that
costs without gaining: a spliced call waits in a queue like the others. So, as
work-first schedulers do (Cilk, and lazy task creation), a call whose worker already
has a ready task waiting per thread (:func:`busy`) computes a small
returned graph of plain calls itself, in its thread, as a local scheduler would
(``scheduler="sync"`` semantics: the same values, errors and retries), as long as
the calls its task's graphs made in place were quick (:func:`short`: the moving
average of their seconds per call is under ``dynflow.adaptive.slow-item``, below which
a map groups its items too). A graph computed in place is not split any more: its
calls run one after another in that thread (an uneven recursion may end with one
thread computing a large subtree; ``dynflow.dynamic-in-place: false`` splices every
call). The calls it made that way are told to the run tracker
(:func:`report_in_place`), which counts them in the dynamic task's boxes as if they
had been spliced.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import dask.config
from dask.utils import key_split, parse_timedelta

from dynflow._compat import ready_count
from dynflow._protocol import IN_PLACE_TOPIC
from dynflow.worker._call_context import this_worker

__all__ = ["busy", "counting", "count_calls", "record", "report_in_place", "short"]

#: seconds per call of the graphs a task computed in place, a moving average per task
#: name (in this worker process)
SECONDS: dict[str, float] = {}
ALPHA = 0.2
#: the calls made in place by the graph being computed in place, by task name
CALLS: ContextVar[dict[str, int] | None] = ContextVar("dynflow_in_place_calls", default=None)


def busy() -> bool:
    """Whether this worker has at least one ready task waiting per thread (so a
    spliced call would wait as well); False outside a worker, or with
    ``dynflow.dynamic-in-place`` false."""
    worker = this_worker()
    if worker is None or not dask.config.get("dynflow.dynamic-in-place"):
        return False
    return ready_count(worker) >= max(1, worker.state.nthreads)


def short(task_name: str) -> bool:
    """Whether the calls of ``task_name``'s graphs computed in place took less than
    ``dynflow.adaptive.slow-item`` each on average (not measured yet: yes)."""
    seconds = SECONDS.get(task_name)
    if seconds is None:
        return True
    return seconds < parse_timedelta(dask.config.get("dynflow.adaptive.slow-item"))


def record(task_name: str, seconds: float, calls: Mapping[str, int]) -> None:
    """A graph ``task_name`` returned was computed in place in ``seconds``, making
    ``calls`` (by task name)."""
    per_call = seconds / max(1, sum(calls.values()))
    old = SECONDS.get(task_name)
    SECONDS[task_name] = per_call if old is None else old + ALPHA * (per_call - old)


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Count the calls of graphs computed inside (:func:`count_calls`), nested ones too."""
    calls: dict[str, int] = {}
    token = CALLS.set(calls)
    try:
        yield calls
    finally:
        CALLS.reset(token)


def count_calls(graph: Mapping[Any, Any]) -> None:
    """The tasks of a graph about to be computed in place, counted by task name (not
    dynflow's own: expanders and such)."""
    calls = CALLS.get()
    if calls is None:
        return
    for key in graph:
        name = key_split(key)
        if not name.startswith("dynflow-"):
            calls[name] = calls.get(name, 0) + 1


def report_in_place(key: Any, calls: Mapping[str, int]) -> None:
    """Tell the run tracker that task ``key`` made ``calls`` (by task name) in place."""
    worker = this_worker()
    if worker is not None and calls:
        plain = list(key) if type(key) is tuple else key  # as the other reports send keys
        worker.log_event(IN_PLACE_TOPIC, {"key": plain, "calls": dict(calls)})
