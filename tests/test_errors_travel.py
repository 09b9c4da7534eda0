"""Exceptions that travel: their type and attributes arrive, and the error stays small.

- An exception whose ``__init__`` does not take back its ``args`` (``def __init__(self,
  msg, code, *, detail)``), which pickle's default (``cls(*args)`` when loading) cannot
  rebuild, arrives with its type, args, attributes and cause from every kind of call,
  on a cluster; in sync mode the raised object itself arrives, picklable or not.
- A ``MapItemError`` keeps the first failed item's exception whole and bounded copies of
  the others: ten 10 MB messages do not make a 100 MB error.

The exception classes live in this module: gen_cluster's workers are in this process,
and LocalCluster's worker processes import it (this directory is on their path).
"""

from __future__ import annotations

import copyreg
import errno
import pickle
import threading
import traceback

import pytest
from distributed import Client, LocalCluster
from distributed.utils_test import gen_cluster

import dynflow as df


class CodedError(Exception):
    """Its ``__init__`` does not take back its args: ``CodedError(*e.args)`` fails."""

    def __init__(self, msg, code, *, detail):
        super().__init__(msg)
        self.code = code
        self.detail = detail


class MissingFile(OSError):
    """An ``OSError`` (errno, strerror, filename live in C slots) with a keyword-only
    argument."""

    def __init__(self, path, *, reason):
        super().__init__(errno.ENOENT, reason, path)
        self.reason = reason


class Rewritten(Exception):
    """Its ``__init__`` rewrites its args: pickle's default rebuilds it as
    ``Rewritten("code 3")``, message ``"code code 3"``."""

    def __init__(self, code):
        super().__init__(f"code {code}")
        self.code = code


class Slotted(Exception):
    """Its state in ``__slots__``, which pickle's default for exceptions leaves out."""

    __slots__ = ("code",)

    def __init__(self, code):
        super().__init__("slotted", code)
        self.code = code


#: exceptions raised as they are by kind "held" (sync mode: the very objects arrive)
HELD: list[BaseException] = []


def raise_for(kind, x):
    if kind == "ok":
        return x
    if kind == "coded":
        try:
            raise MissingFile(f"/data/{x}.csv", reason="gone")
        except MissingFile as e:
            raise CodedError(f"item {x} failed", 40 + x, detail={"x": x}) from e
    if kind == "rewritten":
        raise Rewritten(x)
    if kind == "slotted":
        raise Slotted(x)
    if kind == "locked":  # its state cannot be pickled at all
        raise CodedError(f"item {x} is locked", x, detail=threading.Lock())
    if kind == "held":
        raise HELD[x]
    if kind == "group":
        raise ExceptionGroup(f"group {x}", [CodedError("a", x, detail=None), Rewritten(x)])
    if kind == "huge":
        raise CodedError(f"{x}:" + "m" * 10_000_000, x, detail="d" * 5_000)
    raise AssertionError(kind)


@df.task
def fails(kind, x=1):
    return raise_for(kind, x)


@df.task
async def fails_async(kind, x=1):
    return raise_for(kind, x)


@df.task
def total(xs):
    return sum(xs)


@df.task
def pair(kind):
    return [kind, "ok"]


@df.flow
def per_item(kind, x):
    return total(fails.map(pair(kind), df.unmapped(x)))


@df.task
def is_held(results):
    return [r is HELD[0] for r in results]


@df.task
def message_lengths(results):
    return [len(str(r)) if isinstance(r, BaseException) else r for r in results]


@df.task(task_run_name="{label}")
def labelled(x, label):
    raise ValueError(f"item {x} failed")


def check_coded(e, x=1):
    """``e`` is the CodedError that ``raise_for("coded", x)`` raised, whole."""
    assert type(e) is CodedError, repr(e)
    assert e.args == (f"item {x} failed",) and str(e) == f"item {x} failed"
    assert e.code == 40 + x and e.detail == {"x": x}
    cause = e.__cause__
    assert type(cause) is MissingFile, repr(cause)
    assert (cause.errno, cause.strerror, cause.filename) == (errno.ENOENT, "gone", f"/data/{x}.csv")
    assert cause.reason == "gone"


