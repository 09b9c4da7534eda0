"""The options of tasks and flows: their defaults, how each is checked, the keywords of
calls that are dynflow's, and where cached results are stored."""

from __future__ import annotations

import datetime
import enum
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Literal, TypedDict

import dask.config
from dask.utils import parse_timedelta

from dynflow.graph._node import Node

__all__ = [
    "CALLER_OPTIONS",
    "CALL_KEYWORDS",
    "FLOW_TASK_OPTIONS",
    "FlowOptions",
    "MAP_KEYWORDS",
    "OPTIONS",
    "PASSED_ON",
    "TaskOptions",
    "BatchSize",
    "Default",
    "absolute_storage",
    "batch_size_config",
    "cache_config",
    "check_map_options",
    "check_options",
    "duration",
    "dynflow_keywords",
    "result_storage",
    "wait_for_nodes",
]


#: a retry policy's exceptions: classes, or a callable deciding from the exception
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
#: a duration: seconds, a string as dask writes them ("30s", "1d"), or a timedelta
Duration = float | str | datetime.timedelta
#: items per scheduler task of a map: None (one task per item), a count, "auto" (about
#: eight tasks per worker thread) or "adaptive" (from the items' measured duration)
BatchSize = int | Literal["auto", "adaptive"] | None


class Default(enum.Enum):
    """An option left unset: its value is read from dask config where the call is made."""

    BATCH_SIZE = "dynflow.batch-size"

    def __repr__(self) -> str:
        return f"<from {self.value}>"


class FlowOptions(TypedDict, total=False):
    """The options of ``@df.flow(...)`` and ``flow.with_options(...)``, for type
    checkers (an unknown option is reported where it is written); see :func:`flow`.
    ``wait_for`` holds nodes, which a flow body's type checker sees as values: Any."""

    name: str | None
    log_prints: bool | None
    wait_for: Any
    min_success_ratio: float | None
    cache: bool | None
    cache_expiration: Duration | None
    refresh_cache: bool | None
    result_storage: str | None


class TaskOptions(TypedDict, total=False):
    """The options of ``@df.task(...)`` and ``task.with_options(...)``, for type
    checkers (an unknown option is reported where it is written); see :func:`task`."""

    name: str | None
    retries: int
    retry_delay: Duration | list[Duration] | tuple[Duration, ...]
    retry_backoff: float
    retry_jitter: float
    retry_on: RetryOn
    timeout: Duration | None
    pure: bool
    resources: Mapping[str, float] | None
    priority: int
    task_run_name: str | Callable[..., str] | None
    log_prints: bool | None
    cache: bool | None
    cache_version: str | None
    cache_key_fn: Callable[..., str | None] | None
    cache_expiration: Duration | None
    refresh_cache: bool | None
    result_storage: str | None
    wait_for: Any
    min_success_ratio: float
    batch_size: BatchSize
    max_concurrency: int | None
    concurrency_limit: str | None


