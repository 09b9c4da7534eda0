"""Maps on clusters with worker processes: a worker killed mid-map, LocalCluster."""

from __future__ import annotations

import os
import signal

import pytest
from distributed import Event, LocalCluster, Nanny
from distributed.utils_test import async_poll_for, gen_cluster
from utils import generate_list

import dynflow as df


@df.task
def slow_double(i, gate_from):
    """Items from `gate_from` on wait for the test's event (they run after the kill)."""
    if i >= gate_from:
        assert Event("dynflow-test-go").wait(timeout=60)
    return 2 * i


@df.task
def total(xs):
    return sum(xs)


@pytest.mark.slow
@gen_cluster(client=True, Worker=Nanny, nthreads=[("127.0.0.1", 2)] * 2, timeout=120)
async def test_a_worker_killed_mid_map_gives_the_exact_result(c, s, a, b):
    n, gate_from = 40, 20
    items = generate_list(n)
    m = slow_double.map(items, gate_from=df.unmapped(gate_from))
    (fut,) = await df.submit_async(total(m), client=c)
    done = [(m.item_name, i) for i in range(gate_from)]
    await async_poll_for(
        lambda: all(k in s.tasks and s.tasks[k].state == "memory" for k in done), timeout=60
    )
    # kill the worker that holds the generated list (and some finished items)
    holder = next(iter(s.tasks[items.key].who_has)).address
    victim = a if a.worker_address == holder else b
    await victim.kill()
    await Event("dynflow-test-go", client=c).set()
    assert await fut == 2 * sum(range(n))
    # the run's counts too: recomputed items are not counted twice
    counts = (await fut.run.info())["nodes"][m.key]
    assert counts == {"total": n, "pending": 0, "running": 0, "done": n, "failed": 0, "cached": 0}
    # nothing duplicated or lost: each item key exists once and the list is complete
    assert await m.compute(client=c) == [2 * i for i in range(n)]


@pytest.mark.slow
def test_local_cluster_with_processes():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        from distributed import Client

        with Client(cluster, set_as_default=False) as client:
            assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.validate)
            items = generate_list(30)
            m = slow_double.map(items, gate_from=df.unmapped(10**9))
            chained = slow_double.map(m, gate_from=df.unmapped(10**9))
            assert total(chained).compute(client=client) == 4 * sum(range(30))
            nested = slow_double.map(df.flatten(generate_list.map([1, 2])), 10**9)
            assert nested.compute(client=client) == [0, 0, 2]


class KillDuringSplice:
    """Scheduler plugin: SIGKILLs the expander's worker right after its first splice.

    The worker dies before the expander's result reaches the scheduler, so the
    expander runs again elsewhere and splices a second time.
    """

    def __init__(self, pids):
        self.pids = pids  # worker address -> process id
        self.killed = []

    def update_graph(self, scheduler, *, client, tasks, **kwargs):
        if client != "dynflow" or self.killed:
            return
        ext = scheduler.extensions["dynflow"]
        expanders = [
            ts
            for ts in scheduler.tasks.values()
            if ts.state == "processing" and str(ts.key).startswith("dynflow-expand")
        ]
        for ts in expanders:
            address = ts.processing_on.address
            self.killed.append((ts.key, address, ext.tasks_added))
            os.kill(self.pids[address], signal.SIGKILL)
            return


@pytest.mark.slow
@gen_cluster(client=True, Worker=Nanny, nthreads=[("127.0.0.1", 1)] * 2, timeout=120)
async def test_a_worker_killed_during_expansion_creates_no_duplicates(c, s, a, b):
    from distributed.diagnostics.plugin import SchedulerPlugin

    pids = {n.worker_address: n.process.process.pid for n in (a, b)}
    plugin = type("Kill", (KillDuringSplice, SchedulerPlugin), {})(pids)
    s.add_plugin(plugin, name="kill-during-splice")
    n = 50
    m = slow_double.map(generate_list(n), gate_from=df.unmapped(10**9))
    (fut,) = await df.submit_async(total(m), client=c)
    assert await fut == 2 * sum(range(n))
    assert plugin.killed, "the expander's worker was not killed"
    # the expander ran and spliced again, and found every item already there
    ext = s.extensions["dynflow"]
    assert ext.splices == 2 and ext.tasks_added == n
    # and the run's item count is n, not 2n
    counts = (await fut.run.info())["nodes"][m.key]
    assert counts == {"total": n, "pending": 0, "running": 0, "done": n, "failed": 0, "cached": 0}
