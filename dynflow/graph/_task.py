"""``@task``: plain functions that become lazy graph nodes when called."""

from __future__ import annotations

import functools
import inspect
import string
import typing
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterator,
    Mapping,
)
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, Unpack, overload

import dask.config
from dask.utils import funcname

from dynflow._context import FLOW_OPTIONS
from dynflow._public import public
from dynflow.graph import _mapargs
from dynflow.graph._bindable import Bindable, bind_instance
from dynflow.graph._mapargs import add_waits, bind_map
from dynflow.graph._node import MapNode, Node, StreamNode
from dynflow.graph._options import (
    CALL_KEYWORDS,
    CALLER_OPTIONS,
    FLOW_TASK_OPTIONS,
    MAP_KEYWORDS,
    OPTIONS,
    PASSED_ON,
    TaskOptions,
    absolute_storage,
    cache_config,
    check_options,
    dynflow_keywords,
    result_storage,
)
from dynflow.graph._reference import TaskFunction, by_reference, lookup
from dynflow.worker._cache import CachePolicy, check_storage, function_token, task_identity
from dynflow.worker._calls import CallPolicy

if TYPE_CHECKING:
    from dynflow.client._run import RunFuture

__all__ = ["Task", "TaskDecorator", "task"]

P = ParamSpec("P")
R = TypeVar("R")


def _defaults(signature: inspect.Signature) -> tuple[tuple[str, Any], ...]:
    """The function's parameters with defaults, in order (a call's cache key counts
    ``f(1)`` and ``f(1, b=5)`` as one call when ``b=5`` is the default)."""
    return tuple(
        (p.name, p.default)
        for p in signature.parameters.values()
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def _check_run_name(name: str, run_name: Any, signature: inspect.Signature) -> None:
    """A ``task_run_name`` template names only the function's parameters and
    ``map_index`` (else a ``TypeError`` naming the task and the field, now, not a
    broken label when an item fails)."""
    if not isinstance(run_name, str):
        return
    known = {*signature.parameters, "map_index"}
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(run_name) if f is not None]
    except ValueError as e:
        raise TypeError(
            f"task {name!r}: option task_run_name={run_name!r} is not a template: {e}"
        ) from None
    for field in fields:
        root = field.split(".", 1)[0].split("[", 1)[0]
        if root not in known:
            raise TypeError(
                f"task {name!r}: option task_run_name={run_name!r} names {root!r}; expected "
                f"the function's parameters or map_index: {', '.join(sorted(known))}"
            )


#: return annotations that make a task a stream
_STREAM_RETURNS = (Iterator, Generator, AsyncIterator, AsyncGenerator)


