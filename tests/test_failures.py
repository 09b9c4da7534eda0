"""Failures: per-item isolation, allow_failure, min_success_ratio, retries, timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
import traceback

import pytest
from distributed.utils_test import async_poll_for, gen_cluster
from utils import generate_list, no_tasks_left

import dynflow as df
from dynflow.worker._calls import CallPolicy

EVENTS: list = []  # in-process workers share this module with the test
RELEASE = threading.Event()


class Bad(Exception):
    pass


@df.task
def fail_on(x, bad=(3,)):
    EVENTS.append(("ran", x))
    if x in bad:
        raise Bad(f"item {x} is bad")
    return 10 * x


@df.task
def total(xs):
    return sum(xs)


@df.task
def describe(results):
    return [type(r).__name__ if isinstance(r, Exception) else r for r in results]


@gen_cluster(client=True)
async def test_one_failing_item_never_stops_its_siblings(c, s, a, b):
    EVENTS.clear()
    with pytest.raises(df.MapItemError) as info:
        await total(fail_on.map(generate_list(8))).compute(client=c)
    err = info.value
    assert sorted(x for _, x in EVENTS) == list(range(8))  # every item ran
    assert "fail_on.map(): 1 of 8 items failed, at index 3" in str(err)
    assert err.failed == [3] and err.task_name == "fail_on"
    # the original exception, with its remote traceback, is the cause
    assert isinstance(err.__cause__, Bad) and str(err.__cause__) == "item 3 is bad"
    assert any("fail_on" in line for line in traceback.format_tb(err.__cause__.__traceback__))
    # the error stays small: the failed items' exceptions, never the results
    assert not hasattr(err, "results")
    assert list(err.errors) == [3] and isinstance(err.errors[3], Bad)
    del info, err
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_allow_failure_hands_exceptions_to_the_consumer(c, s, a, b):
    m = fail_on.map(generate_list(5), df.unmapped((1, 3)))
    out = await describe(df.allow_failure(m)).compute(client=c)
    assert out == [0, "Bad", 20, "Bad", 40]
    await no_tasks_left(s)


def test_allow_failure_needs_a_node_not_a_flatten():
    with pytest.raises(TypeError, match="allow_failure\\(\\) expects a node"):
        df.allow_failure([1, 2])
    with pytest.raises(TypeError, match="apply it to the map"):
        df.allow_failure(df.flatten(generate_list(3)))
    m = generate_list(3)
    once = df.allow_failure(m)
    assert df.allow_failure(once) is once


@df.task
def may_fail(x):
    if x < 0:
        raise Bad(f"{x} is negative")
    return x


@df.task
def inc_one(x):
    return x + 1


@df.task
def describe_one(value):
    return type(value).__name__ if isinstance(value, Exception) else value


@gen_cluster(client=True)
async def test_allow_failure_of_any_node_hands_the_consumer_the_exception(c, s, a, b):
    """A plain task, or anything it needed, failed: the tolerant consumer runs with the
    exception; other consumers of the same node fail as before (cluster and sync)."""
    bad = may_fail(-1)
    cases = [
        (describe_one(df.allow_failure(may_fail(2))), 2),
        (describe_one(df.allow_failure(bad)), "Bad"),
        (describe_one(df.allow_failure(inc_one(bad))), "Bad"),  # failed upstream
        (describe_one(df.allow_failure(total(fail_on.map([1, 3])))), "MapItemError"),
    ]
    for node, value in cases:
        assert await node.compute(client=c) == value
        assert node.compute(scheduler="sync") == value
    # in one graph: the tolerant consumer gets the exception, a strict one fails
    with pytest.raises(Bad, match="-1 is negative") as info:
        await df.compute(describe_one(df.allow_failure(bad)), inc_one(bad), client=c)
    del info
    (fut_t, fut_s) = await df.submit_async(
        describe_one(df.allow_failure(bad)), inc_one(bad), client=c
    )
    assert await fut_t == "Bad"
    # (awaiting an erred future keeps it alive in distributed's client: ask for the error)
    assert isinstance(await fut_s.exception(), Bad)
    del fut_t, fut_s
    with pytest.raises(Bad) as info:  # the tolerated node itself, asked for as an output
        await df.compute(describe_one(df.allow_failure(bad)), bad, client=c)
    del info
    with pytest.raises(Bad):
        df.compute(describe_one(df.allow_failure(bad)), bad, scheduler="sync")
    await no_tasks_left(s)


@df.task
def as_dict(n):
    return {i: i for i in range(n)}


@gen_cluster(client=True)
async def test_allow_failure_of_a_map_whose_source_failed(c, s, a, b):
    """No list to map over (the source failed, or is no list): the tolerant consumer gets
    that exception itself, in place of the list; a strict consumer fails with it; a map
    chained on it fails whole (cluster and sync alike)."""
    cases = [
        (describe_one(df.allow_failure(inc_one.map(may_fail(-1)))), "Bad"),
        (describe_one(df.allow_failure(inc_one.map(inc_one.map(may_fail(-1))))), "Bad"),
        (describe_one(df.allow_failure(inc_one.map(as_dict(2)))), "MapInputError"),
        (describe_one(df.allow_failure(inc_one.map(df.flatten(inc_one.map(may_fail(-1)))))), "Bad"),
        (describe_one(df.allow_failure(inc_one.map([1, 2]))), [2, 3]),
    ]
    for node, value in cases:
        assert await node.compute(client=c) == value
        assert node.compute(scheduler="sync") == value
    with pytest.raises(df.MapInputError, match="got dict from task 'as_dict'"):
        await total(inc_one.map(as_dict(2))).compute(client=c)
    with pytest.raises(df.MapInputError, match="got dict from task 'as_dict'"):
        total(inc_one.map(as_dict(2))).compute(scheduler="sync")
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_min_success_ratio(c, s, a, b):
    ok = fail_on.map(generate_list(4), min_success_ratio=0.75)
    assert await ok.compute(client=c) == [0, 10, 20, None]
    not_ok = fail_on.map(generate_list(4), df.unmapped((0, 1)), min_success_ratio=0.75)
    with pytest.raises(df.MapItemError, match="2 of 4 items failed"):
        await not_ok.compute(client=c)
    with pytest.raises(TypeError, match="min_success_ratio=2"):
        fail_on.map([1], min_success_ratio=2)


@gen_cluster(client=True)
async def test_chained_maps_pass_failures_on_and_name_the_origin(c, s, a, b):
    EVENTS.clear()
    first = fail_on.map(generate_list(5), df.unmapped((1,)))
    second = fail_on.map(first, df.unmapped(()))
    with pytest.raises(df.MapItemError, match=r"fail_on.map\(\): 1 of 5 .*index 1") as info:
        await second.compute(client=c)
    # item 1 of the second map never ran: it received the failure
    assert ("ran", 10) not in EVENTS and ("ran", 40) in EVENTS
    assert isinstance(info.value.__cause__, Bad)


@df.task
def children(n):
    if n == 2:
        raise Bad("no children for 2")
    return list(range(n))


@gen_cluster(client=True)
async def test_a_failed_parent_of_a_flattened_map(c, s, a, b):
    flat = fail_on.map(df.flatten(children.map([1, 2, 3])), df.unmapped(()))
    with pytest.raises(df.MapItemError, match="failed in task 'children'"):
        await flat.compute(client=c)
    # with allow_failure, the failed parent stands for its unknown children
    assert await describe(df.allow_failure(flat)).compute(client=c) == [0, "Bad", 0, 10, 20]
    await no_tasks_left(s)


@df.flow
def plain_per_item(x):
    return fail_on(x, (2,))


@gen_cluster(client=True)
async def test_sync_mode_agrees_with_the_cluster_on_a_failed_parent(c, s, a, b):
    """The same error (map, index, origin) and the same tolerated ratio, flattened,
    chained on a batched map, or flattened from a batched map."""
    parents = children.map([1, 2, 3])
    pipelines = [
        fail_on.map(df.flatten(parents), df.unmapped(())),
        fail_on.map(fail_on.map([1, 2, 3], batch_size=2), df.unmapped(())),
        fail_on.map(df.flatten(children.map([1, 2, 3], batch_size=2)), df.unmapped(())),
        per_item.map([1, 2, 3]),  # a sub-flow per item
        plain_per_item.map([1, 2, 3]),
    ]
    for flat in pipelines:
        with pytest.raises(df.MapItemError) as on_cluster:
            await flat.compute(client=c)
        with pytest.raises(df.MapItemError) as in_sync:
            flat.compute(scheduler="sync")
        assert str(in_sync.value) == str(on_cluster.value)
        assert on_cluster.value.origin in ("fail_on", "children")
    tolerant = fail_on.map(df.flatten(parents), df.unmapped(()), min_success_ratio=0.8)
    assert await tolerant.compute(client=c) == [0, None, 0, 10, 20]
    assert tolerant.compute(scheduler="sync") == [0, None, 0, 10, 20]


@df.flow
def per_item(x):
    return total(fail_on.map(generate_list(x), df.unmapped((2,))))


@gen_cluster(client=True)
async def test_a_failing_sub_flow_item_is_isolated(c, s, a, b):
    m = per_item.map([1, 2, 3])
    assert await describe(df.allow_failure(m)).compute(client=c) == [0, 10, "MapItemError"]
    with pytest.raises(df.MapItemError, match=r"per_item.map\(\): 1 of 3 .*index 2"):
        await m.compute(client=c)


ATTEMPTS: list = []


@df.task(retries=3, retry_delay=0.05, retry_backoff=2.0, retry_on=(ConnectionError,))
def flaky(fail_times):
    ATTEMPTS.append(time.monotonic())
    if len(ATTEMPTS) <= fail_times:
        raise ConnectionError(f"attempt {len(ATTEMPTS)}")
    return len(ATTEMPTS)


@gen_cluster(client=True)
async def test_retries_with_delay_and_backoff(c, s, a, b):
    ATTEMPTS.clear()
    assert await flaky(3).compute(client=c) == 4
    gaps = [t2 - t1 for t1, t2 in zip(ATTEMPTS, ATTEMPTS[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2
    ATTEMPTS.clear()
    with pytest.raises(ConnectionError, match="attempt 4"):
        await flaky(10).compute(client=c)
    assert len(ATTEMPTS) == 4


@df.task(retries=3, retry_on=(ConnectionError,))
def wrong_kind():
    ATTEMPTS.append(1)
    raise ValueError("not retried")


@gen_cluster(client=True)
async def test_retry_on_limits_which_exceptions_are_retried(c, s, a, b):
    ATTEMPTS.clear()
    with pytest.raises(ValueError, match="not retried"):
        await wrong_kind().compute(client=c)
    assert ATTEMPTS == [1]


def test_retry_delays_grow_with_backoff_and_jitter_stays_in_range():
    p = CallPolicy("t", retries=5, retry_delay=1.0, retry_backoff=2.0)
    assert [p.delay(k) for k in (1, 2, 3)] == [1.0, 2.0, 4.0]
    j = CallPolicy("t", retries=5, retry_delay=1.0, retry_jitter=0.1)
    assert all(0.9 <= j.delay(1) <= 1.1 for _ in range(100))


def test_bad_retry_options_are_rejected():
    with pytest.raises(TypeError, match="retry_delay='soon'"):
        flaky.with_options(retry_delay="soon")
    with pytest.raises(TypeError, match="retry_on=5"):
        flaky.with_options(retry_on=5)
    with pytest.raises(TypeError, match="retry_backoff=0.5"):
        flaky.with_options(retry_backoff=0.5)
    assert flaky.with_options(retry_delay="2s").options["retry_delay"] == 2.0


@df.task(retries=1, retry_delay=0.5, priority=10)  # runs before `quick`
def slow_retry(tag):
    EVENTS.append(("start", tag))
    if EVENTS.count(("start", tag)) == 1:
        raise Bad("first attempt")
    return tag


@df.task
def quick(tag, *_):
    EVENTS.append(("quick", tag))
    return tag


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_a_retry_delay_does_not_hold_the_worker_slot(c, s, a):
    EVENTS.clear()
    # one thread: `quick` can only run while slow_retry waits if the wait frees the slot
    outs = await df.compute(slow_retry("r"), quick("q"), client=c)
    assert outs == ("r", "q")
    # first attempt, then `quick` during the delay, then the retry; a held slot would
    # have made `quick` wait until after the retry
    assert EVENTS == [("start", "r"), ("quick", "q"), ("start", "r")]


@df.task(timeout=0.2)
def hangs(x):
    RELEASE.wait(timeout=10)
    return x


@gen_cluster(client=True)
async def test_timeout_names_the_task(c, s, a, b):
    RELEASE.clear()
    try:
        with pytest.raises(df.TaskTimeoutError, match="task 'hangs' did not finish within 0.2 s"):
            await hangs(1).compute(client=c)
        with pytest.raises(df.MapItemError, match=r"hangs.map\(\): 2 of 2") as info:
            await hangs.map([1, 2]).compute(client=c)
        assert isinstance(info.value.__cause__, TimeoutError)
        assert "task 'hangs' (index 0) did not finish" in str(info.value.__cause__)
    finally:
        RELEASE.set()  # let the abandoned calls finish before the thread-leak check


@df.task
def interrupts(kind):
    raise {"kbd": KeyboardInterrupt, "exit": SystemExit, "rec": RecursionError}[kind]("x")


@gen_cluster(client=True)
async def test_keyboard_interrupt_and_system_exit_in_a_task_do_not_kill_the_worker(c, s, a, b):
    for kind, cause in [("kbd", KeyboardInterrupt), ("exit", SystemExit)]:
        with pytest.raises(df.TaskInterruptedError, match=cause.__name__):
            await interrupts(kind).compute(client=c)
    with pytest.raises(RecursionError):
        await interrupts("rec").compute(client=c)
    assert len(s.workers) == 2
    assert await generate_list(2).compute(client=c) == [0, 1]


@df.task
def huge_error(n):
    raise Bad("x" * n)


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle this exception")


@df.task
def unpicklable_error(x):
    raise Unpicklable(f"unpicklable {x}")


@gen_cluster(client=True)
async def test_awkward_exceptions_in_items(c, s, a, b):
    with pytest.raises(df.MapItemError) as info:
        await huge_error.map([3_000_000]).compute(client=c)
    assert len(str(info.value)) < 2000  # the summary stays readable
    assert len(str(info.value.__cause__)) == 3_000_000  # the original is intact
    with pytest.raises(df.MapItemError, match="could not be pickled"):
        await unpicklable_error.map([1]).compute(client=c)


def test_sync_scheduler_has_the_same_failure_semantics():
    with pytest.raises(df.MapItemError, match=r"fail_on.map\(\): 1 of 5 .*index 3") as info:
        total(fail_on.map(range(5))).compute(scheduler="sync")
    assert isinstance(info.value.__cause__, Bad)
    m = fail_on.map(range(5), df.unmapped((1, 3)))
    assert describe(df.allow_failure(m)).compute(scheduler="sync") == [
        0,
        "Bad",
        20,
        "Bad",
        40,
    ]
    chained = fail_on.map(fail_on.map(range(3), df.unmapped((1,))), df.unmapped(()))
    with pytest.raises(df.MapItemError, match="index 1 .failed in task 'fail_on'|index 1;"):
        chained.compute(scheduler="sync")


GATE = threading.Event()


@df.task
def gated(x):
    EVENTS.append(("gated", x))
    assert GATE.wait(timeout=30)
    return x


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_cancel_stops_every_item_not_yet_started(c, s, a):
    EVENTS.clear()
    GATE.clear()
    m = gated.map(generate_list(20))
    (fut,) = await df.submit_async(total(m), client=c)
    await async_poll_for(lambda: len(EVENTS) == 1, timeout=10)  # item 0 is running
    await df.cancel(fut)
    await no_tasks_left(s)
    # the worker has dropped every item but the one it is running
    running = (m.item_name, 0)
    await async_poll_for(
        lambda: {k for k in a.state.tasks if isinstance(k, tuple)} <= {running}, timeout=10
    )
    GATE.set()
    await async_poll_for(lambda: running not in a.state.tasks, timeout=10)
    assert EVENTS == [("gated", 0)]  # nothing else ever started
    assert fut.cancelled()


@df.task
def gives_generator():
    return (i for i in range(3))


@df.task
def gives_locks(n):
    return [threading.Lock() for _ in range(n)]


@df.task
def gives_lock(x):
    return threading.Lock()


@df.task
def ident(x):
    return x


@gen_cluster(client=True)
async def test_unshippable_values_fail_naming_the_task_instead_of_hanging(c, s, a, b):
    # a returned generator (a task not declared a stream) is listed where it ran
    assert await ident.map(gives_generator()).compute(client=c) == [0, 1, 2]
    assert gives_generator().compute(scheduler="sync") == [0, 1, 2]
    with pytest.raises(df.SerializationError, match="task 'gives_locks' returned a list"):
        await total(ident.map(gives_locks(4))).compute(client=c)
    with pytest.raises(df.MapItemError, match="4 of 4 items failed.*'gives_lock' returned a lock"):
        await total(gives_lock.map(generate_list(4))).compute(client=c)
    with pytest.raises(TypeError, match="got NoneType from task 'ident'"):
        await ident.map(ident(None)).compute(client=c)
    await no_tasks_left(s)


@df.task
def fail_below(x, limit):
    if x < limit:
        raise Bad(f"{x} < {limit}")
    return x


@gen_cluster(client=True)
async def test_min_success_ratio_is_inclusive_and_exact(c, s, a, b):
    """55 of 100 meet 0.55 (0.55 * 100 is 55.00000000000001 in floating point)."""
    ok = fail_below.map(range(100), 45, min_success_ratio=0.55)
    short = fail_below.map(range(100), 46, min_success_ratio=0.55)
    assert (await ok.compute(client=c)).count(None) == 45
    assert ok.compute(scheduler="sync").count(None) == 45
    with pytest.raises(df.MapItemError, match="46 of 100 items failed"):
        await short.compute(client=c)
    with pytest.raises(df.MapItemError, match="46 of 100 items failed"):
        short.compute(scheduler="sync")


@df.task
def total_ok(xs):
    return sum(x for x in xs if x is not None)


@df.flow
def tolerant_inner(n):
    return total_ok(fail_below.map(generate_list(n), 2, min_success_ratio=0.5))


@gen_cluster(client=True)
async def test_min_success_ratio_inside_a_subflow_run_per_item(c, s, a, b):
    """The maps of a sub-flow run per item honour their ratio on a cluster, as in sync."""
    m = tolerant_inner.map([4, 5, 2])  # 2 of 4, 3 of 5 succeed; 0 of 2 does not
    got = await describe(df.allow_failure(m)).compute(client=c)
    assert got == [2 + 3, 2 + 3 + 4, "MapItemError"]
    assert describe(df.allow_failure(m)).compute(scheduler="sync") == got
    await no_tasks_left(s)


# --------------------------------------------------- failures that must travel
def deep(n):
    return deep(n + 1)


@df.task
def too_deep(x):
    return deep(x)


@gen_cluster(client=True, timeout=60)
async def test_a_deep_traceback_fails_fast_as_a_map_item_error(c, s, a, b):
    """A RecursionError's record (a thousand frames) travels between workers, trimmed."""
    for node in (too_deep.map(range(6)), fail_on.map(too_deep.map(range(6)), df.unmapped(()))):
        with pytest.raises(df.MapItemError) as info:
            await asyncio.wait_for(total(node).compute(client=c), 30)
        cause = info.value.__cause__
        assert isinstance(cause, RecursionError)
        frames = traceback.extract_tb(cause.__traceback__)
        assert 2 < len(frames) <= 60 and frames[-1].name == "deep"
    with pytest.raises(RecursionError):
        await asyncio.wait_for(too_deep(1).compute(client=c), 30)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_a_deep_traceback_on_one_worker(c, s, a):
    with pytest.raises(df.MapItemError):
        await asyncio.wait_for(total(too_deep.map(range(2))).compute(client=c), 30)


