"""Run state on the scheduler: what the run tracker keeps of each run.

:class:`RunState` is one submitted run (its flow-level graph, its client, its nodes);
:class:`NodeState` counts one node's units (a plain task, or a map's items) as pending,
running, done, failed or cached, and lists a map's items for the dashboard (a few bytes
per item, :mod:`dynflow.extension._itemtable`). The tracker
(:mod:`dynflow.extension._tracker`) updates them; nothing here is called by distributed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from time import time
from typing import Any

from dynflow.extension import _ops as ops
from dynflow.extension._itemtable import CACHED, EARLY, FAILED, ItemTable

__all__ = ["MAX_ERRORS", "NodeState", "RunState"]

#: per map, the failed items whose error the tracker keeps (the dashboard lists them)
MAX_ERRORS = 1000


@dataclass(slots=True)
class NodeState:
    """Counts of one node of one run (units: tasks, or items for a map)."""

    run: RunState
    key: str
    kind: str
    fixed_total: int | None  # plain tasks: 1 (0: not needed); None: a map
    items: str | None = None  # maps: the item name (items are (items, *prefix, i))
    depth: int | None = None  # maps: length of the item prefix (nested maps: 1, ...)
    # maps: item prefix -> (items, items per task or None); a repeated splice of the same
    # prefix (an expander rerun after a lost worker) overwrites, never adds
    lengths: dict[tuple, tuple[int, int | None]] = field(default_factory=dict)
    # maps: item prefix -> the expander whose mapped source failed there (no items; its
    # value is the failure record, which stands for them as one failed unit)
    failed_parents: dict[tuple, Any] = field(default_factory=dict)
    running: int = 0
    memory: int = 0  # units that finished in dask (failure records included)
    erred: int = 0
    # per unit, a few bytes (dynflow.extension._itemtable): FAILED, items that finished
    # holding a failure record (a flag: an item recomputed after a lost worker reports
    # again); EARLY, records reported while their task still runs (the event comes
    # before the task's result: counted as failed once the task has finished, not twice
    # before); CACHED, units whose value came from the result storage; and seconds of
    # compute (a batch's shared by its items)
    table: ItemTable = field(init=False)
    # maps, for the dashboard's list of items: labels (task_run_name) and errors (the
    # first MAX_ERRORS), which only some items have
    labels: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    limbo: dict[Any, tuple[str, int]] = field(default_factory=dict)  # released after a result
    failures: deque = field(default_factory=lambda: deque(maxlen=20))
    spliced: int = 0  # a dynamic box: the calls dynamic tasks made of its task
    retries: int = 0  # calls (items) that failed and ran again
    # a stream's source: the items it handed on so far (None: none yet), and whether it ended
    yielded: int | None = None
    ended: bool = False
    source_failed: bool = False  # it ended raising (its task's value is a failure record)
    # the item name it was registered under, once ``items`` is this run's own name (a
    # map under a stream; a stream's source: dynflow._protocol.run_name)
    named: str | None = None
    # when its first task started computing and its last finished (worker clocks,
    # seconds since the epoch): the page's timeline
    first: float | None = None
    last: float | None = None

    def __post_init__(self) -> None:
        self.table = ItemTable(self.items)

    def sized(self, prefix: tuple, n: int, size: int | None) -> None:
        """The splice made prefix ``prefix``'s ``n`` items, ``size`` to a task (None: one
        task each); said again after a lost worker, it overwrites, never adds."""
        self.depth = len(prefix)
        self.lengths[prefix] = (n, size)
        self.table.sized(prefix, n)

    def weight(self, key: Any) -> int:
        """How many units ``key`` stands for (0: not one of this node's units)."""
        if self.kind == "dynamic":
            return 1  # the tracker maps only this box's calls to it
        if self.kind in ("task", "flatten", "key"):
            return 1 if key == self.key else 0
        if self.kind == "stream":  # its source task (``items``) is its one unit
            return 1 if key == self.items else 0
        span = self._span(key)
        if span is None:
            return 0  # a collector or a per-parent list
        n, size = span
        if size is None:
            return 1
        return max(0, min(size, n - key[-1] * size))

    def _span(self, key: Any) -> tuple[int, int | None] | None:
        """For an item's or a batch's key ``(items, *prefix, i)`` of this map: its
        prefix's ``(items, items per task or None)``; None for any other key."""
        if (
            type(key) is not tuple
            or key[0] != self.items
            or self.depth is None
            or len(key) != self.depth + 2
        ):
            return None
        return self.lengths.get(key[1:-1], (0, None))

    def task_of(self, unit: Any) -> Any:
        """The scheduler task that computes ``unit`` (an item's batch, for a batched
        map; the unit itself otherwise)."""
        span = self._span(unit)
        if span is None or span[1] is None:
            return unit
        return (*unit[:-1], unit[-1] // span[1])

    def timed(self, task: Any, startstops: list) -> None:
        """``task`` of this node finished: the node's first start and last stop, and for
        a map the task's compute time, shared by its units."""
        seconds = 0.0
        for s in startstops:
            if s.get("action") == "compute":
                seconds += s["stop"] - s["start"]
                self.first = s["start"] if self.first is None else min(self.first, s["start"])
                self.last = s["stop"] if self.last is None else max(self.last, s["stop"])
        if self.items is not None:
            units = self.units_of(task)
            self.table.time(units, seconds / len(units))

    def durations(self, limit: int = 10_000) -> list[float]:
        """Compute seconds of up to ``limit`` of this map's finished items, spread
        evenly over them (the page's percentiles: a sample, not every item)."""
        return self.table.sample_seconds(limit)

    def units_of(self, task: Any) -> list:
        """The units (items) scheduler task ``task`` computes: a batch's, or itself."""
        span = self._span(task)
        if span is None or span[1] is None:
            return [task]
        n, size = span
        start = task[-1] * size
        return [(*task[:-1], i) for i in range(start, min(n, start + size))]

    def settle(self, task: Any) -> None:
        """``task`` finished: the records reported while it ran now count."""
        for unit in self.units_of(task):
            if self.table.clear(unit, EARLY):
                self.table.set(unit, FAILED)

    def unit_state(self, unit: Any, tasks: Mapping[Any, Any]) -> str:
        """One item's state, from the tracker's records and dask's task states."""
        flags = self.table.flags(unit)
        if flags & (FAILED | EARLY):
            return "failed"
        if flags & CACHED:
            return "cached"
        if self.run.state == "finished":
            return "done"
        task = self.task_of(unit)
        st = ops.state_in(tasks, task)
        if st == "erred":
            return "failed"
        if st == "processing":
            return "running"
        if st == "memory" or self.table.seconds(unit) is not None:
            # finished (its compute time is known), perhaps released since: a failed
            # run's items are released while its failure is held
            return "done"
        if st is None:  # made and forgotten: it finished (or its run ended before)
            return "done" if self.run.finished is None else "-"
        if st == "released" and task in self.limbo:  # finished, still read
            return "failed" if self.limbo[task][0] == "erred" else "done"
        return "pending"

    def list_items(
        self,
        tasks: Mapping[Any, Any],
        offset: int = 0,
        limit: int = 50,
        query: str = "",
        state: str = "",
    ) -> dict[str, Any]:
        """A page of this map's items: ``{"total", "matched", "items": [{"index",
        "label", "state", "seconds", "error"}]}``, in item order; ``query``: a part of
        the label (any case), ``state``: one state. Filtering reads each item once."""
        prefixes = sorted(self.lengths) + sorted(p for p in self.failed_parents)
        query = query.lower()
        matched, page = 0, []
        for prefix in prefixes:
            n = self.lengths.get(prefix, (0, None))[0]
            for i in range(n):
                unit = (self.items, *prefix, i)
                label = self.labels.get(unit)
                if query and (label is None or query not in label.lower()):
                    continue
                st = (
                    self.unit_state(unit, tasks)
                    if state or offset <= matched < offset + limit
                    else ""
                )
                if state and st != state:
                    continue
                if offset <= matched < offset + limit:
                    page.append(
                        {
                            "index": [*prefix, i],
                            "label": label,
                            "state": st,
                            "seconds": self.table.seconds(unit),
                            "error": self.errors.get(unit),
                        }
                    )
                matched += 1
        return {"total": self.total, "matched": matched, "items": page}

    @property
    def total(self) -> int | None:
        """Units in all: 1 for a task, a map's items once known (None before)."""
        if self.fixed_total is not None:
            return self.fixed_total
        if self.kind == "dynamic":
            return self.spliced
        if not self.lengths:
            return None
        return sum(n for n, _ in self.lengths.values()) + len(self.failed_parents)

    def counts(self) -> dict[str, int | None]:
        records = self.table.count(FAILED)
        failed = self.erred + records + len(self.failed_parents)
        finished = max(0, self.memory - records)
        cached = min(self.table.count(CACHED), finished)
        done = finished - cached
        if self.source_failed and done:  # a stream's source ended with its failure
            done, failed = done - 1, failed + 1
        total = self.total
        known = total if total is not None else finished + failed + self.running
        pending = max(0, known - finished - failed - self.running)
        out: dict[str, int | None] = {
            "total": total,
            "pending": pending,
            "running": self.running,
            "done": done,
            "failed": failed,
            "cached": cached,
        }
        if self.retries:  # only where calls were retried
            out["retries"] = self.retries
        if self.yielded is not None:  # a stream's source: items handed on so far
            out["yielded"] = self.yielded
            out["streaming"] = not self.ended and self.run.finished is None
        if any(size for _, size in self.lengths.values()):  # only where items were grouped
            out["tasks"] = sum(
                n if size is None else -(-n // size) for n, size in self.lengths.values()
            )
        return out


@dataclass(slots=True)
class RunState:
    """One submitted run: its graph, its client, its nodes' counts."""

    id: str
    name: str
    client: str
    graph: dict
    outputs: tuple
    started: float = field(default_factory=time)
    finished: float | None = None
    state: str = "pending"
    nodes: dict[str, NodeState] = field(default_factory=dict)
    outputs_done: set = field(default_factory=set)
    dynamic: dict[str, NodeState] = field(default_factory=dict)  # task name -> its box
    host: str | None = None  # where the submitting client runs
    reason: str | None = None  # why a run that did not finish ended

    def dynamic_box(self, name: str, parent: NodeState) -> NodeState:
        """The box counting the calls of task ``name`` that dynamic tasks made, drawn
        below ``parent``'s box (an arrow is added unless it would close a cycle)."""
        ns = self.dynamic.get(name)
        if ns is None:
            key = f"dynflow-dynamic-{name}"
            ns = self.dynamic[name] = self.nodes[key] = NodeState(self, key, "dynamic", None)
            self.graph["nodes"].append(
                {"key": key, "name": name, "kind": "dynamic", "label": f"{name} (dynamic)"}
            )
        edge = [parent.key, ns.key, "data"]
        if parent is not ns and edge not in self.graph["edges"] and not self._reaches(ns, parent):
            self.graph["edges"].append(edge)
        return ns

    def _reaches(self, a: NodeState, b: NodeState) -> bool:
        """Whether an arrow path leads from box ``a`` to box ``b``."""
        children: dict[str, list[str]] = {}
        for u, v, _ in self.graph["edges"]:
            children.setdefault(u, []).append(v)
        seen, stack = set(), [a.key]
        while stack:
            k = stack.pop()
            if k == b.key:
                return True
            if k not in seen:
                seen.add(k)
                stack.extend(children.get(k, ()))
        return False

    def summary(self, with_graph: bool = False) -> dict[str, Any]:
        end = self.finished if self.finished is not None else time()
        out = {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "reason": self.reason,
            "client": self.client,
            "host": self.host,
            "started": self.started,
            "finished": self.finished,
            "elapsed": end - self.started,
            "nodes": {k: ns.counts() for k, ns in self.nodes.items()},
            "failures": {k: list(ns.failures) for k, ns in self.nodes.items() if ns.failures},
            # first start and last stop of each node that computed (the page's timeline)
            "times": {
                k: [ns.first, ns.last] for k, ns in self.nodes.items() if ns.first is not None
            },
        }
        if with_graph or self.dynamic:  # dynamic tasks added boxes: the views need them
            out["graph"] = self.graph
        return out
