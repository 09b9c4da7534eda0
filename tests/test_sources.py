"""Streaming sources: a generator task feeds its maps item by item (README "Streaming
sources"), on a cluster (gen_cluster, validate on; LocalCluster with processes) and in
sync mode."""

from __future__ import annotations

import asyncio
import pathlib
import tempfile
import threading
import time
import traceback

import dask.config
import psutil
import pytest
from distributed import Client, Event, LocalCluster, Nanny
from distributed.utils_test import async_poll_for, gen_cluster
from stream_tasks import (
    LEAD,
    SEEN,
    annotated,
    anumbers,
    fails_after,
    fails_on,
    flaky_source,
    gated,
    inc,
    length,
    listed,
    lockstep,
    mark,
    numbers,
    pair,
    payload,
    record,
    reset,
    total,
    watched,
)
from utils import no_tasks_left

import dynflow as df
from dynflow._protocol import base_name
from dynflow.graph._node import StreamNode


def source_of(s, src):
    """The scheduler's task of stream ``src``'s source in the run now (its key carries
    the run: dynflow._protocol.run_name), or None."""
    for k, ts in s.tasks.items():
        if type(k) is str and base_name(k) == src.source_key:
            return ts
    return None


def named(key, name) -> bool:
    """Whether ``key`` is a task ``(name of some run, ...)``."""
    return type(key) is tuple and base_name(key[0]) == name


def pipelines(n: int) -> list:
    """Streamed maps of every kind over a stream of n numbers, and their list twins."""
    out = []
    for src in (numbers(n), listed(n)):
        m = inc.map(src)
        out += [
            total(m),
            inc.map(inc.map(src)),  # chained: item by item
            src,  # the list itself
            inc.map(df.flatten(pair.map(src))),  # flatten of a streamed map
            fails_on.map(src, bad=3, min_success_ratio=0.5),
            df.allow_failure(fails_on.map(src, bad=2)),
            inc.map(src, batch_size=7),
            inc.map(src, max_concurrency=2),
        ]
    return out


def test_stream_tasks_make_stream_nodes():
    assert isinstance(numbers(3), StreamNode)
    assert isinstance(anumbers(3), StreamNode)
    assert isinstance(annotated(3), StreamNode)
    assert not isinstance(listed(3), StreamNode)


@pytest.mark.parametrize("n", [0, 1, 5, 300])
def test_sync_gives_the_lists_values(n):
    values = df.compute(*pipelines(n), scheduler="sync")
    half = len(values) // 2
    assert _plain(values[:half]) == _plain(values[half:])
    assert df.compute(anumbers(n), annotated(n), scheduler="sync") == (
        list(range(n)),
        list(range(n)),
    )