def check_group(e, x):
    """``e`` is the ExceptionGroup that ``raise_for("group", x)`` raised."""
    assert type(e) is ExceptionGroup and e.message == f"group {x}", repr(e)
    coded, rewritten = e.exceptions
    assert type(coded) is CodedError and coded.code == x and coded.args == ("a",)
    assert type(rewritten) is Rewritten and rewritten.args == (f"code {x}",)


def check_map_error(err, x=1):
    """A MapItemError whose first failed item raised ``raise_for("coded", x)``."""
    assert isinstance(err, df.MapItemError), repr(err)
    assert f"CodedError: item {x} failed" in str(err)
    check_coded(err.__cause__, x)
    assert err.errors[err.failed[0]] is err.__cause__
    frames = traceback.extract_tb(err.__cause__.__traceback__)
    assert any(f.name == "raise_for" for f in frames), frames


def mixed():
    """Items 1, 3 and 4 fail, each with an exception pickle's default cannot rebuild."""
    return ["ok", "coded", "ok", "rewritten", "slotted"], [0, 1, 2, 3, 4]


@gen_cluster(client=True, timeout=60)
async def test_an_exception_that_does_not_take_back_its_args_arrives_whole(c, s, a, b):
    # a plain task, sync and async: the original type, args, attributes and cause
    for task in (fails, fails_async):
        with pytest.raises(CodedError) as info:
            await task("coded").compute(client=c)
        check_coded(info.value)
        assert any(f.name == "raise_for" for f in traceback.extract_tb(info.value.__traceback__))
        with pytest.raises(Rewritten) as rewritten:
            await task("rewritten", 3).compute(client=c)
        assert rewritten.value.args == ("code 3",) and rewritten.value.code == 3
        with pytest.raises(ExceptionGroup) as group:
            await task("group", 5).compute(client=c)
        check_group(group.value, 5)
    # map items (sync and async), batched items, a sub-flow run per item
    kinds, xs = mixed()
    for node in (
        total(fails.map(kinds, xs)),
        total(fails_async.map(kinds, xs)),
        fails.map(kinds, xs, batch_size=2),
        fails_async.map(kinds, xs, batch_size=3),
    ):
        with pytest.raises(df.MapItemError) as info:
            await node.compute(client=c)
        err = info.value
        check_map_error(err)
        assert err.failed == [1, 3, 4] and list(err.errors) == [1, 3, 4]
        rewritten, slotted = err.errors[3], err.errors[4]
        assert type(rewritten) is Rewritten and rewritten.args == ("code 3",)
        assert rewritten.code == 3
        assert type(slotted) is Slotted and slotted.args == ("slotted", 4)
        assert slotted.code == 4
    with pytest.raises(df.MapItemError, match=r"per_item.map\(\): 1 of 2 .*index 1") as info:
        await per_item.map(["ok", "coded"], [0, 1]).compute(client=c)
    check_map_error(info.value.__cause__)
    # an exception group of such exceptions, whole and as a bounded copy
    with pytest.raises(df.MapItemError) as info:
        await fails.map(["group"] * 2, [6, 7]).compute(client=c)
    check_group(info.value.__cause__, 6)
    check_group(info.value.errors[1], 7)
    # allow_failure hands the consumer the rebuilt originals
    got = await message_lengths(df.allow_failure(fails.map(kinds, xs))).compute(client=c)
    assert got == [0, len("item 1 failed"), 2, len("code 3"), len("('slotted', 4)")]


