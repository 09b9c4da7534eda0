"""``df.as_completed``: a map's results as its items finish, a bounded window at a time."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable, Iterator
from typing import Any, Generic, TypeVar, overload

import dask.config
from dask.utils import parse_bytes
from distributed import Client, Future, fire_and_forget
from distributed.client import FutureCancelledError, FuturesCancelledError

from dynflow._compat import want_keys
from dynflow._protocol import STREAM_CLOSE_HANDLER, STREAM_NEXT_HANDLER, STREAM_OPEN_HANDLER
from dynflow._public import public
from dynflow.client._connect import get_client
from dynflow.client._run import Run, RunFuture
from dynflow.client._submit import _submit, compute
from dynflow.exceptions import ExtensionError, ItemIndex, MapItemError, SchedulerLostError
from dynflow.graph._node import MapNode, topological
from dynflow.graph._wrappers import allow_failure_node
from dynflow.lowering._groups import ExpansionGroups
from dynflow.worker._failure import Failure

__all__ = ["AsCompleted", "as_completed"]

#: items of a batch fetched at once (a batch of an "auto" map grows with the map)
BATCH_SLICE = 10_000
#: seconds closing a stream may take (the scheduler closes it anyway when this client
#: goes away, or when its run has ended and nobody reads it)
CLOSE_TIMEOUT = 10.0

_T = TypeVar("_T")
T = TypeVar("T")  # the value type of a streamed map's items


def _part(batch: list, start: int, stop: int) -> list:
    """Items ``start:stop`` of a batch's results, on the worker that holds it."""
    return batch[start:stop]


@overload
def as_completed(
    map_node: Iterable[T],
    node: None = None,
    *,
    raise_errors: bool = False,
    client: Client | None = None,
    cancel_on_exit: bool = True,
    scheduler: str | None = None,
) -> AsCompleted[T]: ...
@overload
def as_completed(
    map_node: RunFuture[Any],
    node: Iterable[T],
    *,
    raise_errors: bool = False,
    client: Client | None = None,
    cancel_on_exit: bool = True,
    scheduler: str | None = None,
) -> AsCompleted[T]: ...
def as_completed(
    map_node: Any,
    node: Any = None,
    *,
    raise_errors: bool = False,
    client: Client | None = None,
    cancel_on_exit: bool = True,
    scheduler: str | None = None,
) -> AsCompleted[Any]:
    """Yield ``(index, value)`` for each item of a map as it finishes.

    Starts the map as a run of its own, or, given a future of a submitted run and a map
    node of it, streams that run's items (from when it attaches). Items arrive in the
    order they finish; a failed item yields ``(index, exception)`` (the original, with
    its remote traceback). The process holds a bounded window of results at a time (a
    few per worker thread; a batched map's items arrive batch by batch), never one
    future per item, so its memory stays flat however long the map: at most
    ``dynflow.as-completed.window-bytes`` of results (read when this is called; the
    scheduler's ``nbytes`` of each task), except that a single item bigger than that
    comes alone (a bigger batch comes in slices of about that size).

    Parameters
    ----------
    map_node : MapNode or RunFuture
        The map to run (a chained map: its own items; a map over ``flatten(m)``:
        indices are ``(i, j)``, the item's position under its parent, and a failed
        parent item ``i`` of ``m`` is one item ``((i,), exception)`` standing for its
        unknown children), or a future of a run that contains ``node``. Each call
        starts a run of its own: streaming the same node twice runs it twice.
    node : MapNode, optional
        With a future: the map of that run to stream. The run must use the map's list
        (a reducer, ``allow_failure``): its items are kept until the list is made.
    raise_errors : bool
        Raise :class:`~dynflow.MapItemError` for a failed item instead of yielding it.
    client : distributed.Client, optional
        The cluster (see :func:`dynflow.get_client`). With an asynchronous client,
        iterate with ``async for`` (``async with as_completed(...) as items:`` closes it
        at once when you leave the loop early).
    cancel_on_exit : bool
        Leaving the loop early cancels the items that have not started (of a run this
        call started); False lets them run to the end.
    scheduler : str, optional
        ``"sync"`` (or ``"threads"``): run the map in this process, without a cluster,
        and yield its items in order, with the indices a cluster gives.

    Returns
    -------
    AsCompleted
        Iterable (``for``) and asynchronously iterable (``async for``).

    Raises
    ------
    TypeError
        Not a map node (or a future without a map node); a plain ``for`` with an
        asynchronous client.
    RuntimeError
        The stream is iterated a second time (call ``as_completed`` again).
    MapItemError
        With ``raise_errors``, for the first failed item, naming it.
    SchedulerLostError
        The connection to the scheduler was lost while streaming (the error of the
        lost connection is its ``__cause__``).
    Exception
        The error that stopped the map itself (its source failed, or is a value that
        cannot be mapped over), with its remote traceback.

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def square(x):
    ...     return x * x
    >>> for i, value in df.as_completed(square.map(range(100))):  # doctest: +SKIP
    ...     print(i, value)
    """
    return AsCompleted(map_node, node, raise_errors, client, cancel_on_exit, scheduler)