def _plain(values: list) -> list:
    """Exceptions compared by type and text."""
    out = []
    for v in values:
        if isinstance(v, list):
            v = [(type(x).__name__, str(x)) if isinstance(x, BaseException) else x for x in v]
        out.append(v)
    return out


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_streamed_maps_give_what_maps_over_lists_give(c, s, a, b):
    for n in (0, 1, 5, 400):
        values = await df.compute(*pipelines(n), client=c)
        half = len(values) // 2
        assert _plain(values[:half]) == _plain(values[half:]), n
        assert _plain(values[:half]) == _plain(df.compute(*pipelines(n)[:half], scheduler="sync"))
    assert await df.compute(anumbers(7), total(inc.map(annotated(7))), client=c) == (
        list(range(7)),
        28,
    )
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=60)
async def test_items_start_while_the_source_runs(c, s, a, b):
    """The source yields item i only after item i - 1 was processed: a map that waited
    for the whole list would never finish it."""
    n = 30
    m = mark.map(lockstep(n, "lockstep-gen"), prefix="lockstep-gen")
    assert await df.compute(total(m), client=c) == (2 * sum(range(n)),)
    # chained maps pipeline item by item too
    m2 = inc.map(mark.map(lockstep(n, "lockstep-chain"), prefix="lockstep-chain"))
    assert await df.compute(m2, client=c) == ([2 * i + 1 for i in range(n)],)
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_a_source_that_fails_mid_stream(c, s, a, b):
    reset()
    m = record.map(fails_after(40, "page 3 broke"))
    with pytest.raises(ValueError, match="page 3 broke") as info:
        await df.compute(total(m), client=c)
    # the source's own traceback came with it
    assert "fails_after" in "".join(traceback.format_tb(info.value.__traceback__))
    # every item yielded before the failure ran, once
    assert SEEN == dict.fromkeys(range(40), 1)
    # allow_failure hands the exception on: of the stream, of a map over it
    (e1, e2) = await df.compute(
        df.allow_failure(fails_after(3, "a")), df.allow_failure(inc.map(fails_after(3, "b"))),
        client=c,
    )  # fmt: skip
    assert type(e1) is ValueError and str(e1) == "a"
    assert type(e2) is ValueError and str(e2) == "b"
    # the same in sync mode
    with pytest.raises(ValueError, match="page 3 broke"):
        df.compute(total(inc.map(fails_after(40, "page 3 broke"))), scheduler="sync")
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_source_retries_skip_the_items_handed_on(c, s, a, b):
    reset()
    m = record.map(flaky_source(50, fail_at=20))
    assert await df.compute(m, client=c) == (list(range(50)),)
    assert SEEN == dict.fromkeys(range(50), 1)  # none lost, none twice


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=60)
async def test_the_window_bounds_how_far_the_source_runs_ahead(c, s, a, b):
    reset()
    n = 3000
    config = {"dynflow.stream.window-items": 50, "dynflow.stream.chunk-items": 10}
    with dask.config.set(config):  # read where the graph is built: at compute
        node = total(record.map(watched(n), batch_size=None))
        assert await df.compute(node, client=c) == (sum(range(n)),)
    # at most the window ahead, and the items in a flush or two on their way
    assert 0 < LEAD[0] <= 50 + 2 * 10, LEAD[0]
    # used whole too, the stream has no window: its list is all kept anyway
    reset()
    with dask.config.set(config):
        src = watched(500)
        values = await df.compute(src, total(record.map(src)), client=c)
    assert values == (list(range(500)), sum(range(500)))


def test_cache_on_a_stream_is_refused_where_it_is_called():
    """A stream's list is never stored whole: cache=True on one is an error, not ignored."""

    def pages(n):
        yield from range(n)

    with pytest.raises(ValueError, match=r"task 'pages' is a stream.*cache=True"):
        df.task(cache=True)(pages)(3)
    with pytest.raises(ValueError, match=r"task 'pages' is a stream"):
        df.task(pages).with_options(cache=True)(3)


def test_bad_stream_config_is_refused_where_the_graph_is_built():
    with dask.config.set({"dynflow.stream.window-items": "many"}):
        with pytest.raises(ValueError, match=r"stream 'numbers'.*dynflow.stream"):
            from dynflow.lowering._lower import lower

            lower([inc.map(numbers(3))], distributed=True)


@pytest.mark.slow
@gen_cluster(client=True, Worker=Nanny, nthreads=[("127.0.0.1", 1)] * 2, timeout=120)
async def test_a_worker_killed_while_it_runs_the_source(c, s, a, b):
    n, gate_from = 60, 30
    src = gated(n, gate_from, "stream-kill-go")
    m = inc.map(src, batch_size=None)
    (fut,) = await df.submit_async(total(m), client=c)
    # the items before the gate were handed on and (some) processed
    await async_poll_for(
        lambda: (
            source_of(s, src) is not None
            and source_of(s, src).processing_on is not None
            and sum(1 for k in s.tasks if named(k, m.item_name)) >= gate_from
        ),
        timeout=60,
    )
    holder = source_of(s, src).processing_on.address
    victim = a if a.worker_address == holder else b
    await victim.kill()
    await Event("stream-kill-go", client=c).set()
    assert await fut == sum(range(1, n + 1))
    counts = (await fut.run.info())["nodes"][m.key]
    assert (counts["done"], counts["failed"], counts["pending"]) == (n, 0, 0)


