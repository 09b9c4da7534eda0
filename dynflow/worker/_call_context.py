"""What a running call knows about itself: its key, its map index, its label.

On a worker, a task call can find its map index (from its key, or inside a batch from
:data:`BATCH_INDEX`) and its label (the task's ``task_run_name`` template filled with the
call's arguments); in a local run, :func:`at_index` sets the index. What the call tells
the scheduler and the client is in :mod:`dynflow.worker._reports`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dynflow._context import BATCH_INDEX, CURRENT_KEY

if TYPE_CHECKING:
    from dynflow.worker._calls import CallPolicy

__all__ = ["at_index", "current_key", "item_index", "label", "tag", "this_worker"]


@contextlib.contextmanager
def at_index(index: tuple[int, ...]) -> Iterator[None]:
    """Calls made inside run as map item ``index`` (several items run in one task)."""
    token = BATCH_INDEX.set(index)
    try:
        yield
    finally:
        BATCH_INDEX.reset(token)


def current_key() -> Any:
    """The key of the task this call runs in, on a worker; None elsewhere."""
    key = CURRENT_KEY.get()
    if key is not None:
        return key
    worker = this_worker()
    if worker is None:
        return None
    try:
        return worker.get_current_task()
    except KeyError:  # not in a task's own thread
        return None


def item_index() -> tuple[int, ...] | None:
    """The running map item's index (``(i,)``, or ``(i, j)`` nested); None otherwise.

    The one place that knows which item runs: inside a batch, the batch's current
    item; else the index in the task's key ``(item name, *prefix, i)``.
    """
    index = BATCH_INDEX.get()
    if index is not None:
        return index
    key = current_key()
    if type(key) is tuple and len(key) > 1 and all(type(k) is int for k in key[1:]):
        return key[1:]
    return None


def label(policy: CallPolicy, args: tuple, kwargs: Mapping[str, Any]) -> str | None:
    """The call's ``task_run_name``, filled in; None when the task has none.

    A template is formatted with the call's arguments by name, plus ``map_index``; a
    callable is called with those of them its parameters name (all of them, if it
    takes ``**kwargs``). A label that fails (an error inside the callable) says so
    rather than failing the call; a template's fields are checked when the task is
    made.
    """
    if policy.run_name is None:
        return None
    fields = dict(zip(policy.params, args, strict=False))
    fields.update(kwargs)
    index = item_index()
    fields.setdefault("map_index", (index[-1] if len(index) == 1 else index) if index else None)
    try:
        if callable(policy.run_name):
            wanted = _accepted(policy.run_name)
            if wanted is not None:
                fields = {k: v for k, v in fields.items() if k in wanted}
            return str(policy.run_name(**fields))
        return policy.run_name.format(**fields)
    except Exception as e:  # a label must never fail the task it labels
        return f"{policy.task_name} (task_run_name failed: {type(e).__name__}: {e})"


def _accepted(fn: Callable[..., Any]) -> frozenset[str] | None:
    try:
        return _accepted_names(fn)
    except TypeError:  # an unhashable callable: not cached
        return _accepted_names.__wrapped__(fn)


@functools.lru_cache(maxsize=256)
def _accepted_names(fn: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword arguments ``fn`` accepts by name; None when it takes ``**kwargs``
    (or its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def tag(policy: CallPolicy, args: tuple, kwargs: Mapping[str, Any]) -> str:
    """How the call's output is tagged: its label, else ``task[i]``, else the task name."""
    name = label(policy, args, kwargs)
    if name is not None:
        return name
    index = item_index()
    if index is None:
        return policy.task_name
    return f"{policy.task_name}[{', '.join(map(str, index))}]"


def this_worker() -> Any:
    """The worker this call runs on; None elsewhere (a local scheduler, the client)."""
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None
