"""df.as_completed: a map's items as they finish, a bounded window at a time."""

from __future__ import annotations

import os
import threading
import time

import pytest
from distributed import Event
from distributed.client import FutureCancelledError, FuturesCancelledError
from distributed.utils_test import async_poll_for, gen_cluster
from processes import STOP_TIMEOUT, CLICluster, wait_until
from utils import generate_list, no_tasks_left, process, reducer

import dynflow as df

GATE = threading.Event()  # in-process workers share this module with the test


@df.task
def square(x):
    if x == 3:
        raise ValueError("three")
    return x * x


@df.task
def gated_zero(x):
    if x == 0:
        assert GATE.wait(timeout=30)
    return x


@df.task
def lists(n):
    return list(range(n))


async def collect(stream):
    return [pair async for pair in stream]


@gen_cluster(client=True)
async def test_items_arrive_with_their_index_failures_as_exceptions(c, s, a, b):
    pairs = await collect(df.as_completed(square.map(generate_list(10)), client=c))
    assert sorted(i for i, _ in pairs) == list(range(10))
    values = dict(pairs)
    assert isinstance(values.pop(3), ValueError)
    assert values == {i: i * i for i in range(10) if i != 3}
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_raise_errors_raises_for_the_failed_item(c, s, a, b):
    with pytest.raises(df.MapItemError, match=r"square.map\(\): 1 of \d+ items failed, at index 3"):
        await collect(df.as_completed(square.map([0, 1, 2, 3]), raise_errors=True, client=c))
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_batched_chained_and_flattened_maps(c, s, a, b):
    batched = await collect(df.as_completed(process.map(generate_list(25), batch_size=4), client=c))
    assert sorted(batched) == [(i, i) for i in range(25)]
    chained = await collect(
        df.as_completed(process.map(process.map(generate_list(5)), 3), client=c)
    )
    assert sorted(chained) == [(i, 3 * i) for i in range(5)]
    nested = await collect(df.as_completed(process.map(df.flatten(lists.map([1, 3]))), client=c))
    assert sorted(nested) == [((0, 0), 0), ((1, 0), 0), ((1, 1), 1), ((1, 2), 2)]
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_the_first_result_arrives_before_the_slowest_item_finishes(c, s, a, b):
    GATE.clear()
    stream = df.as_completed(gated_zero.map(generate_list(6)), client=c)
    first = []
    async with stream:
        async for i, _ in stream:
            first.append(i)
            if len(first) == 1:
                assert i != 0  # a result arrived while item 0 is still held
                GATE.set()
    assert sorted(first) == list(range(6))
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_the_client_holds_a_bounded_window_of_results(c, s, a, b):
    """Never one future per item: at most a window of them (a few per worker thread)."""
    most = 0
    async for _ in df.as_completed(process.map(generate_list(1000)), client=c):
        most = max(most, len(c.futures))
    window = max(32, 8 * sum(w.nthreads for w in s.workers.values()))
    assert most <= window + 1  # + the run's own output future


@gen_cluster(client=True)
async def test_attaching_to_a_submitted_run(c, s, a, b):
    release = Event("release-stream", client=c)
    m = square.map(held.map(generate_list(6), "release-stream"))
    (fut,) = await df.submit_async(reducer(df.allow_failure(m)), client=c)
    stream = df.as_completed(fut, m)
    await release.set()
    pairs = await collect(stream)
    assert sorted(i for i, _ in pairs) == list(range(6))
    with pytest.raises(TypeError, match="node must be a map node"):
        df.as_completed(fut)
    del fut


@df.task
def held(x, event):
    from distributed import Event as DEvent

    DEvent(event).wait(timeout=30)
    return x


STARTED: list[int] = []  # the items of `held_but_the_first` that ran (in-process workers)
STARTING = threading.Lock()
HOLD = threading.Event()


@df.task
def held_but_the_first(x):
    """The first item to start returns at once; the others are held (a worker thread
    each) until HOLD is set."""
    with STARTING:
        STARTED.append(x)
        first = len(STARTED) == 1
    if not first:
        assert HOLD.wait(timeout=30)
    return x


@gen_cluster(client=True)
async def test_leaving_early_cancels_what_has_not_started(c, s, a, b):
    STARTED.clear()
    HOLD.clear()
    try:
        # one task per item: a task not started is dropped (a batch runs all its items)
        m = held_but_the_first.map(generate_list(500), batch_size=None)
        async with df.as_completed(m, client=c) as stream:
            async for pair in stream:
                assert pair == (STARTED[0], STARTED[0])  # the only item that can finish
                break
        # the run is let go of: the scheduler forgets its tasks while some are held, and
        # the workers drop the items they had not started
        await no_tasks_left(s, timeout=10)
        await async_poll_for(lambda: not a.state.ready and not b.state.ready, timeout=10)
        started = len(STARTED)
    finally:
        HOLD.set()  # the held items end; their results are dropped
    await async_poll_for(lambda: not a.state.executing and not b.state.executing, timeout=10)
    # only the items that had started ever ran (the first, and at most one per worker
    # thread after it): without the cancellation all 500 would run
    assert started == len(STARTED) <= 1 + a.state.nthreads + b.state.nthreads, STARTED