@pytest.mark.slow
def test_local_cluster_with_processes():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.validate)
        m = mark.map(lockstep(20, "lockstep-processes"), prefix="lockstep-processes")
        assert total(m).compute(client=client) == 2 * sum(range(20))
        assert inc.map(inc.map(anumbers(2000))).compute(client=client) == list(range(2, 2002))
        with pytest.raises(ValueError, match="late"):
            total(inc.map(fails_after(10, "late"))).compute(client=client)


@pytest.mark.slow
def test_a_stream_larger_than_memory_flows_through():
    """60,000 items of 20 KB (1.2 GB) summed on two 1-thread workers: no worker passes
    700 MB (sampled every 50 ms)."""
    n, size, limit = 60_000, 20_000, 700 * 2**20
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        memory_limit="2GiB",
    ) as cluster, Client(cluster, set_as_default=False) as client:  # fmt: skip
        pids = list(client.run(lambda: __import__("os").getpid()).values())
        peak = dict.fromkeys(pids, 0)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                for pid in pids:
                    try:
                        peak[pid] = max(peak[pid], psutil.Process(pid).memory_info().rss)
                    except psutil.Error:
                        pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        try:
            assert total(length.map(payload(n, size))).compute(client=client) == n * size
        finally:
            stop.set()
            sampler.join()
        print(f"1.2 GB stream: {time.perf_counter() - start:.1f} s, peak RSS (MB):",
              {pid: round(v / 2**20) for pid, v in peak.items()})  # fmt: skip
        assert max(peak.values()) < limit, peak


@gen_cluster(client=True, nthreads=[("127.0.0.1", 4)] * 2, timeout=60)
async def test_max_concurrency_holds_across_a_streams_chunks(c, s, a, b):
    """The chunks expand one by one, but the map's items run at most 3 at once."""
    from stream_tasks import RUNNING, busy

    RUNNING[:] = [0, 0]
    with dask.config.set({"dynflow.stream.chunk-items": 5}):
        m = busy.map(numbers(60), max_concurrency=3, batch_size=None)
        assert await df.compute(m, client=c) == (list(range(60)),)
    assert RUNNING[1] == 3, RUNNING


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=60)
async def test_views_show_a_stream_and_the_items_yielded(c, s, a, b):
    from dynflow.views._render import short_repr_counts

    src = gated(100, 40, "views-go")
    (fut,) = await df.submit_async(total(inc.map(src)), client=c)

    async def yielded() -> dict:
        return (await fut.run.info())["nodes"][src.key]

    await async_poll_for(lambda: source_of(s, src) is not None, timeout=10)
    for _ in range(100):  # bounded: until the 40 items before the gate are in
        counts = await yielded()
        if counts.get("yielded") == 40:
            break
        await asyncio.sleep(0.05)
    assert counts["streaming"] and counts["running"] == 1, counts
    assert short_repr_counts(counts) == "streaming, 40 yielded"
    await Event("views-go", client=c).set()
    assert await fut == sum(range(1, 101))
    counts = await yielded()
    assert (counts["done"], counts["yielded"], counts["streaming"]) == (1, 100, False)
    assert short_repr_counts(counts) == "1/1 done, 100 yielded"


# ---------------------------------------------------------------- dask collections
@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_maps_over_dask_bags_and_arrays(c, s, a, b):
    import dask.array as da
    import dask.bag as db
    from stream_tasks import inc_first, rowsum, ten_times

    bag = db.from_sequence(range(23), npartitions=4).map(ten_times)
    arr = da.arange(24, chunks=5).reshape((6, 4)).rechunk((2, 2))
    want = [10 * i + 1 for i in range(23)]
    nodes = [
        inc.map(bag),
        total(inc.map(inc.map(bag))),
        rowsum.map(arr),
        inc_first.map(bag),  # annotated tasks: a graph of layers
        inc.map(da.arange(7, chunks=3)),
    ]
    values = await df.compute(*nodes, client=c)
    assert values[0] == want and values[3] == want
    assert values[1] == sum(want) + 23
    assert values[2] == [6.0, 22.0, 38.0, 54.0, 70.0, 86.0]
    assert [int(x) for x in values[4]] == list(range(1, 8))
    # the same in sync mode
    local = df.compute(*nodes, scheduler="sync")
    assert local[:4] == values[:4] and [int(x) for x in local[4]] == list(range(1, 8))
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_a_bags_partitions_are_mapped_as_each_finishes(c, s, a, b):
    """Partition 1 of the bag waits until an item of partition 0 ran: a map that
    waited for the whole bag would never finish."""
    import dask.bag as db
    from stream_tasks import first_item_done, wait_for_first

    bag = db.from_sequence(range(10), npartitions=2).map_partitions(
        wait_for_first, "bag-first-done"
    )
    m = first_item_done.map(bag, event="bag-first-done")
    assert await df.compute(m, client=c) == (list(range(10)),)


