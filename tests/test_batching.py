"""task.map(..., batch_size=k): k items per scheduler task, results still per item."""

from __future__ import annotations

import threading
import time

import pytest
from distributed.utils_test import async_poll_for, gen_cluster
from utils import generate_list

import dynflow as df
from dynflow.lowering._stage import batch_size

ATTEMPTS: dict = {}


@df.task
def double(x, bad=()):
    if x in bad:
        raise ValueError(f"item {x}")
    return 2 * x


@df.task(retries=2)
def flaky(x):
    ATTEMPTS[x] = ATTEMPTS.get(x, 0) + 1
    if x % 3 == 0 and ATTEMPTS[x] < 2:
        raise ConnectionError(f"first attempt of {x}")
    return x


@df.task
def total(xs):
    return sum(xs)


@gen_cluster(client=True)
async def test_batched_results_equal_unbatched(c, s, a, b):
    for k in (1, 3, 7, 10, 50, "auto"):
        m = double.map(generate_list(23), batch_size=k)
        assert await m.compute(client=c) == [2 * i for i in range(23)]
    assert await double.map(generate_list(0), batch_size=4).compute(client=c) == []


@gen_cluster(client=True)
async def test_a_batch_is_one_scheduler_task(c, s, a, b):
    await double.map([1]).compute(client=c)  # install the extension
    before = s.extensions["dynflow"].tasks_added
    assert await total(double.map(generate_list(100), batch_size=10)).compute(client=c) == 9900
    assert s.extensions["dynflow"].tasks_added - before == 10
    await async_poll_for(lambda: not s.tasks, timeout=5)


@gen_cluster(client=True)
async def test_failures_stay_per_item_inside_a_batch(c, s, a, b):
    m = double.map(generate_list(10), df.unmapped((3, 4)), batch_size=5)
    with pytest.raises(df.MapItemError, match="2 of 10 items failed, at index 3, 4"):
        await m.compute(client=c)

    @df.task
    def kinds(xs):
        return [type(x).__name__ if isinstance(x, Exception) else x for x in xs]

    assert await kinds(df.allow_failure(m)).compute(client=c) == [
        0,
        2,
        4,
        "ValueError",
        "ValueError",
        10,
        12,
        14,
        16,
        18,
    ]


@gen_cluster(client=True)
async def test_retries_are_per_item_inside_a_batch(c, s, a, b):
    ATTEMPTS.clear()
    assert await flaky.map(generate_list(9), batch_size=9).compute(client=c) == list(range(9))
    assert ATTEMPTS == {i: 2 if i % 3 == 0 else 1 for i in range(9)}


@gen_cluster(client=True)
async def test_batched_maps_compose(c, s, a, b):
    first = double.map(generate_list(6), batch_size=4)
    assert await double.map(first).compute(client=c) == [4 * i for i in range(6)]
    flat = double.map(df.flatten(generate_list.map([1, 2])), batch_size=2)
    assert await flat.compute(client=c) == [0, 0, 2]


def test_auto_batch_size_rule():
    assert batch_size("auto", 10_000, 2) == 625  # about 8 tasks per thread
    assert batch_size("auto", 5, 16) == 1
    assert batch_size(7, 100, 2) == 7


def test_bad_batch_size_is_rejected_at_build_time():
    with pytest.raises(TypeError, match=r"double.map\(\): batch_size=0"):
        double.map([1], batch_size=0)
    with pytest.raises(TypeError, match="batch_size='big'"):
        double.map([1], batch_size="big")


def test_batching_in_sync_mode_gives_the_same_list():
    assert double.map(range(5), batch_size=2).compute(scheduler="sync") == [0, 2, 4, 6, 8]


# --------------------------------------------------------------- max_concurrency
LOCK = threading.Lock()
RUNNING = {"now": 0, "max": 0}
BARRIER = threading.Barrier(4)


@df.task
def counted(x):
    with LOCK:
        RUNNING["now"] += 1
        RUNNING["max"] = max(RUNNING["max"], RUNNING["now"])
    time.sleep(0.02)  # stands for work, so that items overlap when they may
    with LOCK:
        RUNNING["now"] -= 1
    return x


@df.task
def together(x):
    BARRIER.wait(timeout=20)  # passes only when four items run at the same time
    return x