@gen_cluster(client=True, timeout=60)
async def test_only_an_exception_whose_state_cannot_be_pickled_becomes_a_remote_error(c, s, a, b):
    with pytest.raises(df.RemoteError, match="CodedError: item 1 is locked") as info:
        await fails("locked").compute(client=c)
    assert info.value.type_name.endswith("test_errors_travel.CodedError")
    with pytest.raises(df.MapItemError, match="2 of 2 items failed") as info:
        await total(fails.map(["coded", "locked"], [1, 2])).compute(client=c)
    check_map_error(info.value)
    stand_in = info.value.errors[1]
    assert type(stand_in) is df.RemoteError
    assert "CodedError: item 2 is locked (the original exception could not be pickled" in str(
        stand_in
    )
    with pytest.raises(df.MapItemError, match="CodedError: item 2 is locked .*could not be"):
        await total(fails.map(["locked"], [2])).compute(client=c)


def test_in_sync_mode_the_raised_object_itself_arrives():
    """Nothing is pickled in sync mode: every path hands on the object the task raised,
    also one that cannot be pickled at all (a lock among its attributes)."""
    HELD[:] = [CodedError("held", 0, detail=threading.Lock())]
    for task in (fails, fails_async):
        with pytest.raises(CodedError) as info:
            task("held", 0).compute(scheduler="sync")
        assert info.value is HELD[0]
        with pytest.raises(CodedError) as info:
            task("coded").compute(scheduler="sync")
        check_coded(info.value)
    for node in (
        total(fails.map(["ok", "held"], [1, 0])),
        total(fails_async.map(["ok", "held"], [1, 0])),
        fails.map(["ok", "ok", "held"], [1, 2, 0], batch_size=2),
        fails_async.map(["ok", "ok", "held"], [1, 2, 0], batch_size=2),
    ):
        with pytest.raises(df.MapItemError) as info:
            node.compute(scheduler="sync")
        assert info.value.__cause__ is HELD[0]
        assert info.value.errors[info.value.failed[0]] is HELD[0]
    with pytest.raises(df.MapItemError) as info:
        per_item.map(["ok", "held"], [1, 0]).compute(scheduler="sync")
    assert info.value.__cause__.__cause__ is HELD[0]
    m = fails.map(["ok", "held", "held"], [1, 0, 0])
    assert is_held(df.allow_failure(m)).compute(scheduler="sync") == [False, True, True]
    kinds, xs = mixed()
    with pytest.raises(df.MapItemError) as info:
        total(fails.map(kinds, xs)).compute(scheduler="sync")
    check_map_error(info.value)
    assert type(info.value.errors[3]) is Rewritten and info.value.errors[3].code == 3


@gen_cluster(client=True, timeout=120)
async def test_a_map_item_error_stays_small_whatever_its_items_messages(c, s, a, b):
    """Ten items fail with 10 MB messages: the error keeps the first whole (its cause)
    and bounded copies of the others, of the same type; the items' own exceptions,
    which an allow_failure consumer receives, are whole."""
    m = fails.map(["huge"] * 10, list(range(10)))
    with pytest.raises(df.MapItemError) as info:
        await total(m).compute(client=c)
    err = info.value
    first = err.__cause__
    assert type(first) is CodedError and len(str(first)) == 10_000_002  # whole
    assert first.detail == "d" * 5_000
    assert len(pickle.dumps(err)) < len(str(first)) + 2_000_000
    assert len(str(err)) < 2_000
    assert list(err.errors) == list(range(10)) and err.errors[0] is first
    for i in range(1, 10):
        copy = err.errors[i]
        assert type(copy) is CodedError and copy.code == i
        (message,) = copy.args
        assert message.startswith(f"{i}:mmm") and message.endswith("[9999002 more characters]")
        assert len(message) < 1_100
        assert copy.detail.startswith("ddd") and len(copy.detail) < 1_100
    got = await message_lengths(df.allow_failure(m)).compute(client=c)
    assert got == [10_000_002] * 10


