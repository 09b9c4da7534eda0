"""Running nodes on real Dask: in-process clusters with validation on, and local schedulers."""

from __future__ import annotations

import asyncio
import collections
import threading
import traceback

import pytest
from distributed import Future, as_completed, wait
from distributed.utils_test import gen_cluster

import dynflow as df


class Boom(Exception):
    pass


@df.task
def inc(x, y=1):
    return x + y


@df.task
def fail(x):
    raise Boom(f"bad item {x}")


@df.task
def total(xs):
    return sum(xs)


@gen_cluster(client=True)
async def test_compute_on_a_cluster(c, s, a, b):
    assert await inc(inc(1), y=10).compute(client=c) == 12
    assert await df.compute(inc(1), inc(2), client=c) == (2, 3)


@gen_cluster(client=True)
async def test_nested_arguments_arrive_as_values(c, s, a, b):
    @df.task
    def show(items, mapping):
        return items, mapping

    n = show([inc(1), (inc(2), 7)], {"k": inc(3)})
    assert await n.compute(client=c) == ([2, (3, 7)], {"k": 4})


@gen_cluster(client=True)
async def test_submit_returns_a_distributed_future(c, s, a, b):
    (fut,) = await df.submit_async(inc(41), client=c)
    assert isinstance(fut, Future)
    await wait([fut])
    assert await fut == 42
    async for f in as_completed([fut]):
        assert await f == 42


# in-process workers share this module with the test (functions pickle by reference)
EVENTS: list = []


@df.task
def step(name):
    EVENTS.append(name)
    return name


@df.task(retries=2)
def flaky():
    EVENTS.append("attempt")
    if EVENTS.count("attempt") < 3:
        raise Boom("not yet")
    return "ok"


@gen_cluster(client=True)
async def test_wait_for_orders_without_passing_values(c, s, a, b):
    EVENTS.clear()
    first = step("first")
    second = step("second", wait_for=[first])
    assert await second.compute(client=c) == "second"
    assert EVENTS == ["first", "second"]


@gen_cluster(client=True)
async def test_retries_are_dask_retries(c, s, a, b):
    EVENTS.clear()
    assert await flaky().compute(client=c) == "ok"
    assert EVENTS.count("attempt") == 3


@gen_cluster(client=True)
async def test_remote_exception_keeps_type_and_traceback(c, s, a, b):
    with pytest.raises(Boom, match="bad item 3") as info:
        await fail(3).compute(client=c)
    assert any("fail" in line for line in traceback.format_tb(info.value.__traceback__))


@gen_cluster(client=True)
async def test_keys_are_named_after_the_task_in_the_scheduler(c, s, a, b):
    n = inc(1)
    (fut,) = await df.submit_async(n, client=c)
    await fut
    assert s.tasks[n.key].prefix.name == "inc"


@df.task(pure=True)
def once(x):
    EVENTS.append(("once", x))
    return x


@gen_cluster(client=True)
async def test_pure_tasks_share_one_result(c, s, a, b):
    EVENTS.clear()
    assert await df.compute(inc(once(1)), inc(once(1), 2), client=c) == (2, 3)
    assert EVENTS == [("once", 1)]


def test_unpicklable_argument_fails_at_submit_naming_task_and_argument(client):
    lock = threading.Lock()
    with pytest.raises(df.SerializationError, match=r"task 'inc': argument 'y' \(lock\)"):
        inc(1, y=lock).compute(client=client)


def test_default_client_is_used(client):
    assert df.get_client() is client
    assert inc(1).compute() == 2
    assert df.compute(inc.map([1, 2, 3])) == ([2, 3, 4],)


def test_explicit_client_wins_over_the_default(client, s, a, b):
    from distributed import Client

    with Client(s["address"], set_as_default=False) as other:
        assert df.get_client(other) is other
        assert inc(1).compute(client=other) == 2


