"""A sub-flow stage: a whole sub-flow per item of a map.

The sub-flows are built where user code may run: on the worker, by the expander
(:meth:`SubflowStage.build_subflows`), or in this process for a local run; the
scheduler only adds the tasks it is sent. A plan with a sub-flow stage is unpickled on
the scheduler too, which so imports this module and the flow's classes (``graph/``),
but never calls them; the lowering the stage builds with travels by name (a
:class:`~dynflow.worker._calls.Deferred`), so the scheduler does not import it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from dask._task_spec import Alias, Task
from dask.local import get_sync
from dask.utils import key_split

from dynflow._containers import substitute
from dynflow.graph._node import KeyNode
from dynflow.graph._task import Task as DynflowTask
from dynflow.lowering._expansion import StageTasks
from dynflow.lowering._markers import (
    Concrete,
    Existing,
    ItemOf,
    ItemRefs,
    Prefix,
    StageItem,
    pick,
    resolve,
)
from dynflow.lowering._stage import Stage

if TYPE_CHECKING:
    from dynflow.graph._flow import Flow

__all__ = ["SubflowStage", "key_node"]


@dataclass(frozen=True, slots=True)
class SubflowStage(Stage):
    """A whole sub-flow per item (``fn`` is the flow); item ``i`` is its output.

    The sub-flows are built where user code may run: on the worker, by the expander
    (:meth:`build_subflows`); the scheduler only adds the tasks it is sent. ``lower`` is
    the lowering they are built with (:class:`dynflow.lowering._lower.LowerSubflow`,
    which makes this plan; a :class:`~dynflow.worker._calls.Deferred` made where it is
    first called, so that the scheduler, which unpickles the plan, does not import it).
    """

    lower: Callable[..., Any] | None = None

    subflow = True

    def items(self, prefix: Prefix, n: int, refs: ItemRefs) -> list[Task]:
        raise RuntimeError("internal error: sub-flow stages are built on the worker")

    def build_item(self, i: int, src: Callable, stg: Callable, ext: Callable) -> Any:
        """Build item ``i``'s sub-flow; return its output node.

        ``src(key, i)``, ``stg(key, i)`` and ``ext(key)`` give the values that stand for
        the markers ``ItemOf``, ``StageItem`` and ``Existing`` in the flow's arguments.
        """

        def leaf(m: Any) -> Any:
            t = type(m)
            if t is ItemOf:
                return src(m.key, i)
            if t is StageItem:
                return stg(m.key, i)
            if t is Existing:
                return ext(m.key)
            return value(m.values[i - m.offset])  # Concrete

        def value(obj: Any) -> Any:
            return substitute(obj, _is_flow_marker, leaf)

        flow = cast("Flow[..., Any]", self.fn)  # a sub-flow stage's function is its flow
        return flow.build(
            *(value(a) for a in self.args), **{k: value(v) for k, v in self.kwargs.items()}
        )

    def build_subflows(
        self, prefix: Prefix, n: int, expander: Any, listed: Mapping[Any, list]
    ) -> list[StageTasks]:
        """Each item's sub-flow, lowered (by :attr:`lower`); ``listed``: the sources the
        expander ``expander`` turned into lists (items read them from it)."""
        assert self.lower is not None

        def item(key: Any, i: int) -> Any:
            if key in listed:
                return _PICK(key_node(expander), key, i)
            return _ITEM(key_node(key), i)

        out: list[StageTasks] = []
        for i in range(n):
            output = self.build_item(
                i,
                src=lambda key, j: item(resolve(key, prefix), j),
                stg=lambda key, j: key_node((key, *prefix, j)),
                ext=key_node,
            )
            graph = self.lower([output], distributed=True, records=True)
            for layer in graph.layers.values():
                out.append(StageTasks(layer.annotations or {}, list(layer.values())))
            out.append(StageTasks(self.annotations, [Alias((self.key, *prefix, i), output.key)]))
        return out

    def run_locally(self, data: Mapping[Any, Any], n: int) -> list:
        """Each item's sub-flow computed in this process, in order."""

        lower = self.lower
        assert lower is not None

        def run(i: int) -> Any:
            node = self.build_item(
                i, src=lambda key, j: data[key][j], stg=_no_stage, ext=data.__getitem__
            )
            # as on a cluster: its failures are records, naming the task they came from
            return get_sync(dict(lower([node], distributed=False, records=True)), node.key)

        return [run(i) for i in range(n)]


def _is_flow_marker(obj: Any) -> bool:
    return type(obj) in (ItemOf, StageItem, Concrete, Existing)


def _no_stage(key: Any, i: int) -> Any:  # pragma: no cover - local maps have no stages
    raise RuntimeError("internal error: a local sub-flow map reads no other stage")


def key_node(key: Any) -> Any:
    """A node standing for existing key ``key`` (inside a sub-flow built per item)."""
    return KeyNode(DynflowTask(_never_called, name=key_split(key)), key)


def _never_called(*_: Any) -> Any:  # pragma: no cover - a KeyNode has no task
    raise RuntimeError("internal error: a KeyNode's task was run")


#: a sub-flow's mapped input, read by the sub-flow built per item: item ``i`` of an
#: upstream value, or of a source the expander turned into a list
_ITEM: DynflowTask = DynflowTask(operator.getitem, name="dynflow-item")
_PICK: DynflowTask = DynflowTask(pick, name="dynflow-item")
