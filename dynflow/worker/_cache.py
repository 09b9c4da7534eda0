"""Result caching: a call's result persisted in a result storage, read back by later runs.

A task with ``cache=True`` gets a :class:`CachePolicy` in its call policy (made where
the graph is built, so the storage location travels with the tasks to every worker).
:func:`~dynflow.worker._calls.run_call` asks it, per call (per map item, inside batches
too), for the call's *cache key*: a token of the task's identity (its name, its source
and ``cache_version``) and of the call's argument values (dask's ``tokenize``,
deterministic only), or of what ``cache_key_fn`` returns. An entry under that key
that has not expired is the call's value, and the function does not run; otherwise the
call runs and a successful result is written. Failed calls are never written.

Storage is any fsspec location (a local path, ``file://``, ``s3://``, ``gcs://``,
``memory://``): ``<storage>/<task name>/<cache key>``. An entry is dask's serialization
of ``(written at, value)`` (``distributed.protocol.serialize_bytes``: pickle with
out-of-band buffers for NumPy and pandas), written to a temporary file
(``<storage>/.dynflow-tmp/<task name>/<cache key>.tmp-<seconds>-<uuid>``, the seconds
when it was started) and then moved into place, so a reader never sees half an entry,
and two writers of one key leave one whole entry. An entry that cannot be read is
missing (with a warning).

Temporary files outlive only a writer killed mid-write: a process that writes an entry
of a task then removes that task's temporary files started more than
:data:`STALE_AFTER` seconds ago (after its first write there, then at most every
:data:`STALE_AFTER` seconds: a write in progress takes seconds, not an hour). A
directory where an entry should be (a stray ``mkdir``) is never written into: the write
is refused with a warning naming it, and a read treats it as missing.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import reprlib
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
from fsspec.implementations.local import LocalFileSystem

from dynflow._containers import find
from dynflow.exceptions import ResultStorageError, index_text
from dynflow.worker._call_context import item_index
from dynflow.worker._reports import tell_client

logger = logging.getLogger(__name__)

__all__ = [
    "LARGE",
    "MISSING",
    "STALE_AFTER",
    "TEMPORARY",
    "CachePolicy",
    "check_storage",
    "function_token",
    "remember",
    "task_identity",
]

MISSING = object()

#: storage locations this process has checked (see :func:`check_storage`)
_CHECKED: set[str] = set()


def function_token(fn: Callable) -> str:
    """A token of a task's function: its source (where the source is not available, the
    function pickled by value, which holds the functions of the script it calls). Made
    where the task is defined (the client), then sent with the task and kept by its
    ``with_options`` copies, so that a worker that cannot read the script's source keys
    its calls as the client does."""
    fn = inspect.unwrap(fn)
    try:
        source: Any = inspect.getsource(fn)
    except (OSError, TypeError):
        try:
            source = cloudpickle.dumps(fn)
        except Exception:  # noqa: BLE001 - then what the code object says
            code = getattr(fn, "__code__", None)
            source = (code.co_code, code.co_consts, code.co_names) if code else repr(fn)
    return tokenize(source)


def task_identity(name: str, function: str | None, version: str | None) -> str:
    """A token of what the task computes: its name and the user's ``cache_version``
    when it has one (the user versions the code: a fix that keeps it reuses what was
    stored, as Flyte's ``cache_version`` does), else its function (the token of
    :func:`function_token`: any change of the code recomputes)."""
    if version is not None:
        return tokenize(name, "cache_version", version)
    return tokenize(name, function)


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
    call's arguments by name (see :meth:`key`), returning a string (or None: this call
    is not cached); ``expiration``: seconds an entry is valid (None: forever);
    ``refresh``: recompute and overwrite; ``params``: the function's positional
    parameter names; ``defaults``: its parameters with defaults, ``(name, value)`` (a
    call is keyed by its arguments bound to the parameters, defaults filled in);
    ``varargs``: the name of its ``*args`` parameter, if any.
    """

    storage: str
    identity: str
    key_fn: Callable[..., Any] | None = None
    expiration: float | None = None
    refresh: bool = False
    params: tuple[str, ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()
    varargs: str | None = None

    def key(self, task_name: str, args: tuple, kwargs: dict) -> str | None:
        """The call's cache key, or None (not cached: a warning says why).

        With a ``key_fn``, what it returns for the call's arguments (see
        :meth:`_user_key`); it raising, or returning anything but a string or None,
        raises here: the call fails.
        """
        named = dict(zip(self.params, args, strict=False))
        extra = args[len(self.params) :]
        named.update(kwargs)
        for name, value in self.defaults:
            named.setdefault(name, value)
        if self.key_fn is not None:
            return self._user_key(task_name, named, extra)
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

    def _user_key(self, task_name: str, named: dict[str, Any], extra: tuple) -> str | None:
        """The key from ``key_fn``, called with the call's arguments by name: bound to
        the function's parameters, defaults filled in, ``*args`` as one tuple under its
        parameter's name, ``**kwargs`` spread (as a ``task_run_name`` callable is
        called). It must return a string (or None: the call is not cached); anything
        else, or an exception, is the call's error (a ``TypeError``, a
        ``RuntimeError`` with the exception as its cause), naming the task."""
        if extra:
            named[self.varargs or "args"] = extra
        try:
            user = self.key_fn(**named)  # type: ignore[misc]
        except Exception as e:
            raise RuntimeError(
                f"task {task_name!r}{_at_item()}: its cache_key_fn raised "
                f"{type(e).__name__}: {e} (it is called with the call's arguments by "
                f"name: {', '.join(named) or 'none'}); the call did not run"
            ) from e
        if user is None:
            return None
        if not isinstance(user, str):
            raise TypeError(
                f"task {task_name!r}{_at_item()}: its cache_key_fn returned "
                f"{reprlib.repr(user)}, of type {type(user).__name__}; expected a str, "
                "the call's key (or None: the call is not cached); the call did not run"
            )
        return tokenize(self.identity, user)

    def _path(self, task_name: str, key: str) -> tuple[Any, str]:
        fs, root = fsspec.core.url_to_fs(self.storage)
        folder = task_name.replace("/", "_")
        return fs, f"{root.rstrip('/')}/{folder}/{key}"

    def read(self, task_name: str, key: str) -> Any:
        """The entry's value, or :data:`MISSING` (none, expired, or unreadable)."""
        fs, path = self._path(task_name, key)
        try:
            data = fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError):  # a directory: write() says so
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
        """Store ``value`` under ``key``: written to a temporary file, then moved into
        place (see the module docstring). A failure to write is a warning naming the
        path (the temporary file removed): the call's result stands."""
        if _large(value):
            remember(value, key)
        fs, path = self._path(task_name, key)
        root, folder, _ = path.rsplit("/", 2)
        temporary = f"{root}/{TEMPORARY}/{folder}"
        tmp = None
        try:
            data = serialize_bytes((time.time(), value))
            tmp = f"{temporary}/{key}.tmp-{int(time.time())}-{uuid.uuid4().hex}"
            try:
                fs.pipe_file(tmp, data)
            except FileNotFoundError:  # the first write there (folders made on demand)
                fs.makedirs(temporary, exist_ok=True)
                fs.pipe_file(tmp, data)
            try:
                _move(fs, tmp, path)
            except FileNotFoundError:
                fs.makedirs(f"{root}/{folder}", exist_ok=True)
                _move(fs, tmp, path)
            tmp = None
        except Exception as e:
            if tmp is not None:
                _remove(fs, tmp)
            if isinstance(e, IsADirectoryError) or _isdir(fs, path):
                why = "a directory is in the entry's place: remove it to cache this call"
            else:
                why = f"{type(e).__name__}: {e}"
            _warn(
                task_name,
                f"task {task_name!r}: the result could not be cached at {path!r} ({why})",
            )
        _sweep(fs, temporary)