def test_the_bounded_copies_leave_the_raised_exceptions_as_they_were():
    """In sync mode the items' exceptions are the objects the tasks raised: the error's
    copies of them are new objects; the originals keep their messages, attributes and
    tracebacks."""
    HELD[:] = [CodedError(f"{i}:" + "m" * 5_000, i, detail="d" * 5_000) for i in range(3)]
    with pytest.raises(df.MapItemError) as info:
        total(fails.map(["held"] * 3, [0, 1, 2])).compute(scheduler="sync")
    err = info.value
    assert err.__cause__ is HELD[0] and err.errors[0] is HELD[0]
    for i in (1, 2):
        original, copy = HELD[i], err.errors[i]
        assert copy is not original and type(copy) is CodedError and copy.code == i
        assert len(str(original)) == 5_002 and original.detail == "d" * 5_000
        assert str(copy).endswith("[4002 more characters]") and len(copy.detail) < 1_100
        kept = [f.name for f in traceback.extract_tb(copy.__traceback__)]
        frames = [f.name for f in traceback.extract_tb(original.__traceback__)]
        assert 0 < len(kept) <= 5 and kept == frames[-len(kept) :]
        assert frames[-1] == "raise_for"


@gen_cluster(client=True, timeout=60)
async def test_long_labels_leave_the_error_a_map_item_error(c, s, a, b):
    """Twenty failed items with 2,000-character labels: the message stays short, so
    distributed does not replace the error by a plain ``Exception`` (it does for a
    message over 10,000 characters)."""
    labels = [f"L{i}-" + "y" * 2_000 for i in range(20)]
    with pytest.raises(df.MapItemError) as info:
        await labelled.map(range(20), labels).compute(client=c)
    err = info.value
    assert len(str(err)) < 5_000 and "at index 0 (L0-yyy" in str(err)
    assert err.failed == list(range(20))
    assert err.labels[3].startswith("L3-yyy") and err.labels[3].endswith("[1003 more characters]")


@pytest.mark.slow
def test_between_worker_processes():
    """Real processes: the items' worker, the collector's and this one do not share
    pickle's registry as gen_cluster's in-process workers do."""
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        copyreg.dispatch_table.pop(CodedError, None)  # as in a fresh client process
        with pytest.raises(CodedError) as info:
            fails("coded").compute(client=client)
        check_coded(info.value)
        check_coded(pickle.loads(pickle.dumps(info.value)))  # it can be sent on
        kinds = ["ok", "coded", *["ok", "rewritten", "slotted", "coded"] * 4]
        for batch_size in (None, 3):
            with pytest.raises(df.MapItemError) as info:
                fails.map(kinds, [1] * len(kinds), batch_size=batch_size).compute(client=client)
            err = info.value
            check_map_error(err)
            assert len(err.failed) == 13 and list(err.errors) == err.failed
            assert [type(e).__name__ for e in err.errors.values()] == [
                "CodedError",
                *["Rewritten", "Slotted", "CodedError"] * 4,
            ]
            assert all(e.code == (41 if type(e) is CodedError else 1) for e in err.errors.values())
        with pytest.raises(df.MapItemError) as info:
            per_item.map(["ok", "coded"], [0, 1]).compute(client=client)
        check_map_error(info.value.__cause__)


def test_a_carried_os_error_keeps_its_text():
    """An OSError subclass (TaskTimeoutError is a TimeoutError) carried by a failure
    record prints as it did: its unset fields stay unset (set to None, an OSError
    prints "[Errno None] None: None -> None")."""
    from distributed.protocol.pickle import dumps, loads

    from dynflow.worker._failure import Failure

    for e in (
        df.TaskTimeoutError("task 'x' did not finish within 0.5 s"),
        OSError(2, "No such file", "a.txt"),
        FileNotFoundError(2, "gone", "f", None, "g"),
        ConnectionError("reset"),
    ):
        carried = loads(dumps(Failure(e, "x"))).exception
        assert (type(carried), str(carried), carried.args) == (type(e), str(e), e.args)
