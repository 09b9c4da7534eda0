"""The errors dynflow raises.

::

    DynflowError
     ├── LazyValueError(DynflowError, TypeError)      a lazy node used as a concrete value
     ├── MapInputError(DynflowError, TypeError)       a mapped value that cannot be mapped over
     ├── MapLengthError(DynflowError, ValueError)     zipped mapped arguments of unequal lengths
     ├── SerializationError(DynflowError, TypeError)  a task or argument that cannot be pickled
     ├── ExtensionError(DynflowError, RuntimeError)   the scheduler extension is missing or refused
     ├── MapItemError(DynflowError, RuntimeError)     items of a map failed (original as __cause__)
     ├── TaskTimeoutError(DynflowError, TimeoutError) a call ran past its task's timeout
     ├── SchedulerLostError(DynflowError, ConnectionError)  the scheduler went away mid-run
     └── TaskInterruptedError(DynflowError, RuntimeError)  KeyboardInterrupt/SystemExit in a task

An error raised by user code in a plain task reaches the caller unchanged: original type,
message and remote traceback. Items of a map fail in isolation; a consumer of the map's list
gets a MapItemError naming the map and the failed indices, whose ``__cause__`` is the
original exception with its remote traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "DynflowError",
    "ExtensionError",
    "LazyValueError",
    "MapInputError",
    "MapItemError",
    "MapLengthError",
    "SchedulerLostError",
    "SerializationError",
    "TaskInterruptedError",
    "TaskTimeoutError",
]


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

    Attributes
    ----------
    task_name : str
        The map whose list was asked for.
    failed : list[int]
        Indices of the failed items in that list.
    total : int
        Number of items.
    results : list
        Every item's result, with the exception object in place of each failed item.
    labels : dict[int, str]
        The failed items' labels (the task's ``task_run_name``), where it has one.
    """

    def __init__(
        self,
        task_name: str,
        failed: list[int],
        total: int,
        origin: str,
        first: BaseException,
        labels: Mapping[int, str] | None = None,
    ) -> None:
        self.task_name = task_name
        self.failed = list(failed)
        self.total = total
        self.origin = origin
        self.labels = dict(labels or {})
        self.results: list = []
        shown = ", ".join(
            f"{i} ({self.labels[i]})" if i in self.labels else str(i) for i in failed[:20]
        ) + (", ..." if len(failed) > 20 else "")
        where = "" if origin == task_name else f" (failed in task {origin!r})"
        message = str(first)
        if len(message) > 1000:
            message = message[:1000] + f"... [{len(message) - 1000} more characters]"
        super().__init__(
            f"{task_name}.map(): {len(failed)} of {total} items failed, at index "
            f"{shown}{where}; first error: {type(first).__name__}: {message}"
        )
        self._args = (task_name, failed, total, origin, first, self.labels)

    def __reduce__(self) -> tuple:
        return (_rebuild_map_item_error, (self._args, self.results, self.__cause__))


def _rebuild_map_item_error(args: tuple, results: list, cause: BaseException | None) -> Any:
    error = MapItemError(*args)
    error.results = results
    error.__cause__ = cause
    return error


class TaskTimeoutError(DynflowError, TimeoutError):
    """A call of a task ran longer than the task's ``timeout``."""


class TaskInterruptedError(DynflowError, RuntimeError):
    """A task raised ``KeyboardInterrupt`` or ``SystemExit`` on a worker (cause attached)."""


class SchedulerLostError(DynflowError, ConnectionError):
    """The connection to the scheduler was lost while a run was being computed."""