def test_submit_sync_api(client):
    fut = inc.submit(1)
    assert isinstance(fut, Future)
    assert fut.result() == 2
    assert client.gather(inc(5).submit()) == 6


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_local_schedulers_give_identical_results(scheduler):
    n = total(inc.map(inc.map(range(5)), y=df.unmapped(inc(9))))
    assert n.compute(scheduler=scheduler) == sum(x + 1 + 10 for x in range(5))


def test_sync_scheduler_surfaces_the_original_exception():
    with pytest.raises(Boom, match="bad item 1"):
        fail(1).compute(scheduler="sync")


def structure(value):
    """The value's structure: container types (a defaultdict's factory), nested."""
    if isinstance(value, dict):
        factory = getattr(value, "default_factory", None)
        return (type(value).__name__, [(k, structure(v)) for k, v in value.items()], factory)
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(map(repr, value)))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [structure(v) for v in value])
    return value


@df.task
def shape(value):
    return structure(value)


@df.task
def shape_of_static(i, value):
    return structure(value)


@df.flow
def shape_per_item(i, value):
    return shape(value)


Pair = collections.namedtuple("Pair", "left right")


def containers(x):
    return [
        {x, 2},
        frozenset([x]),
        collections.defaultdict(list, {"a": x}),
        collections.OrderedDict([("b", 1), ("a", x)]),
        Pair(x, [x, {"x": (x,)}]),
        [collections.Counter({"n": 1}), (x, {x})],
    ]


@gen_cluster(client=True)
async def test_nodes_inside_any_container_keep_the_containers_type(c, s, a, b):
    """Sets, frozensets, defaultdicts (with their factory), OrderedDicts, namedtuples
    holding nodes arrive as they were built: plain calls, map items (mapped and
    unmapped), on a cluster and in sync mode."""
    one = inc(0)
    expected = structure(containers(1))
    nodes = [
        shape(containers(one)),
        shape.map([containers(one), containers(one)]),
        shape_of_static.map([0, 1], df.unmapped(containers(one))),
        shape_per_item.map([0, 1], df.unmapped(containers(one))),
    ]
    values = [expected, *[[expected, expected]] * 3]
    for node, value in zip(nodes, values, strict=True):
        assert await node.compute(client=c) == value
        assert node.compute(scheduler="sync") == value


# ------------------------------------------------------------------ async tasks
ASYNC_GATE = threading.Event()
ATTEMPTS: list = []


@df.task
async def async_double(x):
    await asyncio.sleep(0.01)
    return 2 * x


@df.task(retries=2)
async def async_flaky(x):
    ATTEMPTS.append(x)
    if ATTEMPTS.count(x) < 2:
        raise ConnectionError("try again")
    return x


@df.task(timeout=0.2)
async def async_hangs(x):
    await asyncio.sleep(30)


@df.task
async def async_waits_for_gate(x):
    for _ in range(1000):  # bounded: 10 s
        if ASYNC_GATE.is_set():
            return x
        await asyncio.sleep(0.01)
    raise TimeoutError("the sync task never ran while this one awaited")


@df.task
def opens_gate(x):
    ASYNC_GATE.set()
    return x


@gen_cluster(client=True)
async def test_async_tasks_run_plain_mapped_chained_and_batched(c, s, a, b):
    nodes = [
        async_double(21),
        async_double.map([1, 2, 3]),
        async_double.map(async_double.map([1, 2, 3])),
        async_double.map(range(5), batch_size=2),
        inc.map(async_double.map([1, 2])),
    ]
    values = [42, [2, 4, 6], [4, 8, 12], [0, 2, 4, 6, 8], [3, 5]]
    for node, value in zip(nodes, values, strict=True):
        assert await node.compute(client=c) == value
        assert node.compute(scheduler="sync") == value  # from inside a running loop too


