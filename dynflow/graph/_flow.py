"""``@flow``: functions that compose tasks into one graph."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    ParamSpec,
    Protocol,
    TypedDict,
    TypeVar,
    Unpack,
    overload,
)

from dask.utils import funcname

from dynflow._context import BUILDING, CREATED, FLOW_OPTIONS, RUNNING_TASK
from dynflow._public import public
from dynflow.graph._bindable import Bindable, bind_instance
from dynflow.graph._mapargs import bind_map
from dynflow.graph._node import (
    Node,
    SubflowMapNode,
    _first,
    find_nodes,
    set_flow_name,
    topological,
)
from dynflow.graph._options import (
    FLOW_TASK_OPTIONS,
    FlowOptions,
    check_map_options,
    check_options,
    dynflow_keywords,
    wait_for_nodes,
)
from dynflow.graph._reference import by_reference
from dynflow.graph._task import Task

if TYPE_CHECKING:
    from dynflow.client._run import RunFuture

__all__ = ["Flow", "FlowDecorator", "flow"]

P = ParamSpec("P")
R = TypeVar("R")


def _compute(node: Node, name: str) -> Any:
    """``node.compute()`` as a run named ``name`` (awaitable with an asynchronous client)."""
    from dynflow.client._submit import compute, user_traceback  # facade: client

    with user_traceback():
        out = compute(node, name=name)
    return _first(out) if inspect.isawaitable(out) else out[0]


def _output(value: Any) -> Any:
    """A flow's output value: its nodes already hold their values when this runs."""
    return value


class _MapDefaults(TypedDict):
    """The defaults of ``flow.map()`` (set by ``@flow(...)`` and ``with_options``)."""

    wait_for: tuple[Node, ...]
    min_success_ratio: float


