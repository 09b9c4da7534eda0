"""Dynamic tasks: a task that returns a graph has it spliced into the scheduler in its place."""

from __future__ import annotations

import asyncio

import dask
import dask.array as da
import pytest
from dask.delayed import Delayed
from distributed import Event
from distributed.utils_test import async_poll_for, gen_cluster
from utils import generate_list, no_tasks_left, process, reducer

import dynflow as df
from dynflow._protocol import SPLICE


@df.task
def add(a, b):
    return a + b


@df.task
def fib(n):
    return n if n < 2 else add(fib(n - 1), fib(n - 2))


def fib_value(n):
    return n if n < 2 else fib_value(n - 1) + fib_value(n - 2)


@df.task
def big(x):
    return ("big", x)


@df.task
def small(x):
    return ("small", x)


@df.task
def branch(x, threshold=5):
    return big(x) if x > threshold else small(x)


@df.task
def step(state, n):
    """A tail loop: each step returns the next step, until the state reaches n."""
    return state if state >= n else step(state + 1, n)


@df.task
def countdown(n):
    """Not a tail call: each level waits for the one below (depth n)."""
    return 0 if n == 0 else add(countdown(n - 1), 1)


@df.task
def fan_out_and_sum(n):
    return reducer(process.map(generate_list(n), 2))


@df.task
def several(x):
    return [add(x, 1), {"double": add(x, x)}, "plain"]


class Bad(Exception):
    pass


@df.task
def fails(x):
    raise Bad(f"bad {x}")


@df.task
def returns_failing(x):
    return add(fails(x), 1)


@df.task
def returns_generator(n):
    return (add(i, 1) for i in range(n))


@df.task
async def async_fib(n):
    await asyncio.sleep(0)
    return n if n < 2 else add(async_fib(n - 1), async_fib(n - 2))


@df.flow
def inner_flow(n):
    return reducer(process.map(generate_list(n)))


@df.task
def calls_a_flow(n):
    node = inner_flow(n)  # inside a task, calling a flow returns its output node
    assert isinstance(node, df.Node)
    return add(node, 1000)


def spliced_tasks(s):
    extension = s.extensions.get(SPLICE)  # installed on first use
    return 0 if extension is None else extension.tasks_added


@gen_cluster(client=True)
async def test_recursive_fib_matches_sync_and_splices_real_tasks(c, s, a, b):
    before = spliced_tasks(s)
    with dask.config.set({"dynflow.dynamic-in-place": False}):  # never in place
        assert await fib(12).compute(client=c) == fib_value(12) == 144
    assert fib(12).compute(scheduler="sync") == 144
    # every call is a task of its own (fib(12): 465 calls, 232 additions)
    assert spliced_tasks(s) - before >= 465 + 232 - 1
    assert {"fib", "add"} <= set(s.task_prefixes)
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_branching_mapped_containers_and_dynamic_maps(c, s, a, b):
    cases = [
        (branch.map([1, 5, 10]), [("small", 1), ("small", 5), ("big", 10)]),
        (fan_out_and_sum(10), 2 * sum(range(10))),
        (several(3), [4, {"double": 6}, "plain"]),
        (calls_a_flow(5), 1000 + sum(range(5))),
        (reducer(fib.map([5, 6, 7])), 5 + 8 + 13),
    ]
    for node, value in cases:
        assert await node.compute(client=c) == value
        assert node.compute(scheduler="sync") == value
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_deep_recursion_holds_no_worker_thread(c, s, a):
    """Depth 100 on one worker with one thread: no level waits in a thread for the next."""
    assert await countdown(100).compute(client=c) == 100
    assert await async_fib(8).compute(client=c) == fib_value(8)
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_a_tail_loop_holds_a_bounded_number_of_tasks(c, s, a, b):
    most = 0

    async def watch():
        nonlocal most
        while True:
            most = max(most, len(s.tasks))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        assert await step(0, 2000).compute(client=c) == 2000
    finally:
        watcher.cancel()
    assert most <= 10, most  # the loop's finished steps are forgotten as it goes
    assert step(0, 50).compute(scheduler="sync") == 50
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_failures_inside_the_returned_graph_keep_their_type(c, s, a, b):
    with pytest.raises(Bad, match="bad 1") as info:
        await returns_failing(1).compute(client=c)
    assert "fails" in "".join(__import__("traceback").format_tb(info.value.__traceback__))
    del info
    with pytest.raises(Bad, match="bad 1"):
        returns_failing(1).compute(scheduler="sync")
    # in a map: per item, as any item failure
    m = returns_failing.map([1, 2])
    with pytest.raises(df.MapItemError, match=r"2 of 2 items failed") as info:
        await reducer(m).compute(client=c)
    assert isinstance(info.value.__cause__, Bad)
    del info
    got = await df.allow_failure(m).compute(client=c)
    assert [type(v) for v in got] == [Bad, Bad]
    assert [type(v) for v in df.allow_failure(m).compute(scheduler="sync")] == [Bad, Bad]
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_batched_items_that_return_graphs(c, s, a, b):
    m = fib.map(list(range(8)), batch_size=3)
    assert await m.compute(client=c) == [fib_value(i) for i in range(8)]
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_a_returned_generator_is_listed_where_it_ran(c, s, a, b):
    """A task not declared a stream that returns a generator: its value is the list."""
    node = returns_generator(3)
    assert await node.compute(client=c) == returns_generator(3).compute(scheduler="sync")
    await no_tasks_left(s)


