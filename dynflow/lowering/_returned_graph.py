"""Dynamic tasks: what a call that returned a graph becomes.

A task's function may return a dynflow node, a map node, a flow's output node, or
nodes inside a container (resolved as arguments are); or a dask collection
(``dask.delayed``, arrays, data frames: anything with ``__dask_graph__``), or several in
a container (unpacked as ``dask.compute`` does); ``df.quote(value)`` returns ``value``
as it is. :class:`Returned` is the calls'
hook (:attr:`CallPolicy.returned <dynflow.worker._calls.CallPolicy>`): it lowers that
graph, and

- in a task of its own on a distributed worker, hands it back as a
  :class:`~dynflow.worker._graph_splice.ReturnedGraph`, which the call splices into the
  scheduler in the task's place (:mod:`dynflow.worker._graph_splice`);
- on a local scheduler, computes it here, in this thread (``scheduler="sync"`` gives the
  same values and errors);
- inside a batch (several items in one task, which cannot be replaced by one graph),
  computes it on the worker's cluster from a seceded thread (``worker_client``).

The graph is lowered with the call's failure mode: inside a map item or a sub-flow
item, failures become records, as everywhere there (a dask collection's tasks are
guarded for this: a task that raises gives a record, which its dependents pass on).
It is lowered with the cache options the calling task passes on (``inherit``, from
:meth:`Task.passed_on <dynflow.graph._task.Task.passed_on>`, made where the caller's
own graph was lowered), which its tasks take where they leave them unset
(:data:`~dynflow.graph._options.CALLER_OPTIONS`).
"""

from __future__ import annotations

import asyncio
import sys
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import dask
from dask._task_spec import Alias, List, Task, TaskRef, parse_input
from dask.base import is_dask_collection, unpack_collections
from distributed import Future, worker_client

from dynflow._compat import collection_graph, local_scheduler
from dynflow._containers import find
from dynflow._context import BATCH_INDEX, LOCAL_KEYS
from dynflow.exceptions import ExtensionError
from dynflow.graph._node import (
    FlattenNode,
    MapNode,
    Node,
    find_nodes,
    quote,
    replace_nodes,
    topological,
    unmapped,
)
from dynflow.graph._options import CALLER_OPTIONS
from dynflow.worker import _in_place as in_place
from dynflow.worker._call_context import current_key
from dynflow.worker._calls import SCALARS, CallPolicy, Deferred, running_locally
from dynflow.worker._failure import Failure
from dynflow.worker._graph_splice import ReturnedGraph, needs_itself
from dynflow.worker._in_place import counting
from dynflow.worker._source import iterate

__all__ = ["Returned", "assemble", "finish_collections"]


def _special(obj: Any) -> bool:
    """Whether ``obj`` is something a returned value is not returned as it is: a node,
    a marker, a future, a generator, or a dask collection."""
    if type(obj) in SCALARS:
        return False
    return isinstance(
        obj, Node | unmapped | quote | Future | types.GeneratorType | types.AsyncGeneratorType
    ) or is_dask_collection(obj)


def _refuse_markers(policy: CallPolicy, value: Any) -> None:
    """Markers of a call's arguments and live futures are not values to return."""
    for leaf in find(value, lambda o: isinstance(o, unmapped | Future)):
        what = "df.unmapped(...)" if isinstance(leaf, unmapped) else "a distributed Future"
        raise TypeError(
            f"task {policy.task_name!r} returned {what}, which is not a value: return "
            "the value, or a node to run it in the task's place"
            + ("" if isinstance(leaf, unmapped) else "; the future is released with the task")
        )


