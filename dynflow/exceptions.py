"""The errors dynflow raises.

::

    DynflowError
     ├── LazyValueError(DynflowError, TypeError)      a lazy node used as a concrete value
     ├── MapInputError(DynflowError, TypeError)       a mapped value that cannot be mapped over
     ├── MapLengthError(DynflowError, ValueError)     zipped mapped arguments of unequal lengths
     ├── SerializationError(DynflowError, TypeError)  a task or argument that cannot be pickled
     ├── ExtensionError(DynflowError, RuntimeError)   the scheduler extension is missing or refused
     ├── MapItemError(DynflowError, RuntimeError)     items of a map failed (original as __cause__)
     ├── RemoteError(DynflowError, RuntimeError)      a worker's exception not rebuildable here
     ├── TaskTimeoutError(DynflowError, TimeoutError) a call ran past its task's timeout
     ├── SchedulerLostError(DynflowError, ConnectionError)  the scheduler went away mid-run
     ├── ConcurrencyLimitError(DynflowError, LookupError)   a concurrency limit never set
     ├── ResultStorageError(DynflowError, OSError)    a cached task's storage cannot be written
     └── TaskInterruptedError(DynflowError, RuntimeError)  KeyboardInterrupt/SystemExit in a task

An error raised by user code in a plain task reaches the caller unchanged: original type,
message and remote traceback. Items of a map fail in isolation; a consumer of the map's list
gets a MapItemError naming the map and the failed indices, whose ``__cause__`` is the
original exception with its remote traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynflow._public import public

__all__ = [
    "ConcurrencyLimitError",
    "DynflowError",
    "ExtensionError",
    "LazyValueError",
    "MapInputError",
    "MapItemError",
    "MapLengthError",
    "RemoteError",
    "ResultStorageError",
    "SchedulerLostError",
    "SerializationError",
    "TaskInterruptedError",
    "TaskTimeoutError",
    "index_text",
    "short_text",
]


#: an item's index: ``i``, or ``(i, j, ...)`` in a nested map (``(i,)``: a failed parent
#: standing for its unknown items)
ItemIndex = int | tuple[int, ...]


def index_text(index: Any) -> str:
    """An item's index as every view and error writes it (after the word "index"):
    ``3`` for the fourth item, ``(1, 2)`` for item 2 of parent 1 (a nested map).

    >>> index_text(3), index_text((3,)), index_text([1, 2])
    ('3', '3', '(1, 2)')
    """
    if isinstance(index, (tuple, list)):
        return str(index[0]) if len(index) == 1 else f"({', '.join(map(str, index))})"
    return str(index)


def short_text(text: str, limit: int = 1000) -> str:
    """``text``, at most ``limit`` characters and a note of how many more there were, as
    every error cuts a long message.

    >>> short_text("abcdef", 3), short_text("abc", 3)
    ('abc... [3 more characters]', 'abc')
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


class DynflowError(Exception):
    """Root of every error dynflow itself raises."""


class LazyValueError(DynflowError, TypeError):
    """A lazy node was used where a concrete value is needed (``if node:``, ``len(node)``)."""


class MapInputError(DynflowError, TypeError):
    """A mapped argument is not something a map can iterate over."""


class MapLengthError(DynflowError, ValueError):
    """Mapped (zipped) arguments have different lengths."""


class SerializationError(DynflowError, TypeError):
    """A task's function or one of its arguments cannot be pickled."""


class ExtensionError(DynflowError, RuntimeError):
    """dynflow's scheduler extension is not installed or could not be installed."""


