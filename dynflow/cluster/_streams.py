"""Streams of a map's finished items, for ``df.as_completed``: the scheduler's half.

A client opens a stream on one map node of a run it tracks (:meth:`Streams.open`); the
run must use the map's list (its items are kept until the list is made). From then on,
each item (or batch) of that map that finishes is kept in memory for the client
(the scheduler counts the client among those who want it, as if it held a future) and
queued for it. The client pulls the queue a bounded window at a time
(:meth:`Streams.next`), fetches those results with ordinary futures and releases them:
it never holds more than a window, however many items the map has. Closing the stream
releases what the client did not fetch.

State, per stream: the queue of finished keys not yet handed out, and the keys handed out
or queued (so an item recomputed after a lost worker is not streamed twice). Streams end
with their run, their client, or :meth:`Streams.close`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dynflow._protocol import FINAL_STATES

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = ["Streams"]


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
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Streams:
    """The streams of one scheduler; owned by the run tracker, which calls
    :meth:`finished` for every item key that reaches memory."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.streams: dict[str, Stream] = {}
        self.by_node: dict[int, list[Stream]] = {}  # id(NodeState) -> its streams

    def open(self, run: Any, node: Any, client: str) -> str:
        """A new stream of ``node``'s items for ``client``; its id. Items of the map
        already in memory are queued at once."""
        stream = Stream(uuid.uuid4().hex, run, node, client)
        self.streams[stream.id] = stream
        self.by_node.setdefault(id(node), []).append(stream)
        for key, ts in self.scheduler.tasks.items():
            if ts.state == "memory" and node.weight(key):
                self._queue(stream, key)
        for prefix, key in node.failed_parents.items():
            stream.parents[key] = prefix
            self._queue(stream, key)
        return stream.id

    def parent_failed(self, node: Any, key: Any, prefix: tuple) -> None:
        """Expander ``key`` of ``node`` at ``prefix`` found its source failed: its value,
        the failure record, stands for the items there (streamed as one, at ``prefix``)."""
        for stream in self.by_node.get(id(node), ()):
            stream.parents[key] = prefix
            self._queue(stream, key)

    def finished(self, node: Any, key: Any) -> None:
        """Item (or batch) ``key`` of ``node`` is in memory: queue it for its streams."""
        for stream in self.by_node.get(id(node), ()):
            self._queue(stream, key)

    def _queue(self, stream: Stream, key: Any) -> None:
        ts = self.scheduler.tasks.get(key)
        if key in stream.seen or ts is None or not ts.waiters:
            return  # no list of the run keeps it: it is released at once, not streamable
        stream.seen.add(key)
        # kept for the client until it fetches (and so releases) it
        self.scheduler.client_desires_keys(keys=[key], client=stream.client)
        stream.ready.append(key)
        stream.event.set()

    def ended(self, run: Any) -> None:
        """``run`` reached a final state: wake its streams' waiting clients."""
        for stream in self.streams.values():
            if stream.run is run:
                stream.event.set()

    async def next(
        self, stream_id: str, limit: int, wait: float, max_items: int | None = None
    ) -> dict[str, Any]:
        """Up to ``limit`` finished tasks holding at most ``max_items`` items together (at
        least one task), waiting up to ``wait`` seconds for one.

        ``{"items": [{key, index, size, count}, ...], "done": bool, "total": int | None}``:
        ``index`` is the item's index (``[*prefix, i]``; a batch: its first item's, with
        ``size`` items per batch and ``count`` in this one); an expander whose source
        failed is one item marked ``parent``, at its prefix; ``done`` when the run ended
        and every item was handed out.
        """
        stream = self.streams.get(stream_id)
        if stream is None:
            return {"items": [], "done": True, "total": None}
        if not stream.ready and stream.run.state not in FINAL_STATES:
            stream.event.clear()
            try:
                await asyncio.wait_for(stream.event.wait(), wait)
            except TimeoutError:
                pass
        items: list[dict[str, Any]] = []
        count = 0
        while stream.ready and len(items) < limit:
            key = stream.ready[0]
            item = self._item(stream, key)
            if items and max_items is not None and count + item["count"] > max_items:
                break
            count += item["count"]
            stream.ready.popleft()
            items.append(item)
        done = stream.run.state in FINAL_STATES and not stream.ready
        return {"items": items, "done": done, "total": stream.node.total}

    @staticmethod
    def _item(stream: Stream, key: Any) -> dict[str, Any]:
        """What the client is told of a queued key (see :meth:`next`)."""
        if key in stream.parents:  # a failed source: its failure, at the parent's index
            return {
                "key": key,
                "index": list(stream.parents[key]),
                "size": None,
                "count": 1,
                "parent": True,
            }
        prefix, i = key[1:-1], key[-1]
        n, size = stream.node.lengths.get(prefix, (0, None))
        return {
            "key": key,
            "index": [*prefix, i if size is None else i * size],
            "size": size,  # a batch: items per batch; its own count below
            "count": 1 if size is None else max(0, min(size, n - i * size)),
        }

    def close(self, stream_id: str) -> None:
        """End a stream: what it queued and the client did not fetch is released."""
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.by_node[id(stream.node)].remove(stream)
        if not self.by_node[id(stream.node)]:
            del self.by_node[id(stream.node)]
        if stream.ready:
            self.scheduler.client_releases_keys(
                keys=list(stream.ready), client=stream.client, stimulus_id="dynflow-stream-close"
            )

    def remove_client(self, client: str) -> None:
        for stream_id in [s.id for s in self.streams.values() if s.client == client]:
            self.streams[stream_id].ready.clear()  # the scheduler forgets the client's wants
            self.close(stream_id)