@df.task
def big_or_bad(i):
    if i == 3:
        raise Bad("one bad item")
    return b"x" * 5_000_000


@gen_cluster(client=True, timeout=60)
async def test_the_error_that_travels_stays_small(c, s, a, b):
    """One failed item among 10 results of 5 MB: the error carries no results."""
    import pickle

    m = big_or_bad.map(range(10))
    with pytest.raises(df.MapItemError) as info:
        await total(m).compute(client=c)
    assert len(pickle.dumps(info.value)) < 50_000
    # what README says to do instead: the results, each failure in its place
    got = await describe(df.allow_failure(m)).compute(client=c)
    assert got[3] == "Bad" and sum(isinstance(r, bytes) for r in got) == 9


class Stop(BaseException):
    pass


@df.task
def raises_base(kind):
    import asyncio as aio

    raise {"gen": GeneratorExit, "cancel": aio.CancelledError, "custom": Stop}[kind]("x")


@gen_cluster(client=True, timeout=60)
async def test_any_base_exception_fails_the_call_clearly(c, s, a, b):
    """GeneratorExit, CancelledError or a BaseException subclass of the user's: a
    TaskInterruptedError (the original as cause), never a hang, also in sync mode."""
    for kind, cls in [("gen", GeneratorExit), ("cancel", asyncio.CancelledError), ("custom", Stop)]:
        with pytest.raises(df.TaskInterruptedError, match=cls.__name__) as info:
            await asyncio.wait_for(raises_base(kind).compute(client=c), 20)
        assert isinstance(info.value.__cause__, cls)
        with pytest.raises(df.MapItemError, match="TaskInterruptedError") as info:
            await asyncio.wait_for(raises_base.map([kind]).compute(client=c), 20)
        with pytest.raises(df.TaskInterruptedError):
            raises_base(kind).compute(scheduler="sync")
    assert len(s.workers) == 2


