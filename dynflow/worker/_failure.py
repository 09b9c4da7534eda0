"""Failure records: a failed call's exception as a value that always travels.

A map item (and every task of a sub-flow run per item) never errs in dask: it returns a
:class:`Failure`, which the map's collector turns into the user's semantics
(:mod:`dynflow.worker._collect`). :func:`portable` makes any exception fit to cross
processes: long tracebacks trimmed; an exception whose ``__init__`` does not take back
its ``args`` (``def __init__(self, msg, code, *, detail)``) pickled through
:func:`_reduce_exception`, which rebuilds it without calling ``__init__``; only an
exception whose state cannot be pickled at all replaced by a
:class:`~dynflow.RemoteError`. :func:`summary` is the bounded copy of an exception that
a :class:`~dynflow.MapItemError` carries for each failed item but the first.

On a local scheduler (``scheduler="sync"``) nothing is pickled: every exception stays
the object the call raised.
"""

from __future__ import annotations

import copyreg
import functools
import pickle
import traceback
import types
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import cloudpickle
from distributed import get_worker
from tblib import Traceback

from dynflow._context import LOCAL_KEYS
from dynflow.exceptions import ConcurrencyLimitError, RemoteError, short_text

__all__ = ["Failure", "limit_never_set", "pickle_without_init", "portable", "summary"]


class Failure:
    """A failed call's exception, with its remote traceback, as a picklable value.

    The exception is made :func:`portable` when the record is made: a record always
    travels (to the collector, to a chained item, to the client), whatever the
    exception. It travels as :class:`_Carried` makes it (its state, without calling
    ``__init__``) and its traceback as plain data, rebuilt only when the exception is
    read (:attr:`exception`): a chained item passes a record on, and a collector reads
    a few of many, without paying for every traceback.
    """

    __slots__ = ("_exception", "_tb", "label", "task_name")

    def __init__(self, exception: BaseException, task_name: str, label: str | None = None) -> None:
        self._exception = portable(exception)
        self._tb: dict | None = None  # the traceback, as data, until it is read
        self.task_name = task_name
        self.label = label  # the item's task_run_name, if the task has one

    @property
    def exception(self) -> BaseException:
        """The failed call's exception, with its remote traceback."""
        if self._tb is not None:
            tb = Traceback.from_dict(self._tb).as_traceback()
            self._exception = self._exception.with_traceback(tb)
            self._tb = None
        return self._exception

    def __reduce__(self) -> tuple:
        exc, tb = self._exception, self._tb
        if tb is None and exc.__traceback__ is not None:
            tb = _tb_data(exc.__traceback__)
        return _rebuild_failure, (
            _Carried(exc, with_traceback=False),
            tb,
            self.task_name,
            self.label,
        )

    def __repr__(self) -> str:
        return f"<Failure in {self.task_name!r}: {self._exception!r}>"


def _rebuild_failure(
    exc: BaseException, tb: dict | None, task_name: str, label: str | None = None
) -> Failure:
    failure = object.__new__(Failure)
    failure._exception, failure._tb = exc, tb
    failure.task_name, failure.label = task_name, label
    return failure


class _Carried:
    """An exception as a record carries it: where its class pickles as the builtin
    exceptions do, its state through :func:`_reduce_exception` (no ``__init__`` called
    when it is loaded; its own traceback left out with ``with_traceback=False``: the
    record carries it as data); any other as its class pickles it. Loaded, it is the
    exception itself."""

    __slots__ = ("exc", "with_traceback")

    def __init__(self, exc: BaseException, with_traceback: bool = True) -> None:
        self.exc, self.with_traceback = exc, with_traceback

    def __reduce__(self) -> tuple:
        exc = self.exc
        if _carried_by_state(type(exc)):
            return _reduce_exception(exc, self.with_traceback)
        return _itself, (exc,)


def _itself(exc: BaseException) -> BaseException:
    return exc