def is_stream(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` makes a stream when called: a generator function, an async
    generator function, or a function annotated to return an iterator or generator
    (``collections.abc`` or ``typing``); see :class:`~dynflow.graph._node.StreamNode`."""
    fn = inspect.unwrap(fn)
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        return True
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that cannot be resolved here: not a stream
        return False
    return (typing.get_origin(hint) or hint) in _STREAM_RETURNS


class Task(Bindable, Generic[P, R]):
    """A function that builds lazy :class:`~dynflow.Node` objects when called.

    Made with the :func:`task` decorator. ``task.fn`` is the plain function.
    """

    __slots__ = ("__dict__", "_fn", "_options", "_signature")

    def __init__(self, fn: Callable[P, R], **options: Any) -> None:
        self._bound = None
        if not callable(fn):
            raise TypeError(f"@task expects a function, got {type(fn).__name__}")
        name = options.get("name")
        checked = check_options(name if isinstance(name, str) and name else funcname(fn), options)
        opts = {k: default for k, (default, _, _) in OPTIONS.items()}
        opts.update(checked)
        if opts["name"] is None:
            opts["name"] = funcname(fn)
        self._fn = fn
        self._options = MappingProxyType(opts)
        self._signature = inspect.signature(fn)
        _check_run_name(opts["name"], opts["task_run_name"], self._signature)
        functools.update_wrapper(self, fn)

    @property
    def is_stream(self) -> bool:
        """Whether a call makes a stream (:func:`is_stream`): ``g.map(call)`` starts
        each item as soon as the function has yielded it (README "Streaming sources")."""
        memo = self.__dict__.get("_is_stream")
        if memo is None:
            memo = self.__dict__["_is_stream"] = is_stream(self._fn)
        return memo

    @property
    def fn(self) -> Callable[P, R]:
        """The plain, undecorated function."""
        return self._fn

    def policy(self, records: bool) -> CallPolicy:
        """How this task's calls run (retries, timeout): :mod:`dynflow.worker._calls`."""
        o = self._options
        log_prints = o["log_prints"]
        if log_prints is None:
            log_prints = bool(dask.config.get("dynflow.log-prints"))
        return CallPolicy(
            self.name,
            o["retries"],
            o["retry_delay"],
            o["retry_backoff"],
            o["retry_jitter"],
            o["retry_on"],
            o["timeout"],
            records,
            o["task_run_name"],
            log_prints,
            self._params() if o["task_run_name"] is not None else (),
            inspect.iscoroutinefunction(self._fn),
            cache=self._cache_policy(),
        )

    def _cache_policy(self) -> CachePolicy | None:
        """The calls' cache policy (None: not cached).

        Each option is the task's own; else the flow's (``_in_flow``, made when the node
        was); else, for ``cache_expiration``, ``refresh_cache`` and ``result_storage``,
        what the task whose call returned this graph passes on (:func:`passed_on`);
        else the dask config's (``dynflow.cache.*``, ``dynflow.result-storage``, checked
        by :func:`cache_config`). The storage is checked here, where the graph is built
        (:func:`check_storage`)."""
        o = self._options
        enabled = o["cache"]
        if enabled is None:
            enabled = bool(cache_config("dynflow.cache.enabled", self.name))
        if not enabled:
            return None
        caller = CALLER_OPTIONS.get()
        storage = o["result_storage"] or caller.get("result_storage") or result_storage(self.name)
        storage = absolute_storage(storage)
        check_storage(storage)
        expiration = o["cache_expiration"]
        if expiration is None:
            expiration = caller.get("cache_expiration")
        if expiration is None:
            expiration = cache_config("dynflow.cache.expiration", self.name)
        refresh = o["refresh_cache"]
        if refresh is None:
            refresh = caller.get("refresh_cache")
        if refresh is None:
            refresh = bool(cache_config("dynflow.cache.refresh", self.name))
        return CachePolicy(
            storage,
            self._identity(),
            o["cache_key_fn"],
            expiration,
            refresh,
            self._params(),
            _defaults(self._signature),
            self._varargs() if o["cache_key_fn"] is not None else None,
        )

    def passed_on(self) -> tuple[tuple[str, Any], ...]:
        """The cache options this task passes on to the tasks of a graph its call
        returns (a dynamic task), for those that leave them unset: ``cache_expiration``,
        ``refresh_cache`` and ``result_storage``, each its own, else the one passed on
        to it (:data:`CALLER_OPTIONS`: from its caller, and for the storage,
        ``dynflow.result-storage`` as read where the top graph was built), so that a
        returned graph's tasks store where their caller does. ``cache`` is not passed
        on (see :data:`PASSED_ON`)."""
        o = self._options
        caller = CALLER_OPTIONS.get()
        out = []
        for k in PASSED_ON:
            v = o[k]
            if v is None:
                v = caller.get(k)
            elif k == "result_storage":
                v = absolute_storage(v)
            if v is not None:
                out.append((k, v))
        return tuple(out)

    def _params(self) -> tuple[str, ...]:
        """Names of the positional parameters, in order (to label calls by argument)."""
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return tuple(p.name for p in self._signature.parameters.values() if p.kind in kinds)

    def _varargs(self) -> str | None:
        """The name of the ``*args`` parameter, if the function has one."""
        for p in self._signature.parameters.values():
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                return p.name
        return None

    def _in_flow(self) -> Task[P, R]:
        """This task, or a copy with the options of the flow being built that the task
        leaves unset (``log_prints``, the cache options)."""
        flow_options = FLOW_OPTIONS.get()
        changes = {
            k: v
            for k, v in flow_options.items()
            if v is not None and k in FLOW_TASK_OPTIONS and self._options[k] is None
        }
        return self.with_options(**changes) if changes else self

    @property
    def graph_fn(self) -> Callable[P, R]:
        """The callable put into task specs: ``fn``, pickled by reference when it can be.

        A decorated module-level function is not reachable under its own name (the name
        holds the Task), so cloudpickle would pickle it by value, with a copy of the
        module globals it uses. When the module holds this task (or one with the same
        function) under the function's name, a reference to it is used instead.
        """
        fn = self._fn
        found = lookup(fn)
        if isinstance(found, Task) and found._fn is fn:
            return TaskFunction(fn)
        return fn  # not reachable by name (a local function, __main__, ...): cloudpickle it

    @property
    def name(self) -> str:
        """The task's name: the key prefix and the name in the dashboard."""
        return self._options["name"]

    @property
    def options(self) -> Mapping[str, Any]:
        """The task's options (read-only)."""
        return self._options

    def with_options(self, **options: Unpack[TaskOptions]) -> Task[P, R]:
        """Return a new task with some options changed.

        Examples
        --------
        >>> import dynflow as df
        >>> @df.task
        ... def fetch(url): ...
        >>> fetch.with_options(retries=3).options["retries"]
        3
        """
        merged = dict(self._options)
        merged.update(check_options(self.name, dict(options)))
        task = Task(self._fn, **merged)
        # the same function: its cache identity's token goes with it (it may be read
        # where the source cannot be, on a worker building a sub-flow)
        source = self.__dict__.get("_cache_source")
        if source is not None:
            task.__dict__["_cache_source"] = source
        return self._rebound(task)

    def __repr__(self) -> str:
        return f"<Task {self.name}{self._signature}>"

    def _repr_html_(self) -> str:
        from dynflow.views._reprs import task_html  # facade: views

        return task_html(self)

    def __reduce__(self) -> tuple:
        if self._bound is not None:
            return bind_instance, self._bound
        # a module-level task travels as a reference, like a plain function; any other
        # by value, with its function's token made here (a worker may not have the
        # source), unless it can never be cached
        source = self._source() if self._options["cache"] is not False else None
        return by_reference(self, self._fn) or (
            _make_task,
            (self._fn, dict(self._options), source),
        )

    def _source(self) -> str:
        """The token of the task's function (:func:`function_token`), made once, and
        kept by copies made with :meth:`with_options`."""
        source = self.__dict__.get("_cache_source")
        if source is None:
            source = self.__dict__["_cache_source"] = function_token(self._fn)
        return source

    def _identity(self) -> str:
        """The task's cache identity (:func:`task_identity`), made once."""
        identity = self.__dict__.get("_cache_identity")
        if identity is None:
            o = self._options
            version = o["cache_version"]
            source = self._source() if version is None else None
            identity = task_identity(o["name"], source, version)
            self.__dict__["_cache_identity"] = identity
        return identity

    # ---------------------------------------------------------------- building
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Return a lazy node for ``fn(*args, **kwargs)``; nothing runs.

        ``wait_for=node`` (or nodes): run only after those finished, without receiving
        their values; unless the function has a parameter named ``wait_for``, which
        then gets the value (use ``with_options(wait_for=...)`` for dynflow's).
        """
        ours = dynflow_keywords(self._signature, kwargs, CALL_KEYWORDS)
        bound = self._bind("()", self._with_instance(args), kwargs)
        if self.is_stream and self._options["cache"]:
            raise ValueError(
                f"task {self.name!r} is a stream (a generator), and cache=True cannot apply "
                "to it: a stream's list is never stored whole (that would hold every item "
                "it yields); cache the tasks mapped over it instead"
            )
        make: type[Node[Any]] = StreamNode if self.is_stream else Node
        node: Node[R] = make(
            self._in_flow(),
            bound.args,
            bound.kwargs,
            add_waits(self.name, "()", self._options["wait_for"], ours),
        )
        return node  # type: ignore[return-value] # a type checker sees the value (Types)

    def map(self, *args: Any, **kwargs: Any) -> list[R]:
        """Return a lazy :class:`~dynflow.MapNode`: ``fn`` called once per item.

        Every argument that is a node, a map node or a concrete iterable is mapped;
        several mapped arguments are zipped and must have equal lengths. Wrap an
        argument in :class:`~dynflow.unmapped` to pass it unchanged to every item;
        strings, bytes and non-iterable values are passed unchanged too.

        Item ``i`` of a mapped value is what iterating it yields at position ``i``
        (a pandas Series by position, never by label). A dict or a pandas DataFrame is
        refused (:class:`~dynflow.MapInputError`) as ambiguous. A stream (a call of a
        generator task) or a dask Bag or Array (its first axis) is mapped chunk by chunk
        as its items come: see the README's "Streaming sources".

        dynflow's keywords below are taken from the call unless the function has a
        parameter of the same name: the function always gets its own arguments, and
        the option is then set with ``task.with_options(...)`` (which also sets a
        default for every map of the task).

        Parameters
        ----------
        *args, **kwargs
            The function's arguments, mapped or static.
        wait_for : Node or iterable of Node, optional
            Start the items only after these nodes finished (their values unused).
        min_success_ratio : float
            In ``[0, 1]``. By default (1) a consumer of the list fails with
            :class:`~dynflow.MapItemError` if any item failed; with ``r < 1`` the list
            is handed on when at least ``r`` of the items succeeded (compared exactly,
            as written: 55 of 100 meet 0.55), with ``None`` in place of failed items.
        batch_size : int, "auto", "adaptive" or None, optional
            Items per scheduler task. Unset: the ``dynflow.batch-size`` config
            (``"adaptive"``: one task per item for at most 256 items or items of 10 ms
            or more, else about 50 ms of measured compute per task and at least eight
            tasks per worker thread; see :func:`dynflow.lowering._stage.batch_size`).
            None: one task per item; ``"auto"``: about eight tasks per worker thread.
            Results, failures and retries stay per item, and the list is the same as
            with one task per item. A map chained on a batched map reads its items
            batch by batch.
        max_concurrency : int, optional
            At most this many items of this map run at once, cluster-wide (items wait
            as scheduler tasks, holding no worker thread); batched, at most this many
            batches, each running its items in turn.

        Returns
        -------
        MapNode
            Its value is the list of the items' results, in item order.

        Raises
        ------
        TypeError
            Arguments that do not fit the function's signature, or a bad option.
        MapInputError
            A concrete mapped argument that cannot be mapped over.
        MapLengthError
            Concrete mapped arguments of different lengths.
        ValueError
            ``batch_size`` unset and a ``dynflow.batch-size`` config value that does
            not fit.

        Examples
        --------
        >>> import dynflow as df
        >>> @df.task
        ... def add(x, y):
        ...     return x + y
        >>> add.map([1, 2, 3], y=10).compute(scheduler="sync")
        [11, 12, 13]
        """
        call = bind_map(self, MAP_KEYWORDS, args, kwargs, self._options)
        return MapNode(  # type: ignore[return-value] # a type checker sees the list
            self._in_flow(),
            call.slots,
            call.kwslots,
            call.wait_for,
            min_success_ratio=call.min_success_ratio,
            batch_size=call.batch_size,
            max_concurrency=call.max_concurrency,
        )

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> RunFuture[R]:
        """``task(*args, **kwargs).submit()``: start it now, return a ``distributed.Future``."""
        node: Node[R] = self(*args, **kwargs)  # type: ignore[assignment]
        return node.submit()


def _make_task(fn: Callable, options: dict[str, Any], source: str | None = None) -> Task:
    """A task sent by value, with the token of its function made where it was defined."""
    task = Task(fn, **options)
    if source is not None:
        task.__dict__["_cache_source"] = source
    return task


class TaskDecorator(Protocol):
    """What ``@df.task(...)`` with options returns: applied to a function, a task (an
    ``async def`` function's value is what its coroutine returns)."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, Iterator[R]], /) -> Task[P, list[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, AsyncIterator[R]], /) -> Task[P, list[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
@overload
def task(fn: Callable[P, Iterator[R]], /) -> Task[P, list[R]]: ...  # a stream: its list
@overload
def task(fn: Callable[P, AsyncIterator[R]], /) -> Task[P, list[R]]: ...
@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(**options: Unpack[TaskOptions]) -> TaskDecorator: ...
def task(fn: Callable | None = None, /, **options: Any) -> Any:
    """Turn a function into a :class:`Task`: calling it builds a lazy node.

    Use bare (``@task``) or with options (``@task(retries=2)``).

    Parameters
    ----------
    fn : callable
        The function (``async def`` too, and methods: bound through the instance).
    name : str, optional
        Name shown in keys and the dashboard; default: the function's name.
    retries : int
        How often a failed call is retried (per item in a map).
    retry_delay, retry_backoff, retry_jitter : float
        Seconds before the first retry (or a duration string such as ``"2s"``), the
        factor by which each further delay grows, and a random +/- fraction of each delay.
        ``retry_delay`` may also be a list with one delay per retry (Prefect's
        ``retry_delay_seconds=[1, 10, 60]``; the last repeats, backoff does not apply).
    retry_on : exception class, tuple of them, or callable
        Retry only these exceptions (default: any ``Exception``), or those for which
        ``retry_on(exception)`` is true. If that call raises, the call fails with its
        error (the task's exception as its context).
    timeout : float or str, optional
        Seconds (or a duration string such as ``"30s"``) an attempt may run; longer
        raises :class:`~dynflow.TaskTimeoutError` (an async call is cancelled; a sync
        one is abandoned in its thread).
    pure : bool
        Deterministic keys from the function and arguments, so equal calls share
        one result. Default False: every call gets a fresh key.
    resources : dict, optional
        Abstract worker resources each call needs, e.g. ``{"GPU": 1}``.
    priority : int
        Scheduling priority; higher runs first.
    concurrency_limit : str, optional
        The name of a limit set with :func:`dynflow.set_concurrency_limit`: at most
        that many calls of tasks carrying the name run at once, cluster-wide (across
        maps, runs and clients); waiting calls hold no worker thread. A name never set
        fails the run at submit (:class:`~dynflow.ConcurrencyLimitError`). Local
        schedulers ignore it.
    task_run_name : str or callable, optional
        Label of each call in dynflow's views, forwarded output and error messages:
        a template filled with the call's arguments by name and ``map_index``
        (``"fetch-{account}"``), or a callable taking them as keyword arguments.
    log_prints : bool, optional
        Forward what the call prints or logs to the client, tagged with its label.
        Default: the enclosing flow's ``log_prints``, else ``dynflow.log-prints``.
    cache : bool, optional
        Persist each successful call's result in the result storage and read it back
        in later calls with the same cache key instead of running (README, "Resume
        and caching"). Default: the enclosing flow's ``cache``, else
        ``dynflow.cache.enabled``.
    cache_version : str, optional
        Part of the task's identity in its cache keys: change it to recompute.
    cache_key_fn : callable, optional
        Makes the call's cache key instead of the arguments' token. It is called with
        the call's arguments by name, bound to the function's parameters, defaults
        filled in (``*args`` as one tuple under its parameter's name, ``**kwargs``
        spread), as a ``task_run_name`` callable is: write it
        ``lambda account, **kw: account["id"]``. It returns a ``str`` (or ``None``:
        that call is not cached). Anything else, or an exception, fails that call
        only (a ``TypeError``, or a ``RuntimeError`` with the exception as its cause,
        naming the task; in a map, that item's failure), without running it.
    cache_expiration : float, str or timedelta, optional
        How long an entry is valid (seconds, a duration string such as ``"1d"``, or a
        ``timedelta``); an older one is recomputed. Default: the enclosing flow's or
        calling task's, else ``dynflow.cache.expiration`` (forever).
    refresh_cache : bool, optional
        Recompute and overwrite the entries instead of reading them. Default: the
        enclosing flow's or calling task's, else ``dynflow.cache.refresh``.
    result_storage : str, optional
        Where entries are stored: a local path or an fsspec URL. Default: the
        enclosing flow's or calling task's (a task passes its own, or the one passed
        to it, on to the graph its call returns), else ``dynflow.result-storage``,
        read where the graph is built.
    wait_for, min_success_ratio, batch_size, max_concurrency
        Defaults for every call (``wait_for``) and every map of the task; see
        :meth:`Task.map`. A call's own keyword of that name adds to ``wait_for`` and
        overrides the others, unless the function has a parameter of that name.

    Returns
    -------
    Task
        Or, called with options only, a decorator that makes one.

    Raises
    ------
    TypeError
        An unknown option, or a value that does not fit it, naming the task (its
        ``name``, else the function's), the option and what is expected; options
        given without the function are checked when the decorator is applied.

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task(retries=2)
    ... def double(x):
    ...     return 2 * x
    >>> double(21).compute(scheduler="sync")
    42
    """
    if fn is not None:
        return Task(fn, **options)
    # checked when applied, naming the function (or the name option)
    return lambda f: Task(f, **options)


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(Task, task)


def _partitions(*_: Any) -> None:
    """The function of a dask collection's node (never called: a ``CollectionNode`` is
    lowered from its collection's graph)."""


_mapargs.COLLECTION_TASK = Task(_partitions, name="collection", pure=True)
