"""Dynamic tasks computed in place on a busy worker (dynflow.worker._in_place): the same
values, errors and counts as when every call is spliced."""

from __future__ import annotations

import traceback

import dask
import pytest
from distributed.utils_test import gen_cluster
from remote_tasks import add, fib
from utils import generate_list, no_tasks_left, process

import dynflow as df
from dynflow._protocol import SPLICE


class LeafError(Exception):
    pass


@df.task
def leaf(n, bad):
    if n == bad:
        raise LeafError(f"leaf {n} is bad")
    return n


@df.task
def tree(n, bad):
    """A recursion whose leaf ``bad`` fails."""
    return leaf(n, bad) if n < 2 else add(tree(n - 1, bad), tree(n - 2, bad))


@df.task
def fans_out(n):
    """A dynamic task that returns a map: never computed in place."""
    return process.map(generate_list(n), 2)


def fib_calls(n: int) -> int:
    return 1 if n < 2 else 1 + fib_calls(n - 1) + fib_calls(n - 2)


def spliced(s) -> int:
    return s.extensions[SPLICE].tasks_added


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_a_busy_worker_computes_small_graphs_in_place(c, s, a):
    """One thread: once calls wait for it, fib's calls compute their graphs in place;
    the run still counts every call, done, in its boxes."""
    await fib(1).compute(client=c)
    before = spliced(s)
    (fut,) = await df.submit_async(fib(12), client=c)
    assert await fut == 144 == fib(12).compute(scheduler="sync")
    calls = fib_calls(12)  # 465 calls (the root is the run's own), 232 additions
    assert spliced(s) - before < calls - 1
    info = await fut.run.info()
    boxes = {n["label"]: info["nodes"][n["key"]] for n in info["graph"]["nodes"]}
    assert boxes["fib (dynamic)"]["total"] == boxes["fib (dynamic)"]["done"] == calls - 1
    assert boxes["add (dynamic)"]["total"] == boxes["add (dynamic)"]["done"] == 232
    del fut
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_errors_in_place_are_the_errors_spliced(c, s, a):
    """A leaf fails deep in the recursion: the same exception type and message whether
    its graph was computed in place, spliced, or in sync mode; its traceback reaches
    the leaf's own frame."""
    got = []
    for in_place in (True, False):
        with dask.config.set({"dynflow.dynamic-in-place": in_place}):
            with pytest.raises(LeafError) as e:
                await tree(10, 0).compute(client=c)
        got.append((type(e.value), str(e.value)))
        frames = traceback.extract_tb(e.value.__traceback__)
        assert any(f.name == "leaf" for f in frames), frames
    with pytest.raises(LeafError) as e:
        tree(10, 0).compute(scheduler="sync")
    assert got == [(LeafError, "leaf 0 is bad")] * 2 == [(type(e.value), str(e.value))] * 2


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_a_returned_map_is_spliced_even_on_a_busy_worker(c, s, a):
    await fib(1).compute(client=c)
    before = spliced(s)
    (f, m) = await df.submit_async(fib(8), fans_out(40), client=c)
    assert await m == [2 * i for i in range(40)]
    assert await f == 21
    # the map's 40 items (one task each: 40 <= 256) were spliced
    assert spliced(s) - before >= 40
    del f, m
    await no_tasks_left(s)