def test_dask_collections_that_are_not_mapped_over_are_refused():
    import dask.array as da

    with pytest.raises(df.MapInputError, match=r"inc.map\(\): argument 'x' is a dask Array"):
        inc.map(da.ones(()))
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    frame = dd.from_pandas(pd.DataFrame({"a": [1, 2]}), npartitions=1)
    with pytest.raises(df.MapInputError, match=r"dask DataFrame, ambiguous.*frame.to_bag\(\)"):
        inc.map(frame)
    # a dask Series maps over its values, as a pandas one (its to_bag())
    assert inc.map(frame["a"]).compute(scheduler="sync") == [2, 3]


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_as_completed_over_a_streamed_map(c, s, a, b):
    """Items come as they finish, indexed (chunk, j); the values in chunk order are the
    list's. Run here, the stream is one chunk: (0, j)."""
    m = inc.map(numbers(40))
    pairs = [p async for p in df.as_completed(m, client=c)]
    assert all(len(index) == 2 for index, _ in pairs)
    assert [v for _, v in sorted(pairs)] == list(range(1, 41))
    local = list(df.as_completed(inc.map(numbers(4)), scheduler="sync"))
    assert local == [((0, j), j + 1) for j in range(4)]


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_streams_inside_sub_flows_and_returned_graphs(c, s, a, b):
    """A stream built on a worker (a sub-flow run per item, a dynamic task's graph)
    streams as one built on the client."""
    from stream_tasks import returns_stream_pipeline, summed_stream

    nodes = [summed_stream.map([3, 4, 0]), returns_stream_pipeline.map([3, 5])]
    assert await df.compute(*nodes, client=c) == ([6, 10, 0], [6, 15])
    assert df.compute(*nodes, scheduler="sync") == ([6, 10, 0], [6, 15])
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_a_cancelled_run_stops_its_source(c, s, a, b):
    """An endless source stops at its next item once its run is cancelled."""
    from stream_tasks import STOPPED, endless

    STOPPED.clear()
    src = endless(0.01)
    (fut,) = await df.submit_async(total(inc.map(src)), client=c)
    await async_poll_for(lambda: source_of(s, src) is not None, timeout=10)
    await asyncio.sleep(0.2)  # a few chunks handed on
    await fut.cancel()
    await async_poll_for(STOPPED.is_set, timeout=10)
    await no_tasks_left(s)


# ---------------------------------------------------------------- regressions (new-user trial)
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=90)
async def test_a_cancelled_run_then_the_same_keys_again_is_exact(c, s, a, b):
    """A pure source's run cancelled mid-stream, the same keys computed again at once
    (the cancelled source may still be running): the same list, and no chunk of the
    cancelled run left on a worker."""
    from stream_tasks import slow_numbers

    n = 300
    for _ in range(3):
        await no_tasks_left(s)
        reset()
        node = record.map(slow_numbers(n, 0.005))
        (fut,) = await df.submit_async(node, client=c)
        await async_poll_for(lambda: len(SEEN) >= 20, timeout=20)
        await fut.cancel()
        await async_poll_for(lambda key=node.key: key not in s.tasks, timeout=10)
        assert await df.compute(node, client=c) == (list(range(n)),)
        del fut  # (its key is the new run's too)
    await no_tasks_left(s)
    await async_poll_for(lambda: not a.data and not b.data, timeout=10)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=90)