def _carried_by_state(cls: type) -> bool:
    return cls.__module__ == "builtins" or _pickles_as_base(cls)


def _tb_data(tb: TracebackType | None) -> dict:
    """``tb`` as plain data, in tblib's format (``Traceback.from_dict`` rebuilds it): what
    tblib's ``Traceback(tb).to_dict()`` gives, without copying each frame's module
    globals to keep two of them (a tenth of the cost, which a map whose items fail
    pays per item)."""
    out: dict | None = None
    last: dict | None = None
    while tb is not None:
        frame = tb.tb_frame
        g = frame.f_globals
        entry = {
            "tb_frame": {
                "f_globals": {k: g[k] for k in ("__file__", "__name__") if k in g},
                "f_locals": {},
                "f_code": {
                    "co_filename": frame.f_code.co_filename,
                    "co_name": frame.f_code.co_name,
                },
                "f_lineno": frame.f_lineno,
            },
            "tb_lineno": tb.tb_lineno,
            "tb_next": None,
        }
        if last is None:
            out = entry
        else:
            last["tb_next"] = entry
        last = entry
        tb = tb.tb_next
    assert out is not None
    return out


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
    """``exc``, made sure to travel between processes.

    A long traceback is trimmed (also on its causes). An exception whose class pickles
    as ``BaseException`` does (``cls(*args)`` when it is loaded), which fails or gives
    other ``args`` when its ``__init__`` does not take them back, is pickled from then
    on, in this process, without calling ``__init__`` (:func:`_reduce_exception`: its
    class, ``args``, attributes, cause, context and traceback). Only an exception that
    cannot be pickled even so (its state cannot be pickled, its class refuses it) is
    replaced by a :class:`~dynflow.RemoteError` with its type, message and traceback
    text. On a local scheduler nothing is pickled: ``exc`` itself, always.

    Parameters
    ----------
    exc : BaseException
        A call's exception.

    Returns
    -------
    BaseException
        ``exc``, or a :class:`~dynflow.RemoteError` standing in for it.
    """
    for e in _chain(exc):
        e.__traceback__ = _trim_traceback(e.__traceback__)
    if _stays_here():
        return exc
    pickle_without_init(exc)
    if _plain_state(exc):
        return exc  # its class travelled already, and its state is plain data
    why = _round_trip(exc)
    if why is None:
        _TRAVELLED.add(type(exc))
        return exc
    return _stand_in(exc, f"{type(why).__name__}: {why}")


#: exception classes one of whose instances travelled (see :func:`_plain_state`)
_TRAVELLED: set[type] = set()
_PLAIN = (str, int, float, bool, bytes, type(None))


def _plain_state(exc: BaseException) -> bool:
    """Whether ``exc`` surely travels as an instance of its class did before: its
    class is in :data:`_TRAVELLED`, its ``args`` and attributes are plain values, it has
    no cause or context (the usual failed item: ``ValueError("bad 3")``, one pickle
    round trip saved per item)."""
    return (
        type(exc) in _TRAVELLED
        and exc.__cause__ is None
        and exc.__context__ is None
        and all(isinstance(a, _PLAIN) for a in exc.args)
        and all(isinstance(v, _PLAIN) for v in vars(exc).values())
    )


def _stays_here() -> bool:
    """Whether the running call's errors stay in this process: a call on a local
    scheduler, or no worker's task at all (nothing will pickle them)."""
    if LOCAL_KEYS.get():
        return True
    try:
        get_worker()
    except ValueError:
        return True
    return False


def _round_trip(exc: BaseException) -> Exception | None:
    """None when ``exc`` comes back from pickling, as a record carries it, of its type
    and with its ``args``; else why not (what pickling raised). Pickled as distributed
    would, with pickle and then cloudpickle, but without its logging: an exception
    that does not travel is normal here (a :class:`~dynflow.RemoteError` stands in)."""
    carried = _Carried(exc, with_traceback=False)
    try:
        back = pickle.loads(_quiet_dumps(carried))
    except Exception as why:
        return why
    if type(back) is not type(exc):
        return TypeError(f"it came back as a {type(back).__name__}")
    return None


