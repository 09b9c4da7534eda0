"""Result caching: a call's result persisted in a result storage, read back by later runs.

A task with ``cache=True`` gets a :class:`CachePolicy` in its call policy (made where
the graph is built, so the storage location travels with the tasks to every worker).
:func:`~dynflow.cluster._calls.run_call` asks it, per call (per map item, inside batches
too), for the call's *cache key*: a token of the task's identity (its name, its source
and ``cache_version``) and of the call's argument values (dask's ``tokenize``,
deterministic only), or of what ``cache_key_fn`` returns. An entry under that key
that has not expired is the call's value, and the function does not run; otherwise the
call runs and a successful result is written. Failed calls are never written.

Storage is any fsspec location (a local path, ``file://``, ``s3://``, ``gcs://``,
``memory://``): ``<storage>/<task name>/<cache key>``. An entry is dask's serialization
of ``(written at, value)`` (``distributed.protocol.serialize_bytes``: pickle with
out-of-band buffers for NumPy and pandas), written to a temporary name beside it and
then moved into place, so a reader never sees half an entry, and two writers of one
key leave one whole entry. An entry that cannot be read is missing (with a warning).
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle
import fsspec
from dask.base import tokenize
from distributed.protocol import deserialize_bytes, serialize_bytes

from dynflow._containers import find
from dynflow.cluster._items import tell_client
from dynflow.exceptions import ResultStorageError

logger = logging.getLogger(__name__)

__all__ = ["LARGE", "MISSING", "CachePolicy", "check_storage", "remember", "task_identity"]

MISSING = object()

#: storage locations this process has checked (see :func:`check_storage`)
_CHECKED: set[str] = set()


def task_identity(name: str, fn: Callable, version: str | None) -> str:
    """A token of what the task computes: its name, its function's source (where the
    source is not available, the function pickled by value, which holds the functions
    of the script it calls) and the user's ``cache_version``. Made where the task is
    defined (the client), and sent with the task."""
    fn = inspect.unwrap(fn)
    try:
        source: Any = inspect.getsource(fn)
    except (OSError, TypeError):
        try:
            source = cloudpickle.dumps(fn)
        except Exception:  # noqa: BLE001 - then what the code object says
            code = getattr(fn, "__code__", None)
            source = (code.co_code, code.co_consts, code.co_names) if code else repr(fn)
    return tokenize(name, source, version)


def check_storage(storage: str) -> None:
    """Fail now, with the location in the message, when ``storage`` cannot be written
    (checked once per process: a file is written and removed)."""
    if storage in _CHECKED:
        return
    try:
        fs, root = fsspec.core.url_to_fs(storage)
        fs.makedirs(root, exist_ok=True)
        probe = f"{root.rstrip('/')}/.dynflow-probe-{uuid.uuid4().hex}"
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except Exception as e:
        raise ResultStorageError(
            f"the result storage {storage!r} cannot be written ({type(e).__name__}: {e}); "
            "set the task's result_storage option or the config key "
            "dynflow.result-storage to a location every worker can write"
        ) from e
    _CHECKED.add(storage)


def _arguments(named: dict[str, Any], extra: tuple) -> list[tuple[str, Any]]:
    return [*named.items(), *((f"argument {len(named) + i}", a) for i, a in enumerate(extra))]


def _unstable(named: dict[str, Any], extra: tuple) -> str | None:
    """An argument whose token differs between runs although dask calls it
    deterministic: an instance of a class defined in the script (``__main__``), which
    dask tokenizes by pickling the class itself, differently in each process."""
    for name, value in _arguments(named, extra):
        for leaf in find(value, lambda o: type(o).__module__ == "__main__"):
            if not hasattr(leaf, "__dask_tokenize__"):
                return (
                    f"argument {name!r} holds a {type(leaf).__name__} defined in the "
                    "script (__main__), whose token changes from run to run"
                )
    return None


class _Token:
    """An argument whose token is known already (see :func:`_known`)."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token

    def __dask_tokenize__(self) -> str:
        return self.token


#: in this process: large argument values, by ``id``, with their token (a weak
#: reference tells whether the object is still the same one)
_TOKENS: dict[int, tuple[Any, str]] = {}
#: values this size or larger are hashed once per process, not once per call
LARGE = 1 << 20


def remember(value: Any, token: str) -> None:
    """``value`` (a cached call's result, large) has ``token``: its cache key, so that a
    cached call that receives it here does not hash it again."""
    _note(value, f"dynflow-cached-{token}")


def _note(value: Any, token: str) -> None:
    at = id(value)
    try:
        ref = weakref.ref(value, lambda _: _TOKENS.pop(at, None))
    except TypeError:  # lists, dicts, ints: no weak reference (and mostly small)
        return
    _TOKENS[id(value)] = (ref, token)


