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
import concurrent.futures
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle
from dask.sizeof import sizeof
from distributed import get_worker, secede
from distributed.utils import sync

from dynflow._compat import call_scheduler, drop_local, expander_run_id, send_to_scheduler
from dynflow._context import CURRENT_KEY
from dynflow._protocol import STREAM_CHUNK_HANDLER, STREAM_END_HANDLER, STREAM_START_HANDLER
from dynflow.exceptions import ExtensionError, SerializationError, TaskTimeoutError
from dynflow.worker._call_context import current_key
from dynflow.worker._calls import _PLAIN, _call_error, _calling, _next_try, call_after
from dynflow.worker._failure import Failure

if TYPE_CHECKING:
    from distributed import Worker

logger = logging.getLogger(__name__)

__all__ = [
    "Listed",
    "bound",
    "iterate",
    "partition_items",
    "replay_chunk",
    "stream_source",
    "unfinished",
]


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
            except Exception:  # closing is best effort: said, not raised
                logger.debug("closing an async generator source failed", exc_info=True)
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
        out = list(iterate(self.task_name, self.fn(*args, **kwargs)))
        for i, item in enumerate(out):  # each item as on a cluster (its index named)
            if type(item) not in _PLAIN:
                _check_picklable(self.task_name, i, item)
        return out


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
            if not _attempt(plan, data, outlet, attempt):
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


def _attempt(plan: Any, data: dict[Any, Any], outlet: _Outlet, attempt: int) -> bool:
    """One call of a source's function, its items handed to ``outlet`` (those an
    earlier attempt or run handed on are skipped); False: the run is not wanted any
    more. With a ``timeout``, the attempt runs in a thread of its own and is abandoned
    (its next items refused) once it ran longer than that, not counting the time it
    waited for its window.

    Raises
    ------
    TaskTimeoutError
        The attempt ran longer than the task's ``timeout``.
    """

    def run() -> bool:
        fn, args, kwargs = plan.call(data)
        user_args = args[2:] if fn is call_after else args
        # as any call: its label and log_prints tag what it prints (while it iterates)
        with _calling(plan.policy, user_args, kwargs):
            for i, item in enumerate(iterate(plan.task_name, fn(*args, **kwargs))):
                if i < outlet.count:
                    continue  # handed on by an earlier attempt or run
                if not outlet.put(item, attempt, i):
                    return False
        return True

    timeout = plan.policy.timeout
    if timeout is None:
        return run()
    # a thread cannot be stopped: at its timeout the attempt is abandoned, and the
    # outlet refuses what it yields after that (it stops at its next item)
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dynflow-source")
    token = CURRENT_KEY.set(current_key())  # its context goes with it into the thread
    try:
        future = pool.submit(contextvars.copy_context().run, run)
    finally:
        CURRENT_KEY.reset(token)
    started = time.monotonic()
    try:
        while True:
            left = started + timeout + outlet.waited - time.monotonic()
            try:
                return future.result(timeout=max(left, 0.001))
            except concurrent.futures.TimeoutError:
                if started + timeout + outlet.waited - time.monotonic() <= 0:
                    outlet.abandon(attempt)
                    raise TaskTimeoutError(
                        f"task {plan.task_name!r} (a stream) did not finish within "
                        f"{timeout:g} s (not counting the time it waited for its consumers)"
                    ) from None
    finally:
        pool.shutdown(wait=False)