@df.task(timeout=0.2)
def slow_third(i):
    if i == 2:
        RELEASE.wait(10)
    return i


@gen_cluster(client=True)
async def test_a_timed_out_item_in_a_batch_is_named_by_its_index(c, s, a, b):
    RELEASE.clear()
    try:
        with pytest.raises(df.MapItemError, match=r"at index 2") as info:
            await slow_third.map(range(4), batch_size=3).compute(client=c)
        assert "task 'slow_third' (index 2) did not finish" in str(info.value.__cause__)
        with pytest.raises(df.MapItemError) as info:
            slow_third.map(range(4), batch_size=3).compute(scheduler="sync")
        assert "(index 2)" in str(info.value.__cause__)
    finally:
        RELEASE.set()


# ------------------------------------------------- retry delays and conditions
def test_a_list_of_retry_delays_gives_one_per_retry_and_the_last_repeats():
    p = CallPolicy("t", retries=5, retry_delay=(1.0, 10.0, 60.0), retry_backoff=2.0)
    assert [p.delay(k) for k in (1, 2, 3, 4, 5)] == [1.0, 10.0, 60.0, 60.0, 60.0]
    t = flaky.with_options(retry_delay=[0.01, "2s", 0.5])
    assert t.options["retry_delay"] == (0.01, 2.0, 0.5)
    with pytest.raises(TypeError, match=r"retry_delay=\[\]"):
        flaky.with_options(retry_delay=[])
    with pytest.raises(TypeError, match="retry_delay=\\[1, 'soon'\\]"):
        flaky.with_options(retry_delay=[1, "soon"])


