"""Large concrete arguments go into the graph once, as keys of their own.

A value at least ``dynflow.large-argument`` in size (an array every item receives with
``df.unmapped``, a big table passed to several calls) is a data task the readers depend
on, so it travels to each worker once, not inside each task's spec.
"""

from __future__ import annotations

import pickle

import numpy as np
from distributed import Event
from distributed.utils_test import async_poll_for, gen_cluster
from utils import generate_list, no_tasks_left

import dynflow as df

BIG = np.arange(200_000, dtype="float64")  # 1.6 MB


@df.task
def pick(i, arr):
    return float(arr[i])


@df.task
def waiting_pick(i, arr, name):
    Event(name).wait(30)
    return float(arr[i])


@df.task
def total(xs):
    return sum(xs)


@df.task
def first_of(pair):
    return float(pair[1][0]) + pair[0]


@df.task
def picks(n, arr):
    return total(pick.map(list(range(n)), df.unmapped(arr)))


@df.flow
def per_item(i, arr):
    return pick(i, arr)


def _data_keys(s):
    return [k for k in s.tasks if isinstance(k, str) and k.startswith("dynflow-data-")]


def _spec_size(ts):
    return len(pickle.dumps(ts.run_spec, protocol=5, buffer_callback=lambda b: None))


@gen_cluster(client=True)
async def test_an_unmapped_array_is_one_key_every_item_reads(c, s, a, b):
    m = waiting_pick.map(generate_list(20), df.unmapped(BIG), "go-items")
    (run,) = await df.submit_async(total(m), client=c)
    await async_poll_for(lambda: sum(key_is_item(k, m) for k in s.tasks) == 20, timeout=10)
    (data,) = _data_keys(s)
    for key, ts in s.tasks.items():
        if key_is_item(key, m):
            assert data in ts.run_spec.dependencies
            assert _spec_size(ts) < 10_000  # the array is not in the item's spec
    await Event("go-items", client=c).set()
    assert await run == float(sum(range(20)))
    del run
    await no_tasks_left(s)


def key_is_item(key, m):
    return isinstance(key, tuple) and key[0] == m.item_name


@gen_cluster(client=True)
async def test_plain_calls_share_one_key_for_one_array(c, s, a, b):
    out = total([pick(i, BIG) for i in range(5)])
    (run,) = await df.submit_async(out, client=c)
    assert await run == float(sum(range(5)))
    del run
    # a value inside a container with a node: the value is data, the container is not
    node = first_of((pick(1, BIG), BIG))
    (run,) = await df.submit_async(node, client=c)
    assert await run == 1.0


@gen_cluster(client=True)
async def test_large_values_in_every_kind_of_call(c, s, a, b):
    """Batched maps, sub-flows per item, nested maps and dynamic tasks read the value
    from its key too; the results are those of a local scheduler."""
    nodes = {
        "batched": total(pick.map(generate_list(30), df.unmapped(BIG), batch_size=7)),
        "subflow": total(per_item.map(generate_list(6), df.unmapped(BIG))),
        "dynamic": picks(8, BIG),
        "in a container": first_of((3, BIG)),
    }
    nodes["nested"] = total(pick.map(df.flatten(_pairs(generate_list(3))), df.unmapped(BIG)))
    for name, node in nodes.items():
        (run,) = await df.submit_async(node, client=c)
        assert await run == node.compute(scheduler="sync"), name
        del run
    await no_tasks_left(s)
    assert not _data_keys(s)


@df.task
def _pair(i):
    return [i, i + 1]


def _pairs(items):
    return _pair.map(items)


def test_a_small_value_stays_inline_and_the_limit_is_config():
    import dask

    from dynflow.lowering._lower import lower_distributed

    def data_keys(node):
        return [k for k in dict(lower_distributed([node])) if str(k).startswith("dynflow-data")]

    small = np.arange(10)
    assert data_keys(total(pick.map(generate_list(3), df.unmapped(small)))) == []
    assert len(data_keys(total(pick.map(generate_list(3), df.unmapped(BIG))))) == 1
    with dask.config.set({"dynflow.large-argument": "10 MiB"}):
        assert data_keys(total(pick.map(generate_list(3), df.unmapped(BIG)))) == []