class MapItemError(DynflowError, RuntimeError):
    """Items of a map failed. The first original exception is ``__cause__``.

    The error stays small whatever the map's size: it names the failed items and
    carries their exceptions (the first :data:`MAX_ERRORS`), never the results of the
    items that succeeded. To receive those, consume ``df.allow_failure(m)`` (each failed
    item's exception in its place) or set ``min_success_ratio``.

    Attributes
    ----------
    task_name : str
        The map whose list was asked for.
    failed : list[int or tuple]
        Indices of the failed items in that list (tuples in a nested map, see
        ``df.as_completed``).
    total : int
        Number of items.
    origin : str
        The task the first failure came from (a chained or flattened map's upstream).
    labels : dict[int or tuple, str]
        The failed items' labels (the task's ``task_run_name``), where it has one (a
        label is cut at 1000 characters; the message shows 100 of each).
    errors : dict[int or tuple, BaseException]
        The exceptions of the first :data:`MAX_ERRORS` failed items, by index. The
        first is the original, whole (``__cause__``); the others are bounded copies of
        theirs, of the same type: long texts in their ``args`` and attributes cut at
        1000 characters, their tracebacks at their innermost frames, so that the error
        stays small in bytes whatever the messages. The failed items' own exceptions
        (those an ``allow_failure`` consumer receives) are never changed.
    """

    #: how many failed items' exceptions an error carries
    MAX_ERRORS = 20

    def __init__(
        self,
        task_name: str,
        failed: Sequence[ItemIndex],
        total: int,
        origin: str,
        first: BaseException | str,
        labels: Mapping[ItemIndex, str] | None = None,
        errors: Mapping[ItemIndex, BaseException] | None = None,
    ) -> None:
        self.task_name = task_name
        self.failed = list(failed)
        self.total = total
        self.origin = origin
        self.labels = {i: short_text(str(text), 1000) for i, text in (labels or {}).items()}
        self.errors = dict(list((errors or {}).items())[: self.MAX_ERRORS])
        if isinstance(first, RemoteError):  # its message starts with the original type
            first = str(first)
        elif isinstance(first, BaseException):
            first = f"{type(first).__name__}: {first}"
        first = short_text(first, 1000)
        self.first_error = first
        shown = (
            ", ".join(  # an int is an item; a tuple a failed parent, (1,), of a flatten
                f"{i} ({short_text(self.labels[i], 100)})" if i in self.labels else str(i)
                for i in failed[:20]
            )
            + (", ..." if len(failed) > 20 else "")
        )
        where = "" if origin == task_name else f" (failed in task {origin!r})"
        super().__init__(
            f"{task_name}.map(): {len(failed)} of {total} items failed, at index "
            f"{shown}{where}; first error: {first}"
        )

    def __reduce__(self) -> tuple:
        # its state as it is, __init__ not called again (it would cut the cut texts again)
        return (_rebuild_map_item_error, (type(self), self.args, self.__dict__, self.__cause__))


def _rebuild_map_item_error(
    cls: type[MapItemError], args: tuple, state: dict, cause: BaseException | None
) -> MapItemError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    error.__cause__ = cause
    return error


class RemoteError(DynflowError, RuntimeError):
    """Stands in for an exception from a worker that cannot be rebuilt here.

    Its class could not be pickled, unpickled or imported in this process. The message
    is the original's, prefixed with its type.

    Attributes
    ----------
    type_name : str
        The original exception's type, ``module.QualName``.
    remote_traceback : str
        The original traceback, as text (possibly trimmed).
    """

    def __init__(self, message: str = "", type_name: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.type_name, self.remote_traceback))


class TaskTimeoutError(DynflowError, TimeoutError):
    """A call of a task ran longer than the task's ``timeout``."""


class TaskInterruptedError(DynflowError, RuntimeError):
    """A task raised ``KeyboardInterrupt`` or ``SystemExit`` on a worker (cause attached)."""


class ResultStorageError(DynflowError, OSError):
    """The result storage of a cached task cannot be written (checked at submit)."""


class SchedulerLostError(DynflowError, ConnectionError):
    """The connection to the scheduler was lost while a run was being computed."""


class ConcurrencyLimitError(DynflowError, LookupError):
    """A task carries a ``concurrency_limit`` name that was never set on the cluster
    (:func:`dynflow.set_concurrency_limit`)."""


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(
    ConcurrencyLimitError,
    DynflowError,
    ExtensionError,
    LazyValueError,
    MapInputError,
    MapItemError,
    MapLengthError,
    RemoteError,
    ResultStorageError,
    SchedulerLostError,
    SerializationError,
    TaskInterruptedError,
    TaskTimeoutError,
)