class Flow(Bindable, Generic[P, R]):
    """A function whose body composes tasks; made with the :func:`flow` decorator.

    Called at top level, it builds its graph and computes it, returning the value.
    Called inside another flow, it returns its output node, so independent sub-flows
    run in parallel on the cluster.
    """

    __slots__ = (
        "__dict__",
        "_fn",
        "_map_options",
        "_name",
        "_signature",
        "_task_options",
    )

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        log_prints: bool | None = None,
        wait_for: Node | Iterable[Node] | None = None,
        min_success_ratio: float = 1.0,
        **task_options: Any,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@flow expects a function, got {type(fn).__name__}")
        if name is not None and not (isinstance(name, str) and name):
            raise TypeError(f"flow {funcname(fn)!r}: option name={name!r}; expected a string")
        called = name or funcname(fn)
        self._task_options = _flow_task_options(called, {"log_prints": log_prints, **task_options})
        try:
            waits = wait_for_nodes(wait_for)
        except TypeError:
            raise TypeError(
                f"flow {called!r}: option wait_for={wait_for!r}; expected a node or "
                "an iterable of nodes"
            ) from None
        check_map_options(called, min_success_ratio, None, None)
        self._bound = None
        self._fn = fn
        self._name = name or funcname(fn)
        # defaults of flow.map() (not pickled: a flow run per item travels without them)
        self._map_options: _MapDefaults = {
            "wait_for": waits,
            "min_success_ratio": min_success_ratio,
        }
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

    @property
    def log_prints(self) -> bool | None:
        """Whether its tasks forward prints and logs to the client (None: the config's)."""
        return self._task_options.get("log_prints")

    @property
    def task_options(self) -> dict[str, Any]:
        """The options the flow sets for its tasks that leave them unset (``log_prints``,
        ``cache``, ``cache_expiration``, ``refresh_cache``, ``result_storage``)."""
        return dict(self._task_options)

    def with_options(self, **options: Unpack[FlowOptions]) -> Flow[P, R]:
        """Return a copy of the flow with other options.

        ``wait_for`` and ``min_success_ratio`` are defaults of :meth:`map` (the way to
        set them when the flow has parameters of those names); the others are the
        options the flow sets for its tasks (see :func:`flow`).
        """
        o = self._map_options
        given: dict[str, Any] = dict(options)
        name = given.pop("name", None)
        wait_for = given.pop("wait_for", None)
        min_success_ratio = given.pop("min_success_ratio", None)
        changed = {k: v for k, v in given.items() if v is not None}
        return self._rebound(
            Flow(
                self._fn,
                name=name or self._name,
                wait_for=o["wait_for"] if wait_for is None else wait_for,
                min_success_ratio=(
                    o["min_success_ratio"] if min_success_ratio is None else min_success_ratio
                ),
                **{**self._task_options, **changed},
            )
        )

    def __repr__(self) -> str:
        return f"<Flow {self.name}{self._signature}>"

    def _repr_html_(self) -> str:
        from dynflow.views._reprs import flow_html  # facade: views

        return flow_html(self)

    def visualize(self, *args: Any, **kwargs: Any) -> Any:
        """Build the graph for these arguments and draw it (see :func:`dynflow.visualize`).

        ``filename`` and ``engine`` are :func:`dynflow.visualize`'s, unless the flow has
        parameters of those names (then use ``df.visualize(flow.build(...), ...)``).
        """
        from dynflow.views._render import visualize  # facade: views

        ours = dynflow_keywords(self._signature, kwargs, ("filename", "engine"))
        return visualize(self.build(*args, **kwargs), **ours)

    def __reduce__(self) -> tuple:
        if self._bound is not None:
            return bind_instance, self._bound
        # a module-level flow travels as a reference, like a plain function
        state = {"_name": self._name, "_task_options": self._task_options}
        return by_reference(self, self._fn) or (Flow, (self._fn,), state)

    def __setstate__(self, state: dict) -> None:
        self._bound = None
        self._name = state["_name"]
        self._task_options = state.get("_task_options", {})
        self._map_options = {"wait_for": (), "min_success_ratio": 1.0}

    def build(self, *args: P.args, **kwargs: P.kwargs) -> Node[R]:
        """Run the body to build the graph; return its output node (nothing runs)."""
        call_args = self._with_instance(args)
        self._bind("()", call_args, kwargs)
        token = BUILDING.set(self.name)
        options = FLOW_OPTIONS.get()
        if self._task_options:  # an inner flow's options win over the outer one's
            options = {**options, **self._task_options}
        options_token = FLOW_OPTIONS.set(options)
        created: list[Node] = []
        created_token = CREATED.set(created)
        try:
            # to a type checker an R; when built, the body's nodes, or plain values
            value: object = self._fn(*call_args, **kwargs)
        finally:
            CREATED.reset(created_token)
            FLOW_OPTIONS.reset(options_token)
            BUILDING.reset(token)
        # every node made in the body runs: the output waits for those it does not need
        # (side effects: `write_rows(rows)` without using its value)
        needed = {n.key for n in topological(find_nodes(value))}
        unused = [n for n in created if n.key not in needed]
        used_by_unused = {d.key for n in unused for d in n.dependencies}
        sinks = [n for n in unused if n.key not in used_by_unused]
        out: Node[R]
        if sinks or not isinstance(value, Node):
            # Task[..., Any]: wait_for= is dynflow's keyword, outside the function's signature
            output: Task[..., Any] = Task(_output, name=self.name)
            out = output(value, wait_for=sinks)
        else:
            out = value
        set_flow_name(out, self.name)  # runs of it are named after the flow
        if (outer := CREATED.get()) is not None:
            outer.append(out)  # made in the body of the flow that called this one
        return out

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """At top level: build and compute, return the value. In a flow, and inside a
        task (which may return it to have it run in its place): the output node."""
        node = self.build(*args, **kwargs)
        if BUILDING.get() is not None or RUNNING_TASK.get() is not None:
            return node  # type: ignore[return-value] # a type checker sees the value
        from dynflow.client._submit import user_traceback  # facade: client

        with user_traceback():  # this frame too
            return _compute(node, self.name)

    def map(self, *args: Any, **kwargs: Any) -> list[R]:
        """Run the whole flow once per item; a map node of the flow's outputs.

        Parameters
        ----------
        *args, **kwargs
            The flow's arguments, mapped (lists, nodes, map nodes) or static
            (``unmapped``), as in :meth:`Task.map`.
        wait_for : Node or iterable of Node, optional
            Start only after these nodes finished.
        min_success_ratio : float
            In ``[0, 1]``: as in :meth:`Task.map`.

        Arguments are mapped as in :meth:`Task.map`, and ``wait_for`` and
        ``min_success_ratio`` mean the same (taken from the call unless the flow has
        parameters of those names; :meth:`with_options` sets them then). On a cluster,
        each item's sub-flow is built on a worker once the mapped values exist and added
        to the scheduler: its tasks, and any maps inside it, expand per item.
        (``batch_size`` and ``max_concurrency`` are for ``task.map``: a sub-flow is not
        one task.)

        Returns
        -------
        MapNode
            Its value is the list of the flow's outputs, in item order.

        Raises
        ------
        TypeError
            Arguments that do not fit the flow's signature, or a bad option.
        MapInputError, MapLengthError
            As for :meth:`Task.map`.

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
        for option in ("batch_size", "max_concurrency"):
            if option in kwargs and option not in self._signature.parameters:
                raise TypeError(
                    f"{self.name}.map(): {option} is not supported for a flow run per item "
                    "(a sub-flow is several tasks); set it on the maps inside the flow"
                )
        call = bind_map(self, ("wait_for", "min_success_ratio"), args, kwargs, self._map_options)
        task = Task(self._fn, name=self.name)
        # the instance is already the first (unmapped) argument: the unbound flow runs
        flow = self if self._bound is None else self._bound[0]
        # built on the workers, outside this flow's body: the options of the flow being
        # built (cache, log_prints...) go with it, under its own
        outer = {
            k: v
            for k, v in FLOW_OPTIONS.get().items()
            if v is not None and flow._task_options.get(k) is None
        }
        if outer:
            flow = flow.with_options(**outer)
        node = SubflowMapNode(
            flow,
            task,
            call.slots,
            call.kwslots,
            call.wait_for,
            min_success_ratio=call.min_success_ratio,
        )
        return node  # type: ignore[return-value] # a type checker sees the list

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> RunFuture[R]:
        """Build the graph and start it as a run named after the flow; return its future."""
        from dynflow.client._submit import submit  # facade: client

        (future,) = submit(self.build(*args, **kwargs), name=self.name)
        return future

    def compute(
        self,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Same as calling the flow at top level."""
        return _compute(self.build(*args, **kwargs), self.name)


