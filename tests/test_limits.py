"""Named concurrency limits: at most n calls carrying a name run at once, cluster-wide."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from distributed import Client, Nanny
from distributed.utils_test import async_poll_for, gen_cluster
from utils import no_tasks_left

import dynflow as df
from dynflow._protocol import LIMITS

#: calls running now and the most at once, per limit name (workers share this process)
RUNNING: dict[str, list[int]] = {}
LOCK = threading.Lock()


def _enter(name: str) -> None:
    with LOCK:
        now = RUNNING.setdefault(name, [0, 0])
        now[0] += 1
        now[1] = max(now[1], now[0])


def _leave(name: str) -> None:
    with LOCK:
        RUNNING[name][0] -= 1


@df.task(concurrency_limit="api")
def call_api(x, seconds=0.01):
    _enter("api")
    try:
        time.sleep(seconds)
        return x
    finally:
        _leave("api")


@df.task(concurrency_limit="api")
def other_api(x):
    """Another task under the same limit."""
    _enter("api")
    try:
        time.sleep(0.01)
        return -x
    finally:
        _leave("api")


@df.task(concurrency_limit="nobody-set-this")
def unlimited(x):
    return x


#: the calls of `hang` return once this is set
RELEASE = threading.Event()


@df.task(concurrency_limit="hang")
def hang(x):
    RELEASE.wait(30)
    return x


def most(name: str) -> int:
    return RUNNING.get(name, [0, 0])[1]


@pytest.fixture(autouse=True)
def _reset():
    RUNNING.clear()
    RELEASE.clear()
    yield
    RELEASE.set()


@gen_cluster(client=True, nthreads=[("127.0.0.1", 4), ("127.0.0.1", 4)])
async def test_at_most_n_calls_across_maps_and_runs(c, s, a, b):
    """Two maps of two tasks under one name, in two runs at once: 8 threads, at most 2
    calls; the waiting ones hold no worker thread (they wait in the scheduler)."""
    await df.set_concurrency_limit("api", 2, client=c)
    first = df.submit_async(call_api.map(range(30)), client=c)
    second = df.submit_async(other_api.map(range(30)), client=c)
    (f1,), (f2,) = await asyncio.gather(first, second)
    # while it runs: never more than 2 limited tasks processing, the rest wait in
    # no-worker (not on a worker, holding no thread)
    seen = 0
    while not (f1.done() and f2.done()):
        processing = [
            ts
            for ts in s.tasks.values()
            if ts.state == "processing" and ts.annotations.get("dynflow_limit")
        ]
        assert len(processing) <= 2
        assert sum(len(ws.executing) for ws in s.workers.values()) <= 2 + 2  # expanders
        seen += 1
        await asyncio.sleep(0.005)
    assert await f1 == list(range(30)) and await f2 == [-x for x in range(30)]
    assert most("api") == 2 and seen > 0
    assert s.extensions[LIMITS].most["api"] == 2
    limits = await df.concurrency_limits(client=c)
    assert limits == {"api": {"limit": 2, "running": 0, "waiting": 0}}
    del f1, f2
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 4)])
async def test_a_limit_never_set_is_an_error_naming_it(c, s, a):
    with pytest.raises(df.ConcurrencyLimitError, match=r"'nobody-set-this' \(task 'unlimited'\)"):
        await unlimited.map(range(3)).compute(client=c)
    with pytest.raises(df.ConcurrencyLimitError, match="df.set_concurrency_limit"):
        await unlimited(1).compute(client=c)
    with pytest.raises(TypeError, match="expected an int >= 0"):
        await df.set_concurrency_limit("api", -1, client=c)
    with pytest.raises(TypeError, match="concurrency_limit=5"):
        df.task(concurrency_limit=5)(lambda x: x)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 4)])
async def test_raising_and_lowering_a_limit(c, s, a):
    """0 lets none start; raising it starts waiting calls at once; lowering applies to
    calls not started."""
    await df.set_concurrency_limit("api", 0, client=c)
    (fut,) = await df.submit_async(call_api.map(range(12), 0.05), client=c)
    await async_poll_for(
        lambda: (
            (await_limits := s.extensions[LIMITS].known()) and await_limits["api"]["waiting"] == 12
        ),
        timeout=10,
    )
    assert most("api") == 0
    await df.set_concurrency_limit("api", 3, client=c)
    await async_poll_for(lambda: most("api") == 3, timeout=10)
    await df.set_concurrency_limit("api", 1, client=c)
    RUNNING["api"][1] = RUNNING["api"][0]  # from now: the most once the running end
    await async_poll_for(lambda: RUNNING["api"][0] <= 1, timeout=10)
    RUNNING["api"][1] = 0
    assert await fut == list(range(12))
    assert most("api") == 1


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2), ("127.0.0.1", 2)])
async def test_a_client_that_dies_gives_back_its_slots(c, s, a, b):
    """Another client's run holds both slots and dies: the first client's calls run."""
    await df.set_concurrency_limit("hang", 2, client=c)
    other = await Client(s.address, asynchronous=True)
    futures = await df.submit_async(hang.map(range(4)), client=other)
    ext = s.extensions[LIMITS]
    await async_poll_for(lambda: len(ext.granted["hang"]) == 2, timeout=10)
    assert ext.known()["hang"] == {"limit": 2, "running": 2, "waiting": 2}
    await other.close()  # its tasks are released: their slots come back
    await async_poll_for(lambda: not ext.granted["hang"], timeout=10)
    await df.set_concurrency_limit("api", 1, client=c)
    assert await call_api.map(range(3)).compute(client=c) == [0, 1, 2]
    RELEASE.set()  # the calls that ran on when their client left
    del futures
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 4), ("127.0.0.1", 4)])
async def test_limits_with_adaptive_batches(c, s, a, b):
    """A long map grouped into batches: a batch holds one slot and runs its items one
    after another, so at most n calls run."""
    await df.set_concurrency_limit("api", 2, client=c)
    m = call_api.map(range(600), 0)
    assert await m.compute(client=c) == list(range(600))
    assert most("api") <= 2
    assert s.extensions["dynflow"].tasks_added < 600  # it was grouped


def test_local_schedulers_ignore_limits():
    assert call_api.map(range(3)).compute(scheduler="sync") == [0, 1, 2]
    assert unlimited(1).compute(scheduler="sync") == 1


@df.task(concurrency_limit="slow")
def slow_call(x):
    time.sleep(0.4)
    return x


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2), ("127.0.0.1", 2)])
async def test_two_clients_share_a_limit(c, s, a, b):
    await df.set_concurrency_limit("api", 3, client=c)
    async with Client(s.address, asynchronous=True) as other:
        runs = await asyncio.gather(
            call_api.map(range(20)).compute(client=c),
            other_api.map(range(20)).compute(client=other),
        )
    assert runs == [list(range(20)), [-x for x in range(20)]]
    assert most("api") == 3


@pytest.mark.slow
@gen_cluster(client=True, Worker=Nanny, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_a_worker_that_dies_gives_back_its_slot(c, s, *nannies):
    """The worker running the one call allowed dies: the call runs again elsewhere, in
    its turn; at no time do two calls run, and every result is there once."""
    await df.set_concurrency_limit("slow", 1, client=c)
    ext = s.extensions[LIMITS]
    (fut,) = await df.submit_async(slow_call.map(range(6)), client=c)
    await async_poll_for(lambda: ext.granted.get("slow"), timeout=10)
    (key,) = ext.granted["slow"]
    await async_poll_for(lambda: s.tasks[key].state == "processing", timeout=10)
    victim = s.tasks[key].processing_on.address
    (nanny,) = [n for n in nannies if n.worker_address == victim]
    await nanny.kill()
    assert await fut == list(range(6))
    assert ext.most["slow"] == 1
    del fut
    await no_tasks_left(s)
    assert not ext.granted["slow"] and not ext.held and not ext.limited


@df.task
def wraps_a_limited_call(x):
    """A dynamic task: its returned graph is one limited call (never computed in place)."""
    return call_api(x, 0.02)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2), ("127.0.0.1", 2)])
async def test_a_limited_call_in_a_returned_graph_is_held_too(c, s, a, b):
    """Busy workers compute small returned graphs in place, but not limited calls: the
    limit holds for them as for any call."""
    await df.set_concurrency_limit("api", 1, client=c)
    assert await wraps_a_limited_call.map(range(30)).compute(client=c) == list(range(30))
    assert most("api") == 1
