"""batch_size="adaptive", what a map does when nothing is set: items grouped by their
measured compute time, every per-item promise kept."""

from __future__ import annotations

import time

import dask
import pytest
from distributed.utils_test import gen_cluster
from utils import generate_list, no_tasks_left, process

import dynflow as df
from dynflow._protocol import SPLICE
from dynflow.lowering._stage import batch_size
from dynflow.views._render import short_repr_counts

#: group even short maps (the real rule keeps maps of <= 256 items one task per item)
SHORT = {"dynflow.adaptive.min-items": 10}


@df.task
def slow(x):
    time.sleep(0.015)  # 15 ms: above the 10 ms of "slow-item"
    return x


@df.task(task_run_name="item-{x}")
def labelled(x):
    if x == 13:
        raise ValueError("thirteen")
    return x


def test_the_rule():
    with dask.config.set({"dynflow.adaptive.min-items": 256}):
        assert batch_size("adaptive", 256, 2) is None  # short maps: one task per item
        assert batch_size("adaptive", 20_000, 2) == 1250  # unmeasured: 8 tasks a thread
        assert batch_size("adaptive", 20_000, 2, 5e-6) == 1250  # at most 8 tasks a thread
        assert batch_size("adaptive", 20_000, 2, 1e-3) == 50  # 50 ms of compute a task
        assert batch_size("adaptive", 20_000, 2, 0.01) is None  # slow items
        assert batch_size("adaptive", 20_000, 2, 0.03) is None
        assert batch_size("adaptive", 20_000, 2, 0.04) is None
        assert batch_size("adaptive", 300, 64) is None  # one item a task anyway
        assert batch_size(None, 20_000, 2) is None
        assert batch_size("auto", 20_000, 2) == 1250


def test_the_default_is_adaptive_from_config():
    assert process.map([1]).batch_size == "adaptive"
    with dask.config.set({"dynflow.batch-size": None}):
        assert process.map([1]).batch_size is None
        # set on the task or the call, the option wins over the config
        assert process.with_options(batch_size="auto").map([1]).batch_size == "auto"
    with dask.config.set({"dynflow.batch-size": 7}):
        assert process.map([1]).batch_size == 7
        assert process.map([1], batch_size=None).batch_size is None
        assert process.with_options(batch_size=None).map([1]).batch_size is None
    assert process.map([1]).compute(scheduler="sync") == [1]


def test_a_bad_config_value_is_named_where_the_map_is_made():
    with (
        dask.config.set({"dynflow.batch-size": "lots"}),
        pytest.raises(ValueError, match=r"process.map\(\): the dask config key dynflow.batch-size"),
    ):
        process.map([1])
    with pytest.raises(TypeError, match="batch_size='lots'"):
        process.map([1], batch_size="lots")


def spliced(s):
    """Tasks the splice extension added so far on scheduler ``s``."""
    return s.extensions[SPLICE].tasks_added


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)])
async def test_a_long_map_of_quick_items_is_grouped(c, s, a, b):
    """2 threads, 2,000 items: the first time (unmeasured) 16 tasks, 8 a thread; the
    second time as well (measured: microseconds an item, so the most items a task
    "adaptive" gives); the list is the same, in order; the run says how it grouped."""
    await process.map([0]).compute(client=c)  # the extension is installed by a run
    for _ in range(2):
        before = spliced(s)
        (fut,) = await df.submit_async(process.map(generate_list(2000)), client=c)
        assert await fut == list(range(2000))
        assert spliced(s) - before == 16
        counts = (await fut.run.info())["nodes"]
        (mapped,) = [v for v in counts.values() if v["total"] == 2000]
        assert mapped["tasks"] == 16 and mapped["done"] == 2000
        assert short_repr_counts(mapped) == "2,000/2,000 done, in 16 tasks"
    assert s.extensions[SPLICE].durations.seconds("process") < 0.001
    del fut
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)])
async def test_short_maps_and_slow_items_stay_one_task_per_item(c, s, a, b):
    await process.map([0]).compute(client=c)
    before = spliced(s)
    assert await process.map(generate_list(256)).compute(client=c) == list(range(256))
    assert spliced(s) - before == 256
    with dask.config.set(SHORT):
        # unmeasured: grouped (ceil(40 / 16) = 3 items a task, 14 tasks)
        before = spliced(s)
        assert await slow.map(generate_list(40)).compute(client=c) == list(range(40))
        assert spliced(s) - before == 14
        # measured at 15 ms an item: one task per item
        before = spliced(s)
        assert await slow.map(generate_list(40)).compute(client=c) == list(range(40))
        assert spliced(s) - before == 40
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_per_item_promises_hold_in_adaptive_groups(c, s, a, b):
    """Labels, per-item failures (indices, type), allow_failure, as_completed (each
    item once, with its index), max_concurrency and wait_for item by item: as with
    one task per item."""
    with dask.config.set(SHORT):
        m = labelled.map(generate_list(40))
        with pytest.raises(df.MapItemError, match="1 of 40 items failed, at index 13") as e:
            await m.compute(client=c)
        assert isinstance(e.value.__cause__, ValueError)
        kinds = await df.allow_failure(m).compute(client=c)
        assert [type(v).__name__ for v in kinds if isinstance(v, Exception)] == ["ValueError"]
        got = {}
        async for i, v in df.as_completed(process.map(generate_list(40), 3), client=c):
            got[i] = v
        assert got == {i: 3 * i for i in range(40)}
        limited = process.map(generate_list(40), max_concurrency=2)
        assert await limited.compute(client=c) == list(range(40))
        first = process.map(generate_list(40))
        waiting = process.map(generate_list(40), 2, wait_for=first)
        assert await waiting.compute(client=c) == [2 * i for i in range(40)]
    await no_tasks_left(s)


def test_stream_rule_groups_a_chunk_by_measured_time_only():
    """Per chunk of a stream: as "adaptive" until measured; then target / seconds items
    per task, at most the chunk, whatever the threads; slow items one task each."""
    from dynflow.lowering._stage import batch_size

    assert batch_size("stream", 100, 4, None) is None  # <= min-items, unmeasured
    assert batch_size("stream", 10_000, 4, None) == batch_size("adaptive", 10_000, 4, None)
    assert batch_size("stream", 100, 4, 1e-4) == 100  # 50 ms / 0.1 ms = 500 > the chunk
    assert batch_size("stream", 10_000, 4, 1e-3) == 50
    assert batch_size("stream", 10_000, 4, 0.02) is None
