"""Streaming sources, on the worker: a generator task feeding its maps item by item.

A stream task's source (:class:`~dynflow.graph._node.StreamNode`) runs as
:func:`stream_source`: it calls the function, iterates what it returns (a generator, an
async generator, any iterator) in its own thread (it secedes, so the worker's threads
stay free for the items it feeds) and hands what it yields to an :class:`_Outlet`. The
outlet gathers the items into *chunks* (``(chunk name, c)``, a list of consecutive
items), flushed every ``dynflow.stream.interval`` or when a chunk is full, from the
worker's event loop: each chunk is stored on this worker (``Worker.update_data``), and a
message on the worker's stream to the scheduler (``dynflow_stream_chunk``, sent first,
so that it arrives before the worker's own ``add-keys``) has the scheduler add the
chunk's task, in memory here, and the expanders of the maps that read it
(:mod:`dynflow.extension._sources`). The items never travel through the client or the
scheduler.

Backpressure: the source waits while the chunks it made that the scheduler still holds
(not yet read by every item of every map over them), with the items not flushed yet,
come to ``dynflow.stream.window-items`` items or ``window-bytes`` bytes (``sizeof``).
No window where the stream's list is used whole (its chunks are all kept for it).

The source's task ends by sending ``dynflow_stream_end`` (the maps' lists get their
real task specs), then returns the count of items (or, when the function raised, its
failure record, after every item it yielded before was handed on). Retries (the task's
``retries``) call the function again and skip the items already handed on; a source run
again after its worker died asks the scheduler how many items it has
(``dynflow_stream_start``) and skips those. A chunk lost with a worker is made again by
:func:`replay_chunk`, which runs the function again up to it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dask.sizeof import sizeof
from distributed import get_worker, secede
from distributed.utils import sync

from dynflow._compat import call_scheduler, expander_run_id, send_to_scheduler
from dynflow._protocol import STREAM_CHUNK_HANDLER, STREAM_END_HANDLER, STREAM_START_HANDLER
from dynflow.exceptions import ExtensionError
from dynflow.worker._call_context import current_key
from dynflow.worker._calls import _call_error, _next_try
from dynflow.worker._failure import Failure

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["Listed", "iterate", "partition_items", "replay_chunk", "stream_source", "unfinished"]


def iterate(task_name: str, value: Any) -> Iterator[Any]:
    """The items of what a stream task's function returned: a generator, an async
    generator (run to each item on a private event loop, in this thread), or any
    iterable.

    Raises
    ------
    TypeError
        ``value`` is not iterable, naming the task.
    """
    if hasattr(value, "__anext__"):
        return _async_items(value)
    try:
        return iter(value)
    except TypeError:
        raise TypeError(
            f"task {task_name!r} is a stream (a generator function, or annotated to return "
            f"an iterator), but its call returned a {type(value).__name__}, which is not "
            "iterable"
        ) from None


def _async_items(agen: Any) -> Iterator[Any]:
    """An async iterator's items, each awaited on a private event loop (a thread that
    runs one already gets a thread of its own for it)."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield _run(loop, agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        if hasattr(agen, "aclose"):
            try:
                _run(loop, agen.aclose())
            except Exception:  # noqa: S110 - closing is best effort
                pass
        loop.close()


def _run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return loop.run_until_complete(coro)
    # called where an event loop runs (a notebook's sync scheduler): in a thread
    out: list = []

    def target() -> None:
        try:
            out.append((True, loop.run_until_complete(coro)))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out.append((False, e))

    t = threading.Thread(target=target)
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


@dataclass(frozen=True, slots=True)
class Listed:
    """A stream task's function for a local scheduler: the list of what it yields
    (retries, timeout and caching apply to the whole list, as for any call)."""

    fn: Callable[..., Any]
    task_name: str

    def __call__(self, *args: Any, **kwargs: Any) -> list:
        return list(iterate(self.task_name, self.fn(*args, **kwargs)))


def stream_source(plan: Any, data: dict[Any, Any]) -> Any:
    """The source task of a stream (``plan``: its ``StreamPlan``; ``data``: the values
    its call reads): see the module docstring. Returns the count of items handed on,
    or the function's failure record."""
    worker = get_worker()
    key = current_key()
    run_id = expander_run_id(key)
    reply = sync(worker.loop, call_scheduler, worker, STREAM_START_HANDLER, key=key, run_id=run_id)
    if not isinstance(reply, dict) or reply.get("status") == "error":
        raise ExtensionError(
            f"task {plan.task_name!r} is a stream, but the scheduler cannot take its items "
            f"(it answered {reply!r}); compute with node.compute() or df.compute(), which "
            "install dynflow's extension, or start the scheduler with "
            "`dask scheduler --preload dynflow.scheduler`"
        )
    if reply.get("status") != "OK":  # stale: this run is not the scheduler's any more
        return None
    secede()  # a long-running task: the worker's threads run the items it feeds
    outlet = _Outlet(worker, key, run_id, plan, reply["items"], reply["chunks"])
    policy = plan.policy
    attempt = 0
    while True:
        attempt += 1
        try:
            for i, item in enumerate(iterate(plan.task_name, plan.call(data))):
                if i < outlet.count:
                    continue  # handed on by an earlier attempt or run
                if not outlet.put(item):
                    return None  # the run is not wanted any more
            break
        except BaseException as e:  # noqa: BLE001 - every error becomes the source's
            delay, error = _next_try(policy, attempt, _call_error(policy, e), (), {})
            if delay is None:
                outlet.close(failed=True)
                return Failure(error, plan.task_name)
            time.sleep(delay)  # seceded already: the worker's threads run on
    outlet.close(failed=False)
    return outlet.count