async def test_runs_live_at_once_never_share_a_streams_tasks(c, s, a, b):
    """Two runs mapping one stream node differently, and five runs of a pure source
    with the same arguments, live at once: each run has its own source, chunks and
    items (how items fall into chunks is each run's), so each gets its exact value."""
    from stream_tasks import slow_numbers

    n = 100
    src = slow_numbers(n, 0.002)
    (f1,) = await df.submit_async(total(inc.map(src)), client=c)
    (f2,) = await df.submit_async(total(df.flatten(pair.map(src))), client=c)
    assert (await f1, await f2) == (sum(range(1, n + 1)), sum(range(n)) * 2)
    pure = [total(inc.map(slow_numbers(n, 0.002))) for _ in range(5)]
    futures = [(await df.submit_async(node, client=c))[0] for node in pure]
    assert [await f for f in futures] == [sum(range(1, n + 1))] * 5
    # computed at once after a cancel (dask may cancel the new future too: never a
    # wrong value)
    for _ in range(3):
        node = total(inc.map(slow_numbers(300, 0.002)))
        (fut,) = await df.submit_async(node, client=c)
        await asyncio.sleep(0.2)  # part of the stream handed on
        await fut.cancel()
        try:
            assert await df.compute(node, client=c) == (sum(range(1, 301)),)
        except BaseException as e:  # FutureCancelledError (CancelledError before 2025.x)
            assert "Cancelled" in type(e).__name__, e
        del fut
    del f1, f2, futures
    await no_tasks_left(s)