def bound(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple:
    """A stream's call, its arguments' values in place, not made yet: ``(fn, args,
    kwargs)`` (the source makes it inside the call's context, as a task's call is)."""
    return fn, args, kwargs


def replay_chunk(plan: Any, start: int, stop: int, data: dict[Any, Any]) -> list:
    """Chunk ``[start, stop)`` of a stream made again (its only copy was lost): the
    function is called again and its items up to ``stop`` iterated. The iterator is
    kept on this worker for :data:`REPLAY_IDLE` seconds, so that the next lost chunks,
    made again in order, continue from it: the chunks a lost worker held are made in
    one pass over the source per worker, not one pass each.

    Raises
    ------
    ExtensionError
        The function yielded fewer than ``stop`` items this time.
    """
    with _REPLAYS_LOCK:
        kept = _REPLAYS.pop(plan.source, None)
    if kept is not None and kept[1] > start:  # behind it: a pass of its own
        _close(kept)
        kept = None
    items, position = kept[:2] if kept is not None else (None, 0)
    if items is None:
        fn, args, kwargs = plan.call(data)
        items = iter(iterate(plan.task_name, fn(*args, **kwargs)))
    out = []
    for item in items:
        if position >= start:
            out.append(item)
        position += 1
        if position >= stop:
            _keep_replay(plan.source, items, position)
            return out
    raise ExtensionError(
        f"stream {plan.task_name!r}: items {start}..{stop - 1} were lost with a worker, and "
        f"running the source again yielded only {start + len(out)} items: a source must "
        "yield the same items when run again"
    )


#: seconds a replayed source's iterator is kept for the next lost chunk
REPLAY_IDLE = 10.0
#: source key -> (its iterator, the items it yielded, the timer that closes it)
_REPLAYS: dict[Any, tuple[Any, int, threading.Timer]] = {}
_REPLAYS_LOCK = threading.Lock()


def _keep_replay(source: Any, items: Any, position: int) -> None:
    timer = threading.Timer(REPLAY_IDLE, _expire_replay, (source, items))
    timer.daemon = True
    with _REPLAYS_LOCK:
        old = _REPLAYS.pop(source, None)
        _REPLAYS[source] = (items, position, timer)
    if old is not None:
        _close(old)
    timer.start()


def _expire_replay(source: Any, items: Any) -> None:
    with _REPLAYS_LOCK:
        kept = _REPLAYS.get(source)
        if kept is None or kept[0] is not items:
            return
        del _REPLAYS[source]
    _close(kept)


def _close(kept: tuple[Any, int, threading.Timer]) -> None:
    """Close a kept replay's iterator (its ``finally`` blocks run) and its timer."""
    kept[2].cancel()
    close = getattr(kept[0], "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # closing is best effort: said, not raised
            logger.debug("closing a replayed source failed", exc_info=True)


class _Outlet:
    """Where a source's items go: chunks, flushed from the worker's event loop, and the
    window (see the module docstring). :meth:`put`, :meth:`abandon` and :meth:`close`
    are called from the source's thread; the rest runs on the event loop."""

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
        self.ready: deque[tuple[list, int]] = deque()  # full chunks, not flushed yet
        self.ready_items = self.ready_bytes = 0  # in them
        self.armed = False  # a flush is timed
        self.lock = threading.Lock()
        self.held: deque[tuple[Any, int, int]] = deque()  # (chunk key, items, bytes)
        self.held_items = self.held_bytes = 0  # in them
        self.refused = 0  # attempts up to this one were abandoned (timed out)
        self.waited = 0.0  # seconds the source waited for its window

    # ------------------------------------------------------------- source thread
    def put(self, item: Any, attempt: int = 1, index: int | None = None) -> bool:
        """Take item ``index`` of attempt ``attempt``; False when the source's run is not
        wanted any more, or that attempt was abandoned.

        Raises
        ------
        SerializationError
            The item cannot be pickled (it could never reach another worker).
        """
        plan = self.plan
        if type(item) not in _PLAIN:
            _check_picklable(plan.task_name, self.count if index is None else index, item)
        size = sizeof(item)
        with self.lock:
            if attempt <= self.refused:
                return False
            # a chunk never holds more than chunk-items or chunk-bytes (but one item)
            full = bool(self.pending) and self.pending_bytes + size > plan.chunk_bytes
            if full:  # this item would not fit: the chunk so far is closed first
                self._close_pending()
            self.pending.append(item)
            self.pending_bytes += size
            self.count += 1
            if len(self.pending) >= plan.chunk_items or self.pending_bytes >= plan.chunk_bytes:
                self._close_pending()
                full = True
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
            since = None
            while True:
                held_items, held_bytes = self._held()
                if held_items < items and held_bytes < nbytes:
                    break
                if not self._wanted():
                    return False
                if since is None:
                    since = time.monotonic()
                if self.pending:
                    loop.add_callback(self._flush)
                time.sleep(0.002)
            if since is not None:
                self.waited += time.monotonic() - since
        # each item: a run cancelled (its client gone, the future released) stops here
        return self._wanted()

    def _close_pending(self) -> None:
        """The pending items are a chunk, ready to be flushed (under the lock)."""
        self.ready.append((self.pending, self.pending_bytes))
        self.ready_items += len(self.pending)
        self.ready_bytes += self.pending_bytes
        self.pending, self.pending_bytes = [], 0

    def abandon(self, attempt: int) -> None:
        """Attempt ``attempt`` timed out: what it yields from now on is refused."""
        with self.lock:
            self.refused = max(self.refused, attempt)

    def close(self, failed: bool) -> None:
        """The source ended: flush, then tell the scheduler (before the task's result)."""
        sync(self.worker.loop, self._end, failed)

    def _held(self) -> tuple[int, int]:
        """Items and bytes in chunks the scheduler still holds here, and not flushed
        yet: O(1) while they are below the window (the chunks' totals count some that
        were let go of already), counted exactly (those dropped) once they reach it."""
        # (read without the lock: a count a moment old only delays the wait by an item)
        items = len(self.pending) + self.ready_items + self.held_items
        nbytes = self.pending_bytes + self.ready_bytes + self.held_bytes
        window = self.plan.window
        if window is not None and (items >= window[0] or nbytes >= window[1]):
            tasks = self.worker.state.tasks

            def kept(key: Any) -> bool:  # its data is here still (a released task may stay)
                ts = tasks.get(key)
                return ts is not None and ts.state == "memory"

            with self.lock:
                self.held = deque(h for h in self.held if kept(h[0]))
                self.held_items = sum(n for _, n, _ in self.held)
                self.held_bytes = sum(b for _, _, b in self.held)
            items = len(self.pending) + self.ready_items + self.held_items
            nbytes = self.pending_bytes + self.ready_bytes + self.held_bytes
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
            chunks = list(self.ready)
            self.ready.clear()
            self.ready_items = self.ready_bytes = 0
            if self.pending:
                chunks.append((self.pending, self.pending_bytes))
                self.pending, self.pending_bytes = [], 0
            self.armed = False
        # on the event loop, as the worker's own state changes: a run cancelled (or
        # replaced by a run of the same key) hands on nothing more
        if not chunks or not self._wanted():
            return
        for chunk, nbytes in chunks:
            c, start = self.chunk, self.sent
            self.chunk += 1
            self.sent += len(chunk)
            dkey = (self.plan.chunk_name, c)
            # first the chunk's message (the scheduler puts the chunk in memory here on
            # it), then the data, before anything can ask this worker for it
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
                    "name": self.plan.chunk_name,
                },
            )
            stimulus_id = f"dynflow-stream-{time.time()}"
            if dkey in self.worker.state.tasks and not drop_local(self.worker, dkey, stimulus_id):
                logger.warning(  # a stale copy (an earlier run's) that a task still reads
                    "stream %r: chunk %s of an earlier run is still read here; its data "
                    "may be kept instead of this run's",
                    self.plan.task_name, c,
                )  # fmt: skip
            self.worker.update_data({dkey: chunk}, stimulus_id=stimulus_id)
            with self.lock:
                self.held.append((dkey, len(chunk), nbytes))
                self.held_items += len(chunk)
                self.held_bytes += nbytes

    async def _end(self, failed: bool) -> None:
        self._flush()
        if not self._wanted():
            return
        send_to_scheduler(
            self.worker,
            {"op": STREAM_END_HANDLER, "key": self.key, "run_id": self.run, "failed": failed},
        )


def _check_picklable(task_name: str, index: int, item: Any) -> None:
    """Raise :class:`SerializationError` for an item that cannot be pickled (large
    buffers are passed out of band: not copied)."""
    try:  # cloudpickle: what distributed falls back on (and it logs nothing)
        cloudpickle.dumps(item, protocol=5, buffer_callback=lambda _: None)
    except Exception as e:
        raise SerializationError(
            f"stream {task_name!r} yielded item {index}, a {type(item).__name__} that cannot "
            f"be pickled: on a cluster it could not reach the workers that process it: {e}"
        ) from e


def unfinished(task_name: str, *_inputs: Any) -> None:
    """Placeholder of a stream's lists while the source runs; running it means the
    source ended without saying so to the scheduler."""
    raise ExtensionError(
        f"stream {task_name!r}: its source ended without handing its end to the scheduler"
    )


def partition_items(kind: str, part: Any) -> Any:
    """The items of one partition of a dask collection mapped over: a Bag's partition
    as a list (a partition may be a lazy iterator), an Array's block of rows as it is;
    a failed partition's record as it is (it stands for the partition's items)."""
    if kind == "array" or isinstance(part, list) or type(part) is Failure:
        return part
    return list(part)
