"""Stream plans: how a streaming source's chunks become tasks.

A :class:`StreamPlan` is built on the client when a graph holding a stream
(:class:`~dynflow.graph._node.StreamNode`) is lowered for a cluster, travels inside the
source task's spec (:func:`~dynflow.worker._source.stream_source`), and is used on the
scheduler (:mod:`dynflow.extension._sources`) each time the source hands on a chunk:
the chunk's own task (in memory where the source runs; its spec makes it again should
that copy be lost), the expanders of the maps nested per chunk (as ``flatten`` nests a
map per parent item: a chunk is a parent item whose elements are the stream's items),
and the lists' collectors, which gain the chunk's list. When the source ends the lists
get their real specs (:meth:`StreamPlan.final`). Nothing here touches scheduler state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dask._task_spec import Alias, GraphNode, List, Task, TaskRef, parse_input

from dynflow.lowering._expansion import Collector, Expansion, Nested
from dynflow.worker._calls import CallPolicy
from dynflow.worker._collect import gather_failed_stream
from dynflow.worker._source import replay_chunk, unfinished

__all__ = ["StreamPlan"]


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """A stream's source: its call and where its items go (see the module docstring).

    ``expansion``'s expander is the source task's key, its stages the maps nested per
    chunk (:class:`~dynflow.lowering._expansion.Nested`), its collectors the lists
    made at top level: each map's list over the chunks' lists, and the stream's own
    list (of the chunks themselves) when it is used whole. ``window``: (items, bytes),
    or None (the list is used whole: every chunk is kept for it).
    """

    task_name: str
    node_key: str  # the stream's list (the node's key)
    chunk_name: str
    call: Task  # (fn, args, kwargs) of the call (worker._source.bound), from the task's data
    policy: CallPolicy  # retries of the source
    expansion: Expansion
    window: tuple[int, int] | None
    interval: float
    chunk_items: int
    chunk_bytes: int

    @property
    def source(self) -> str:
        return self.expansion.expander

    def chunk(self, c: int, start: int, n: int) -> tuple[Task, list[GraphNode], dict[Any, Task]]:
        """Chunk ``c`` (items ``start`` to ``start + n - 1``): its task spec (made again
        by running the source again, should its only copy be lost), the tasks of the
        maps nested per chunk, and per collector a spec that adds the chunk's list to
        its dependencies (its spec stays a placeholder until :meth:`final`)."""
        dkey = (self.chunk_name, c)
        data = parse_input({k: Alias(k) for k in sorted(self.call.dependencies, key=str)})
        dspec = Task(dkey, replay_chunk, self, start, start + n, data)
        nested: list[GraphNode] = []
        for stage in self.expansion.stages:
            assert isinstance(stage, Nested)
            nested += stage.item((c,))
        partial = {
            col.key: Task(
                col.key, unfinished, self.task_name, TaskRef(self.source), TaskRef((col.of, c))
            )
            for col in self.expansion.collectors
        }
        return dspec, nested, partial

    def stage_keys(self) -> list[str]:
        """The keys of the stages of every map under the stream (nested per chunk, and
        deeper: a ``flatten`` of one), whose items the source's failure stands for."""
        out: list[str] = []
        todo = [self.expansion]
        while todo:
            exp = todo.pop()
            for stage in exp.stages:
                if isinstance(stage, Nested):
                    todo.append(stage.expansion)
                else:
                    out.append(stage.key)
        return out

    def final(self, key: Any, chunks: int, failed: bool) -> Task | None:
        """Collector ``key``'s spec once the source ended after ``chunks`` chunks
        (``failed``: the source's value is its failure record: the list is that failure,
        once every item yielded before it ran); None: not one of this plan's."""
        col = _find(self.expansion.collectors, key)
        if col is None:
            return None
        if not failed:
            return col.task((), chunks)
        lists = List(*(TaskRef((col.of, c)) for c in range(chunks)))
        return Task(
            key, gather_failed_stream, lists, col.task_name, col.mode, col.ratio,
            TaskRef(self.source),
        )  # fmt: skip


def _find(collectors: tuple[Collector, ...], key: Any) -> Collector | None:
    for c in collectors:
        if c.key == key:
            return c
    return None
