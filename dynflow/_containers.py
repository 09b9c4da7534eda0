"""Walking the arguments of calls: what is inside lists, tuples, sets and dicts.

Nodes (on the client) and item markers (in expansion plans) may sit anywhere inside a
call's arguments. One walker finds and replaces them, for every use:

- :func:`find`: the leaves, in order of appearance;
- :func:`substitute`: the same structure with the leaves replaced, every container
  keeping its type (``OrderedDict``, ``defaultdict`` with its factory, namedtuples,
  ``frozenset``, ``deque``, subclasses), as a value, or (``spec=True``) as dask task-spec arguments
  whose containers are rebuilt, with their type, where the task runs.

Containers without a leaf are returned as they are (the same object), so walking plain
data costs one type check per element.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from typing import Any

from dask._task_spec import Dict, GraphNode, List, Set, Task, Tuple

__all__ = ["find", "substitute"]

CONTAINERS = (list, tuple, set, frozenset, dict, deque)
_PLAIN: dict[type, Callable[..., GraphNode]] = {list: List, tuple: Tuple, set: Set}


def find(obj: Any, is_leaf: Callable[[Any], bool]) -> list:
    """Every leaf in ``obj`` (containers searched, dict values only), in order."""
    found: list = []
    stack = [obj]
    while stack:
        o = stack.pop()
        if is_leaf(o):
            found.append(o)
        elif isinstance(o, dict):
            stack.extend(reversed(list(o.values())))
        elif isinstance(o, CONTAINERS):
            stack.extend(reversed(list(o)))
    return found


_UNCHANGED = object()


def substitute(
    obj: Any, is_leaf: Callable[[Any], bool], fn: Callable[[Any], Any], spec: bool = False
) -> Any:
    """``obj`` with each leaf replaced by ``fn(leaf)``; containers keep their type.

    ``spec=True``: ``fn`` returns task-spec nodes (``Alias``, ``Task``), and the
    containers holding them become task-spec containers, rebuilt with their own type
    when the task runs.
    """
    out = _sub(obj, is_leaf, fn, spec)
    return obj if out is _UNCHANGED else out


def _sub(obj: Any, is_leaf: Callable[[Any], bool], fn: Callable[[Any], Any], spec: bool) -> Any:
    if is_leaf(obj):
        return fn(obj)
    if not isinstance(obj, CONTAINERS):
        return _UNCHANGED
    if isinstance(obj, dict):
        items = [(k, _sub(v, is_leaf, fn, spec)) for k, v in obj.items()]
        if all(v is _UNCHANGED for _, v in items):
            return _UNCHANGED
        values: Any = {k: obj[k] if v is _UNCHANGED else v for k, v in items}
    else:
        subs = [(o, _sub(o, is_leaf, fn, spec)) for o in obj]
        if all(v is _UNCHANGED for _, v in subs):
            return _UNCHANGED
        values = [o if v is _UNCHANGED else v for o, v in subs]
    return _build_spec(obj, values) if spec else rebuild(_empty(obj), values)


def _empty(obj: Any) -> Any:
    """What :func:`rebuild` needs to make a container like ``obj``: a copy without its
    elements (keeps an ``OrderedDict``'s type, a ``defaultdict``'s factory, a subclass's
    attributes), or the type itself for immutable containers."""
    if isinstance(obj, (tuple, frozenset)):
        return type(obj)
    empty = copy.copy(obj)
    empty.clear()
    return empty


def rebuild(empty: Any, values: Any) -> Any:
    """A container like the one :func:`_empty` was made from, holding ``values``.

    ``values`` is a dict for dicts, else a list.
    """
    if isinstance(empty, type):
        if hasattr(empty, "_make"):  # a namedtuple
            return empty._make(values)
        return empty(values)
    out = copy.copy(empty)
    if isinstance(out, (list, deque)):
        out.extend(values)
    else:  # a dict or a set
        out.update(values)
    return out


def _build_spec(obj: Any, values: Any) -> GraphNode:
    kind = _PLAIN.get(type(obj))
    if kind is not None:
        return kind(*values)
    if type(obj) is dict:
        return Dict(values)
    # another type: rebuilt where the task runs, from task-spec parts
    parts = Dict(values) if isinstance(values, dict) else List(*values)
    return Task(None, rebuild, _empty(obj), parts)