class AsCompleted(Generic[T]):
    """The items of a map as they finish; see :func:`as_completed`. ``AsCompleted[T]``
    yields ``(index, value)`` pairs whose value is a ``T`` or, for a failed item, its
    exception (the index is an ``int``, or a tuple for a map over ``flatten``)."""

    def __init__(
        self,
        map_node: MapNode | RunFuture,
        node: MapNode | None,
        raise_errors: bool,
        client: Client | None,
        cancel_on_exit: bool,
        scheduler: str | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._iterated = False
        self._node: MapNode
        self._run: Run | None = None
        self._client: Client
        if scheduler is not None and isinstance(map_node, MapNode):
            self._node = map_node
            self._raise_errors = raise_errors
            return
        if isinstance(map_node, RunFuture):
            if not isinstance(node, MapNode):
                raise TypeError(
                    "as_completed(future, node): node must be a map node of the future's run"
                )
            self._client = map_node.client
            self._run = map_node.run
            self._node = node
        elif isinstance(map_node, MapNode):
            self._client = get_client(client)
            self._run = None
            # a run of its own: no key shared with another run of the same node (one
            # that is being released would hand over nothing)
            self._node = map_node.fresh()
        else:
            raise TypeError(
                f"as_completed() expects a map node (the result of task.map), got "
                f"{type(map_node).__name__}"
            )
        self._raise_errors = raise_errors
        self._cancel_on_exit = cancel_on_exit
        # the most bytes of results held at once (as the scheduler counts them)
        self._max_bytes = max(1, parse_bytes(dask.config.get("dynflow.as-completed.window-bytes")))
        self._future: RunFuture | None = None  # the run this call started, if any
        self._stream: str | None = None
        self._lost = False  # the connection to the scheduler was lost
        self._agen: AsyncGenerator[tuple[Any, T | BaseException], None] | None = None

    # ------------------------------------------------------------------ iterating
    def _start(self) -> None:
        if self._iterated:
            raise RuntimeError(
                "as_completed(): this stream was iterated already; call as_completed() "
                "again for another run"
            )
        self._iterated = True

    def __iter__(self) -> Iterator[tuple[Any, T | BaseException]]:
        self._start()
        if self._scheduler is not None:
            yield from self._local()
            return
        if self._client.asynchronous:
            raise TypeError(
                "as_completed() with an asynchronous client: iterate with `async for` "
                "(and `async with` to close it at once when you leave the loop)"
            )
        windows = self._windows()
        try:
            while True:  # one trip to the client's event loop per window, not per item
                try:
                    pairs = self._client.sync(windows.__anext__)
                except StopAsyncIteration:
                    return
                pairs.reverse()
                while pairs:  # each value handed over is no longer held here
                    yield pairs.pop()
                del pairs
        finally:
            self._client.sync(windows.aclose)

    def _local(self) -> Iterator[tuple[Any, Any]]:
        """The map run in this process; its items in order (``scheduler=``), indexed as
        on a cluster (a map over ``flatten(m)``: ``(i, j)``; a failed parent: ``(i,)``)."""
        groups = ExpansionGroups()
        for n in topological([self._node]):
            groups.visit(n)
        parents: dict[str, MapNode] = {}  # the maps whose items are parents of others

        def find(m: MapNode) -> None:
            for how, up in groups.joined(m):
                if how == "chunks":  # a stream's or a collection's: no map above
                    continue
                assert isinstance(up, MapNode)
                if how == "nest":  # up: the map whose items are flattened
                    parents[up.key] = up
                find(up)

        find(self._node)
        nodes = [self._node, *parents.values()]
        values = dict(
            zip(
                [n.key for n in nodes],
                compute(*(allow_failure_node(n) for n in nodes), scheduler=self._scheduler),
                strict=True,
            )
        )
        items = values[self._node.key]
        if isinstance(items, BaseException):
            raise items  # no list to map over: the map itself failed

        def indices(m: MapNode, n: int) -> list[tuple[int, ...]]:
            """The indices of ``m``'s ``n`` items (a joined map has its upstream's)."""
            for how, up in groups.joined(m):
                if how == "chunks":  # run here, a stream or collection is one chunk
                    return [(0, j) for j in range(n)]
                assert isinstance(up, MapNode)
                if how != "nest":
                    return indices(up, n)
                out: list[tuple[int, ...]] = []
                above = values[up.key]
                for index, parent in zip(indices(up, len(above)), above, strict=True):
                    if isinstance(parent, BaseException):
                        out.append(index)  # a failed parent stands for its items
                    else:
                        out += [(*index, j) for j in range(len(parent))]
                return out
            return [(i,) for i in range(n)]

        def nested(m: MapNode) -> bool:
            return any(
                how in ("nest", "chunks") or (isinstance(up, MapNode) and nested(up))
                for how, up in groups.joined(m)
            )

        flat = not nested(self._node)  # top level: items are numbered 0, 1, ...
        for index, value in zip(indices(self._node, len(items)), items, strict=True):
            at: ItemIndex = index[0] if flat else index
            if self._raise_errors and isinstance(value, BaseException):
                raise MapItemError(
                    self._node.name, [at], len(items), self._node.name, value
                ) from value
            yield at, value

    def __aiter__(self) -> AsyncIterator[tuple[Any, T | BaseException]]:
        if self._scheduler is not None:
            raise TypeError("as_completed(..., scheduler=...) is iterated with a plain `for`")
        self._start()
        self._agen = self._items()
        return self._agen

    async def __aenter__(self) -> AsCompleted[T]:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._agen is not None:
            await self._agen.aclose()

    async def _items(self) -> AsyncGenerator[tuple[Any, Any], None]:
        windows = self._windows()
        try:
            async for pairs in windows:
                pairs.reverse()
                while pairs:  # each value handed over is no longer held here
                    yield pairs.pop()
                del pairs
        finally:
            await windows.aclose()

    # ------------------------------------------------------------------ the stream
    async def _comm(self, awaitable: Awaitable[_T]) -> _T:
        """``awaitable``, a call to the scheduler or a fetch of results: an error of the
        lost connection (a closed comm, a failed connect, futures cancelled because the
        client lost the scheduler) is raised as :class:`~dynflow.SchedulerLostError`,
        from it."""
        try:
            return await awaitable
        except (OSError, FutureCancelledError, FuturesCancelledError) as e:
            if isinstance(e, (FutureCancelledError, FuturesCancelledError)):
                reason = str(getattr(e, "reason", ""))
                if self._client.status == "running" and "connection" not in reason:
                    raise  # cancelled on purpose (df.cancel, another client)
            self._lost = True
            address = getattr(self._client.scheduler, "address", None)
            raise SchedulerLostError(
                f"as_completed({self._node.name}.map()): lost the connection to the "
                f"scheduler at {address} while streaming ({type(e).__name__}: {e}); the "
                "run is lost"
            ) from e

    async def _open(self, run: Run) -> None:
        reply = await self._comm(
            getattr(self._client.scheduler, STREAM_OPEN_HANDLER)(
                run_id=run.id, node=self._node.key, client=self._client.id
            )
        )
        if reply.get("status") != "OK":
            raise ExtensionError(f"as_completed(): {reply.get('message')}")
        self._stream = reply["stream"]

    async def _windows(self) -> AsyncGenerator[list[tuple[Any, Any]], None]:
        """The finished items, a list of ``(index, value)`` pairs at a time: a window's
        tasks (at most ``max_bytes`` of results, as the scheduler counts them, unless
        one task alone is bigger), a batch too big for that in slices. Nothing here
        holds a list once it is handed over: the caller empties it."""
        client = self._client
        if self._run is None:  # a run of its own, whose output keeps the items
            (self._future,) = await self._comm(
                _submit((allow_failure_node(self._node),), client, self._node.name, self._open)
            )
        else:
            await self._open(self._run)
        nthreads = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
        window = max(32, 8 * nthreads)  # tasks handed over at once (items: BATCH_SLICE)
        next_window = getattr(client.scheduler, STREAM_NEXT_HANDLER)
        done = False
        try:
            while not done:
                if client.status != "running":
                    self._lost = True
                    raise SchedulerLostError(
                        f"as_completed({self._node.name}.map()): lost the connection to the "
                        f"scheduler (client status: {client.status})"
                    )
                reply = await self._comm(
                    next_window(
                        stream_id=self._stream,
                        limit=window,
                        wait=1.0,
                        max_items=BATCH_SLICE,
                        max_bytes=self._max_bytes,
                    )
                )
                if reply.get("status", "OK") != "OK":
                    raise ExtensionError(f"as_completed(): {reply.get('message')}")
                done = reply["done"]
                if not reply["items"]:
                    continue
                async with contextlib.aclosing(
                    self._fetch(reply["items"], reply["total"])
                ) as parts:
                    async for pairs in parts:
                        yield pairs
                        del pairs  # before the next fetch
                del reply
            if self._future is not None and self._future.status == "error":
                raise await self._future.exception()
        finally:
            await self._close(done)

    def _sliced(self, item: dict) -> bool:
        """Whether a streamed task is a batch fetched a slice at a time."""
        return (
            bool(item["size"])
            and item["count"] > 1
            and (item["count"] > BATCH_SLICE or item.get("nbytes", 0) > self._max_bytes)
        )

    async def _fetch(self, items: list[dict], total: int | None) -> AsyncGenerator[list, None]:
        """The pairs of one window's tasks: those fetched whole at once, then each
        sliced batch a slice at a time (of about ``max_bytes``, at most BATCH_SLICE
        items), each slice made on the worker that holds the batch."""
        client = self._client
        futures: list[Future[Any]] = [Future(_key(item["key"]), client) for item in items]
        want_keys(client, [f.key for f in futures])
        try:
            whole = [i for i, item in enumerate(items) if not self._sliced(item)]
            if whole:
                values = await self._comm(
                    client.gather([futures[i] for i in whole], asynchronous=True)
                )
                for i in whole:  # fetched: the workers may let go of them
                    futures[i].release()
                pairs, error = self._pairs([items[i] for i in whole], values, total)
                del values
                yield pairs  # the items before a failure that raises come first
                del pairs
                if error is not None:
                    raise error
            for f, item in zip(futures, items, strict=True):
                if not self._sliced(item):
                    continue
                nbytes = max(1, item.get("nbytes", 0))
                step = max(1, min(BATCH_SLICE, item["count"] * self._max_bytes // nbytes))
                for start in range(0, item["count"], step):
                    part = client.submit(
                        _part,
                        f,
                        start,
                        start + step,
                        key=f"dynflow-stream-part-{uuid.uuid4().hex}",
                        priority=1_000_000,  # before the map's remaining tasks
                    )
                    try:
                        values = await self._comm(client.gather(part, asynchronous=True))
                    finally:
                        part.release()
                    pairs, error = self._pairs([item], [values], total, start)
                    del values
                    yield pairs
                    del pairs
                    if error is not None:
                        raise error
                f.release()
        finally:
            for f in futures:
                f.release()

    def _pairs(
        self, items: list[dict], values: list, total: int | None, start: int = 0
    ) -> tuple[list[tuple], BaseException | None]:
        """``(index, value)`` of every value of tasks ``items`` (a batch: each item;
        ``start``: the offset of a slice of one), up to the first that raises (a failed
        item with ``raise_errors``, a failed source), and that error (None: none)."""
        pairs: list[tuple] = []
        for item, value in zip(items, values, strict=True):
            parts = value if item["size"] else [value]
            for j, v in enumerate(parts, start):
                try:
                    pairs.append(self._pair(item, j, v, total))
                except Exception as e:  # raised once the pairs before it are handed out
                    return pairs, e
        return pairs, None

    def _pair(self, item: dict, offset: int, value: Any, total: int | None) -> tuple:
        """``(index, value)`` of the ``offset``-th value of a streamed task."""
        if item.get("parent"):  # a failed source: no items, its failure stands for them
            if not item["index"]:
                raise value.exception  # the map's own source: the map failed
            index = tuple(item["index"])
            return index, self._value(index, value, total)
        *prefix, start = item["index"]
        index = start + offset if not prefix else (*prefix, start + offset)
        return index, self._value(index, value, total)

    def _value(self, index: Any, value: Any, total: int | None) -> Any:
        if type(value) is not Failure:
            return value
        if self._raise_errors:
            error = MapItemError(
                self._node.name,
                [index],
                total if total is not None else -1,
                value.task_name,
                value.exception,
                {index: value.label} if value.label else None,
            )
            raise error from value.exception
        return value.exception

    async def _close(self, done: bool) -> None:
        """The stream closed (a done stream the scheduler closed itself; none is asked
        of a lost scheduler) and the run's future let go of."""
        stream, self._stream = self._stream, None
        client = self._client
        if stream is not None and not done and not self._lost and client.status == "running":
            # best effort: a scheduler that went away meanwhile closed it already
            with contextlib.suppress(OSError):
                await asyncio.wait_for(
                    getattr(client.scheduler, STREAM_CLOSE_HANDLER)(stream_id=stream),
                    CLOSE_TIMEOUT,
                )
        if self._future is not None:
            if not done and not self._cancel_on_exit and not self._lost:
                fire_and_forget(self._future)  # the rest of the run goes on
            if client.status != "closed":
                self._future.release()
            self._future = None


def _key(key: Any) -> Any:
    """A key as it was before msgpack turned its tuples into lists."""
    return tuple(_key(k) for k in key) if isinstance(key, list) else key


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(AsCompleted, as_completed)