def transient(error):
    return "transient" in str(error)


@df.task(retries=3, retry_on=transient)
def fails_as_told(messages):
    ATTEMPTS.append(1)
    message = messages[min(len(ATTEMPTS), len(messages)) - 1]
    if message:
        raise RuntimeError(message)
    return len(ATTEMPTS)


def broken_condition(error):
    raise KeyError("the condition itself failed")


@gen_cluster(client=True)
async def test_retry_on_a_callable_decides_from_the_exception(c, s, a, b):
    ATTEMPTS.clear()
    assert await fails_as_told(["transient 1", "transient 2", ""]).compute(client=c) == 3
    ATTEMPTS.clear()
    with pytest.raises(RuntimeError, match="fatal"):
        await fails_as_told(["transient", "fatal", ""]).compute(client=c)
    assert len(ATTEMPTS) == 2
    ATTEMPTS.clear()
    with pytest.raises(df.MapItemError) as info:
        await fails_as_told.map([["fatal"]]).compute(client=c)
    assert len(ATTEMPTS) == 1 and "fatal" in str(info.value)
    ATTEMPTS.clear()
    with pytest.raises(KeyError, match="the condition itself failed") as info:
        await fails_as_told.with_options(retry_on=broken_condition)(["x"]).compute(client=c)
    assert "x" in str(info.value.__context__)
    ATTEMPTS.clear()
    assert fails_as_told(["transient", ""]).compute(scheduler="sync") == 2