@df.task
def held_then_fib(n, event):
    Event(event).wait(timeout=30)
    return fib(n)


@gen_cluster(client=True)
async def test_the_scheduler_is_empty_after_a_cancelled_dynamic_run(c, s, a, b):
    (fut,) = await df.submit_async(held_then_fib(15, "go"), client=c)
    await Event("go", client=c).set()
    await async_poll_for(
        lambda: any(str(k).startswith("add-") for k in s.tasks), timeout=30, period=0.01
    )
    await fut.cancel()
    del fut
    await no_tasks_left(s, timeout=10)


@gen_cluster(client=True)
async def test_a_run_counts_dynamic_calls_in_a_box_per_task_name(c, s, a, b):
    (fut,) = await df.submit_async(fib(10), client=c)
    assert await fut == fib_value(10)
    info = await fut.run.info()
    boxes = {n["label"]: info["nodes"][n["key"]] for n in info["graph"]["nodes"]}
    # fib(10): 177 calls, the root one is the run's own node; 88 additions
    assert boxes["fib"] == {
        "total": 1,
        "pending": 0,
        "running": 0,
        "done": 1,
        "failed": 0,
        "cached": 0,
    }
    assert boxes["fib (dynamic)"] == {
        "total": 176,
        "pending": 0,
        "running": 0,
        "done": 176,
        "failed": 0,
        "cached": 0,
    }
    assert boxes["add (dynamic)"]["total"] == boxes["add (dynamic)"]["done"] == 88
    edges = {(u.split("-")[0], v) for u, v, _ in info["graph"]["edges"]}
    assert ("fib", "dynflow-dynamic-add") in edges
    svg = fut.run.graph.live(info)  # the views draw the dynamic boxes, with their counts
    assert "fib (dynamic)" in [n.label for n in svg.nodes]
    del fut
    await no_tasks_left(s)
    assert not s.extensions["dynflow-runs"].dynamic


@df.task
def returns_a_foreign_key(x):
    from dynflow.graph._node import KeyNode

    return KeyNode(add, "add-made-for-another-graph")  # a key this scheduler never had


@gen_cluster(client=True)
async def test_a_graph_referring_to_unknown_keys_fails_naming_the_task(c, s, a, b):
    await fib(3).compute(client=c)  # the splice request was answered: later ones are messages
    with pytest.raises(df.ExtensionError, match="task 'returns_a_foreign_key' returned a graph"):
        await returns_a_foreign_key.map([1, 2]).compute(client=c)
    await no_tasks_left(s)


# ------------------------------------------------------- returned dask collections
def square(i):
    return i * i


def inverse(i):
    return 1 / (i - 2)


@df.task
def delayed_sum(n):
    return dask.delayed(sum)([dask.delayed(square)(i) for i in range(n)])


@df.task
def array_sum(n):
    return da.arange(n, chunks=3).sum()


@df.task
def collections_in_a_container(n):
    return {"delayed": dask.delayed(square)(n), "array": [da.ones(n, chunks=2), "plain"]}


@df.task
def quoted(n):
    return df.quote(dask.delayed(sum)(list(range(n))))


@df.task
def delayed_inverse(i):
    return dask.delayed(inverse)(i)


@df.task
def mixed(n):
    return [add(n, 1), dask.delayed(square)(n)]