def _known(value: Any) -> Any:
    """``value``, or for a large value seen before in this process its token: an
    upstream cached result by its cache key, any other large value (an unmapped array
    every item receives) hashed once. Values in a dask graph are not changed in place."""
    entry = _TOKENS.get(id(value))
    if entry is not None and entry[0]() is value:
        return _Token(entry[1])
    if _large(value):
        token = tokenize(value, ensure_deterministic=True)
        _note(value, token)
        return _Token(token)
    return value


def _warn(task_name: str, message: str) -> None:
    """A ``RuntimeWarning`` where the call runs and, on a worker, also a line on the
    stderr of the client that submitted the run (a worker's warnings stay in its log)."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    tell_client(task_name, f"RuntimeWarning: {message}")


def _large(value: Any) -> bool:
    size = getattr(value, "nbytes", None)
    return isinstance(size, int) and size >= LARGE


def _culprit(named: dict[str, Any], extra: tuple) -> str:
    for name, value in _arguments(named, extra):
        try:
            tokenize(value, ensure_deterministic=True)
        except Exception:  # noqa: BLE001 - dask's TokenizationError, or the object's
            return f"argument {name!r} ({type(value).__name__}) has no deterministic token"
    return "an argument has no deterministic token"


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How one task's calls are cached (see the module docstring).

    ``storage``: an fsspec URL or an absolute local path; ``identity``: from
    :func:`task_identity`; ``key_fn``: the user's ``cache_key_fn``, called with the
    call's arguments, returning a string (or None: this call is not cached);
    ``expiration``: seconds an entry is valid (None: forever); ``refresh``: recompute
    and overwrite; ``params``: the function's positional parameter names;
    ``defaults``: its parameters with defaults, ``(name, value)`` (a call is keyed by
    its arguments bound to the parameters, defaults filled in).
    """

    storage: str
    identity: str
    key_fn: Callable[..., Any] | None = None
    expiration: float | None = None
    refresh: bool = False
    params: tuple[str, ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()

    def key(self, task_name: str, args: tuple, kwargs: dict) -> str | None:
        """The call's cache key, or None (not cached: a warning says why)."""
        if self.key_fn is not None:
            user = self.key_fn(*args, **kwargs)
            if user is None:
                return None
            return tokenize(self.identity, str(user))
        named = dict(zip(self.params, args, strict=False))
        extra = args[len(self.params) :]
        named.update(kwargs)
        for name, value in self.defaults:
            named.setdefault(name, value)
        named = dict(sorted(named.items()))
        culprit = _unstable(named, extra)
        if culprit is None:
            try:
                named = {k: _known(v) for k, v in named.items()}
                extra = tuple(_known(v) for v in extra)
                return tokenize(self.identity, named, extra, ensure_deterministic=True)
            except Exception:  # which argument? (dask raises its TokenizationError)
                culprit = _culprit(named, extra)
        _warn(
            task_name,
            f"task {task_name!r}: {culprit}, so this call is not cached; define its type "
            "in a module (not the script), give it a __dask_tokenize__ method, or give "
            "the task a cache_key_fn",
        )
        return None

    def _path(self, task_name: str, key: str) -> tuple[Any, str]:
        fs, root = fsspec.core.url_to_fs(self.storage)
        folder = task_name.replace("/", "_")
        return fs, f"{root.rstrip('/')}/{folder}/{key}"

    def read(self, task_name: str, key: str) -> Any:
        """The entry's value, or :data:`MISSING` (none, expired, or unreadable)."""
        fs, path = self._path(task_name, key)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return MISSING
        except Exception as e:
            _warn(
                task_name,
                f"task {task_name!r}: the cached result {path!r} could not be read "
                f"({type(e).__name__}: {e}); the call runs",
            )
            return MISSING
        try:
            written, value = deserialize_bytes(data)
        except Exception as e:
            _warn(
                task_name,
                f"task {task_name!r}: the cached result {path!r} is corrupt "
                f"({type(e).__name__}: {e}); the call runs and replaces it",
            )
            return MISSING
        if self.expiration is not None and time.time() - written > self.expiration:
            return MISSING
        if _large(value):
            remember(value, key)
        return value

    def write(self, task_name: str, key: str, value: Any) -> None:
        """Store ``value`` under ``key``: written beside, then moved into place. A
        failure to write is a warning: the call's result stands."""
        if _large(value):
            remember(value, key)
        fs, path = self._path(task_name, key)
        try:
            data = serialize_bytes((time.time(), value))
            folder = path.rsplit("/", 1)[0]
            fs.makedirs(folder, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
        except Exception as e:
            _warn(
                task_name,
                f"task {task_name!r}: the result could not be cached at {path!r} "
                f"({type(e).__name__}: {e})",
            )