@dataclass(frozen=True, slots=True)
class Returned:
    """The calls' hook (``CallPolicy.returned``): ``hook(policy, value)`` is ``value``
    itself or, when it holds nodes, its graph (see the module docstring). ``lower`` is
    the lowering (:func:`dynflow.lowering._lower.lower`, which makes the hook: it
    travels by reference, as the plan's functions do); ``inherit``: the cache options
    the calling task passes on to the tasks of its returned graph, ``(name, value)``."""

    lower: Callable[..., Any]
    local: bool = False  # the call runs on a local scheduler
    inherit: tuple[tuple[str, Any], ...] = ()

    def __reduce__(self) -> tuple:
        # made again where it is first called (the lowering it needs is not the
        # scheduler's business): dynflow.lowering._lower.returned_hook
        return (Deferred, ("dynflow.lowering._lower.returned_hook", (self.local, self.inherit)))

    def _lower(self, nodes: list[Node], distributed: bool, records: bool) -> Any:
        """The returned graph, lowered with the options the caller passes on."""
        token = CALLER_OPTIONS.set(dict(self.inherit))
        try:
            return self.lower(nodes, distributed=distributed, records=records)
        finally:
            CALLER_OPTIONS.reset(token)

    def __call__(self, policy: CallPolicy, value: Any) -> Any:
        if type(value) in SCALARS or not find(value, _special):
            return value  # plain data (every map item's usual value): one walk, no more
        if isinstance(value, types.GeneratorType | types.AsyncGeneratorType):
            # a task not declared a stream (README "Streaming sources"): its value is the
            # list, made where it ran (a generator cannot travel)
            return self(policy, list(iterate(policy.task_name, value)))
        if type(value) is quote:
            return value.value
        _refuse_markers(policy, value)
        nodes = find_nodes(value)
        if not nodes:
            return self._collections(policy, value)
        if find(value, is_dask_collection):
            raise TypeError(
                f"task {policy.task_name!r} returned dynflow nodes and dask collections "
                "together: return one kind (make the dask part a task of its own)"
            )
        key = self._splice_key()
        if key is None:
            return self._compute_here(policy, value, nodes, distributed=self._on_worker())
        if _in_place(policy, nodes):  # a busy worker: work first (dynflow.worker._in_place)
            return self._in_place(policy, value, nodes, key)
        graph = self._lower(nodes, distributed=True, records=policy.records)
        tasks: dict[Any, Any] = {}
        annotations: dict[Any, dict] = {}
        for layer in graph.layers.values():
            for k, spec in layer.items():
                tasks[k] = spec
                if layer.annotations:
                    annotations[k] = dict(layer.annotations)
        if isinstance(value, Node):
            output = value.key
        else:  # nodes inside a container: one more task rebuilds it
            output = f"{policy.task_name}-value-{uuid.uuid4().hex}"
            tasks[output] = Task(output, assemble, policy.records, _spec_of(value))
        queue = bool(dask.config.get("dynflow.queue-items"))
        return ReturnedGraph(policy.task_name, tasks, output, annotations, queue)

    def _in_place(self, policy: CallPolicy, value: Any, nodes: list[Node], key: Any) -> Any:
        """The returned graph computed in this thread, as on a local scheduler, its
        calls counted and told to the run tracker, its time recorded."""
        start = perf_counter()
        with counting() as calls, running_locally(key):
            out = self._compute_here(policy, value, nodes, distributed=False)
        in_place.record(policy.task_name, perf_counter() - start, calls)
        in_place.report_in_place(key, calls)
        return out

    def _splice_key(self) -> Any:
        """The key of the task this call is, when its returned graph can be spliced in
        its place; None on a local scheduler and inside a batch (computed here then)."""
        if self.local or BATCH_INDEX.get() is not None:
            return None
        return current_key()

    def _on_worker(self) -> bool:
        """Whether this call runs in a task on a cluster (not a local scheduler)."""
        return not self.local and current_key() is not None

    def _collections(self, policy: CallPolicy, value: Any) -> Any:
        """``value``, or when it is or holds dask collections, their graph (as
        ``dask.compute(value)`` would run it, optimized)."""
        collections, repack = unpack_collections(value)
        if not collections:
            return value
        for c in collections:
            futures = [v for v in dict(c.__dask_graph__()).values() if isinstance(v, Future)]
            if futures:
                for f in futures:  # now, not when the error (which holds them) is freed
                    f.release()
                raise TypeError(
                    f"task {policy.task_name!r} returned a persisted dask collection (its "
                    "graph holds futures, which are released when the task ends): return "
                    "the collection before .persist(), or compute it in the task"
                )
        if self._splice_key() is None:
            try:
                if not self._on_worker():
                    (out,) = dask.compute(value, scheduler=local_scheduler("sync"))
                else:
                    with worker_client() as client:
                        out = client.compute(value, sync=True)
            except Exception as e:
                if not policy.records:
                    raise
                return Failure(e, policy.task_name)
            return out
        tasks: dict[Any, Any] = {}
        output = f"{policy.task_name}-value-{uuid.uuid4().hex}"
        values = []
        for i, c in enumerate(collections):
            # each as dask.compute computes it (optimized, its value finalized)
            graph = collection_graph(c, f"{output}-{i}")
            tasks.update(guarded(graph, policy.task_name) if policy.records else graph)
            values.append(TaskRef(f"{output}-{i}"))
        tasks[output] = Task(output, finish_collections, policy.records, repack, List(*values))
        queue = bool(dask.config.get("dynflow.queue-items"))
        return ReturnedGraph(policy.task_name, tasks, output, {}, queue)

    def _compute_here(
        self, policy: CallPolicy, value: Any, nodes: list[Node], distributed: bool
    ) -> Any:
        """The returned graph computed from this thread: on a local scheduler
        (``sync``), or inside a batch on the worker's own cluster."""
        graph = self._lower(nodes, distributed=distributed, records=policy.records)
        keys = [n.key for n in nodes]
        if distributed:
            with worker_client() as client:
                results = client.get(dict(graph), keys, sync=True)
        else:
            running = LOCAL_KEYS.get()
            again = [k for k in running if k in graph]
            if again:  # as the scheduler says it (the splice's cycle check)
                raise ExtensionError(needs_itself(policy.task_name, again[-1]))
            # each level of a returned graph nests a few calls deeper in this thread
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(limit, 1000 + 40 * (len(running) + 1)))
            try:
                in_place.count_calls(graph)
                results = dask.get(dict(graph), keys)
            finally:
                sys.setrecursionlimit(limit)
        values = dict(zip(keys, results, strict=True))
        if isinstance(value, Node):
            out = values[value.key]
            if type(out) is Failure and not policy.records:
                raise out.exception
            return out
        return assemble(policy.records, replace_nodes(value, lambda n: values[n.key]))