def _flow_task_options(flow_name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options a flow sets for its tasks, checked as task options are (None: unset)."""
    unknown = sorted(set(options) - set(FLOW_TASK_OPTIONS))
    if unknown:
        raise TypeError(
            f"flow {flow_name!r}: unknown option {unknown[0]!r}; expected one of name, "
            f"wait_for, min_success_ratio, {', '.join(FLOW_TASK_OPTIONS)}"
        )
    given = {k: v for k, v in options.items() if v is not None}
    return check_options(flow_name, given, kind="flow")


class FlowDecorator(Protocol):
    """What ``@df.flow(...)`` with options returns: applied to a function, a flow."""

    def __call__(self, fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...
@overload
def flow(**options: Unpack[FlowOptions]) -> FlowDecorator: ...
def flow(fn: Callable | None = None, /, *, name: str | None = None, **options: Any) -> Any:
    """Turn a function into a :class:`Flow` that composes tasks into one graph.

    Called at top level, the flow builds its graph and computes it; inside another flow
    it returns its output node. Every task called in the body runs, also those whose
    result is not used; the return value is the flow's value.

    Parameters
    ----------
    fn : callable
        The body: calls tasks (and other flows) on nodes and returns nodes or values.
    name : str, optional
        Name of the flow; default: the function's name.
    log_prints : bool, optional
        Forward what its tasks print or log to the client, tagged with each call's
        label (tasks that set their own ``log_prints`` keep it). Default: the config
        key ``dynflow.log-prints``.
    cache, cache_expiration, refresh_cache, result_storage : optional
        Result caching for the tasks called in the body (and in the flows it calls or
        maps) that do not set these options themselves; a dynamic task among them
        passes ``cache_expiration``, ``refresh_cache`` and ``result_storage`` on to
        the graph its call returns (not ``cache``); see :func:`task`.
    wait_for, min_success_ratio : optional
        Defaults of :meth:`Flow.map`.

    Returns
    -------
    Flow
        Or, called with options only, a decorator that makes one.

    Raises
    ------
    TypeError
        ``fn`` is not callable, or an option does not fit, naming the flow (its
        ``name``, else the function's), the option and what is expected; options
        given without the function are checked when the decorator is applied.

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
        return Flow(fn, name=name, **options)
    # checked when applied, naming the function (or the name option)
    return lambda f: Flow(f, name=name, **options)


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(Flow, flow)