def replay_chunk(plan: Any, start: int, stop: int, data: dict[Any, Any]) -> list:
    """Chunk ``[start, stop)`` of a stream made again (its only copy was lost): the
    function is called again and its items up to ``stop`` iterated.

    Raises
    ------
    ExtensionError
        The function yielded fewer than ``stop`` items this time.
    """
    out = []
    for i, item in enumerate(iterate(plan.task_name, plan.call(data))):
        if i >= start:
            out.append(item)
        if i + 1 >= stop:
            return out
    raise ExtensionError(
        f"stream {plan.task_name!r}: items {start}..{stop - 1} were lost with a worker, and "
        f"running the source again yielded only {start + len(out)} items: a source must "
        "yield the same items when run again"
    )


class _Outlet:
    """Where a source's items go: chunks, flushed from the worker's event loop, and the
    window (see the module docstring). :meth:`put` and :meth:`close` are called from
    the source's thread; the rest runs on the event loop."""

    def __init__(
        self, worker: Worker, key: Any, run_id: int, plan: Any, count: int, chunk: int
    ) -> None:
        self.worker = worker
        self.key = key
        self.run = run_id
        self.plan = plan
        self.count = count  # items yielded (and skipped) so far
        self.sent = count  # items flushed
        self.chunk = chunk  # the next chunk's index
        self.pending: list[Any] = []
        self.pending_bytes = 0
        self.armed = False  # a flush is timed
        self.lock = threading.Lock()
        self.held: deque[tuple[Any, int, int]] = deque()  # (chunk key, items, bytes)

    # ------------------------------------------------------------- source thread
    def put(self, item: Any) -> bool:
        """Take one item; False when the source's run is not wanted any more."""
        plan = self.plan
        size = sizeof(item)
        with self.lock:
            self.pending.append(item)
            self.pending_bytes += size
            self.count += 1
            full = len(self.pending) >= plan.chunk_items or self.pending_bytes >= plan.chunk_bytes
            arm = not full and not self.armed
            if arm:
                self.armed = True
        loop = self.worker.loop
        if full:
            loop.add_callback(self._flush)
        elif arm:
            loop.add_callback(self._arm)
        if plan.window is not None:
            items, nbytes = plan.window
            while True:
                held_items, held_bytes = self._held()
                if held_items < items and held_bytes < nbytes:
                    break
                if not self._wanted():
                    return False
                if self.pending:
                    loop.add_callback(self._flush)
                time.sleep(0.002)
        # each item: a run cancelled (its client gone, the future released) stops here
        return self._wanted()

    def close(self, failed: bool) -> None:
        """The source ended: flush, then tell the scheduler (before the task's result)."""
        sync(self.worker.loop, self._end, failed)

    def _held(self) -> tuple[int, int]:
        """Items and bytes in chunks the scheduler still holds here, and pending."""
        tasks = self.worker.state.tasks

        def kept(key: Any) -> bool:  # its data is here still (a released task may stay)
            ts = tasks.get(key)
            return ts is not None and ts.state == "memory"

        held = self.held
        while held and not kept(held[0][0]):
            held.popleft()
        items, nbytes = len(self.pending), self.pending_bytes
        for key, n, size in list(held):
            if kept(key):
                items += n
                nbytes += size
        return items, nbytes

    def _wanted(self) -> bool:
        ts = self.worker.state.tasks.get(self.key)
        return (
            ts is not None
            and ts.run_id == self.run
            and ts.state
            in (
                "executing",
                "long-running",
            )
        )

    # ------------------------------------------------------------- event loop
    def _arm(self) -> None:
        self.worker.loop.call_later(self.plan.interval, self._flush)

    def _flush(self) -> None:
        with self.lock:
            chunk, nbytes = self.pending, self.pending_bytes
            self.pending, self.pending_bytes, self.armed = [], 0, False
        if not chunk:
            return
        c, start = self.chunk, self.sent
        self.chunk += 1
        self.sent += len(chunk)
        dkey = (self.plan.chunk_name, c)
        # first the chunk's message, then the data (whose add-keys follows it)
        send_to_scheduler(
            self.worker,
            {
                "op": STREAM_CHUNK_HANDLER,
                "key": self.key,
                "run_id": self.run,
                "chunk": c,
                "start": start,
                "n": len(chunk),
                "nbytes": nbytes,
            },
        )
        self.worker.update_data({dkey: chunk}, stimulus_id=f"dynflow-stream-{time.time()}")
        self.held.append((dkey, len(chunk), nbytes))

    async def _end(self, failed: bool) -> None:
        self._flush()
        send_to_scheduler(
            self.worker,
            {"op": STREAM_END_HANDLER, "key": self.key, "run_id": self.run, "failed": failed},
        )


def unfinished(task_name: str, *_inputs: Any) -> None:
    """Placeholder of a stream's lists while the source runs; running it means the
    source ended without saying so to the scheduler."""
    raise ExtensionError(
        f"stream {task_name!r}: its source ended without handing its end to the scheduler"
    )


def partition_items(kind: str, part: Any) -> Any:
    """The items of one partition of a dask collection mapped over: a Bag's partition
    as a list (a partition may be a lazy iterator), an Array's block of rows as it is."""
    if kind == "array" or isinstance(part, list):
        return part
    return list(part)