def test_synchronous_iteration_and_cancel_on_exit_false(client):
    got = sorted(df.as_completed(process.map(generate_list(20), 2), client=client))
    assert got == [(i, 2 * i) for i in range(20)]
    m = process.map(generate_list(50))
    for _ in df.as_completed(m, client=client, cancel_on_exit=False):
        break
    # the rest of the run went on to the end, then was forgotten
    wait_until(
        lambda: not client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)),
        20,
        "the run to finish",
    )


def test_in_sync_mode_the_items_come_in_order():
    pairs = list(df.as_completed(square.map(range(5)), scheduler="sync"))
    assert [i for i, _ in pairs] == [0, 1, 2, 3, 4]
    assert isinstance(pairs[3][1], ValueError) and pairs[4] == (4, 16)
    with pytest.raises(df.MapItemError, match="at index 3"):
        list(df.as_completed(square.map(range(5)), raise_errors=True, scheduler="sync"))


@df.task
def split_unless_one(x):
    if x == 1:
        raise ValueError("parent 1 failed")
    return [x, x]


@df.task
def fails(x):
    raise KeyError(f"source {x}")


@gen_cluster(client=True)
async def test_a_failed_parent_is_one_item_at_its_index_and_a_failed_source_raises(c, s, a, b):
    """Cluster and sync mode agree: a map over flatten(m) yields ((i, j), value); a failed
    parent item of m stands for its unknown children, ((i,), exception); a map whose
    own source failed raises that error."""
    m = process.map(df.flatten(split_unless_one.map([0, 1, 2])))
    got = sorted(await collect(df.as_completed(m, client=c)), key=lambda p: p[0])
    local = sorted(df.as_completed(m, scheduler="sync"), key=lambda p: p[0])
    for pairs in (got, local):
        assert [i for i, _ in pairs] == [(0, 0), (0, 1), (1,), (2, 0), (2, 1)]
        assert isinstance(pairs[2][1], ValueError) and pairs[3][1] == 2
    with pytest.raises(df.MapItemError, match=r"at index \(1,\)"):
        await collect(df.as_completed(m, raise_errors=True, client=c))
    chained = process.map(process.map(generate_list(4)))
    assert sorted(df.as_completed(chained, scheduler="sync")) == [(i, i) for i in range(4)]
    with pytest.raises(KeyError, match="source 1"):
        await collect(df.as_completed(process.map(fails(1)), client=c))
    with pytest.raises(KeyError, match="source 1"):
        list(df.as_completed(process.map(fails(1)), scheduler="sync"))
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_a_stream_is_iterated_once_and_async_clients_need_async_for(c, s, a, b):
    stream = df.as_completed(process.map(generate_list(3)), client=c)
    assert len(await collect(stream)) == 3
    with pytest.raises(RuntimeError, match="iterated already"):
        await collect(stream)
    with pytest.raises(TypeError, match="async for"):
        list(df.as_completed(process.map(generate_list(3)), client=c))
    # the same map streamed twice: two runs of their own, each with every item
    m = process.map(generate_list(5))
    first, second = (
        await collect(df.as_completed(m, client=c)),
        await collect(df.as_completed(m, client=c)),
    )
    assert sorted(first) == sorted(second) == [(i, i) for i in range(5)]
    await no_tasks_left(s)


@df.task
def gated_from_two(i, gate):
    """Items from 2 on wait for the file ``gate`` (they are still running at the kill)."""
    deadline = time.monotonic() + 60
    while i >= 2 and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return i


@pytest.mark.slow
def test_a_scheduler_killed_mid_stream_raises_scheduler_lost_error(tmp_path):
    """The scheduler process dies while the client waits for the next items: the loop
    raises SchedulerLostError (the lost connection's error as its cause), at once."""
    gate = tmp_path / "go"
    cluster = CLICluster(tmp_path)
    cluster.start(n_workers=1)
    client = None
    try:
        client = cluster.client(n_workers=1)
        stream = iter(
            df.as_completed(gated_from_two.map(generate_list(6), str(gate)), client=client)
        )
        got = [next(stream), next(stream)]  # items 0 and 1; the others wait
        assert sorted(i for i, _ in got) == [0, 1]
        scheduler = cluster.procs[0]
        # killed while the client waits on the scheduler for the next window
        killer = threading.Timer(0.5, scheduler.kill)
        killer.start()
        start = time.monotonic()
        with pytest.raises(df.SchedulerLostError, match="lost the connection") as info:
            next(stream)
        killer.join()
        assert time.monotonic() - start < 30
        cause = info.value.__cause__
        assert isinstance(cause, (OSError, FutureCancelledError, FuturesCancelledError)), cause
        with pytest.raises(StopIteration):  # the stream is over, closed without the scheduler
            next(stream)
    finally:
        gate.touch()
        if client is not None:
            client.close(timeout=STOP_TIMEOUT)
        cluster.stop()