# ------------------------------------------------- what the user's output shows
@df.task
def inverse(x):
    return 1 / x


@df.task
def plain_fails(x):
    raise ValueError(f"plain {x}")


def test_errors_show_the_users_frames_and_no_internal_compute_failed():
    import logging

    from distributed import Client, LocalCluster

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.ERROR)
            self.records = []

        def emit(self, record):
            self.records.append(record)

    caught = Records()
    worker_log = logging.getLogger("distributed.worker")  # distributed's own, not propagated
    worker_log.addHandler(caught)
    try:
        with (
            LocalCluster(
                n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            with pytest.raises(df.MapItemError) as info:
                total(inverse.map([0, 1, 2])).compute(client=client)
            files = [f.filename for f in traceback.extract_tb(info.value.__traceback__)]
            assert files and not any("/dynflow/" in f for f in files), files
            cause = traceback.extract_tb(info.value.__cause__.__traceback__)
            assert [f.name for f in cause] == ["inverse"], cause  # the item's own frame
            with pytest.raises(ValueError, match="plain 1"):
                plain_fails(1).compute(client=client)
    finally:
        worker_log.removeHandler(caught)
    blocks = [r.getMessage() for r in caught.records if "Compute Failed" in r.getMessage()]
    assert not any("gather" in b for b in blocks), blocks  # dynflow's collector
    assert any("plain_fails" in b for b in blocks), blocks  # the user's own task


@df.task
def pass_on(x):
    return x


@gen_cluster(client=True)
async def test_allow_failure_sees_a_failure_inside_a_container_argument(c, s, a, b):
    """A node upstream of an allow_failure consumer, whose argument is a list holding a
    failing node: the consumer gets the exception, never a failure record in a list."""
    node = pass_on(df.allow_failure(pass_on([fail_on(3), 1])))
    for (value,) in (await df.compute(node, client=c), df.compute(node, scheduler="sync")):
        assert type(value) is Bad and str(value) == "item 3 is bad"
    # the same list without a failure: the values, in place
    ok = pass_on(df.allow_failure(pass_on([fail_on(1), {"b": fail_on(2)}])))
    assert await df.compute(ok, client=c) == ([10, {"b": 20}],)
    await no_tasks_left(s)
