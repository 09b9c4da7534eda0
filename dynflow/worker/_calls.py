"""How calls run: retries with delays, timeouts, async functions, failure records.

Every task call runs inside :func:`run_call` (a coroutine function's inside
:func:`run_call_async`), which applies the task's retry policy (delay, backoff, jitter,
which exceptions) and timeout. What happens on final failure depends on where the call is:

- a **map item** (and any task of a sub-flow run per item) never errs in dask: it returns
  a :class:`~dynflow.worker._failure.Failure` record. Its siblings therefore keep running
  to completion, and a later item of a chained map that receives a record passes it on
  without running.
- a **plain task** raises, as any dask task: the caller gets the original exception.

A retry delay does not hold a worker slot: the waiting thread secedes from the worker's
pool (distributed's ``secede``/``rejoin``), so other tasks run meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dask._task_spec import Task
from distributed.protocol.pickle import dumps
from distributed.utils import import_term

from dynflow._compat import secede_async
from dynflow._containers import find
from dynflow._context import CURRENT_KEY, LOCAL_KEYS, RUNNING_ASYNC, RUNNING_TASK
from dynflow.exceptions import (
    ExtensionError,
    SerializationError,
    TaskInterruptedError,
    TaskTimeoutError,
    index_text,
)
from dynflow.worker._cache import MISSING, CachePolicy
from dynflow.worker._call_context import current_key, item_index, label
from dynflow.worker._failure import Failure, portable
from dynflow.worker._graph_splice import ReturnedGraph, splice_returned, splice_returned_async
from dynflow.worker._reports import (
    forwarding,
    report_cached,
    report_failure,
    report_label,
    report_retry,
)

__all__ = [
    "SCALARS",
    "CallPolicy",
    "Deferred",
    "call_after",
    "run_blocking",
    "run_call",
    "run_call_async",
    "run_call_local",
    "run_coroutine",
    "running_locally",
]


#: values that never hold a graph: no returned-graph hook sees them
SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})


class Deferred:
    """A callable made where it is first called: ``import_term(factory)(*args)``.

    The returned-graph hook (:attr:`CallPolicy.returned`) lowers graphs, with code of a
    higher layer (``dynflow.lowering``); it travels in every task's spec as a
    ``Deferred``, so the scheduler, which unpickles the specs but never calls the hook,
    does not import that code. ``factory`` is a dotted name
    (``distributed.utils.import_term``); two threads that make it at once make equal
    objects.
    """

    __slots__ = ("_made", "args", "factory")

    def __init__(self, factory: str, args: tuple = ()) -> None:
        self.factory = factory
        self.args = args
        self._made: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        made = self._made
        if made is None:
            made = self._made = import_term(self.factory)(*self.args)
        return made(*args, **kwargs)

    def __reduce__(self) -> tuple:
        return (Deferred, (self.factory, self.args))


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """How one task's calls are run: retries, their delays, timeout, failure mode."""

    task_name: str
    retries: int = 0
    retry_delay: float | tuple[float, ...] = 0.0  # or one per retry
    retry_backoff: float = 1.0
    retry_jitter: float = 0.0
    # exception classes to retry, or a callable (exception) -> bool
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] = (Exception,)
    timeout: float | None = None
    records: bool = False  # True: return a Failure instead of raising
    run_name: str | Callable[..., str] | None = None  # items' label template
    log_prints: bool = False  # forward prints and log records to the client
    params: tuple[str, ...] = ()  # the function's positional parameter names (labels)
    asynchronous: bool = False  # the function is a coroutine function
    # (policy, value) -> the value, or a ReturnedGraph when it holds nodes (a dynamic
    # task); set by the lowering, which knows what a node is
    returned: Callable[[CallPolicy, Any], Any] | None = None
    cache: CachePolicy | None = None  # cache=True: results persisted (dynflow.worker._cache)
    # the call's arguments hold upstream values inside containers (a list of nodes):
    # a failure record among them is looked for there too (set by the lowering)
    nested: bool = False

    def spec(
        self, key: Any, fn: Callable, /, *args: Any, blocking: bool = False, **kwargs: Any
    ) -> Task:
        """The task spec of one call of ``fn`` under this policy (``key`` None: a call
        inside another task, a batch).

        A coroutine function runs on the worker's event loop (:func:`run_call_async`),
        or to completion in the calling thread where nothing would await it
        (``blocking``: local schedulers; calls inside a batch).
        """
        if not self.asynchronous:
            if blocking and key is not None:
                return Task(key, run_call_local, self, key, fn, *args, **kwargs)
            return Task(key, run_call, self, fn, *args, **kwargs)
        runner = run_blocking if blocking or key is None else run_call_async
        return Task(key, runner, self, key, fn, *args, **kwargs)

    def run(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
        """A call of ``fn`` inside another task (a batch's item), now: what
        ``spec(None, fn, ...)`` would compute, without making the spec."""
        if self.asynchronous:
            return run_blocking(self, None, fn, *args, **kwargs)
        return run_call(self, fn, *args, **kwargs)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if isinstance(self.retry_delay, tuple):  # one per retry, the last repeats
            base = self.retry_delay[min(attempt, len(self.retry_delay)) - 1]
        else:
            base = self.retry_delay * self.retry_backoff ** (attempt - 1)
        if self.retry_jitter:
            base *= 1 + random.uniform(-self.retry_jitter, self.retry_jitter)
        return max(0.0, base)


def call_after(fn: Callable, _waited: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; ``_waited`` is a value waited for only to order the calls."""
    return fn(*args, **kwargs)


def run_call(policy: CallPolicy, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` under ``policy``; see the module docstring.

    Retries cover the function's own attempts; what it returns is then checked, and a
    returned graph run (spliced, or computed here on a local scheduler), once: a
    failure inside that graph is not retried by the caller (on a cluster it is a task
    of its own, with its own retries).
    """
    passed = _upstream_failure(policy, fn, args, kwargs)
    if passed is not None:
        return passed
    user_args = args[2:] if fn is call_after else args
    cache_key, stored = _stored(policy, user_args, kwargs)
    if stored is not MISSING:
        return stored
    with _calling(policy, user_args, kwargs):
        attempt = 0
        while True:
            attempt += 1
            try:
                result = _attempt(policy, fn, args, kwargs)
                break
            except BaseException as e:  # noqa: BLE001 - every error becomes the call's
                delay, error = _next_try(policy, attempt, _call_error(policy, e), user_args, kwargs)
            if delay is None:
                return _failed(policy, error, user_args, kwargs)
            _wait(delay)
        try:
            result, cache_key = _returned(policy, result, cache_key)
            if type(result) is ReturnedGraph:
                splice_returned(result, current_key())
                return None  # a run the scheduler has replaced: never read
            return _keep(policy, cache_key, _picklable(policy, result))
        except BaseException as e:  # noqa: BLE001 - every error becomes the call's
            return _failed(policy, _call_error(policy, e), user_args, kwargs)


def run_call_local(policy: CallPolicy, key: Any, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
    """:func:`run_call` on a local scheduler, with ``key`` among the running calls'
    keys (:data:`~dynflow._context.LOCAL_KEYS`) while it runs."""
    with running_locally(key):
        return run_call(policy, fn, *args, **kwargs)


@contextlib.contextmanager
def running_locally(key: Any) -> Iterator[None]:
    """``key`` is among the running calls' keys on a local scheduler (None: no key)."""
    token = LOCAL_KEYS.set((*LOCAL_KEYS.get(), key)) if key is not None else None
    try:
        yield
    finally:
        if token is not None:
            LOCAL_KEYS.reset(token)


def _returned(policy: CallPolicy, result: Any, cache_key: str | None) -> tuple[Any, Any]:
    """The call's value, or the graph it returned (``ReturnedGraph``), through the
    ``returned`` hook; and its cache key (None when the hook computed a returned graph
    here: that value is not the call's own)."""
    if policy.returned is None or type(result) in SCALARS:
        return result, cache_key
    value = policy.returned(policy, result)
    return value, (cache_key if value is result else None)


async def run_call_async(
    policy: CallPolicy, key: Any, fn: Callable, /, *args: Any, **kwargs: Any
) -> Any:
    """:func:`run_call` of a coroutine function, on the worker's event loop.

    It holds no worker thread and no slot: it secedes, as a sync task waiting for
    others does, so the worker runs other tasks while it awaits. ``key`` is the task's
    own key (None inside a batch), which the worker cannot tell an async task.
    """
    return await _call_async(policy, key, fn, args, kwargs, secede=key is not None)


async def _call_async(
    policy: CallPolicy, key: Any, fn: Callable, args: tuple, kwargs: dict, secede: bool
) -> Any:
    passed = _upstream_failure(policy, fn, args, kwargs)
    if passed is not None:
        return passed
    token = CURRENT_KEY.set(key) if key is not None else None
    try:
        if secede:
            secede_async(key)
        user_args = args[2:] if fn is call_after else args
        cache_key, stored = await _off_loop(policy, _stored, policy, user_args, kwargs)
        if stored is not MISSING:
            return stored
        with _calling(policy, user_args, kwargs):
            attempt = 0
            while True:  # as in run_call: only the waits differ
                attempt += 1
                try:
                    result = await _attempt_async(policy, fn, args, kwargs)
                    break
                except asyncio.CancelledError as e:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # cancelled from outside (the worker closes): not the call's
                    delay, error = _next_try(
                        policy, attempt, _call_error(policy, e), user_args, kwargs
                    )
                except BaseException as e:  # noqa: BLE001 - every error becomes the call's
                    delay, error = _next_try(
                        policy, attempt, _call_error(policy, e), user_args, kwargs
                    )
                if delay is None:
                    return _failed(policy, error, user_args, kwargs)
                await asyncio.sleep(delay)
            try:  # as in run_call: the returned graph runs once, outside the retries
                result, cache_key = _returned(policy, result, cache_key)
                if type(result) is ReturnedGraph:
                    if key is None:  # inside a batch: the hook computed it
                        raise ExtensionError("a graph returned inside a batch")
                    await splice_returned_async(result, key)
                    return None  # a run the scheduler has replaced: never read
                return await _off_loop(policy, _keep, policy, cache_key, _picklable(policy, result))
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001 - every error becomes the call's
                return _failed(policy, _call_error(policy, e), user_args, kwargs)
    finally:
        if token is not None:
            CURRENT_KEY.reset(token)


def run_blocking(policy: CallPolicy, key: Any, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
    """:func:`run_call_async` run to completion here (local schedulers, batches)."""
    with running_locally(key):
        return run_coroutine(_call_async(policy, key, fn, args, kwargs, secede=False))


def run_coroutine(coro: Any) -> Any:
    """Run ``coro`` to completion from synchronous code, with or without a running loop
    in this thread (a notebook has one): then in a helper thread, with this context."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dynflow-async") as pool:
        return pool.submit(contextvars.copy_context().run, asyncio.run, coro).result()


@contextlib.contextmanager
def _calling(policy: CallPolicy, user_args: tuple, kwargs: dict) -> Iterator[None]:
    """While a call runs: it is the running task (nodes made inside know it), and its
    output is forwarded where ``log_prints`` asks."""
    token = RUNNING_TASK.set(policy.task_name)
    async_token = RUNNING_ASYNC.set(policy.asynchronous)
    try:
        report_label(policy, user_args, kwargs)
        if not policy.log_prints:
            yield
            return
        with forwarding(policy, user_args, kwargs):
            yield
    finally:
        RUNNING_ASYNC.reset(async_token)
        RUNNING_TASK.reset(token)


def _upstream_failure(
    policy: CallPolicy, fn: Callable, args: tuple, kwargs: dict
) -> Failure | None:
    """An upstream failure record among the arguments, or among the values a call
    waits for (``call_after``): the call does not run. A call that makes records passes
    it on; any other raises its exception, as if it had been a dask error (a node whose
    failure an ``allow_failure`` consumer tolerates)."""
    waited = args[1] if fn is call_after else None
    extra = waited if type(waited) is list else ()
    values: Any = (*args, *kwargs.values(), *extra)
    if policy.nested:  # inside containers too (only where the lowering put a node)
        values = find(values, lambda o: type(o) is Failure)
    for value in values:
        if type(value) is Failure:
            if not policy.records:
                raise value.exception
            report_failure(value, upstream=True)
            return value
    return None


async def _off_loop(policy: CallPolicy, fn: Callable, *args: Any) -> Any:
    """``fn(*args)``; in a thread when the task is cached (the result storage's I/O must
    not hold the worker's event loop), else here. The thread is told the task's key
    (the worker cannot tell it: inside a batch, the key is the batch thread's), so that
    what it reports (an item read from the storage, a warning for the client) reaches
    the run."""
    if policy.cache is None:
        return fn(*args)
    token = CURRENT_KEY.set(current_key())
    try:
        return await asyncio.to_thread(fn, *args)
    finally:
        CURRENT_KEY.reset(token)


def _stored(policy: CallPolicy, user_args: tuple, kwargs: dict) -> tuple[str | None, Any]:
    """The call's cache key (None: not cached), and what the call returns without
    running: its stored value, or its ``cache_key_fn``'s failure made the call's (a
    record, or raised); ``MISSING``: it must run."""
    if policy.cache is None:
        return None, MISSING
    try:
        return _cached(policy, user_args, kwargs)
    except BaseException as e:  # noqa: BLE001 - a cache_key_fn's error is the call's
        return None, _failed(policy, _call_error(policy, e), user_args, kwargs)


def _cached(policy: CallPolicy, args: tuple, kwargs: dict) -> tuple[str | None, Any]:
    """The call's cache key (None: not cached) and its stored value (or ``MISSING``).

    Raises when the task's ``cache_key_fn`` raises or returns something that is not a
    key (:meth:`CachePolicy.key`): the callers make that the call's failure, as if the
    function had raised it (a map item's failure record, a plain task's error), without
    retries (the function never ran).
    """
    cache = policy.cache
    if cache is None:
        return None, MISSING
    key = cache.key(policy.task_name, args, kwargs)
    if key is None or cache.refresh:
        return key, MISSING
    value = cache.read(policy.task_name, key)
    if value is not MISSING:
        report_cached()
    return key, value


def _keep(policy: CallPolicy, cache_key: str | None, result: Any) -> Any:
    """``result``, written to the result storage first when the call is cached (never
    a failure record: a call that passed one on did not succeed)."""
    if cache_key is not None and policy.cache is not None and type(result) is not Failure:
        policy.cache.write(policy.task_name, cache_key, result)
    return result


def _call_error(policy: CallPolicy, e: BaseException) -> BaseException:
    """What a call's exception becomes: itself, or for a ``BaseException`` that is not an
    ``Exception`` (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, a
    ``CancelledError`` the call raised itself) a :class:`TaskInterruptedError`, so user
    code never shuts a worker down or leaves a run waiting forever."""
    if isinstance(e, Exception):
        return e
    error = TaskInterruptedError(f"task {policy.task_name!r}{_item()} raised {type(e).__name__}")
    error.__cause__ = e
    return error


def _next_try(
    policy: CallPolicy, attempt: int, error: BaseException, user_args: tuple, kwargs: dict
) -> tuple[float | None, BaseException]:
    """After attempt number ``attempt`` (1-based) failed with ``error``: the seconds to
    wait before the next one (the retry logged and counted), or None when it was the
    last; and the error (the retry condition's own, if it raised: the call's error as
    its context). The one place that decides, for sync and async calls alike."""
    if attempt > policy.retries:
        return None, error
    if isinstance(policy.retry_on, tuple):
        retry = isinstance(error, policy.retry_on)
    else:
        try:
            retry = bool(policy.retry_on(error))
        except Exception as e:
            e.__context__ = error
            return None, e
    if not retry:
        return None, error
    delay = policy.delay(attempt)
    report_retry(policy, attempt, error, delay, user_args, kwargs)
    return delay, error


def _failed(policy: CallPolicy, error: BaseException, user_args: tuple, kwargs: dict) -> Any:
    """A call's final failure: a record (map items) or the error raised, made portable."""
    if policy.records:
        failure = Failure(error, policy.task_name, label(policy, user_args, kwargs))
        report_failure(failure, upstream=False)
        return failure
    raise portable(error)


def _item() -> str:
    """`` (item 3)`` while a map item runs (also inside a batch); else empty."""
    index = item_index()
    return "" if index is None else f" (index {index_text(index)})"


def _picklable(policy: CallPolicy, result: Any) -> Any:
    """``result``, checked to be picklable (else it could never leave this worker).

    A result that cannot be serialized would make every worker that needs it wait
    forever; failing here names the task instead. Large buffers (NumPy arrays, bytes)
    are passed out of band, so the check does not copy them.
    """
    if type(result) in _PLAIN:
        return result
    buffers: list = []
    try:
        dumps(result, buffer_callback=buffers.append)
    except Exception as e:
        raise SerializationError(
            f"task {policy.task_name!r} returned a {type(result).__name__} that cannot be "
            f"pickled, so it could not be sent to another worker or the client: {e}"
        ) from e
    return result


_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


def _attempt(policy: CallPolicy, fn: Callable, args: tuple, kwargs: dict) -> Any:
    if policy.timeout is None:
        return fn(*args, **kwargs)
    # a thread cannot be stopped: on timeout the call is abandoned and runs on unseen
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dynflow-timeout")
    try:
        # the call's context (its key, its output forwarding) goes with it into the thread
        token = CURRENT_KEY.set(current_key())
        try:
            future = pool.submit(contextvars.copy_context().run, fn, *args, **kwargs)
        finally:
            CURRENT_KEY.reset(token)
        try:
            return future.result(timeout=policy.timeout)
        except concurrent.futures.TimeoutError:
            raise _timed_out(policy) from None
    finally:
        pool.shutdown(wait=False)


async def _attempt_async(policy: CallPolicy, fn: Callable, args: tuple, kwargs: dict) -> Any:
    if policy.timeout is None:
        return await fn(*args, **kwargs)
    try:  # an async call is cancelled at its timeout
        return await asyncio.wait_for(fn(*args, **kwargs), policy.timeout)
    except TimeoutError:
        raise _timed_out(policy) from None


def _timed_out(policy: CallPolicy) -> TaskTimeoutError:
    return TaskTimeoutError(
        f"task {policy.task_name!r}{_item()} did not finish within {policy.timeout:g} s"
    )


def _wait(seconds: float) -> None:
    """Sleep ``seconds`` without holding a worker slot (secede, then rejoin)."""
    if seconds <= 0:
        return
    from distributed import rejoin, secede

    if CURRENT_KEY.get() is not None or current_key() is None:
        time.sleep(seconds)  # not in a worker's task thread (local schedulers, helpers)
        return
    secede()
    try:
        time.sleep(seconds)
    finally:
        rejoin()