@pytest.mark.slow
@gen_cluster(client=True, Worker=Nanny, nthreads=[("127.0.0.1", 1)] * 2, timeout=120)
async def test_a_worker_killed_while_the_source_runs_default_batches(c, s, a, b):
    """Default options (grouping decided per chunk): a chunk's expander run again after
    the kill groups its items as it did the first time, measured or not."""
    from stream_tasks import busy, gated_logged

    n, gate_from = 300, 150
    log = pathlib.Path(tempfile.mkdtemp()) / "calls.txt"
    src = gated_logged(n, gate_from, "stream-kill-default", str(log))
    m = busy.map(src)  # 20 ms each: chunks wait on the source's worker for their items
    (fut,) = await df.submit_async(total(m), client=c)
    await async_poll_for(
        lambda: (
            source_of(s, src) is not None
            and source_of(s, src).processing_on is not None
            and sum(1 for k in s.tasks if named(k, src.item_name)) >= 20
        ),
        timeout=60,
    )  # many chunks wait on the source's worker
    holder = source_of(s, src).processing_on.address
    victim = a if a.worker_address == holder else b
    await victim.kill()
    await Event("stream-kill-default", client=c).set()
    assert await fut == sum(range(n))
    # the first run, the run after the kill, and a pass or so per worker process for
    # the chunks lost with the killed worker, not one per chunk (20 or more of them:
    # 24 calls here when each replays on its own)
    assert 2 <= len(log.read_text().splitlines()) <= 8, log.read_text()


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_as_completed_raises_a_failed_sources_error(c, s, a, b):
    """The items yielded before come (each ran), then the source's exception; in sync
    mode (the list made first) the exception alone."""
    from stream_tasks import busy

    got = []
    with pytest.raises(ValueError, match="page 2 broke"):
        async for pair_ in df.as_completed(
            busy.map(fails_after(12, "page 2 broke")), client=c, raise_errors=True
        ):
            got.append(pair_)
    assert sorted(v for _, v in got) == list(range(12))  # every item yielded before
    with pytest.raises(ValueError, match="page 2 broke"):
        list(df.as_completed(inc.map(fails_after(12, "page 2 broke")), scheduler="sync"))
    info = None
    (fut,) = await df.submit_async(total(inc.map(fails_after(5, "x"))), client=c)
    with pytest.raises(ValueError):
        await fut
    info = await fut.run.info()
    src = [v for k, v in info["nodes"].items() if v.get("yielded") is not None][0]
    assert (src["done"], src["failed"], src["streaming"]) == (0, 1, False), src
    fut.release()
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=60)
async def test_an_unpicklable_item_fails_the_source_naming_it(c, s, a, b):
    from stream_tasks import unpicklable

    for node in (total(inc.map(unpicklable(30, 7))), unpicklable(30, 7)):
        with pytest.raises(df.SerializationError, match=r"stream 'unpicklable' yielded item 7"):
            await df.compute(node, client=c)
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_a_sources_timeout_holds_on_a_cluster_as_in_sync(c, s, a, b):
    from stream_tasks import too_slow

    with pytest.raises(df.TaskTimeoutError, match="too_slow"):
        await df.compute(total(inc.map(too_slow(20))), client=c)
    with pytest.raises(df.TaskTimeoutError, match="too_slow"):
        df.compute(total(inc.map(too_slow(20))), scheduler="sync")
    # within its timeout: the whole stream
    assert await df.compute(inc.map(too_slow(3)), client=c) == ([1, 2, 3],)
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=60)
async def test_chunks_never_pass_chunk_items_or_bytes(c, s, a, b):
    with dask.config.set({"dynflow.stream.chunk-items": 5, "dynflow.stream.interval": "1s"}):
        pairs = [p async for p in df.as_completed(inc.map(numbers(200)), client=c)]
    assert sorted(v for _, v in pairs) == list(range(1, 201))
    assert max(j for (_, j), _ in pairs) <= 4
    # chunk-bytes too: items of 3,000 bytes (sizeof 3,033), at most 10,000 bytes a chunk
    config = {"dynflow.stream.chunk-bytes": 10_000, "dynflow.stream.interval": "1s"}
    with dask.config.set(config):
        pairs = [p async for p in df.as_completed(length.map(payload(60, 3000)), client=c)]
    assert [v for _, v in pairs] == [3000] * 60
    assert max(j for (_, j), _ in pairs) == 2  # three items a chunk


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_a_failed_partition_stands_for_its_items(c, s, a, b):
    """allow_failure and min_success_ratio over a Bag whose partition fails, as over a
    flatten whose parent item failed; a strict map's MapItemError names the partition's
    task and error."""
    import dask.bag as db
    from stream_tasks import fail_on_three

    bag = db.from_sequence(range(8), npartitions=4).map_partitions(fail_on_three)
    nodes = [df.allow_failure(inc.map(bag)), inc.map(bag, min_success_ratio=0.5)]
    for values in (await df.compute(*nodes, client=c), df.compute(*nodes, scheduler="sync")):
        tolerant, ratio = values
        assert [v for v in tolerant if not isinstance(v, KeyError)] == [1, 2, 5, 6, 7, 8]
        assert [type(v) for v in tolerant].count(KeyError) == 1, tolerant
        assert ratio == [1, 2, None, 5, 6, 7, 8]  # the failed partition: one None
    with pytest.raises(df.MapItemError, match="failed in task 'fail_on_three'.*partition with 3"):
        await df.compute(inc.map(bag), client=c)
    with pytest.raises(df.MapItemError, match="failed in task 'fail_on_three'.*partition with 3"):
        df.compute(inc.map(bag), scheduler="sync")
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 2, timeout=60)
async def test_a_dask_collection_passed_whole_is_its_value(c, s, a, b):
    """As dask.delayed passes it: a Bag's list, an Array's ndarray, a Delayed's value,
    computed in the same run (also inside containers), on a cluster and in sync mode."""
    import dask.array as da
    import dask.bag as db
    from stream_tasks import size_of

    bag = db.from_sequence(range(10), npartitions=3).map(lambda x: x * 2)
    arr = da.ones((6, 4), chunks=(2, 2))
    nodes = [total(bag), size_of(arr), size_of(bag), total([dask.delayed(sum)([1, 2]), 4])]
    expected = (90, (6, 4), 10, 7)
    assert await df.compute(*nodes, client=c) == expected
    assert df.compute(*nodes, scheduler="sync") == expected
    # a collection that fails: its error, raised, or handed on by allow_failure
    from stream_tasks import fail_on_three

    failing = db.from_sequence(range(8), npartitions=4).map_partitions(fail_on_three)
    with pytest.raises(KeyError, match="partition with 3"):
        await df.compute(total(failing), client=c)
    for (value,) in (
        await df.compute(df.allow_failure(total(failing)), client=c),
        df.compute(df.allow_failure(total(failing)), scheduler="sync"),
    ):
        assert type(value) is KeyError and value.args == ("partition with 3",)
    await no_tasks_left(s)
