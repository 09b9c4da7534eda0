"""Run tracking on the scheduler: per-node progress of every submitted run.

:class:`RunTracker` is a scheduler plugin that uses the plugin API only (``transition``,
``update_graph``, ``log_event``). A client registers each run it submits with the flow-level
graph (:class:`dynflow.graph._flowgraph.FlowGraph`); from then on the tracker counts, per node,
the tasks that are pending, running (dask's *processing*: assigned to a worker, perhaps
still queued there), done and failed:

- a plain task is one unit;
- a map's units are its items ``(map key, *prefix, i)``; its total is unknown until the
  splice adds them, which tells the tracker each stage's length through the ``update_graph``
  call it makes (``dynflow_map_lengths``); a batch task counts as the items it holds;
- an item that fails inside dynflow's retry loop is a finished dask task holding a
  failure record: the worker reports it with an event (``dynflow-item``), and the tracker
  moves it from done to failed;
- a call of a cached task whose value was read from the result storage is done too, and
  reported with an event (``dynflow-cached``): the tracker counts it as cached, not done.

The same data serves ``RunFuture.status()``, ``df.progress``, the HTML reprs and the
dashboard page. The tracker also forwards task output (``log_prints``) to the client that
submitted the run: workers log ``dynflow-log`` events; only the run's own client gets them.
Finished runs are kept, frozen, up to ``dynflow.dashboard.history`` of them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from time import time
from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import key_split
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import log_errors

from dynflow._protocol import (
    CACHED_TOPIC,
    FORWARD_TOPIC,
    IN_PLACE_TOPIC,
    ITEM_TOPIC,
    LABEL_TOPIC,
    LOG_TOPIC,
    RETRY_TOPIC,
    RUN_FORGET_HANDLER,
    RUN_ITEMS_HANDLER,
    RUN_START_HANDLER,
    RUN_STATUS_HANDLER,
    RUNS_HANDLER,
    SOURCE_TOPIC,
    SPLICE,
    STREAM_CLOSE_HANDLER,
    STREAM_NEXT_HANDLER,
    STREAM_OPEN_HANDLER,
    TRACKER,
    run_name,
)
from dynflow.extension import _ops as ops
from dynflow.extension._itemtable import CACHED, EARLY, FAILED
from dynflow.extension._routes import add_routes
from dynflow.extension._runs import MAX_ERRORS, NodeState, RunState
from dynflow.extension._streams import Streams

if TYPE_CHECKING:
    from distributed import Scheduler

logger = logging.getLogger(__name__)

__all__ = ["RunTracker"]


class RunTracker(SchedulerPlugin):
    """Scheduler plugin counting each run's per-node progress; see the module docstring."""

    name = TRACKER
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None
        self.runs: OrderedDict[str, RunState] = OrderedDict()
        # node key, and a map's item name (its items' key[0]) -> state
        self.index: dict[str, NodeState] = {}
        self.outputs: dict[Any, list[RunState]] = {}  # output key -> live runs waiting on it
        self.dynamic: dict[Any, NodeState] = {}  # a task a dynamic task made -> its box
        # a task a splice made that counts for no node (a task of a sub-flow run per
        # item) -> its run, whose client gets what it prints; dropped when forgotten
        self.owners: dict[Any, RunState] = {}
        self.streams: Streams | None = None  # as_completed's streams (once started)

    def _handlers(self) -> dict[str, Any]:
        return {
            RUN_START_HANDLER: self.run_start,
            RUN_FORGET_HANDLER: self.run_forget,
            RUN_ITEMS_HANDLER: self.run_items,
            RUN_STATUS_HANDLER: self.run_status,
            RUNS_HANDLER: self.list_runs,
            STREAM_OPEN_HANDLER: self.stream_open,
            STREAM_NEXT_HANDLER: self.stream_next,
            STREAM_CLOSE_HANDLER: self.stream_close,
        }

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.streams = Streams(scheduler)
        ops.install(scheduler, TRACKER, self, self._handlers())
        add_routes(scheduler, self)

    async def close(self) -> None:
        if self.scheduler is not None:
            ops.uninstall(self.scheduler, TRACKER, self._handlers())

    # ------------------------------------------------------------------ handlers
    @log_errors
    def run_start(
        self,
        run_id: str,
        name: str,
        graph: dict,
        outputs: list,
        client: str,
        host: str | None = None,
    ) -> dict[str, str]:
        """Register a run before its graph is sent (``dynflow_run_start``). A malformed
        registration, or one of a client the scheduler does not know, is refused and
        leaves nothing behind: all of it is checked before any state changes."""
        if not all(isinstance(x, str) for x in (run_id, client)) or not isinstance(
            host, (str, type(None))
        ):
            return {
                "status": "error",
                "message": "malformed run registration: run_id and client must be str, "
                "host a str or None",
            }
        try:
            graph = {
                **graph,
                "nodes": [dict(n) for n in graph["nodes"]],
                "edges": [list(e) for e in graph["edges"]],
            }  # dynamic tasks add to them
            # each output once (it finishes when all have), hashed: TypeError for an
            # output that cannot be a task key
            keys = tuple(dict.fromkeys(_key(k) for k in outputs))
            if not keys:
                raise ValueError("no outputs: expected the keys the run computes")
            run = RunState(run_id, str(name), client, graph, keys)
            run.host = host
            nodes = []
            for node in graph["nodes"]:
                kind = node["kind"]
                total = None if kind in ("map", "subflow-map") else 1
                items = node.get("items")
                if not isinstance(items, (str, type(None))):
                    raise TypeError(f"a map's items name must be a str, got {items!r:.100}")
                nodes.append(NodeState(run, str(node["key"]), kind, total, items))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return {"status": "error", "message": f"malformed run registration: {e!r:.300}"}
        if run_id in self.runs:
            return {"status": "error", "message": f"run {run_id!r} is registered already"}
        s = self.scheduler
        if s is not None and not ops.has_client(s, client):
            return {"status": "error", "message": f"no client {client!r} on this scheduler"}
        for ns in nodes:
            run.nodes[ns.key] = ns
            self.index[ns.key] = ns
            if ns.items is not None:  # a map's items are (items, *prefix, i)
                self.index[ns.items] = ns
                # under a stream, names are the run's own (dynflow._protocol.run_name):
                # a map's items once spliced (see update_graph), a stream's source task
                self.index[run_name(ns.items, run_id)] = ns
                if ns.kind == "stream":
                    ns.named, ns.items = ns.items, run_name(ns.items, run_id)
                    ns.table.items = ns.items
        for k in run.outputs:
            self.outputs.setdefault(k, []).append(run)
        self.runs[run_id] = run
        self._trim()
        return {"status": "OK"}

    @log_errors
    def run_forget(self, run_id: str) -> None:
        """Forget a registered run whose graph never reached the scheduler
        (``dynflow_run_forget``: its submit failed)."""
        run = self.runs.get(run_id)
        if run is not None and run.finished is None:
            del self.runs[run_id]  # first: it must not count in the history it trims
            self._finish(run, "cancelled", "submit failed")

    @log_errors
    def run_items(
        self,
        run_id: str,
        node: str,
        offset: int = 0,
        limit: int = 50,
        query: str = "",
        state: str = "",
    ) -> dict[str, Any] | None:
        """A page of the items of map ``node`` of run ``run_id`` (``dynflow_run_items``;
        see :meth:`NodeState.list_items`); None for an unknown run or a node that is not
        a map."""
        run = self.runs.get(run_id)
        ns = None if run is None else run.nodes.get(node)
        if ns is None or ns.items is None or self.scheduler is None:
            return None
        limit = max(1, min(int(limit), 1000))
        tasks = ops.tasks_of(self.scheduler)
        return ns.list_items(tasks, max(0, int(offset)), limit, query, state)

    @log_errors
    def run_status(self, run_id: str, graph: bool = False) -> dict[str, Any] | None:
        """The counts of one run (``dynflow_run_status``); None if unknown."""
        run = self.runs.get(run_id)
        return None if run is None else run.summary(with_graph=graph)

    def executing(self, run_id: str) -> dict[str, int]:
        """Per node of run ``run_id``, how many of its running units are executing on a
        worker now (the rest are queued there), as of the workers' last heartbeats."""
        run = self.runs.get(run_id)
        if run is None or run.finished is not None or self.scheduler is None:
            return {}
        out: dict[str, int] = {}
        for key in ops.executing_keys(self.scheduler):
            ns = self._node_of(key)
            if ns is not None and ns.run is run:
                out[ns.key] = out.get(ns.key, 0) + ns.weight(key)
        return out

    @log_errors
    def list_runs(self, graph: bool = False) -> list[dict[str, Any]]:
        """Every known run, newest first (``dynflow_runs``)."""
        return [r.summary(with_graph=graph) for r in reversed(self.runs.values())]

    @log_errors
    def stream_open(self, run_id: str, node: str, client: str) -> dict[str, Any]:
        """Stream the finished items of map ``node`` of run ``run_id`` to ``client``
        (``dynflow_stream_open``), a client the scheduler knows (it keeps the items for
        that client until it fetches them); see :mod:`dynflow.extension._streams`."""
        if not all(isinstance(x, str) for x in (run_id, node, client)):
            return {"status": "error", "message": "run_id, node and client must be str"}
        s = self.scheduler
        if s is None or not ops.has_client(s, client):
            return {
                "status": "error",
                "message": f"no client {client!r:.100} on this scheduler: a stream is opened "
                "for a connected client (its own id, Client.id)",
            }
        run = self.runs.get(run_id)
        ns = None if run is None else run.nodes.get(node)
        if run is None or ns is None or ns.items is None:
            return {"status": "error", "message": f"no map {node!r} in run {run_id!r}"}
        if run.finished is not None:
            return {
                "status": "error",
                "message": f"run {run.name!r} has ended ({run.state}): its items are gone",
            }
        assert self.streams is not None
        return {"status": "OK", "stream": self.streams.open(run, ns, client)}

    @log_errors
    async def stream_next(
        self,
        stream_id: str,
        limit: int,
        wait: float = 1.0,
        max_items: int | None = None,
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Up to ``limit`` finished items of a stream, at most ``max_items`` items and
        ``max_bytes`` bytes together (but at least one task) (``dynflow_stream_next``)."""
        assert self.streams is not None
        return await self.streams.next(stream_id, limit, wait, max_items, max_bytes)

    @log_errors
    def stream_close(self, stream_id: str) -> None:
        """End a stream; what it did not hand out is released (``dynflow_stream_close``)."""
        assert self.streams is not None
        self.streams.close(stream_id)

    # ------------------------------------------------------------- plugin hooks
    def update_graph(self, scheduler: Scheduler, **kwargs: Any) -> None:
        stages = kwargs.get("dynflow_map_lengths")
        if stages:  # a splice: the maps' lengths are known now
            failed = kwargs.get("dynflow_failed_expander")
            run = None
            for key, (prefix, n, size) in stages.items():
                ns = self.index.get(key)
                if ns is None:
                    continue
                if ns.items != key and ns.named is None:  # a map under a stream
                    ns.named, ns.items = ns.items, key
                    ns.table.items = key
                run = ns.run
                ns.sized(tuple(prefix), n, size)
                if failed is not None:
                    ns.failed_parents[tuple(prefix)] = failed
                    if self.streams is not None:
                        self.streams.parent_failed(ns, failed, tuple(prefix))
            if run is not None and run.finished is None:
                for k in kwargs.get("tasks") or ():
                    if not (type(k) is tuple and k[0] in stages) and self._node_of(k) is None:
                        self.owners[k] = run  # a sub-flow's task (what it prints goes on)
            return
        source = kwargs.get("dynflow_failed_source")
        if source:  # a stream's source failed: it stands for its maps' other items
            for key in source["stages"]:
                ns = self.index.get(key)
                if ns is not None and ns.run.finished is None:
                    ns.failed_parents[()] = source["source"]
                    if self.streams is not None:
                        self.streams.parent_failed(ns, source["source"], ())
            return
        dynamic = kwargs.get("dynflow_dynamic")
        if dynamic:
            self._dynamic(dynamic["parent"], dynamic["alias"], dynamic["tasks"])
            return
        if kwargs.get("client") == SPLICE:
            return
        # a client's graph: its tasks are in the scheduler now
        for run in self.runs.values():
            if run.state != "pending" or not all(ops.has_task(scheduler, k) for k in run.outputs):
                continue
            run.state = "running"
            for ns in run.nodes.values():
                # a stream's unit is its source task
                unit = ns.items if ns.kind == "stream" and ns.items is not None else ns.key
                if ns.fixed_total == 1 and not ops.has_task(scheduler, unit):
                    ns.fixed_total = 0  # built but not needed (a flatten only mapped over)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        runs = self.outputs.get(key)
        ns = self._node_of(key)
        if ns is None and self.dynamic:
            ns = self.dynamic.get(key)
            if ns is not None and finish == "forgotten":
                del self.dynamic[key]
        if finish == "forgotten" and self.owners:
            self.owners.pop(key, None)
        if ns is not None and ns.run.finished is None:
            self._count(ns, key, start, finish)
            if finish == "memory":
                startstops = ops.compute_startstops(kwargs)
                if startstops:
                    ns.timed(key, startstops)
            if finish == "memory" and self.streams is not None and ns.weight(key):
                self.streams.finished(ns, key)
        if runs:
            self._output(key, finish, runs, str(kwargs.get("stimulus_id") or ""))

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == SOURCE_TOPIC:  # a stream's source handed on items, or ended
            ns = self.index.get(str(msg.get("node"))) if isinstance(msg, dict) else None
            if ns is not None and ns.kind == "stream" and ns.run.finished is None:
                ns.yielded = int(msg.get("items") or 0)
                ns.ended = bool(msg.get("ended"))
                ns.source_failed = bool(msg.get("failed"))
            return
        if topic == ITEM_TOPIC:
            key = _key(msg["key"])
            ns = self._node_of(key)
            if ns is not None and ns.run.finished is None:
                if len(ns.errors) < MAX_ERRORS and msg.get("error"):
                    ns.errors[key] = msg["error"]
                    if msg.get("label") is not None:
                        ns.labels.setdefault(key, msg["label"])
                task = ns.task_of(key)
                st = None if self.scheduler is None else ops.task_state(self.scheduler, task)
                ns.table.set(key, EARLY if st == "processing" else FAILED)
                if not msg.get("upstream"):
                    index = msg.get("index")
                    ns.failures.append(
                        {
                            "index": None if index is None else list(index),
                            "label": msg.get("label"),
                            "error": msg.get("error"),
                        }
                    )
        elif topic == LABEL_TOPIC:
            key = _key(msg["key"])
            ns = self._node_of(key)
            if ns is not None and ns.run.finished is None and ns.items is not None:
                ns.labels[key] = msg.get("label")
        elif topic == CACHED_TOPIC:
            key = _key(msg["key"])
            ns = self._node_of(key)
            if ns is not None and ns.run.finished is None:
                ns.table.set(key, CACHED)
        elif topic == RETRY_TOPIC:
            ns = self._node_of(_key(msg["key"]))
            if ns is not None and ns.run.finished is None:
                ns.retries += 1
        elif topic == IN_PLACE_TOPIC:
            self._in_place(_key(msg["key"]), msg.get("calls"))
        elif topic == LOG_TOPIC:
            run = self._run_of(_key(msg["key"]))
            if run is not None and self.scheduler is not None:
                ops.send_to_client(self.scheduler, run.client, FORWARD_TOPIC, msg)

    def _in_place(self, key: Any, calls: Any) -> None:
        """Dynamic task ``key`` computed its returned graph in place, making ``calls``
        (``{task name: count}``): each counted done in its box, as if spliced."""
        pns = self.dynamic.get(key) or self._node_of(key)
        if pns is None or pns.run.finished is not None or not isinstance(calls, dict):
            return
        for name, n in calls.items():
            if isinstance(name, str) and isinstance(n, int) and n > 0:
                ns = pns.run.dynamic_box(name, pns)
                ns.spliced += n
                ns.memory += n

    def _run_of(self, key: Any) -> RunState | None:
        """The run task ``key`` belongs to: its node's, its dynamic box's, or the run of
        the splice that made it (a sub-flow's task); None when unknown."""
        ns = self._node_of(key)
        if ns is None:
            ns = self.dynamic.get(key)
        return ns.run if ns is not None else self.owners.get(key)

    def _node_of(self, key: Any) -> NodeState | None:
        """The live node a task or unit ``key`` counts for: a map's by its items' name
        (``key[0]``), any other by its key."""
        return self.index.get(key[0] if type(key) is tuple else key)

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        if self.streams is not None:
            self.streams.remove_client(client)
        for run in list(self.runs.values()):
            if run.client == client and run.finished is None:
                self._finish(run, "cancelled", "client disconnected")

    def _dynamic(self, parent: Any, alias: bool, tasks: list) -> None:
        """Dynamic task ``parent`` returned a graph, whose new ``tasks`` the splice made:
        each is counted in its run's box for its task name (``fib (dynamic)``)."""
        pns = self.dynamic.get(parent)
        if pns is None:
            pns = self._node_of(parent)
        elif not alias:  # a call a dynamic task made: done, its readers read the graph
            pns.memory += 1
        if pns is None or pns.run.finished is not None:
            return
        for key in tasks:
            name = key_split(key)
            if name.startswith("dynflow-"):
                continue  # dynflow's own (a map's expander)
            ns = pns.run.dynamic_box(name, pns)
            ns.spliced += 1
            self.dynamic[key] = ns

    # ------------------------------------------------------------------ counting
    def _count(self, ns: NodeState, key: Any, start: str, finish: str) -> None:
        w = ns.weight(key)
        if not w:
            return
        if start == "processing":
            ns.running -= w
        if finish == "processing":
            ns.running += w
        if finish == "memory":
            ns.memory += w
            if ns.table.count(EARLY):
                ns.settle(key)
        elif finish == "erred":
            ns.erred += w
        elif start in ("memory", "erred") and finish == "released":
            # released: forgotten next (the result was used), or kept released while
            # others still read it: it still counts (counts never go down while a run
            # progresses); only a recomputation (a lost worker) takes it back
            ns.limbo[key] = (start, w)
        elif start == "released" and key in ns.limbo:
            was, w = ns.limbo.pop(key)
            if finish != "forgotten":  # recomputed: counts again when it finishes
                setattr(ns, was, getattr(ns, was) - w)

    def _output(self, key: Any, finish: str, runs: list[RunState], stimulus: str = "") -> None:
        for run in list(runs):
            if finish == "memory":
                run.outputs_done.add(key)
                if len(run.outputs_done) == len(run.outputs):
                    self._finish(run, "finished")
            elif finish == "erred":
                self._finish(run, "failed", self._error_of(key))
            elif finish == "forgotten":
                # the client released the output: cancelled it, or went away
                gone = ops.caused_by_client_leaving(stimulus)
                why = "client disconnected" if gone else "cancelled by the client"
                self._finish(run, "cancelled", why)

    def _error_of(self, key: Any) -> str | None:
        """What failed, for an erred task: the ``repr`` of its exception, as the worker
        reported it (``ValueError('three')``), trimmed to 500 characters."""
        text = None if self.scheduler is None else ops.failure_text(self.scheduler, key)
        return (text or "")[:500] or None

    def _finish(self, run: RunState, state: str, reason: str | None = None) -> None:
        run.state = state
        run.reason = reason
        run.finished = time()
        if self.streams is not None:
            self.streams.ended(run)
        for ns in run.nodes.values():
            ns.running = 0
            ns.limbo.clear()
            base = ns.named or ns.items
            names = (ns.key, ns.items, base, None if base is None else run_name(base, run.id))
            for k in names:
                if k is not None and self.index.get(k) is ns:
                    del self.index[k]
        if run.dynamic:
            boxes = set(map(id, run.dynamic.values()))
            for k in [k for k, ns in self.dynamic.items() if id(ns) in boxes]:
                del self.dynamic[k]
        for k in run.outputs:
            waiting = self.outputs.get(k)
            if waiting and run in waiting:
                waiting.remove(run)
                if not waiting:
                    del self.outputs[k]
        self._trim()

    def _trim(self) -> None:
        keep = dask.config.get("dynflow.dashboard.history")
        finished = [r for r in self.runs.values() if r.finished is not None]
        for run in finished[: max(0, len(finished) - keep)]:
            del self.runs[run.id]


def _key(k: Any) -> Any:
    """A key as it was before msgpack turned its tuples into lists."""
    return tuple(_key(x) for x in k) if isinstance(k, list) else k
