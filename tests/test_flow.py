"""@flow: composing tasks, sub-flows, top-level calls."""

from __future__ import annotations

import threading

import pytest
from distributed import Future
from distributed.utils_test import gen_cluster

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