#: a returned graph of at most this many calls may be computed in place
IN_PLACE_NODES = 16


def _in_place(policy: CallPolicy, nodes: list[Node]) -> bool:
    """Whether a returned graph is computed in the calling thread instead of spliced:
    a few plain calls (no map: its items are what the cluster is for), an event loop
    not running here (an async call's hook runs on the worker's loop), the worker
    busy, and this task's graphs computed in place quick so far."""
    try:
        asyncio.get_running_loop()
        return False
    except RuntimeError:
        pass
    if not (in_place.busy() and in_place.short(policy.task_name)):
        return False  # the usual case, decided before the graph is walked
    graph = topological(nodes)
    # a map's items, and calls under a concurrency limit, are spliced
    return len(graph) <= IN_PLACE_NODES and not any(
        isinstance(n, MapNode | FlattenNode) or _limited(n) for n in graph
    )


def _limited(node: Node) -> bool:
    """Whether ``node`` is a call of a task that carries a concurrency limit (held by
    the scheduler: never computed in place, which would bypass it)."""
    task = getattr(node, "task", None)
    return task is not None and task.options.get("concurrency_limit") is not None


@dataclass(frozen=True, slots=True)
class _Guarded:
    """A returned dask collection's task inside a map item or sub-flow item: a failure
    record among its arguments is passed on, and an exception becomes a record."""

    func: Callable[..., Any]
    task_name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for leaf in find((args, kwargs), lambda o: type(o) is Failure):
            return leaf
        try:
            return self.func(*args, **kwargs)
        except Exception as e:
            return Failure(e, self.task_name)


def guarded(tasks: dict[Any, Any], task_name: str) -> dict[Any, Any]:
    """A dask collection's ``tasks``, each run so that a failure record among its
    arguments is passed on and an exception becomes a record (:class:`_Guarded`)."""
    return {
        k: Task(k, _Guarded(t.func, task_name), *t.args, **t.kwargs) if isinstance(t, Task) else t
        for k, t in tasks.items()
    }


def finish_collections(records: bool, repack: Callable[[Any], Any], results: list) -> Any:
    """The value of returned dask collections: their values (``results``) repacked as
    they were returned. A failure record among them fails it (see :func:`assemble`)."""
    checked = assemble(records, results)
    if type(checked) is Failure:
        return checked
    (value,) = repack(results)
    return value


def _spec_of(value: Any) -> Any:
    return parse_input(replace_nodes(value, lambda n: Alias(n.key), spec=True))


def assemble(records: bool, value: Any) -> Any:
    """A container of a returned graph's values; a failure record among them fails it
    (its record where failures are records, else its exception)."""
    for leaf in find(value, lambda o: type(o) is Failure):
        if records:
            return leaf
        raise leaf.exception
    return value
