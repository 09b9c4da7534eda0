"""Tasks and flows defined at module level travel by reference, as functions do.

A module-level task or flow pickles as ``module.qualname`` (:func:`by_reference`), and a
module-level task's function as a :class:`TaskFunction` naming its task, so a worker
imports it instead of receiving its code; ``__main__`` and local definitions travel by
value (a remote process has another ``__main__``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["TaskFunction", "by_reference", "lookup"]


class TaskFunction:
    """A module-level task's function, pickled as a reference to ``module.qualname.fn``."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple:
        return _load_task_function, (self.fn.__module__, self.fn.__qualname__)

    def __repr__(self) -> str:
        return f"<function {self.fn.__qualname__}>"


def _load_task_function(module: str, qualname: str) -> TaskFunction:
    return TaskFunction(_load_attribute(module, qualname).fn)


def lookup(fn: Callable) -> Any:
    """What ``fn``'s module holds under ``fn``'s name; None for ``__main__`` and locals.

    ``__main__`` is excluded: a remote scheduler or worker has another ``__main__``.
    """
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    qualname = getattr(fn, "__qualname__", "")
    if module is None or "<locals>" in qualname or module.__name__ == "__main__":
        return None
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def by_reference(obj: Any, fn: Callable) -> tuple | None:
    """``(loader, args)`` to pickle ``obj`` as ``module.qualname`` if that is where it lives."""
    if lookup(fn) is obj:
        return _load_attribute, (fn.__module__, fn.__qualname__)
    return None


def _load_attribute(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
