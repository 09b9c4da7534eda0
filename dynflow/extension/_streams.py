"""Streams of a map's finished items, for ``df.as_completed``: the scheduler's half.

A client opens a stream on one map node of a run it tracks (:meth:`Streams.open`); the
run must use the map's list (its items are kept until the list is made). From then on,
each item (or batch) of that map that finishes is kept in memory for the client
(the scheduler counts the client among those who want it, as if it held a future) and
queued for it. The client pulls the queue a bounded window at a time
(:meth:`Streams.next`: at most so many tasks, items and bytes, as the scheduler counts
each task's ``nbytes``), fetches those results with ordinary futures and releases them:
it never holds more than a window, however many items the map has. Closing the stream
releases what the client did not fetch.

State, per stream: the queue of finished keys not yet handed out, and the keys handed out
or queued (so an item recomputed after a lost worker is not streamed twice). Streams end
with their client, with :meth:`Streams.close`, and with their run: when it ends, a
stream whose client is gone, or that has nothing left to hand out, is closed at once;
one with results left is closed when the client has taken the last of them, or, should
the client not ask for them for ``dynflow.as-completed.idle-timeout``, then, releasing
them. No stream keeps a task of a finished run for longer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from time import monotonic
from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import parse_timedelta
from distributed.utils import log_errors

from dynflow._protocol import FINAL_STATES
from dynflow.extension import _ops as ops

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = ["Streams"]

logger = logging.getLogger(__name__)

#: the longest a ``next`` call waits for an item (seconds; a client asks again)
MAX_WAIT = 10.0


@dataclass(eq=False)
class Stream:
    """One client's stream of one map's finished items."""

    id: str
    run: Any  # the tracker's RunState
    node: Any  # the tracker's NodeState of the map
    client: str
    ready: deque = field(default_factory=deque)  # finished keys not handed out yet
    seen: set = field(default_factory=set)  # keys queued or handed out
    # expanders whose source failed -> their prefix: the failure stands for the items
    parents: dict = field(default_factory=dict)
    # a failed stream source's key: handed out last, once the run ended (the items it
    # yielded before run first)
    last: list = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    last_read: float = field(default_factory=monotonic)  # the client's last ``next``
    timer: Any = None  # once its run ended: the check that closes it if nobody reads it


class Streams:
    """The streams of one scheduler; owned by the run tracker, which calls
    :meth:`finished` for every item key that reaches memory."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.streams: dict[str, Stream] = {}
        self.by_node: dict[int, list[Stream]] = {}  # id(NodeState) -> its streams

    @log_errors
    def open(self, run: Any, node: Any, client: str) -> str:
        """A new stream of ``node``'s items for ``client`` (a client the scheduler
        knows: the caller checks); its id. Items of the map already in memory are
        queued at once (the map's own tasks are looked up, not every task)."""
        stream = Stream(uuid.uuid4().hex, run, node, client)
        self.streams[stream.id] = stream
        self.by_node.setdefault(id(node), []).append(stream)
        tasks = ops.tasks_of(self.scheduler)
        for prefix, (n, size) in list(node.lengths.items()):
            for t in range(n if size is None else -(-n // size)):
                key = (node.items, *prefix, t)
                if ops.state_in(tasks, key) == "memory" and node.weight(key):
                    self._queue(stream, key)
        for prefix, key in node.failed_parents.items():
            stream.parents[key] = prefix
            self._queue(stream, key, last=not prefix)
        return stream.id

    def parent_failed(self, node: Any, key: Any, prefix: tuple) -> None:
        """Expander ``key`` of ``node`` at ``prefix`` found its source failed: its value,
        the failure record, stands for the items there (streamed as one, at ``prefix``)."""
        for stream in self.by_node.get(id(node), ()):
            stream.parents[key] = prefix
            self._queue(stream, key, last=not prefix)

    def finished(self, node: Any, key: Any) -> None:
        """Item (or batch) ``key`` of ``node`` is in memory: queue it for its streams."""
        for stream in self.by_node.get(id(node), ()):
            self._queue(stream, key)

    def _queue(self, stream: Stream, key: Any, last: bool = False) -> None:
        """``key`` is handed out to ``stream``'s client (``last``: once the run ended)."""
        s = self.scheduler
        if key in stream.seen or not ops.has_waiters(s, key):
            return  # no list of the run keeps it: it is released at once, not streamable
        if not ops.has_client(s, stream.client):
            return  # gone: its streams are closed (Streams.remove_client)
        stream.seen.add(key)
        # kept for the client until it fetches (and so releases) it
        ops.keep_for_client(s, stream.client, [key])
        if last and stream.run.finished is None:
            stream.last.append(key)
            return
        stream.ready.append(key)
        stream.event.set()

    @log_errors
    def ended(self, run: Any) -> None:
        """``run`` reached a final state: wake its streams' waiting clients; close those
        whose client is gone or that have nothing left to hand out, and give the others
        ``dynflow.as-completed.idle-timeout`` without a read before they are closed."""
        timeout = parse_timedelta(dask.config.get("dynflow.as-completed.idle-timeout"))
        for stream in [s for s in self.streams.values() if s.run is run]:
            stream.ready.extend(stream.last)
            stream.last.clear()
            stream.event.set()
            if not stream.ready or not ops.has_client(self.scheduler, stream.client):
                self.close(stream.id)
            else:
                self._expire_later(stream, timeout, timeout)

    def _expire_later(self, stream: Stream, delay: float, timeout: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the scheduler's event loop: nobody to wait for
            self.close(stream.id)
            return
        stream.timer = loop.call_later(max(0.0, delay), self._expire, stream.id, timeout)

    def _expire(self, stream_id: str, timeout: float) -> None:
        """Close a stream of an ended run that its client has not read for ``timeout``
        seconds (or look again when that will be)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.timer = None
        idle = monotonic() - stream.last_read
        if idle >= timeout:
            logger.info(
                "as_completed stream of run %r: not read for %.0f s after the run ended; "
                "closed, %d results released",
                stream.run.name,
                idle,
                len(stream.ready),
            )
            self.close(stream_id)
        else:
            self._expire_later(stream, timeout - idle, timeout)

    @log_errors
    async def next(
        self,
        stream_id: str,
        limit: int,
        wait: float,
        max_items: int | None = None,
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Up to ``limit`` finished tasks holding at most ``max_items`` items and
        ``max_bytes`` bytes (the ``nbytes`` the scheduler knows of each) together, but
        at least one task, however big; waiting up to ``wait`` seconds for one.

        ``{"status": "OK", "items": [{key, index, size, count, nbytes}, ...], "done":
        bool, "total": int | None}``: ``index`` is the item's index (``[*prefix, i]``; a
        batch: its first item's, with ``size`` items per batch and ``count`` in this
        one); ``nbytes`` its result's size; an expander whose source failed is one item
        marked ``parent``, at its prefix; ``done`` when the run ended and every item was
        handed out (the stream is closed then). Malformed arguments:
        ``{"status": "error", "message"}``.
        """
        bad = _bad_window(limit, wait, max_items, max_bytes)
        if bad is not None:
            return {"status": "error", "message": bad}
        stream = self.streams.get(stream_id) if isinstance(stream_id, str) else None
        if stream is None:
            return {"status": "OK", "items": [], "done": True, "total": None}
        stream.last_read = monotonic()
        if not stream.ready and stream.run.state not in FINAL_STATES:
            stream.event.clear()
            try:
                await asyncio.wait_for(stream.event.wait(), min(float(wait), MAX_WAIT))
            except TimeoutError:
                pass
        items: list[dict[str, Any]] = []
        count = nbytes = 0
        while stream.ready and len(items) < limit:
            key = stream.ready[0]
            item = self._item(stream, key)
            if items and (
                (max_items is not None and count + item["count"] > max_items)
                or (max_bytes is not None and nbytes + item["nbytes"] > max_bytes)
            ):
                break
            count += item["count"]
            nbytes += item["nbytes"]
            stream.ready.popleft()
            items.append(item)
        stream.last_read = monotonic()
        done = stream.run.state in FINAL_STATES and not stream.ready
        if done:
            self.close(stream.id)  # all handed out: the client's futures hold the rest
        return {"status": "OK", "items": items, "done": done, "total": stream.node.total}

    def _item(self, stream: Stream, key: Any) -> dict[str, Any]:
        """What the client is told of a queued key (see :meth:`next`)."""
        nbytes = ops.nbytes(self.scheduler, key)
        if key in stream.parents:  # a failed source: its failure, at the parent's index
            return {
                "key": key,
                "index": list(stream.parents[key]),
                "size": None,
                "count": 1,
                "nbytes": nbytes,
                "parent": True,
            }
        prefix, i = key[1:-1], key[-1]
        n, size = stream.node.lengths.get(prefix, (0, None))
        return {
            "key": key,
            "index": [*prefix, i if size is None else i * size],
            "size": size,  # a batch: items per batch; its own count below
            "count": 1 if size is None else max(0, min(size, n - i * size)),
            "nbytes": nbytes,
        }

    @log_errors
    def close(self, stream_id: str) -> None:
        """End a stream: what it queued and the client did not fetch is released."""
        stream = self.streams.pop(stream_id, None) if isinstance(stream_id, str) else None
        if stream is None:
            return
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        self.by_node[id(stream.node)].remove(stream)
        if not self.by_node[id(stream.node)]:
            del self.by_node[id(stream.node)]
        # a client that is gone wants nothing any more: the scheduler forgot its wants
        ops.release_for_client(
            self.scheduler, stream.client, [*stream.ready, *stream.last], "dynflow-stream-close"
        )
        stream.ready.clear()
        stream.last.clear()
        stream.seen.clear()

    @log_errors
    def remove_client(self, client: str) -> None:
        for stream_id in [s.id for s in self.streams.values() if s.client == client]:
            self.streams[stream_id].ready.clear()  # the scheduler forgets the client's wants
            self.close(stream_id)


def _bad_window(limit: Any, wait: Any, max_items: Any, max_bytes: Any) -> str | None:
    """What is wrong with a ``next`` call's window (None: nothing)."""

    def count(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 1

    if not count(limit):
        return f"limit must be an int >= 1 (tasks per window), got {limit!r:.100}"
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
        return f"wait must be a number of seconds >= 0, got {wait!r:.100}"
    for name, value in (("max_items", max_items), ("max_bytes", max_bytes)):
        if value is not None and not count(value):
            return f"{name} must be None or an int >= 1, got {value!r:.100}"
    return None