@pytest.mark.parametrize("batch", [None, 3])
@gen_cluster(client=True, nthreads=[("127.0.0.1", 4)])
async def test_max_concurrency_is_never_exceeded(c, s, a, batch):
    # without a limit this cluster runs four items at once
    BARRIER.reset()
    assert await together.map(generate_list(4)).compute(client=c) == [0, 1, 2, 3]
    RUNNING.update(now=0, max=0)
    m = counted.map(generate_list(24), max_concurrency=2, batch_size=batch)
    assert await total(m).compute(client=c) == sum(range(24))
    assert 1 <= RUNNING["max"] <= 2
    await async_poll_for(lambda: not s.tasks, timeout=5)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_max_concurrency_with_failures_and_chains(c, s, a):
    m = double.map(generate_list(7), df.unmapped((2,)), max_concurrency=3)
    with pytest.raises(df.MapItemError, match="1 of 7 items failed, at index 2"):
        await m.compute(client=c)
    chained = double.map(double.map(generate_list(5), max_concurrency=1))
    assert await chained.compute(client=c) == [4 * i for i in range(5)]


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)])
async def test_max_concurrency_with_batches_keeps_failures_per_item(c, s, a):
    m = double.map(generate_list(10), df.unmapped((2, 7)), max_concurrency=2, batch_size=3)
    with pytest.raises(df.MapItemError, match="2 of 10 items failed, at index 2, 7"):
        await m.compute(client=c)
    ok = double.map(generate_list(10), max_concurrency=2, batch_size="auto")
    assert await ok.compute(client=c) == [2 * i for i in range(10)]


def test_max_concurrency_with_local_schedulers():
    assert double.map(range(5), max_concurrency=2).compute(scheduler="sync") == [0, 2, 4, 6, 8]
    m = double.map(range(5), max_concurrency=2, batch_size=2)
    assert m.compute(scheduler="sync") == [0, 2, 4, 6, 8]


def test_bad_max_concurrency_is_rejected():
    with pytest.raises(TypeError, match="max_concurrency=0"):
        double.map([1], max_concurrency=0)


BATCH_EVENTS: list = []


@df.task
def slow_step(stage, x):
    BATCH_EVENTS.append((stage, x))
    time.sleep(0.02)  # stands for real work
    return x


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_batched_chains_pipeline_batch_by_batch(c, s, a):
    """Batch b of a map over a batched map starts when batch b upstream is done: no
    barrier on the whole batched list (one thread, so the event order shows it)."""
    BATCH_EVENTS.clear()
    first = slow_step.map("f", generate_list(8), batch_size=2)
    second = slow_step.map("g", first, batch_size=2)
    (fut,) = await df.submit_async(second, client=c)
    await async_poll_for(lambda: (second.item_name, 3) in s.tasks, timeout=10)
    # each batch of the second map depends on the matching batch of the first only
    for b in range(4):
        deps = {d.key for d in s.tasks[(second.item_name, b)].dependencies}
        assert deps == {(first.item_name, b)}
    assert await fut == list(range(8))
    assert BATCH_EVENTS.index(("g", 0)) < BATCH_EVENTS.index(("f", 7))
    # items of a batched map read item by item from an unbatched chain too
    assert await slow_step.map("h", first).compute(client=c) == list(range(8))
    assert slow_step.map("h", first).compute(scheduler="sync") == list(range(8))


@df.task
async def adouble(x, scale):
    return 2 * x * scale["k"]


@df.task
def pair_sum(x, y, z=0):
    return x + y + z


@gen_cluster(client=True)
async def test_batches_give_what_items_of_their_own_give(c, s, a, b):
    """Every kind of argument a batch reads for its items (a mapped node, a chained
    batched map, a concrete list, a shared node, a value, wait_for item by item, an
    async function), failures in place: the same lists as unbatched and as sync."""
    shared = generate_list(3)

    def build(k):
        first = double.map(generate_list(12), bad=df.unmapped((5,)), batch_size=k)
        second = pair_sum.map(first, list(range(12)), z=df.unmapped(shared), batch_size=k)
        waiting = double.map(generate_list(12), wait_for=first, batch_size=k)
        scaled = adouble.map(generate_list(12), df.unmapped({"k": 3}), batch_size=k)
        return [df.allow_failure(m) for m in (first, second, waiting, scaled)]

    def plain(values):
        return [[repr(v) if isinstance(v, BaseException) else v for v in m] for m in values]

    expected = plain(df.compute(*build(None), scheduler="sync"))
    for k in (None, 1, 5, "auto"):
        futures = await df.submit_async(*build(k), client=c)
        assert plain(await c.gather(list(futures))) == expected, k
