"""How calls fail, retry and time out, and how a map's list treats failed items.

Every task call runs inside :func:`run_call`, which applies the task's retry policy
(delay, backoff, jitter, which exceptions) and timeout. What happens on final failure
depends on where the call is:

- a **map item** (and any task of a sub-flow run per item) never errs in dask: it returns
  a :class:`Failure` record. Its siblings therefore keep running to completion, and a
  later item of a chained map that receives a record passes it on without running.
- a **plain task** raises, as any dask task: the caller gets the original exception.

A map's collector (:func:`gather`) turns the records into the user's semantics: raise a
:class:`~dynflow.MapItemError` naming the map and the failed indices (the original
exception as ``__cause__``), hand exception objects to an ``allow_failure`` consumer, or
accept up to ``1 - min_success_ratio`` failed items (which become ``None``).

A retry delay does not hold a worker slot: the waiting thread secedes from the worker's
pool (distributed's ``secede``/``rejoin``), so other tasks run meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import pickle
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from distributed.protocol.pickle import dumps
from tblib import Traceback

from dynflow._sequences import unmappable
from dynflow.exceptions import (
    MapInputError,
    MapItemError,
    SerializationError,
    TaskInterruptedError,
    TaskTimeoutError,
)
from dynflow.items import forwarding, label, report_failure

__all__ = [
    "CallPolicy",
    "Failure",
    "call_after",
    "concat_raw",
    "gather",
    "gather_concat",
    "gather_list",
    "run_call",
]


class Failure:
    """A failed call's exception, with its remote traceback, as a picklable value."""

    __slots__ = ("exception", "label", "task_name")

    def __init__(self, exception: BaseException, task_name: str, label: str | None = None) -> None:
        self.exception = exception
        self.task_name = task_name
        self.label = label  # the item's task_run_name, if the task has one

    def __reduce__(self) -> tuple:
        exc = self.exception
        tb = Traceback(exc.__traceback__).to_dict() if exc.__traceback__ else None
        try:
            pickle.dumps(exc)
        except Exception as e:  # an exception that cannot travel: keep what can
            exc = RuntimeError(
                f"{type(self.exception).__name__}: {self.exception} (the original "
                f"exception could not be pickled: {e})"
            )
        return _rebuild_failure, (exc, tb, self.task_name, self.label)

    def __repr__(self) -> str:
        return f"<Failure in {self.task_name!r}: {self.exception!r}>"


def _rebuild_failure(
    exc: BaseException, tb: dict | None, task_name: str, label: str | None = None
) -> Failure:
    if tb is not None:
        exc = exc.with_traceback(Traceback.from_dict(tb).as_traceback())
    return Failure(exc, task_name, label)


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """How one task's calls are run: retries, their delays, timeout, failure mode."""

    task_name: str
    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    retry_jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    records: bool = False  # True: return a Failure instead of raising
    run_name: str | Callable[..., str] | None = None  # items' label template
    log_prints: bool = False  # forward prints and log records to the client
    params: tuple[str, ...] = ()  # the function's positional parameter names (labels)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        base = self.retry_delay * self.retry_backoff ** (attempt - 1)
        if self.retry_jitter:
            base *= 1 + random.uniform(-self.retry_jitter, self.retry_jitter)
        return max(0.0, base)