@gen_cluster(client=True)
async def test_async_tasks_retry_and_time_out(c, s, a, b):
    ATTEMPTS.clear()
    assert await async_flaky.map([1, 2]).compute(client=c) == [1, 2]
    assert sorted(ATTEMPTS) == [1, 1, 2, 2]
    with pytest.raises(df.TaskTimeoutError, match="task 'async_hangs' did not finish within 0.2 s"):
        await async_hangs(1).compute(client=c)
    with pytest.raises(df.MapItemError) as info:
        await async_hangs.map([1, 2]).compute(client=c)
    assert "(index 1) did not finish" in str(info.value.errors[1])
    with pytest.raises(df.TaskTimeoutError):
        async_hangs(1).compute(scheduler="sync")


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_an_awaiting_async_task_holds_no_worker_thread(c, s, a):
    """On a one-thread worker, a sync task runs while an async task awaits it."""
    ASYNC_GATE.clear()
    waiting, opener = async_waits_for_gate(1), opens_gate(2)
    assert await df.compute(waiting, opener, client=c) == (1, 2)


# ------------------------------------------------- computing inside a task
@df.flow
def small_flow(n):
    return sum_all(inc.map(list(range(n))))


@df.task
def sum_all(xs):
    return sum(xs)


@df.task
def computes_inside(n):
    """A task that runs a flow and computes a node on the cluster it runs on."""
    return small_flow(n), inc(n).compute(), df.compute(inc(1), inc(2))


@df.task
async def computes_inside_async(n):
    return await inc(n).compute()


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_compute_inside_a_task_uses_its_cluster_without_deadlock(c, s, a):
    """On a one-thread worker: the task secedes while the inner graph runs."""
    assert await computes_inside(3).compute(client=c) == (6, 4, (2, 3))
    assert await computes_inside.map([2, 3]).compute(client=c) == [(3, 3, (2, 3)), (6, 4, (2, 3))]
    assert await computes_inside_async(5).compute(client=c) == 6
    assert len(s.workers) == 1  # no cluster was started anywhere


@df.task
def stops():
    raise StopIteration("stop")


@gen_cluster(client=True)
async def test_stop_iteration_keeps_its_type_for_synchronous_callers(c, s, a, b):
    """Python turns a StopIteration leaving a coroutine into a RuntimeError (PEP 479):
    compute() and RunFuture.result() raise the original again."""
    with pytest.raises(StopIteration, match="stop"):
        stops().compute(scheduler="sync")


def test_stop_iteration_from_a_cluster(client):
    with pytest.raises(StopIteration, match="stop"):
        stops().compute(client=client)
    with pytest.raises(StopIteration, match="stop"):
        stops().submit(client=client).result()


@df.task
async def awaits_a_compute(n):
    return await sum_all(inc.map(list(range(n)))).compute()


@gen_cluster(client=True)
async def test_await_compute_inside_an_async_task_on_a_cluster_and_in_sync_mode(c, s, a, b):
    assert await awaits_a_compute(3).compute(client=c) == 6
    assert awaits_a_compute(3).compute(scheduler="sync") == 6
    assert computes_inside(3).compute(scheduler="sync") == (6, 4, (2, 3))


@gen_cluster(client=True)
async def test_nodes_inside_a_deque(c, s, a, b):
    node = shape(collections.deque([inc(0), 2]))
    expected = structure(collections.deque([1, 2]))
    assert await node.compute(client=c) == expected
    assert node.compute(scheduler="sync") == expected


def test_a_cluster_without_the_same_dynflow_or_a_supported_distributed_is_refused():
    from dynflow.client._connect import check_versions

    def info(dynflow, distributed="2026.8.0"):
        return {"packages": {"dynflow": dynflow, "distributed": distributed}}

    same = info(df.__version__)
    check_versions({"scheduler": same, "workers": {"tcp://w:1": same}})
    with pytest.raises(df.ExtensionError) as e:
        check_versions(
            {
                "scheduler": info(None),
                "workers": {
                    "tcp://w:1": info("0.0.1"),
                    "tcp://w:2": info(df.__version__, "2024.12.0"),
                },
            }
        )
    message = str(e.value)
    assert "the scheduler has no dynflow installed" in message
    assert "worker tcp://w:1 runs dynflow 0.0.1" in message
    assert "worker tcp://w:2 runs distributed 2024.12.0" in message
    from dynflow._compat import SUPPORTED_DISTRIBUTED

    assert SUPPORTED_DISTRIBUTED in message
