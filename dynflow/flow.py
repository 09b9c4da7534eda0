"""``@flow``: functions that compose tasks into one graph."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from dask.utils import funcname

from dynflow.node import BUILDING, MapNode, Node, SubflowMapNode
from dynflow.task import Task, by_reference, map_slots

if TYPE_CHECKING:
    from distributed import Future

__all__ = ["Flow", "flow"]

P = ParamSpec("P")
R = TypeVar("R")


def _output(value: Any) -> Any:
    """A flow's output value: its nodes already hold their values when this runs."""
    return value


class Flow(Generic[P, R]):
    """A function whose body composes tasks; made with the :func:`flow` decorator.

    Called at top level, it builds its graph and computes it, returning the value.
    Called inside another flow, it returns its output node, so independent sub-flows
    run in parallel on the cluster.
    """

    __slots__ = ("__dict__", "_fn", "_name", "_signature")

    def __init__(self, fn: Callable[P, R], *, name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"@flow expects a function, got {type(fn).__name__}")
        if name is not None and not (isinstance(name, str) and name):
            raise TypeError(f"flow {funcname(fn)!r}: option name={name!r}; expected a string")
        self._fn = fn
        self._name = name or funcname(fn)
        self._signature = inspect.signature(fn)
        functools.update_wrapper(self, fn)

    @property
    def fn(self) -> Callable[P, R]:
        """The plain, undecorated function."""
        return self._fn

    @property
    def name(self) -> str:
        """The flow's name; the key prefix of its output node."""
        return self._name

    def with_options(self, *, name: str | None = None) -> Flow[P, R]:
        """Return a copy of the flow with a different name."""
        return Flow(self._fn, name=name or self._name)

    def __repr__(self) -> str:
        return f"<Flow {self.name}{self._signature}>"

    def __reduce__(self) -> tuple:
        # a module-level flow travels as a reference, like a plain function
        return by_reference(self, self._fn) or (Flow, (self._fn,), {"_name": self._name})

    def __setstate__(self, state: dict) -> None:
        self._name = state["_name"]

    def _bind(self, how: str, args: tuple, kwargs: dict) -> inspect.BoundArguments:
        try:
            return self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(
                f"{self.name}{how}: {e}; the flow's signature is {self.name}{self._signature}"
            ) from None

    def build(self, *args: P.args, **kwargs: P.kwargs) -> Node:
        """Run the body to build the graph; return its output node (nothing runs)."""
        self._bind("()", args, kwargs)
        token = BUILDING.set(self.name)
        try:
            out = self._fn(*args, **kwargs)
        finally:
            BUILDING.reset(token)
        if isinstance(out, Node):
            return out
        return Task(_output, name=self.name)(out)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """At top level: build and compute, return the value. In a flow: the output node."""
        node = self.build(*args, **kwargs)
        if BUILDING.get() is not None:
            return node
        return node.compute()

    def map(self, *args: Any, **kwargs: Any) -> MapNode:
        """Run the whole flow once per item; a map node of the flow's outputs.

        Arguments are mapped as in ``task.map``. On a cluster, each item's sub-flow is
        built on a worker once the mapped values exist and added to the scheduler:
        its tasks, and any maps inside it, expand per item.

        Examples
        --------
        >>> import dynflow as df
        >>> @df.task
        ... def inc(x):
        ...     return x + 1
        >>> @df.flow
        ... def twice(x):
        ...     return inc(inc(x))
        >>> twice.map([1, 2, 3]).compute(scheduler="sync")
        [3, 4, 5]
        """
        bound = self._bind(".map()", args, kwargs)
        slots, kwslots = map_slots(self.name, self._signature, bound)
        node = SubflowMapNode(Task(self._fn, name=self.name), slots, kwslots)
        object.__setattr__(node, "_flow", self)
        return node

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Future:
        """Build the graph and start it; return a ``distributed.Future`` of its value."""
        return self.build(*args, **kwargs).submit()

    def compute(
        self,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Any:
        """Same as calling the flow at top level."""
        return self.build(*args, **kwargs).compute()


def flow(fn: Callable | None = None, /, *, name: str | None = None) -> Any:
    """Turn a function into a :class:`Flow` that composes tasks into one graph.

    Parameters
    ----------
    name : str, optional
        Name of the flow; default: the function's name.

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def inc(x):
    ...     return x + 1
    >>> @df.flow
    ... def pipeline(x):
    ...     return inc(inc(x))
    >>> pipeline.build(1).compute(scheduler="sync")
    3
    """
    if fn is not None:
        return Flow(fn, name=name)
    return lambda f: Flow(f, name=name)