@gen_cluster(client=True)
async def test_a_returned_dask_collection_is_spliced_and_computed(c, s, a, b):
    cases = [
        (delayed_sum(5), 30),
        (array_sum(10), 45),
        (reducer(delayed_sum.map([2, 3, 4])), 1 + 5 + 14),
        (delayed_sum.map([2, 3, 4], batch_size=2), [1, 5, 14]),
    ]
    for node, value in cases:
        assert await node.compute(client=c) == value
        assert node.compute(scheduler="sync") == value
        assert "square" in s.task_prefixes or "arange" in str(list(s.task_prefixes))
    # several, inside a container: repacked as dask.compute does
    got = await collections_in_a_container(4).compute(client=c)
    assert got["delayed"] == 16 and got["array"][1] == "plain"
    assert got["array"][0].tolist() == [1.0] * 4
    sync = collections_in_a_container(4).compute(scheduler="sync")
    assert sync["delayed"] == 16 and sync["array"][0].tolist() == [1.0] * 4
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_a_quoted_collection_is_the_value_and_errors_keep_their_type(c, s, a, b):
    value = await quoted(4).compute(client=c)
    assert isinstance(value, Delayed) and value.compute(scheduler=dask.get) == 6
    assert isinstance(quoted(4).compute(scheduler="sync"), Delayed)
    # a failing task of the returned graph: its own exception, alone or in a map
    with pytest.raises(ZeroDivisionError):
        await delayed_inverse(2).compute(client=c)
    with pytest.raises(ZeroDivisionError):
        delayed_inverse(2).compute(scheduler="sync")
    m = delayed_inverse.map([1, 2, 3])
    with pytest.raises(df.MapItemError, match=r"1 of 3 items failed, at index 1"):
        await reducer(m).compute(client=c)
    with pytest.raises(df.MapItemError, match=r"1 of 3 items failed, at index 1"):
        reducer(m).compute(scheduler="sync")
    got = await df.allow_failure(m).compute(client=c)
    assert got[0] == -1 and type(got[1]) is ZeroDivisionError and got[2] == 1
    got = df.allow_failure(m).compute(scheduler="sync")
    assert got[0] == -1 and type(got[1]) is ZeroDivisionError and got[2] == 1
    # nodes and collections together: refused, naming the task
    with pytest.raises(TypeError, match="task 'mixed' returned dynflow nodes and dask coll"):
        await mixed(2).compute(client=c)
    await no_tasks_left(s)


@df.task(pure=True)
def calls_itself(x):
    return calls_itself(x)


@df.task(pure=True)
def needs_itself(x):
    return add(needs_itself(x), 1)


@gen_cluster(client=True, timeout=60)
async def test_a_graph_that_needs_its_own_value_fails_instead_of_waiting(c, s, a, b):
    """A pure=True call of the same task with the same arguments is the same task."""
    for node in (calls_itself(1), needs_itself(1)):
        name = node.task.name
        with pytest.raises(df.ExtensionError, match=f"task '{name}' returned a graph that needs"):
            await node.compute(client=c)
        with pytest.raises(df.ExtensionError, match=f"task '{name}' returned a graph that needs"):
            node.compute(scheduler="sync")
    await no_tasks_left(s)


# ---------------------------------------------- local scheduler, retries, refusals
@df.task
async def async_returns_node(x):
    await asyncio.sleep(0)
    return add(x, 1)


@df.task
async def async_returns_delayed(x):
    await asyncio.sleep(0)
    return dask.delayed(square)(x)


@df.task(pure=True)
def pure_add(a, b):
    return a + b


@df.task(pure=True)
def pure_fib(n):
    return n if n < 2 else pure_add(pure_fib(n - 1), pure_fib(n - 2))


CHILD_RUNS: list = []


@df.task
def failing_child(x):
    CHILD_RUNS.append(x)
    raise Bad(f"child {x}")


@df.task(retries=2)
def parent_with_retries(x):
    return failing_child(x)


@df.task
def persisted_sum(n):
    from distributed import wait, worker_client

    with worker_client():
        a = da.arange(n, chunks=2).persist()
        wait(a)
        return a.sum()


@df.task
def returns_unmapped(x):
    return df.unmapped(add(x, 1))


@gen_cluster(client=True)
async def test_sync_and_cluster_agree_on_async_deep_and_pure_dynamic_tasks(c, s, a, b):
    cases = [
        (async_returns_node(1), 2),
        (async_returns_delayed(3), 9),
        (reducer(async_returns_node.map([1, 2])), 5),
        (async_returns_node.map([1, 2, 3], batch_size=2), [2, 3, 4]),
        (pure_fib(15), fib_value(15)),  # shared keys: no false "needs itself"
    ]
    for node, value in cases:
        assert await node.compute(client=c) == value
        assert node.compute(scheduler="sync") == value
    # deep recursion in one thread: 300 levels of a call computing its returned graph
    assert countdown(300).compute(scheduler="sync") == 300
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_retries_cover_the_function_not_the_returned_graph(c, s, a, b):
    CHILD_RUNS.clear()
    with pytest.raises(Bad, match="child 1"):
        await parent_with_retries(1).compute(client=c)
    assert CHILD_RUNS == [1]
    with pytest.raises(Bad, match="child 2"):
        parent_with_retries(2).compute(scheduler="sync")
    assert CHILD_RUNS == [1, 2]
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_returned_futures_markers_and_quoted_nodes_are_refused(c, s, a, b):
    with pytest.raises(TypeError, match="task 'persisted_sum' returned a persisted dask"):
        await persisted_sum(6).compute(client=c)
    with pytest.raises(TypeError, match=r"task 'returns_unmapped' returned df.unmapped"):
        await returns_unmapped(1).compute(client=c)
    with pytest.raises(TypeError, match=r"task 'returns_unmapped' returned df.unmapped"):
        returns_unmapped(1).compute(scheduler="sync")
    with pytest.raises(TypeError, match="quote\\(\\) is for dask collections"):
        df.quote(add(1, 2))
    await no_tasks_left(s)