#: the folder, under the storage's root, of the entries being written (one per task)
TEMPORARY = ".dynflow-tmp"
#: seconds after which a temporary file is a killed writer's, removed (see the module
#: docstring)
STALE_AFTER = 3600.0
#: (file system, temporary folder) -> when this process last swept it (monotonic)
_SWEPT: dict[tuple[str, str], float] = {}


def _sweep(fs: Any, temporary: str) -> None:
    """Remove the files in the folder ``temporary`` whose write started more than
    :data:`STALE_AFTER` seconds ago (the time is in their name): their writer was
    killed mid-write. Once per folder and process, then at most every
    :data:`STALE_AFTER` seconds; a failure to list or remove is only logged."""
    now = time.monotonic()
    where = (type(fs).__name__, temporary)
    last = _SWEPT.get(where)
    if last is not None and now - last < STALE_AFTER:
        return
    _SWEPT[where] = now
    cutoff = time.time() - STALE_AFTER
    try:
        names = fs.ls(temporary, detail=False)
    except Exception as e:  # noqa: BLE001 - a sweep never fails a write
        logger.debug("could not list %s: %s", temporary, e)
        return
    for name in names:
        started = _started(name)
        if started is not None and started < cutoff:
            _remove(fs, name)


def _started(name: str) -> int | None:
    """When the write of the temporary file ``name`` started (seconds), from its name
    ``<key>.tmp-<seconds>-<uuid>``; None for another file."""
    _, _, tail = name.rpartition(".tmp-")
    seconds, _, rest = tail.partition("-")
    return int(seconds) if seconds.isdigit() and rest else None


def _remove(fs: Any, path: str) -> None:
    try:
        fs.rm_file(path)
    except Exception as e:  # noqa: BLE001 - best effort: the sweep retries it later
        logger.debug("could not remove %s: %s", path, e)


def _move(fs: Any, tmp: str, path: str) -> None:
    """Move the file ``tmp`` to ``path``, replacing a file there; a directory at
    ``path`` raises ``IsADirectoryError`` (fsspec's ``mv`` would move the file into it,
    where no reader looks)."""
    if isinstance(fs, LocalFileSystem):
        os.replace(tmp, path)  # atomic; refuses a directory
        return
    if fs.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    fs.mv(tmp, path)


def _isdir(fs: Any, path: str) -> bool:
    try:
        return bool(fs.isdir(path))
    except Exception:  # noqa: BLE001 - only for the warning's words
        return False


def _at_item() -> str:
    """`` (index 3)`` while a map item runs (also inside a batch); else empty."""
    index = item_index()
    return "" if index is None else f" (index {index_text(index)})"
