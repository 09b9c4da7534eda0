"""Dynamic tasks against real processes: a LocalCluster with worker processes, a ``dask``
CLI cluster, Nanny workers killed mid-run, a client that leaves mid-run, async tasks.

A task whose function returns nodes has their graph spliced into the live scheduler in
its place (``dynflow_graph_splice``: a request on each worker's first splice, then
messages on its stream). The task functions live in ``tests/remote_tasks.py`` so that
worker processes (and the CLI ones, which get this directory on their PYTHONPATH) import
them by reference.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import remote_tasks as rt
from distributed import Client, Event, LocalCluster, Nanny
from distributed.utils_test import async_poll_for, gen_cluster
from processes import CLICluster, wait_until

import dynflow as df

pytestmark = pytest.mark.slow


def fib_value(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def fib_calls(n: int) -> int:
    """How many fib() calls fib(n) makes (itself included)."""
    return 1 if n < 2 else 1 + fib_calls(n - 1) + fib_calls(n - 2)


def scheduler_view(client: Client) -> dict:
    """What the scheduler holds: its tasks, and the dynflow extension's state."""

    def view(dask_scheduler):
        from dask.utils import key_split

        ext = dask_scheduler.extensions.get("dynflow")
        return {
            "tasks": sorted(map(str, dask_scheduler.tasks))[:20],
            "n_tasks": len(dask_scheduler.tasks),
            "dynamic_keys": sorted(map(str, ext.dynamic_keys))[:20] if ext else [],
            "dynamic_prefixes": sorted({key_split(k) for k in ext.dynamic_keys}) if ext else [],
            "aliases": {str(k): str(v) for k, v in list(ext.aliases.items())[:20]} if ext else {},
            "tasks_added": ext.tasks_added if ext else 0,
            "prefixes": sorted(dask_scheduler.task_prefixes),
        }

    return client.run_on_scheduler(view)


def wait_until_empty(client: Client, timeout: float = 10) -> None:
    """The scheduler holds no task, and the extension no spliced key and no alias."""
    last: dict = {}

    def empty() -> bool:
        last.clear()
        last.update(scheduler_view(client))
        return not last["n_tasks"] and not last["dynamic_keys"] and not last["aliases"]

    try:
        wait_until(empty, timeout, "the scheduler to forget every task")
    except AssertionError as e:
        raise AssertionError(f"{e}; the scheduler holds {last}") from None


def worker_task_counts(client: Client) -> dict[str, int]:
    return client.run(lambda dask_worker: len(dask_worker.state.tasks))


def assert_empty(s) -> None:
    """In-process scheduler ``s``: no task, no spliced key, no alias."""
    ext = s.extensions["dynflow"]
    assert not s.tasks, sorted(map(str, s.tasks))[:20]
    assert not ext.dynamic_keys, sorted(map(str, ext.dynamic_keys))[:20]
    assert not ext.aliases, ext.aliases


# ----------------------------------------------------------------------- resilience
# (first in the file: gen_cluster checks that no process of the module fixtures is alive)
def gate_holds_the_output(s):
    """The spliced gate runs and the output waits for it alone: fib(n) is computed."""
    gates = [ts for ts in s.tasks.values() if ts.prefix.name == "gate"]
    if len(gates) != 1 or gates[0].state != "processing" or len(gates[0].dependents) != 1:
        return None
    (out,) = gates[0].dependents
    if out.state != "waiting" or out.waiting_on != {gates[0]}:
        return None
    return out


@gen_cluster(
    client=True,
    Worker=Nanny,
    nthreads=[("127.0.0.1", 1)] * 2,
    timeout=120,
    # every call spliced: the test kills the worker holding a spliced task's value
    config={"dynflow.dynamic-in-place": False},
)
async def test_a_worker_killed_mid_dynamic_graph_gives_the_exact_result(c, s, a, b):
    n, event = 12, f"go-{uuid.uuid4().hex}"
    (fut,) = await df.submit_async(rt.gated_fib_sum(n, event), client=c)
    await async_poll_for(lambda: gate_holds_the_output(s) is not None, timeout=60)
    out = gate_holds_the_output(s)
    ext = s.extensions["dynflow"]
    assert out.key in ext.dynamic_keys  # the graph's output, made by the splice
    assert ext.aliases.get(fut.key) == out.key  # the submitted task is its alias
    # the worker that holds fib(n)'s value (the output's other input) dies: it must be
    # recomputed from the spliced tasks the scheduler still knows
    (fib_n,) = [d for d in out.dependencies if d.prefix.name != "gate"]
    assert fib_n.state == "memory" and len(fib_n.who_has) == 1
    holder = next(iter(fib_n.who_has)).address
    victim = a if a.worker_address == holder else b
    await victim.kill()
    await async_poll_for(lambda: holder not in s.workers, timeout=30)
    await Event(event, client=c).set()
    assert await fut == fib_value(n) + fib_value(n - 1)
    # the run's counts: every unit once, nothing left pending or running
    nodes = (await fut.run.info())["nodes"]
    for key, counts in nodes.items():
        assert counts["pending"] == counts["running"] == counts["failed"] == 0, (key, counts)
        assert counts["done"] == counts["total"], (key, counts)
    del fut
    await async_poll_for(lambda: not s.tasks, timeout=10)
    assert_empty(s)