def call_after(fn: Callable, _waited: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; ``_waited`` is a value waited for only to order the calls."""
    return fn(*args, **kwargs)


def run_call(policy: CallPolicy, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` under ``policy``; see the module docstring."""
    for value in (*args, *kwargs.values()):
        if type(value) is Failure:  # an upstream item failed: pass it on, do not run
            if policy.records:
                report_failure(value, upstream=True)
            return value
    user_args = args[2:] if fn is call_after else args
    if not policy.log_prints:
        return _run(policy, fn, args, kwargs, user_args)
    with forwarding(policy, user_args, kwargs):
        return _run(policy, fn, args, kwargs, user_args)


def _run(policy: CallPolicy, fn: Callable, args: tuple, kwargs: dict, user_args: tuple) -> Any:
    attempt = 0
    while True:
        try:
            return _picklable(policy, _attempt(policy, fn, args, kwargs))
        except (KeyboardInterrupt, SystemExit) as e:
            # never let user code shut the worker down
            error: BaseException = TaskInterruptedError(
                f"task {policy.task_name!r} raised {type(e).__name__}"
            )
            error.__cause__ = e
        except Exception as e:
            error = e
        attempt += 1
        if attempt > policy.retries or not isinstance(error, policy.retry_on):
            if policy.records:
                failure = Failure(error, policy.task_name, label(policy, user_args, kwargs))
                report_failure(failure, upstream=False)
                return failure
            raise error
        _wait(policy.delay(attempt))


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
        # the call's context (its output forwarding) goes with it into the thread
        future = pool.submit(contextvars.copy_context().run, fn, *args, **kwargs)
        try:
            return future.result(timeout=policy.timeout)
        except concurrent.futures.TimeoutError:
            raise TaskTimeoutError(
                f"task {policy.task_name!r}{_item_of_current_task()} did not finish within "
                f"{policy.timeout:g} s"
            ) from None
    finally:
        pool.shutdown(wait=False)


def _item_of_current_task() -> str:
    """`` (item 3)`` when a map item runs on a worker (its key is ``(map key, 3)``)."""
    from distributed.worker import thread_state

    key = getattr(thread_state, "key", None)
    if isinstance(key, tuple) and len(key) > 1:
        return f" (item {', '.join(map(str, key[1:]))})"
    return ""


def _wait(seconds: float) -> None:
    """Sleep ``seconds`` without holding a worker slot (secede, then rejoin)."""
    if seconds <= 0:
        return
    from distributed import rejoin, secede
    from distributed.worker import thread_state

    if getattr(thread_state, "key", None) is None:  # not on a worker (local schedulers)
        time.sleep(seconds)
        return
    secede()
    try:
        time.sleep(seconds)
    finally:
        rejoin()


# ------------------------------------------------------------------ collectors
def ratio_met(succeeded: int, total: int, ratio: float) -> bool:
    """Whether ``succeeded`` of ``total`` items meet ``min_success_ratio=ratio`` (< 1).

    Compared exactly, with the ratio as written (its shortest decimal form): 55 of 100
    meet 0.55, although ``0.55 * 100`` is ``55.00000000000001`` in floating point.

    >>> ratio_met(55, 100, 0.55), ratio_met(54, 100, 0.55), ratio_met(1, 3, 1 / 3)
    (True, False, True)
    """
    if ratio >= 1:
        return False
    r = Fraction(repr(float(ratio)))
    return succeeded * r.denominator >= r.numerator * total


def _check(task_name: str, mode: str, ratio: float, items: list) -> Any:
    failed = [i for i, x in enumerate(items) if type(x) is Failure]
    if not failed or mode == "raw":
        return items
    if mode == "tolerant":
        return [x.exception if type(x) is Failure else x for x in items]
    if mode in ("strict", "record") and ratio_met(len(items) - len(failed), len(items), ratio):
        return [None if type(x) is Failure else x for x in items]
    first = items[failed[0]]
    labels = {i: items[i].label for i in failed if items[i].label is not None}
    error = MapItemError(task_name, failed, len(items), first.task_name, first.exception, labels)
    error.__cause__ = first.exception
    error.results = [x.exception if type(x) is Failure else x for x in items]
    if mode == "record":
        return Failure(error, task_name)
    raise error


def gather(task_name: str, mode: str, ratio: float, *items: Any) -> Any:
    """A map's list from its items, applying its failure ``mode``.

    ``mode``: ``"strict"`` raise :class:`MapItemError` (unless ``min_success_ratio``
    ``ratio`` is met: failed items become ``None``); ``"tolerant"`` exception objects in
    place of failed items (``allow_failure``); ``"record"`` as strict, but a
    :class:`Failure` of the error instead of raising it (inside a sub-flow run per item);
    ``"raw"`` the records as they are (a nested map's per-parent list).
    """
    return _check(task_name, mode, ratio, list(items))


def gather_list(task_name: str, mode: str, ratio: float, items: list) -> Any:
    """:func:`gather` of a list (local schedulers: a map's raw results)."""
    return _check(task_name, mode, ratio, list(items))


def concat_raw(task_name: str, items: list) -> list:
    """A flatten's raw list, from its map's raw list: each item's elements, in order.

    A failed item (a record) stands for its unknown elements, as on a cluster, where
    each item of ``task_name``'s map is expanded on its own.
    """
    out: list = []
    for i, item in enumerate(items):
        if type(item) is Failure:
            out.append(item)
            continue
        why = unmappable(item)
        if why is not None:
            raise MapInputError(
                f"flatten({task_name}.map()): item {i} must be a list-like value to "
                f"flatten, got {type(item).__name__} from task {task_name!r} ({why})"
            )
        out.extend(item)
    return out


def gather_concat(task_name: str, mode: str, ratio: float, *lists: Any) -> Any:
    """A flattened map's list: the per-parent lists concatenated, then :func:`gather`."""
    out: list = []
    for lst in lists:
        if type(lst) is Failure:  # the parent item failed: its children are unknown
            out.append(lst)
        else:
            out.extend(lst)
    return _check(task_name, mode, ratio, out)
