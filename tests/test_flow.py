"""@flow: composing tasks, sub-flows, top-level calls."""

from __future__ import annotations

import threading

import pytest
from distributed import Future
from distributed.utils_test import async_poll_for, gen_cluster

import dynflow as df

EVENTS: list = []


@df.task
def inc(x):
    return x + 1


@df.task
def pair(a, b):
    return (a, b)


@df.flow
def add_two(x):
    return inc(inc(x))


@df.flow(name="outer")
def outer(x):
    return pair(add_two(x), add_two(x + 10))


@df.flow
def plain_value_flow():
    return {"a": inc(1), "b": 5}


def test_flow_inside_a_flow_returns_its_output_node():
    node = outer.build(1)
    assert isinstance(node, df.Node)
    subflows = node.dependencies
    assert len(subflows) == 2 and all(key_name(n) == "inc" for n in subflows)


def key_name(n):
    from dask.utils import key_split

    return key_split(n.key)


def test_build_checks_the_signature():
    with pytest.raises(TypeError, match=r"add_two\(\): .*signature is add_two\(x\)"):
        add_two.build()


def test_flow_output_may_be_a_structure_of_nodes():
    node = plain_value_flow.build()
    assert key_name(node) == "plain_value_flow"
    assert node.compute(scheduler="sync") == {"a": 2, "b": 5}


def test_branching_on_a_node_in_a_flow_names_the_flow():
    @df.flow
    def branchy():
        x = inc(1)
        if x:
            return x
        return inc(x)

    with pytest.raises(df.LazyValueError, match="body of flow 'branchy'.*@task"):
        branchy.build()


def test_top_level_call_computes(client):
    assert outer(1) == (3, 13)
    assert add_two(5) == 7


def test_flow_submit_returns_a_future(client):
    fut = outer.submit(1)
    assert isinstance(fut, Future)
    assert fut.result() == (3, 13)


BARRIER = threading.Barrier(4)


@df.task
def mark(name, *_):
    # returns only once all four branches are running at the same time
    BARRIER.wait(timeout=20)
    EVENTS.append(name)
    return name


@df.flow
def branch(name):
    return mark(name)


@df.flow
def parallel_branches():
    return [branch(f"b{i}") for i in range(4)]


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 4)
async def test_independent_subflows_run_in_parallel(c, s, *workers):
    EVENTS.clear()
    BARRIER.reset()
    node = parallel_branches.build()
    (fut,) = await df.submit_async(node, client=c)
    assert await fut == ["b0", "b1", "b2", "b3"]
    assert sorted(EVENTS) == ["b0", "b1", "b2", "b3"]


# ------------------------------------------------------------------- flow.map


@df.task
def list_services(account):
    return [f"{account}/s{j}" for j in range(account)]


@df.task
def metric(service):
    return len(service)


@df.task
def summarize(values, bonus=0):
    return sum(values) + bonus


@df.task
def accounts(n):
    return list(range(1, n + 1))


@df.flow
def per_account(account, bonus):
    return summarize(metric.map(list_services(account)), bonus)


def expected(accts, bonus=0):
    return [sum(len(f"{a}/s{j}") for j in range(a)) + bonus for a in accts]


@gen_cluster(client=True)
async def test_flow_map_runs_a_subflow_per_item(c, s, a, b):
    m = per_account.map(accounts(3), df.unmapped(inc(99)))
    assert await m.compute(client=c) == expected([1, 2, 3], 100)
    await async_poll_for(lambda: not s.tasks, timeout=5)


@gen_cluster(client=True)
async def test_flow_map_items_are_scheduler_tasks_named_after_their_tasks(c, s, a, b):
    m = per_account.map([1, 2], 0)
    (fut,) = await df.submit_async(m, client=c)
    assert await fut == expected([1, 2])
    prefixes = {ts.prefix.name for ts in s.tasks.values()}
    assert {"per_account", "list_services", "metric", "summarize"} <= prefixes


@gen_cluster(client=True)
async def test_flow_map_composes_with_maps_and_flatten(c, s, a, b):
    outs = per_account.map(accounts(3), 0)
    assert await inc.map(outs).compute(client=c) == [x + 1 for x in expected([1, 2, 3])]
    assert await summarize(outs).compute(client=c) == sum(expected([1, 2, 3]))

    @df.flow
    def services_of(account):
        return list_services(account)

    flat = metric.map(df.flatten(services_of.map(accounts(3))))
    assert await flat.compute(client=c) == [len(f"{a}/s{j}") for a in (1, 2, 3) for j in range(a)]


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_flow_map_with_nested_maps_finishes_on_one_thread(c, s, a):
    assert await per_account.map(accounts(4), 0).compute(client=c) == expected([1, 2, 3, 4])