# ------------------------------------------------------------- LocalCluster, processes
@pytest.fixture(scope="module")
def local() -> Iterator[tuple[LocalCluster, Client]]:
    """Two worker processes with one thread each."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        with Client(cluster, set_as_default=False) as client:
            yield cluster, client


def test_local_processes_fib_and_a_tail_loop(local):
    _, client = local
    assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.validate)
    (fut,) = df.submit(rt.fib(14), client=client)
    assert fut.result() == fib_value(14) == 377
    # the first calls were spliced in by the workers; once both were busy, the calls
    # computed their small graphs in place (dynflow.dynamic-in-place): fewer tasks
    # than calls, every call counted in the run's boxes all the same
    after_fib = scheduler_view(client)["tasks_added"]
    assert 0 < after_fib < fib_calls(14) - 1
    assert {"fib", "add"} <= set(scheduler_view(client)["prefixes"])
    info = fut.run.info()
    boxes = {n["label"]: info["nodes"][n["key"]] for n in info["graph"]["nodes"]}
    assert boxes["fib (dynamic)"]["done"] == boxes["fib (dynamic)"]["total"] == fib_calls(14) - 1
    assert boxes["add (dynamic)"]["done"] == (fib_calls(14) - 1) // 2
    del fut
    wait_until_empty(client)

    assert rt.step(0, 500).compute(client=client) == 500
    assert scheduler_view(client)["tasks_added"] - after_fib >= 500
    wait_until_empty(client)
    # and the workers hold nothing either (the replaced runs were released there)
    wait_until(lambda: not any(worker_task_counts(client).values()), 10, "the workers to forget")


def test_local_processes_client_leaves_mid_run(local):
    """A client that closes while its deep dynamic graph runs leaves nothing behind."""
    cluster, client = local
    wait_until_empty(client)
    before = scheduler_view(client)["tasks_added"]

    # 1. while levels are still being spliced (the bottom is never reached)
    event = f"never-{uuid.uuid4().hex}"
    leaving = Client(cluster.scheduler_address, set_as_default=False)
    try:
        (fut,) = df.submit(rt.held_countdown(10**6, event), client=leaving)
        wait_until(
            lambda: scheduler_view(client)["tasks_added"] - before >= 200,
            30,
            "200 levels to be spliced",
        )
    finally:
        leaving.close()
    assert fut.status != "finished"
    del fut
    wait_until_empty(client)

    # 2. with every level spliced and the bottom one running (held at its gate)
    event = f"bottom-{uuid.uuid4().hex}"
    leaving = Client(cluster.scheduler_address, set_as_default=False)
    try:
        (fut,) = df.submit(rt.held_countdown(150, event), client=leaving)
        wait_until(
            lambda: "gate" in scheduler_view(client)["dynamic_prefixes"],
            30,
            "the bottom level's gate",
        )
        assert scheduler_view(client)["n_tasks"] >= 150
    finally:
        leaving.close()
    assert fut.status != "finished"
    del fut
    Event(event, client=client).set()  # frees the worker thread the gate holds
    wait_until_empty(client)
    wait_until(lambda: not any(worker_task_counts(client).values()), 10, "the workers to forget")


def test_local_processes_async_dynamic_tasks(local):
    _, client = local
    # fresh worker processes: their first splice is an async task's (the request)
    client.restart()
    assert rt.async_fib(10).compute(client=client) == fib_value(10)
    assert rt.async_step(0, 100).compute(client=client) == 100
    assert rt.async_fan_out(30, 2).compute(client=client) == 2 * sum(range(30))
    # async items of a map, each returning a graph
    assert rt.reducer(rt.async_fib.map(rt.generate_list(8))).compute(client=client) == sum(
        fib_value(i) for i in range(8)
    )
    wait_until_empty(client)


# ---------------------------------------------------------------------- CLI cluster
@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> Iterator[tuple[CLICluster, Client]]:
    """``dask scheduler`` (no preload) and two ``dask worker`` processes, one thread each."""
    c = CLICluster(tmp_path_factory.mktemp("cli-dynamic"))
    client = None
    try:
        c.start(n_workers=2)
        client = c.client(n_workers=2)
        yield c, client
    finally:
        if client is not None:
            client.close()
        c.stop()


def test_cli_fib_splices_real_scheduler_tasks(cli):
    _, client = cli
    # a plain scheduler: the first dynflow compute, a dynamic one, installs the extension
    assert client.run_on_scheduler(lambda dask_scheduler: "dynflow" not in dask_scheduler.plugins)
    assert rt.fib(12).compute(client=client) == fib_value(12) == 144
    view = scheduler_view(client)
    # the first calls were spliced (the deeper ones may run in place on a busy worker)
    assert view["tasks_added"] >= 3
    assert {"fib", "add"} <= set(view["prefixes"])
    wait_until_empty(client)


def test_cli_dynamic_task_returning_a_map(cli):
    _, client = cli
    before = scheduler_view(client)["tasks_added"]
    assert rt.fan_out(40, 3).compute(client=client) == 3 * sum(range(40))
    view = scheduler_view(client)
    # the map's 40 items, and the graph the task returned (generate_list, the expander...)
    assert view["tasks_added"] - before >= 40 + 1
    assert {"fan_out", "generate_list", "process", "reducer"} <= set(view["prefixes"])
    # dynamic tasks as the items of a map
    node = rt.reducer(rt.fib.map(rt.generate_list(10)))
    assert node.compute(client=client) == sum(fib_value(i) for i in range(10))
    wait_until_empty(client)
