"""Values in a graph's arguments that become tasks of their own when it is lowered:
large concrete values (a data task each, ``dynflow.large-argument``) and dask
collections (their graph, and a task computing their value as ``dask.compute`` does)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask.config
from dask._task_spec import DataNode
from dask.base import is_dask_collection, tokenize
from dask.sizeof import sizeof
from dask.utils import key_split, parse_bytes

from dynflow._compat import collection_graph
from dynflow._containers import find, substitute
from dynflow.graph._node import Node, find_nodes, unmapped
from dynflow.lowering._returned_graph import guarded
from dynflow.lowering._subflow_stage import key_node

__all__ = ["LargeValues", "holds_upstream", "is_collection"]


class LargeValues:
    """Large concrete values found in the arguments while a graph is lowered for a
    cluster, each made a data task of its own (``dynflow-data-<token>``) that the tasks
    reading it depend on (``dynflow.large-argument``): the value is sent to each worker
    that needs it once, not inside every task's spec (a ``df.unmapped(array)`` that
    every item of a map receives). Subtrees holding nodes are never data."""

    def __init__(self, data: bool = True) -> None:
        # data=False (a local scheduler): only dask collections are taken out
        self.limit = parse_bytes(dask.config.get("dynflow.large-argument")) if data else None
        self.tasks: dict[str, DataNode] = {}
        self._keys: dict[int, str] = {}  # id(value) -> its key (one token per value)
        # dask collections in arguments: per collection, its (optimized) graph and the
        # task that gives its value (as dask.compute would), under the same key
        self.collections: dict[str, dict[Any, Any]] = {}
        self._collection_keys: dict[tuple[int, bool], str] = {}

    def is_large(self, obj: Any) -> bool:
        if self.limit is None or type(obj) in _SMALL or isinstance(obj, (Node, unmapped)):
            return False
        return sizeof(obj) >= self.limit and not find_nodes(obj)

    def collection(self, value: Any, records: bool = False) -> str:
        """The key of the task whose value is dask collection ``value`` computed, as
        ``dask.delayed`` passes a collection argument (a Bag's list, an Array's
        ndarray, a DataFrame's pandas frame, a Delayed's value); its graph runs in the
        same run (made the first time). ``records``: for a node whose failures are
        records (upstream of an ``allow_failure`` consumer): a task of the collection
        that fails makes its value a failure record, not a dask error."""
        memo = (id(value), records)
        key = self._collection_keys.get(memo)
        if key is None:
            kind = "collection-records" if records else "collection"
            key = self._collection_keys[memo] = f"dynflow-{kind}-{tokenize(value)}"
            if key not in self.collections:
                tasks = collection_graph(value, key)
                if records:
                    tasks = guarded(tasks, key_split(str(getattr(value, "name", "") or key)))
                self.collections[key] = tasks
        return key

    def key(self, value: Any) -> str:
        """The key of the data task holding ``value`` (made the first time)."""
        key = self._keys.get(id(value))
        if key is None:
            key = self._keys[id(value)] = f"dynflow-data-{tokenize(value)}"
            self.tasks.setdefault(key, DataNode(key, value))
        return key

    def replace(
        self, obj: Any, fn: Callable[[Any], Any], spec: bool = False, records: bool = False
    ) -> Any:
        """``obj`` with nodes, and large values, given to ``fn`` (a large value as a
        :class:`~dynflow.graph._node.KeyNode` of its data task, a dask collection of
        the task computing it; ``records``: see :meth:`collection`)."""

        def leaf(o: Any) -> Any:
            if isinstance(o, Node):
                return fn(o)
            if isinstance(o, unmapped):
                return unmapped(self.replace(o.value, fn, records=records))
            if is_collection(o):
                return fn(key_node(self.collection(o, records)))
            return fn(key_node(self.key(o)))

        return substitute(
            obj,
            lambda o: isinstance(o, (Node, unmapped)) or is_collection(o) or self.is_large(o),
            leaf,
            spec,
        )


def holds_upstream(value: Any) -> bool:
    """Whether an argument is a container holding a node or a dask collection (whose
    value, failed, is a failure record inside it)."""
    if isinstance(value, Node) or is_collection(value):
        return False
    return bool(find(value, lambda o: isinstance(o, Node) or is_collection(o)))


def is_collection(obj: Any) -> bool:
    """A dask collection (not a dynflow node) in a task's arguments."""
    return not isinstance(obj, Node) and is_dask_collection(obj)


#: values never large enough to matter (their sizeof is not worth asking)
_SMALL = frozenset({int, float, complex, bool, type(None)})