def test_flow_map_in_sync_mode():
    assert per_account.map([1, 2], df.unmapped(5)).compute(scheduler="sync") == expected([1, 2], 5)


def test_flow_map_checks_arguments_at_build_time():
    with pytest.raises(TypeError, match=r"per_account.map\(\): .*signature"):
        per_account.map([1])
    with pytest.raises(df.MapLengthError, match="account=2, bonus=3"):
        per_account.map([1, 2], [1, 2, 3])


@df.task
def check_positive(x):
    if x < 0:
        raise ValueError(f"{x} is negative")
    return x


@df.flow
def checked(x):
    return check_positive(x)


@df.task
def marker():
    return "ready"


def test_flow_map_takes_min_success_ratio_and_wait_for():
    m = checked.map([1, -2, 3, 4], min_success_ratio=0.75, wait_for=[marker()])
    assert m.compute(scheduler="sync") == [1, None, 3, 4]
    with pytest.raises(df.MapItemError, match="1 of 4 items failed"):
        checked.map([1, -2, 3, 4], min_success_ratio=0.9).compute(scheduler="sync")


@gen_cluster(client=True)
async def test_flow_map_options_on_a_cluster(c, s, a, b):
    m = checked.map([1, -2, 3, 4], min_success_ratio=0.75, wait_for=[marker()])
    assert await m.compute(client=c) == [1, None, 3, 4]


def test_flow_map_rejects_task_map_only_options():
    with pytest.raises(TypeError, match="batch_size is not supported for a flow run per item"):
        checked.map([1, 2], batch_size=10)
    with pytest.raises(TypeError, match="min_success_ratio=2"):
        checked.map([1, 2], min_success_ratio=2)


class Model:
    """Tasks and flows defined as methods, bound through the instance."""

    def __init__(self, factor):
        self.factor = factor

    @df.task
    def predict(self, x):
        return self.factor * x

    @df.task(retries=1)
    def batch(self, xs):
        return [self.factor * x for x in xs]

    @df.flow
    def pipeline(self, xs):
        return self.total(self.predict.map(xs))

    @df.task
    def total(self, ys):
        return sum(ys)


@gen_cluster(client=True)
async def test_tasks_and_flows_as_methods_bind_through_the_instance(c, s, a, b):
    m = Model(3)
    nodes = [
        m.predict(2),
        m.predict.map([1, 2]),
        m.predict.with_options(retries=2).map([1, 2]),
        m.batch([1, 2]),
        m.pipeline.build([1, 2, 3]),
        m.pipeline.map([[1], [2, 3]]),
    ]
    values = [6, [3, 6], [3, 6], [3, 6], 18, [3, 15]]
    for node, value in zip(nodes, values, strict=True):
        assert await node.compute(client=c) == value
        assert node.compute(scheduler="sync") == value
    assert Model.predict.fn(m, 5) == 15  # the class attribute is the task itself


# ------------------------------------------------ nodes made but not returned
WRITES: list = []


@df.task
def write_rows(rows):
    WRITES.append(("rows", rows))


@df.task
def log_done(tag):
    WRITES.append(("done", tag))


@df.flow
def side_effects(n):
    rows = inc.map(list(range(n)))
    write_rows(rows)  # not returned: runs all the same
    return inc(n)


@df.flow
def no_return(n):
    write_rows(inc.map(list(range(n))))


@df.flow
def calls_a_side_flow(n):
    no_return(n)  # a sub-flow called for its side effects
    log_done("outer")
    return n


@df.flow
def per_item_side_effect(x):
    log_done(x)
    return inc(x)


@gen_cluster(client=True)
async def test_every_node_made_in_a_flow_body_runs(c, s, a, b):
    """Prefect users write side-effect tasks without using their result: they run, on a
    cluster and in sync mode, and the flow's value is what it returns."""
    cases = [
        (side_effects.build(2), 3, [("rows", [1, 2])]),
        (no_return.build(2), None, [("rows", [1, 2])]),
        (calls_a_side_flow.build(2), 2, [("rows", [1, 2]), ("done", "outer")]),
        (per_item_side_effect.map([5, 6]), [6, 7], [("done", 5), ("done", 6)]),
    ]
    for node, value, writes in cases:
        for on_cluster in (True, False):
            WRITES.clear()
            got = await node.compute(client=c) if on_cluster else node.compute(scheduler="sync")
            assert got == value
            assert sorted(WRITES, key=repr) == sorted(writes, key=repr)
