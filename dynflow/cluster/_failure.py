"""Failure records: a failed call's exception as a value that always travels.

A map item (and every task of a sub-flow run per item) never errs in dask: it returns a
:class:`Failure`, which the map's collector turns into the user's semantics
(:mod:`dynflow.cluster._collect`). :func:`portable` makes any exception fit to cross
processes: long tracebacks trimmed, an exception that does not survive pickling replaced
by a :class:`~dynflow.RemoteError`.
"""

from __future__ import annotations

import traceback
from types import TracebackType

from distributed.protocol.pickle import dumps, loads
from tblib import Traceback

from dynflow.exceptions import RemoteError

__all__ = ["Failure", "portable"]


class Failure:
    """A failed call's exception, with its remote traceback, as a picklable value.

    The exception is made :func:`portable` when the record is made: a record always
    travels (to the collector, to a chained item, to the client), whatever the
    exception.
    """

    __slots__ = ("exception", "label", "task_name")

    def __init__(self, exception: BaseException, task_name: str, label: str | None = None) -> None:
        self.exception = portable(exception)
        self.task_name = task_name
        self.label = label  # the item's task_run_name, if the task has one

    def __reduce__(self) -> tuple:
        exc = self.exception
        tb = Traceback(exc.__traceback__).to_dict() if exc.__traceback__ else None
        return _rebuild_failure, (exc, tb, self.task_name, self.label)

    def __repr__(self) -> str:
        return f"<Failure in {self.task_name!r}: {self.exception!r}>"


def _rebuild_failure(
    exc: BaseException, tb: dict | None, task_name: str, label: str | None = None
) -> Failure:
    if tb is not None:
        exc = exc.with_traceback(Traceback.from_dict(tb).as_traceback())
    failure = object.__new__(Failure)
    failure.exception, failure.task_name, failure.label = exc, task_name, label
    return failure


#: frames kept of a long traceback: where it entered user code, and where it failed
TRACEBACK_HEAD, TRACEBACK_TAIL = 10, 40


def _trim_traceback(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` with at most ``TRACEBACK_HEAD + TRACEBACK_TAIL`` frames (a RecursionError
    has a thousand); the middle ones are dropped, in place."""
    frames = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    if len(frames) > TRACEBACK_HEAD + TRACEBACK_TAIL:
        frames[TRACEBACK_HEAD - 1].tb_next = frames[-TRACEBACK_TAIL]
    return frames[0] if frames else None


def portable(exc: BaseException) -> BaseException:
    """``exc``, made sure to travel between processes: a long traceback is trimmed (also
    on its causes), and an exception that does not survive pickling (its class cannot be
    pickled, or rebuilt from its pickle) is replaced by a :class:`~dynflow.RemoteError`
    with its type, message and traceback text.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen and len(seen) < 20:
        seen.add(id(e))
        e.__traceback__ = _trim_traceback(e.__traceback__)
        e = e.__cause__ or e.__context__
    try:
        loads(dumps(exc))
    except Exception as why:
        text = "".join(traceback.format_exception(exc))
        stand_in = RemoteError(
            f"{type(exc).__name__}: {exc} (the original exception could not be pickled "
            f"to send it between processes: {type(why).__name__}: {why})",
            f"{type(exc).__module__}.{type(exc).__qualname__}",
            text,
        )
        return stand_in.with_traceback(exc.__traceback__)
    return exc