def duration(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError
    seconds = parse_timedelta(value, default="seconds")
    if seconds < 0:
        raise ValueError
    return float(seconds)


def _delays(value: Any) -> float | tuple[float, ...]:
    """A retry delay, or a list of one per retry (the last one repeats)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError
        return tuple(duration(v) for v in value)  # type: ignore[misc]
    return duration(value)  # type: ignore[return-value]


def _retry_on(value: Any) -> tuple[type[BaseException], ...] | Callable[[BaseException], bool]:
    """Exception classes to retry, or a callable deciding from the exception."""
    if callable(value) and not (isinstance(value, type) and issubclass(value, BaseException)):
        return value
    types = value if isinstance(value, tuple) else (value,)
    if not types or not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise TypeError
    return types


def _check(predicate: Callable[[Any], bool]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not predicate(value):
            raise TypeError
        return value

    return check


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_BATCH_EXPECTED = "None, an int >= 1, 'auto' or 'adaptive'"


def _batch_ok(v: Any) -> bool:
    if isinstance(v, str):
        return v in ("auto", "adaptive")
    return v is None or (_is_int(v) and v >= 1)


def batch_size_config(name: str) -> BatchSize:
    """``dynflow.batch-size``, checked: a bad value raises a ``ValueError`` naming the
    key, the value, what is expected and the map (``name.map()``) that reads it."""
    value = dask.config.get("dynflow.batch-size")
    if value in ("null", "none", "None"):  # a YAML null written as a string
        value = None
    if not _batch_ok(value):
        raise ValueError(
            f"{name}.map(): the dask config key dynflow.batch-size is {value!r}; expected "
            f"{_BATCH_EXPECTED}"
        )
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: option name -> (default, validator returning the stored value, what is expected)
OPTIONS: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "name": (
        None,
        _check(lambda v: v is None or (isinstance(v, str) and bool(v))),
        "a non-empty string",
    ),
    "retries": (0, _check(lambda v: _is_int(v) and v >= 0), "an int >= 0"),
    "retry_delay": (
        0.0,
        _delays,
        "a duration (seconds or a string such as '2s'), or a list of one per retry",
    ),
    "retry_backoff": (1.0, _check(lambda v: _is_number(v) and v >= 1), "a number >= 1"),
    "retry_jitter": (
        0.0,
        _check(lambda v: _is_number(v) and 0 <= v <= 1),
        "a number in [0, 1]",
    ),
    "retry_on": (
        (Exception,),
        _retry_on,
        "an exception class, a tuple of them, or a callable (exception) -> bool",
    ),
    "timeout": (None, duration, "None or a duration: seconds or a string such as '30s'"),
    "pure": (False, _check(lambda v: isinstance(v, bool)), "a bool"),
    "resources": (
        None,
        _check(lambda v: v is None or isinstance(v, dict)),
        "a dict such as {'GPU': 1}",
    ),
    "priority": (0, _check(_is_int), "an int"),
    "task_run_name": (
        None,
        _check(lambda v: v is None or (isinstance(v, str) and bool(v)) or callable(v)),
        "None, a template such as 'fetch-{account}' or a callable returning a string",
    ),
    "log_prints": (None, _check(lambda v: v is None or isinstance(v, bool)), "None or a bool"),
    # result caching (dynflow.worker._cache); None: the flow's, else dynflow.cache.*
    "cache": (None, _check(lambda v: v is None or isinstance(v, bool)), "None or a bool"),
    "cache_version": (
        None,
        _check(lambda v: v is None or (isinstance(v, str) and bool(v))),
        "None or a non-empty string",
    ),
    "cache_key_fn": (
        None,
        _check(lambda v: v is None or callable(v)),
        "None or a callable taking the call's arguments by name, returning a string (or "
        "None: that call is not cached)",
    ),
    "cache_expiration": (
        None,
        duration,
        "None or a duration: seconds, a timedelta or a string such as '1d'",
    ),
    "refresh_cache": (None, _check(lambda v: v is None or isinstance(v, bool)), "None or a bool"),
    "result_storage": (
        None,
        _check(lambda v: v is None or (isinstance(v, str) and bool(v))),
        "None, a local path or an fsspec URL such as 's3://bucket/results'",
    ),
    # dynflow's keywords of a call, also settable here: a call's keyword that names a
    # parameter of the function goes to the function (see `dynflow_keywords`)
    "wait_for": ((), lambda v: wait_for_nodes(v), "a node or an iterable of nodes"),
    "min_success_ratio": (
        1.0,
        _check(lambda v: _is_number(v) and 0 <= v <= 1),
        "a number in [0, 1]",
    ),
    "batch_size": (
        Default.BATCH_SIZE,
        _check(lambda v: v is Default.BATCH_SIZE or _batch_ok(v)),
        _BATCH_EXPECTED,
    ),
    "concurrency_limit": (
        None,
        _check(lambda v: v is None or (isinstance(v, str) and bool(v))),
        "None or the name of a limit (a non-empty str; see df.set_concurrency_limit)",
    ),
    "max_concurrency": (
        None,
        _check(lambda v: v is None or (_is_int(v) and v >= 1)),
        "None or an int >= 1",
    ),
}

#: the task options a flow sets for the tasks called in its body that leave them unset
FLOW_TASK_OPTIONS = ("log_prints", "cache", "cache_expiration", "refresh_cache", "result_storage")


#: the cache options a task passes on to the tasks of the graph its call returns (a
#: dynamic task), for those that leave them unset (``cache`` itself is not passed on: a
#: task's ``cache=True`` caches that task; a flow's, the tasks in its body)
PASSED_ON = ("cache_expiration", "refresh_cache", "result_storage")

#: while the graph a call returned (or a sub-flow item) is lowered: the :data:`PASSED_ON`
#: options of the task (or of the flows) it comes from, which its tasks take where they
#: leave them unset (after their own and their flow's, before the dask config)
CALLER_OPTIONS: ContextVar[Mapping[str, Any]] = ContextVar(
    "dynflow_caller_options",
    default=MappingProxyType({}),  # noqa: B039 - never mutated
)

#: dask config key -> (how it is checked, what is expected)
_CONFIG: dict[str, tuple[Callable[[Any], Any], str]] = {
    "dynflow.cache.enabled": (
        _check(lambda v: v is None or isinstance(v, bool)),
        "true or false",
    ),
    "dynflow.cache.expiration": (
        duration,
        "null or a duration: seconds or a string such as '1d' or '12h'",
    ),
    "dynflow.cache.refresh": (
        _check(lambda v: v is None or isinstance(v, bool)),
        "true or false",
    ),
    "dynflow.result-storage": (
        _check(lambda v: v is None or (isinstance(v, str) and bool(v))),
        "null, a local path or an fsspec URL such as 's3://bucket/results'",
    ),
}


def cache_config(key: str, task_name: str | None = None) -> Any:
    """The dask config value ``key`` (one of the ``dynflow.cache.*`` keys or
    ``dynflow.result-storage``), checked: a bad value raises a ``ValueError`` naming the
    key, the value, what is expected and the task that reads it."""
    value = dask.config.get(key)
    check, what = _CONFIG[key]
    try:
        return check(value)
    except (TypeError, ValueError, KeyError, AttributeError):
        who = f"task {task_name!r}: " if task_name is not None else ""
        raise ValueError(f"{who}the dask config key {key} is {value!r}; expected {what}") from None


def result_storage(task_name: str | None = None) -> str:
    """``dynflow.result-storage`` (checked, see :func:`cache_config`); null is
    ``~/.cache/dynflow/results``."""
    return cache_config("dynflow.result-storage", task_name) or "~/.cache/dynflow/results"


def absolute_storage(value: str) -> str:
    """A storage location as every worker reads it: an fsspec URL as it is, a local path
    made absolute here, where the graph is built."""
    if "://" in value:
        return value
    return os.path.abspath(os.path.expanduser(value))


#: dynflow's own keywords of ``task(...)`` and ``task.map(...)`` (also task options)
CALL_KEYWORDS = ("wait_for",)
MAP_KEYWORDS = ("wait_for", "min_success_ratio", "batch_size", "max_concurrency")


def wait_for_nodes(value: Any) -> tuple[Node, ...]:
    """``wait_for`` as a tuple of nodes (``None``: none; one node: that one)."""
    if value is None:
        return ()
    if isinstance(value, Node):
        return (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError
    nodes = tuple(value)
    if not all(isinstance(n, Node) for n in nodes):
        raise TypeError
    return nodes


def dynflow_keywords(
    signature: inspect.Signature, kwargs: dict[str, Any], names: Iterable[str]
) -> dict[str, Any]:
    """Take dynflow's keywords ``names`` out of a call's ``kwargs``; return them.

    A keyword that names a parameter of the function stays in ``kwargs``: the user's
    value always reaches the function (``def train(cfg, batch_size=64)`` gets
    ``train.map(grid, batch_size=32)``'s 32). dynflow's option of that name is then set
    with ``with_options``.
    """
    params = {
        p.name
        for p in signature.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    return {k: kwargs.pop(k) for k in names if k in kwargs and k not in params}


def check_options(name: str, options: Mapping[str, Any], kind: str = "task") -> dict[str, Any]:
    """``options`` checked and converted; a bad one raises a ``TypeError`` naming the
    ``kind`` (``"task"`` or ``"flow"``) called ``name``, the option, its value and what
    is expected."""
    out = {}
    for key, value in options.items():
        if key not in OPTIONS:
            raise TypeError(
                f"{kind} {name!r}: unknown option {key!r}; expected one of "
                f"{', '.join(sorted(OPTIONS))}"
            )
        _, validate, what = OPTIONS[key]
        try:
            out[key] = validate(value)
        except (TypeError, ValueError, KeyError, AttributeError):
            raise TypeError(f"{kind} {name!r}: option {key}={value!r}; expected {what}") from None
    return out


def check_map_options(
    name: str, min_success_ratio: Any, batch_size: Any, max_concurrency: Any
) -> None:
    """Raise a ``TypeError`` naming ``name.map()`` for a bad map option."""
    if not (_is_number(min_success_ratio) and 0 <= min_success_ratio <= 1):
        raise TypeError(
            f"{name}.map(): min_success_ratio={min_success_ratio!r}; expected a number in [0, 1]"
        )
    if not _batch_ok(batch_size):
        raise TypeError(f"{name}.map(): batch_size={batch_size!r}; expected {_BATCH_EXPECTED}")
    if max_concurrency is not None and not (_is_int(max_concurrency) and max_concurrency >= 1):
        raise TypeError(
            f"{name}.map(): max_concurrency={max_concurrency!r}; expected None or an int >= 1"
        )