def _stand_in(exc: BaseException, why: str) -> RemoteError:
    text = "".join(traceback.format_exception(exc))
    stand_in = RemoteError(
        f"{type(exc).__name__}: {exc} (the original exception could not be pickled "
        f"to send it between processes: {why})",
        f"{type(exc).__module__}.{type(exc).__qualname__}",
        text,
    )
    return stand_in.with_traceback(exc.__traceback__)


def _chain(exc: BaseException, limit: int = 50) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and an exception group's exceptions (each
    once, at most ``limit``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < limit:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
        if isinstance(e, BaseExceptionGroup):
            todo += list(e.exceptions)


# ------------------------------------------------ pickling without calling __init__
def _pickles_as_base(cls: type) -> bool:
    """Whether ``cls`` pickles as the builtin exceptions do (``cls(*args)`` when loaded):
    its ``__reduce__`` is a builtin exception's and its ``__reduce_ex__`` object's. A
    class with pickling of its own (which may refuse to pickle on purpose) is left
    alone."""
    reduce_ex: object = cls.__reduce_ex__  # compared by identity: which class defines it
    if reduce_ex is not object.__reduce_ex__:
        return False
    for klass in cls.__mro__:
        if "__reduce__" in vars(klass):
            return klass.__module__ == "builtins"
    return False


def pickle_without_init(exc: BaseException) -> None:
    """Have pickle use :func:`_reduce_exception` for the classes of ``exc`` and of its
    chain that pickle as the builtins do (``cls(*args)`` when loaded) but have an
    ``__init__`` of their own, which such a call may not fit (tblib's rule for "busted"
    exceptions): wherever the exception itself is pickled (a plain task's error, the
    exceptions a :class:`~dynflow.MapItemError` carries), it is rebuilt without it."""
    for e in _chain(exc):
        cls = type(e)
        if cls.__module__ == "builtins" or copyreg.dispatch_table.get(cls) is _reduce_exception:
            continue
        if cls.__init__ in _BUILTIN_INITS or not _pickles_as_base(cls):
            continue
        copyreg.pickle(cls, _reduce_exception)


_BUILTIN_INITS = (BaseException.__init__, OSError.__init__)


def _members(exc: BaseException) -> dict[str, Any]:
    """The values of ``exc``'s slots: a Python class's ``__slots__`` and a builtin base's
    fields (``OSError.errno``, ``.filename``, ...), which ``__dict__`` does not hold."""
    out: dict[str, Any] = {}
    cls: Any = type(exc)  # a class is hashable (typeshed's BaseException says otherwise)
    for name, attr in _member_descriptors(cls):
        try:
            value = attr.__get__(exc, type(exc))
        except AttributeError:  # an empty slot
            continue
        if value is None and attr.__objclass__.__module__ == "builtins":
            # a builtin's field reads None when unset; set to None it is "set" (an
            # OSError with filename None prints "[Errno None] None: None")
            continue
        out[name] = value
    return out


