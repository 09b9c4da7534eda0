"""Load: many maps submitted at once, and a chaos run with workers killed and restarted."""

from __future__ import annotations

import asyncio
import random

import pytest
from distributed import Client, Nanny
from distributed.utils_test import async_poll_for, gen_cluster

import dynflow as df


@df.task
def generate_list(n, offset):
    return list(range(offset, offset + n))


@df.task
def square(x):
    return x * x


@df.task
def total(xs):
    return sum(xs)


@df.flow
def one_flow(n, offset):
    # one task per item: the load is 20,000 scheduler tasks at once
    return total(square.map(generate_list(n, offset), batch_size=None))


@pytest.mark.slow
@gen_cluster(
    client=True,
    timeout=240,
    # gen_cluster caps transitions at 50,000 to catch loops; 20 x 1,000 items exceed it
    scheduler_kwargs={"transition_counter_max": False},
    worker_kwargs={"transition_counter_max": False},
)
async def test_twenty_flows_of_a_thousand_items_at_once(c, s, a, b):
    n, flows = 1000, 20
    nodes = [one_flow.build(n, k) for k in range(flows)]
    futures = await df.submit_async(*nodes, client=c)
    results = await c.gather(futures)
    assert results == [sum(x * x for x in range(k, k + n)) for k in range(flows)]
    del futures
    await async_poll_for(lambda: not s.tasks, timeout=30)
    ext = s.extensions["dynflow"]
    assert ext.splices == flows and ext.tasks_added == flows * n
    assert not s.task_groups  # nothing of the runs is left in the scheduler


@df.task
def work(x):
    # a little real work so that kills land while items run
    return sum(i * i for i in range(2000)) * 0 + x * x


@df.flow
def chaos_flow(n, offset):
    items = generate_list(n, offset)
    return total(work.map(work.map(items)))


@pytest.mark.slow
@gen_cluster(
    client=True,
    Worker=Nanny,
    nthreads=[("127.0.0.1", 1)] * 3,
    timeout=240,
    config={"distributed.scheduler.allowed-failures": 100},
)
async def test_chaos_three_clients_while_workers_are_killed(c, s, *nannies):
    """Flows from three clients while a loop kills and restarts workers."""
    clients = [c] + [await Client(s.address, asynchronous=True) for _ in range(2)]
    kills = 0
    stop = asyncio.Event()

    async def chaos():
        nonlocal kills
        rng = random.Random(42)
        while not stop.is_set() and kills < 6:
            await asyncio.sleep(0.3)  # pacing the chaos, not synchronisation
            victim = rng.choice(nannies)
            if victim.process is not None and victim.process.process is not None:
                await victim.kill()
                kills += 1
                await victim.instantiate()

    async def runs(client, k):
        out = []
        for r in range(3):
            offset = 1000 * k + 100 * r
            out.append(await chaos_flow.build(150, offset).compute(client=client))
        return out

    chaos_task = asyncio.create_task(chaos())
    try:
        results = await asyncio.gather(*(runs(cl, k) for k, cl in enumerate(clients)))
    finally:
        stop.set()
        await chaos_task
        for cl in clients[1:]:
            await cl.close()
    oracle = [
        [
            sum((x * x) ** 2 for x in range(1000 * k + 100 * r, 1000 * k + 100 * r + 150))
            for r in range(3)
        ]
        for k in range(3)
    ]
    assert results == oracle
    assert kills > 0
    await async_poll_for(lambda: not s.tasks, timeout=30)