@functools.cache
def _member_descriptors(cls: Any) -> tuple[tuple[str, Any], ...]:
    """``cls``'s slot descriptors by name, the nearest class's first (found once)."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        for name, attr in vars(klass).items():
            if isinstance(attr, types.MemberDescriptorType) and name not in found:
                if name != "__suppress_context__":
                    found[name] = attr
    return tuple(found.items())


def _new_args(exc: BaseException) -> tuple:
    """What ``cls.__new__`` needs besides the class: an exception group's message and
    exceptions, else nothing."""
    if isinstance(exc, BaseExceptionGroup):
        return (exc.message, tuple(_Carried(e) for e in exc.exceptions))
    return ()


def _reduce_exception(exc: BaseException, with_traceback: bool = True) -> tuple:
    """``exc`` pickled without calling its ``__init__`` when it is loaded: its class,
    ``args``, ``__dict__``, slots, cause, context and traceback (the traceback as data,
    through tblib; left out with ``with_traceback=False``). The state comes after the
    object (pickle's ``state_setter``), so a cause that refers back to ``exc`` pickles
    too; causes and contexts are carried the same way."""
    tb = exc.__traceback__ if with_traceback else None
    cause, context = exc.__cause__, exc.__context__
    state = (
        exc.args,
        exc.__dict__,
        _members(exc),
        None if cause is None else _Carried(cause),
        None if context is None else _Carried(context),
        exc.__suppress_context__,
        _tb_data(tb) if tb is not None else None,
    )
    return (_new_exception, (type(exc), _new_args(exc)), state, None, None, _restore_exception)


def _new_exception(cls: type[BaseException], new_args: tuple) -> BaseException:
    """An instance of ``cls``, ``__init__`` not called. ``cls`` pickles the same way
    from this process on (a collector's error carries the items' exceptions on)."""
    if (
        copyreg.dispatch_table.get(cls) is None
        and cls.__module__ != "builtins"
        and not issubclass(cls, RemoteError)
    ):
        copyreg.pickle(cls, _reduce_exception)
    return cls.__new__(cls, *new_args)


def _restore_exception(exc: BaseException, state: tuple) -> None:
    args, attributes, members, cause, context, suppress, tb = state
    exc.args = args
    if type(exc).__setstate__ is not BaseException.__setstate__:
        exc.__setstate__(attributes)  # as pickle would
    else:
        exc.__dict__.update(attributes)
    for name, value in members.items():
        try:
            setattr(exc, name, value)
        except (AttributeError, TypeError):  # read-only (a group's exceptions: __new__ has them)
            pass
    exc.__cause__, exc.__context__ = cause, context
    exc.__suppress_context__ = suppress
    if tb is not None:
        exc.__traceback__ = Traceback.from_dict(tb).as_traceback()


# ------------------------------------------------ bounded copies
#: characters kept of a long text in a summary (:func:`~dynflow.exceptions.short_text`),
#: frames kept of its traceback, and the bytes a summary may take pickled
SUMMARY_CHARS, SUMMARY_FRAMES, SUMMARY_BYTES = 1000, 5, 64 * 1024
#: exceptions of a summary's chain (causes, contexts, groups) that are summarized too
_SUMMARY_DEPTH = 2


def summary(exc: BaseException) -> BaseException:
    """A bounded copy of ``exc``: what a :class:`~dynflow.MapItemError` keeps of each
    failed item's exception but the first.

    The copy has ``exc``'s type, made without calling ``__init__``; long texts in its
    ``args`` and attributes are cut to :data:`SUMMARY_CHARS` characters (with a note
    of how many more there were), its traceback keeps its innermost
    :data:`SUMMARY_FRAMES` frames, its causes and contexts are summaries too. Where that
    is still over :data:`SUMMARY_BYTES` pickled, its large attributes are left out;
    where even that does not fit, or the class cannot be made so, a
    :class:`~dynflow.RemoteError` with the short message stands in. ``exc`` itself is
    never changed (an ``allow_failure`` consumer may hold it).

    Parameters
    ----------
    exc : BaseException
        A failed item's exception.

    Returns
    -------
    BaseException
        A copy of ``exc`` whose pickle stays small.
    """
    try:
        copy = _summarized(exc, 0)
    except Exception as why:  # its class cannot be made without __init__
        return _short_stand_in(exc, f"{type(why).__name__}: {why}")
    if _stays_here():
        return copy  # nothing is pickled
    copy = portable(copy)
    if _pickled_size(copy) <= SUMMARY_BYTES:
        return copy
    for name, value in list(vars(copy).items()):  # keep the type, leave out what is big
        if _pickled_size(value) > SUMMARY_CHARS:
            delattr(copy, name)
    copy.__cause__ = copy.__context__ = None
    copy = portable(copy)
    if _pickled_size(copy) <= SUMMARY_BYTES:
        return copy
    return _short_stand_in(exc, f"its summary still takes over {SUMMARY_BYTES} bytes")


def _pickled_size(value: Any) -> float:
    try:
        return len(_quiet_dumps(value))
    except Exception:  # noqa: BLE001 - cannot travel: as if too large
        return float("inf")


def _quiet_dumps(value: Any) -> bytes:
    """``value`` pickled as distributed would (pickle, then cloudpickle), without its
    logging: a value that does not pickle is normal here."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        return cloudpickle.dumps(value, protocol=5)


def _short_stand_in(exc: BaseException, why: str) -> RemoteError:
    return RemoteError(
        short_text(f"{type(exc).__name__}: {exc} (a summary of it could not be made: {why})"),
        f"{type(exc).__module__}.{type(exc).__qualname__}",
        short_text("".join(traceback.format_tb(exc.__traceback__, limit=-SUMMARY_FRAMES))),
    )


def _summarized(exc: BaseException, depth: int) -> BaseException:
    cls = type(exc)
    if isinstance(exc, BaseExceptionGroup):  # its first ten exceptions, summarized
        message = short_text(exc.message, SUMMARY_CHARS)
        exceptions = [_summarized(e, depth + 1) for e in exc.exceptions[:10]]
        copy = cls.__new__(cls, message, exceptions)
        copy.args = (message, exceptions)
    else:
        copy = cls.__new__(cls)
        copy.args = tuple(_short(a, depth) for a in exc.args)
    copy.__dict__.update({k: _short(v, depth) for k, v in vars(exc).items()})
    for name, value in _members(exc).items():
        try:
            setattr(copy, name, _short(value, depth))
        except (AttributeError, TypeError):
            pass
    if depth < _SUMMARY_DEPTH:
        copy.__cause__ = None if exc.__cause__ is None else _summarized(exc.__cause__, depth + 1)
        copy.__context__ = (
            None if exc.__context__ is None else _summarized(exc.__context__, depth + 1)
        )
    copy.__suppress_context__ = exc.__suppress_context__
    copy.__traceback__ = _innermost(exc.__traceback__, SUMMARY_FRAMES)
    return copy


def _short(value: Any, depth: int) -> Any:
    """``value`` with its long texts cut and its exceptions summarized (in lists,
    tuples and dicts too); anything else as it is."""
    kind = type(value)
    if kind is str:
        return short_text(value, SUMMARY_CHARS)
    if kind in (bytes, bytearray) and len(value) > SUMMARY_CHARS:
        return value[:SUMMARY_CHARS] + f"... [{len(value) - SUMMARY_CHARS} more bytes]".encode()
    if isinstance(value, BaseException):
        return _summarized(value, depth + 1) if depth < _SUMMARY_DEPTH else None
    if kind in (list, tuple):
        return kind(_short(v, depth) for v in value)
    if kind is dict:
        return {k: _short(v, depth) for k, v in value.items()}
    return value


def _innermost(tb: TracebackType | None, frames: int) -> TracebackType | None:
    """A new traceback of the last ``frames`` frames of ``tb`` (``tb`` is not changed)."""
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    return Traceback(entries[-frames:][0]).as_traceback() if entries else None


def limit_never_set(name: str, key: str, *inputs: Any) -> Any:
    """What a task runs in place of its call when the ``concurrency_limit`` it carries
    was never set on the scheduler (:mod:`dynflow.extension._limits`): it fails,
    naming the limit."""
    raise ConcurrencyLimitError(
        f"concurrency limit {name!r} (task {key!r}) was never set on this cluster; call "
        f"df.set_concurrency_limit({name!r}, n) first"
    )
