"""task.map on real clusters: expansion inside the live scheduler (validation on)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from dask.utils import key_split
from distributed import Client
from distributed.utils_test import async_poll_for, gen_cluster
from utils import generate_list, no_tasks_left, process, reducer

import dynflow as df

EVENTS: list = []
GATE = threading.Event()  # in-process workers share this module with the test


@df.task
def record(stage, x, seconds=0):
    EVENTS.append((stage, x))
    time.sleep(seconds)  # stands for real work (a worker runs ahead of trivial items)
    return x


@df.task
def gated(x):
    assert GATE.wait(timeout=30)
    return x


@df.task
def as_list(x):
    return list(x)


def seed(n, factor=2):
    items = generate_list(n)
    return reducer(process.map(items, factor=df.unmapped(factor)))


@gen_cluster(client=True)
async def test_seed_pattern(c, s, a, b):
    assert await seed(20).compute(client=c) == 2 * sum(range(20))
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_map_value_is_the_list_of_results_in_order(c, s, a, b):
    m = process.map(generate_list(7), factor=3)
    assert await m.compute(client=c) == [3 * i for i in range(7)]


@gen_cluster(client=True)
async def test_concrete_iterables_are_mapped(c, s, a, b):
    assert await process.map(range(4)).compute(client=c) == [0, 1, 2, 3]
    assert await process.map(x for x in [5, 6]).compute(client=c) == [5, 6]
    assert await process.map([1, 2], "ab").compute(client=c) == ["ab", "abab"]


@gen_cluster(client=True)
async def test_zip_of_several_mapped_arguments(c, s, a, b):
    m = process.map(generate_list(5), factor=generate_list(5))
    assert await m.compute(client=c) == [i * i for i in range(5)]
    m = process.map(generate_list(3), factor=[10, 20, 30])
    assert await m.compute(client=c) == [0, 20, 60]


@gen_cluster(client=True)
async def test_unmapped_node_is_passed_to_every_item(c, s, a, b):
    factor = process(5)
    m = process.map(generate_list(4), factor=df.unmapped(factor))
    assert await m.compute(client=c) == [0, 5, 10, 15]
    listy = df.unmapped(generate_list(2))
    assert await process.map([1, 2], listy).compute(client=c) == [[0, 1], [0, 1, 0, 1]]


@df.task
def star(*args, **kwargs):
    return args, kwargs


@gen_cluster(client=True)
async def test_var_positional_and_var_keyword_arguments_can_be_mapped(c, s, a, b):
    m = star.map(generate_list(2), "s", k=[7, 8], u=df.unmapped([1]))
    assert await m.compute(client=c) == [
        ((0, "s"), {"k": 7, "u": [1]}),
        ((1, "s"), {"k": 8, "u": [1]}),
    ]


@gen_cluster(client=True)
async def test_empty_upstream_gives_empty_list_and_reducer_runs(c, s, a, b):
    assert await seed(0).compute(client=c) == 0
    assert await process.map(generate_list(0)).compute(client=c) == []
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_non_indexable_iterables_are_mapped(c, s, a, b):
    @df.task
    def a_set():
        return {3}

    assert await process.map(a_set(), 2).compute(client=c) == [6]


@gen_cluster(client=True)
async def test_per_item_keys_form_one_group_per_map_named_after_the_task(c, s, a, b):
    GATE.clear()
    m = gated.map(generate_list(3))
    (fut,) = await df.submit_async(m, client=c)
    await async_poll_for(lambda: (m.item_name, 2) in s.tasks, timeout=10)
    items = [s.tasks[(m.item_name, i)] for i in range(3)]
    assert {ts.prefix.name for ts in items} == {"gated"}
    assert {ts.group.name for ts in items} == {m.item_name}
    assert key_split((m.item_name, 0)) == "gated"
    GATE.set()
    assert await fut == [0, 1, 2]


@gen_cluster(client=True)
async def test_dependencies_are_real_scheduler_edges(c, s, a, b):
    GATE.clear()
    gen = generate_list(4)
    m = gated.map(gen)
    red = reducer(m)
    (fut,) = await df.submit_async(red, client=c)
    await async_poll_for(lambda: (m.item_name, 3) in s.tasks, timeout=10)
    item_keys = {(m.item_name, i) for i in range(4)}
    for k in item_keys:
        assert gen.key in {d.key for d in s.tasks[k].dependencies}
    collector = s.tasks[m.key]
    assert item_keys <= {d.key for d in collector.dependencies}
    assert {d.key for d in s.tasks[red.key].dependencies} == {m.key}
    # the list stayed on the workers: the scheduler knows only its size
    assert s.tasks[gen.key].state == "memory"
    GATE.set()
    assert await fut == 6
    del fut
    await no_tasks_left(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_chained_maps_pipeline_per_item(c, s, a):
    EVENTS.clear()
    n = 6
    first = record.map("f", generate_list(n), 0.05)
    second = record.map("g", first)
    assert await second.compute(client=c) == list(range(n))
    # no barrier after the first map: g[0] ran before f's last item
    assert EVENTS.index(("g", 0)) < EVENTS.index(("f", n - 1))
    assert sorted(EVENTS) == sorted([("f", i) for i in range(n)] + [("g", i) for i in range(n)])


@gen_cluster(client=True)
async def test_chained_items_depend_on_their_own_upstream_item_only(c, s, a, b):
    GATE.clear()
    first = gated.map(generate_list(3))
    second = process.map(first, 2)
    (fut,) = await df.submit_async(second, client=c)
    await async_poll_for(lambda: (second.item_name, 2) in s.tasks, timeout=10)
    for i in range(3):
        deps = {d.key for d in s.tasks[(second.item_name, i)].dependencies}
        assert deps == {(first.item_name, i)}
    # the first map's list is not used whole, so it has no collector
    assert first.key not in s.tasks
    GATE.set()
    assert await fut == [0, 2, 4]


@gen_cluster(client=True)
async def test_a_map_used_whole_and_item_wise(c, s, a, b):
    first = process.map(generate_list(3), 3)
    second = process.map(first, 2)
    assert await df.compute(reducer(first), second, client=c) == (9, [0, 6, 12])


@gen_cluster(client=True)
async def test_a_map_over_a_value_derived_from_its_own_chain_does_not_deadlock(c, s, a, b):
    first = process.map(generate_list(3), 1)
    total = reducer(first)
    second = process.map(first, factor=df.unmapped(total))  # needs first's whole list
    assert await second.compute(client=c) == [0, 3, 6]
    third = process.map(first, as_list(first))  # zip with a list derived from first
    assert await third.compute(client=c) == [0, 1, 4]


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_one_thread_cluster_finishes_chained_maps(c, s, a):
    m = process.map(process.map(process.map(generate_list(10), 2), 3), 1)
    assert await reducer(m).compute(client=c) == 6 * sum(range(10))
    assert await process.map(process.map(generate_list(3)), as_list(generate_list(3))).compute(
        client=c
    ) == [0, 1, 4]


@gen_cluster(client=True)
async def test_not_iterable_upstream_fails_naming_task_and_argument(c, s, a, b):
    with pytest.raises(df.MapInputError, match=r"process.map\(\): argument 'item'.*got int"):
        await process.map(process(3)).compute(client=c)
    with pytest.raises(TypeError, match="got NoneType from task 'none'"):

        @df.task
        def none():
            return None

        await process.map(none()).compute(client=c)
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_unequal_lengths_fail_naming_arguments_and_lengths(c, s, a, b):
    m = process.map(generate_list(3), generate_list(2))
    with pytest.raises(
        ValueError,
        match=r"process.map\(\): .*item=3 \(from task 'generate_list'\), factor=2",
    ):
        await m.compute(client=c)
    # other work on the cluster is unaffected
    assert await seed(3).compute(client=c) == 6
    await no_tasks_left(s)


def test_dict_argument_is_rejected_at_build_time():
    with pytest.raises(TypeError, match=r"process.map\(\): argument 'factor' is a dict.*unmapped"):
        process.map([1], factor={"a": 1})


def test_unequal_concrete_lengths_are_rejected_at_build_time():
    with pytest.raises(df.MapLengthError, match="item=2, factor=3"):
        process.map([1, 2], [1, 2, 3])


def test_nothing_to_map_is_rejected():
    with pytest.raises(TypeError, match="no argument to map over"):
        process.map(df.unmapped([1]), 2)


@gen_cluster(client=True)
async def test_expansion_is_idempotent(c, s, a, b):
    ext = s.extensions.get("dynflow")
    if ext is None:  # install it first through an ordinary compute
        await process.map([1]).compute(client=c)
        ext = s.extensions["dynflow"]
    real = s.handlers["dynflow_splice"]
    replies = []

    def twice(**kwargs):
        replies.append(real(**kwargs))
        replies.append(real(**kwargs))  # a repeated call (retried expander) adds nothing
        return replies[-1]

    s.handlers["dynflow_splice"] = twice
    try:
        assert await seed(10).compute(client=c) == 90
    finally:
        s.handlers["dynflow_splice"] = real
    assert [r["added"] for r in replies] == [10, 0]
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_scheduler_state_is_cleaned_after_a_failed_run(c, s, a, b):
    @df.task
    def maybe_fail(x):
        if x == 2:
            raise ZeroDivisionError("item 2")
        return x

    with pytest.raises(df.MapItemError) as info:
        await reducer(maybe_fail.map(generate_list(5))).compute(client=c)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    del info
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_scheduler_state_is_cleaned_when_the_client_disconnects_mid_run(c, s, a, b):
    GATE.clear()
    other = await Client(s.address, asynchronous=True)
    m = gated.map(generate_list(4))
    futs = await df.submit_async(reducer(m), client=other)
    assert futs
    await async_poll_for(lambda: (m.item_name, 3) in s.tasks, timeout=10)
    await other.close()
    GATE.set()
    await no_tasks_left(s)


class Guard:
    """Raises if it is ever unpickled in one of the forbidden processes."""

    def __init__(self, value, forbidden):
        self.value = value
        self.forbidden = forbidden

    def __setstate__(self, state):
        if os.getpid() in state["forbidden"]:
            raise RuntimeError(f"Guard({state['value']}) unpickled in a forbidden process")
        self.__dict__.update(state)


@df.task
def guarded_list(n, forbidden):
    return [Guard(i, forbidden) for i in range(n)]


@df.task
def unguard(g):
    return g.value


@pytest.mark.slow
def test_the_list_never_travels_to_the_client_or_scheduler(client):
    forbidden = {os.getpid(), client.run_on_scheduler(os.getpid)}
    items = guarded_list(30, forbidden)
    assert reducer(unguard.map(items)).compute(client=client) == sum(range(30))
    # the guard works: the same list fetched to the client raises
    with pytest.raises(RuntimeError, match="unpickled in a forbidden process"):
        guarded_list(1, forbidden).compute(client=client)


# ---------------------------------------------------------------- flatten / nested


@df.task
def services(account):
    return [f"{account}/s{j}" for j in range(account)]


@df.task
def metric(service):
    return len(service)


@df.task
def gated_services(account):
    if account == 3:
        assert GATE.wait(timeout=30)
    return [f"{account}/s{j}" for j in range(account)]


def expected_services(accounts):
    return [f"{a}/s{j}" for a in accounts for j in range(a)]


@gen_cluster(client=True)
async def test_flatten_maps_over_the_elements_in_order(c, s, a, b):
    accounts = generate_list(4)  # 0, 1, 2, 3 services
    metrics = metric.map(df.flatten(services.map(accounts)))
    assert await metrics.compute(client=c) == [len(x) for x in expected_services(range(4))]
    assert await reducer(metrics).compute(client=c) == sum(
        len(x) for x in expected_services(range(4))
    )
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_flatten_used_whole_is_the_concatenation(c, s, a, b):
    flat = df.flatten(services.map([1, 2]))
    assert await flat.compute(client=c) == expected_services([1, 2])
    assert await df.flatten(generate_list(0)).compute(client=c) == []


@gen_cluster(client=True, nthreads=[("127.0.0.1", 4)])
async def test_nested_expansion_happens_per_parent_item(c, s, a):
    """Children of account 1 and 2 exist (and run) while account 3 is still running."""
    GATE.clear()
    svc = gated_services.map([1, 2, 3])
    metrics = record.map("m", df.flatten(svc))
    EVENTS.clear()
    (fut,) = await df.submit_async(metrics, client=c)
    await async_poll_for(lambda: len(EVENTS) == 3, timeout=10)  # 1 + 2 children done
    assert (svc.item_name, 2) in s.tasks and s.tasks[(svc.item_name, 2)].state == "processing"
    assert {(metrics.item_name, 0, 0), (metrics.item_name, 1, 1)} <= set(s.tasks)
    assert (metrics.item_name, 2, 0) not in s.tasks  # account 3's children are not known yet
    # item edges: each child depends on its own parent item only
    assert {d.key for d in s.tasks[(metrics.item_name, 1, 0)].dependencies} == {(svc.item_name, 1)}
    GATE.set()
    assert await fut == expected_services([1, 2, 3])
    del fut
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_chained_map_after_flatten_and_flatten_of_flatten(c, s, a, b):
    @df.task
    def split(x):
        return list(x)

    svc = services.map([1, 2])
    chained = process.map(metric.map(df.flatten(svc)), 10)
    assert await chained.compute(client=c) == [10 * len(x) for x in expected_services([1, 2])]
    chars = df.flatten(split.map(df.flatten(svc)))
    assert await process.map(chars, 1).compute(client=c) == list("".join(expected_services([1, 2])))


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_nested_maps_finish_on_a_one_thread_cluster(c, s, a):
    svc = services.map(generate_list(4))
    metrics = metric.map(df.flatten(svc))
    assert await reducer(metrics).compute(client=c) == sum(
        len(x) for x in expected_services(range(4))
    )
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_flatten_with_a_static_derived_from_its_parent_falls_back_to_whole(c, s, a, b):
    svc = services.map([1, 2])
    n_accounts = reducer(metric.map(svc))  # needs the parent's whole list
    out = process.map(df.flatten(svc), factor=df.unmapped(n_accounts))
    assert await out.compute(client=c) == [x * 3 for x in expected_services([1, 2])]


@gen_cluster(client=True)
async def test_flatten_of_non_lists_fails_naming_the_item(c, s, a, b):
    with pytest.raises(MapInputError_or_TypeError, match="got int"):
        await metric.map(df.flatten(process.map([1, 2]))).compute(client=c)
    await no_tasks_left(s)


MapInputError_or_TypeError = TypeError


def test_flatten_in_sync_mode():
    svc = services.map([1, 3])
    assert metric.map(df.flatten(svc)).compute(scheduler="sync") == [
        len(x) for x in expected_services([1, 3])
    ]
    with pytest.raises(TypeError, match="flatten expects|expects a node"):
        df.flatten([1, 2])


# ---------------------------------------------------------------- item kinds
np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")


@df.task
def mixed_sequences():
    return [[1, 2], np.array([10, 20, 30]), range(3), (7,)]


@df.task
def identity(x):
    return x


@df.task
def labelled_series():
    return pd.Series([5, 6, 7], index=[10, 20, 30])


@df.task
def frame():
    return pd.DataFrame({"a": [1, 2, 3], "b": [4, 5, 6]})


FLAT = [1, 2, 10, 20, 30, 0, 1, 2, 7]


@gen_cluster(client=True)
async def test_flatten_concatenates_every_sequence_kind(c, s, a, b):
    """Arrays are concatenated like lists, never added element-wise (cluster and sync)."""
    parents = identity.map(mixed_sequences())
    whole = df.flatten(parents)
    mapped = identity.map(df.flatten(parents))
    for node in (whole, mapped):
        assert await node.compute(client=c) == FLAT
        assert node.compute(scheduler="sync") == FLAT


@gen_cluster(client=True)
async def test_item_i_is_what_iteration_yields_at_i(c, s, a, b):
    """A Series with a non-default index is read by position, whatever the path."""
    series = pd.Series([5, 6, 7], index=[10, 20, 30])
    nodes = [
        identity.map(labelled_series()),  # from a node
        identity.map(series),  # passed directly
        identity.map(labelled_series(), batch_size=2),  # batched
        process.map(identity.map(labelled_series())),  # chained
    ]
    for node in nodes:
        assert await node.compute(client=c) == [5, 6, 7]
        assert node.compute(scheduler="sync") == [5, 6, 7]


@gen_cluster(client=True)
async def test_a_dataframe_is_refused_naming_ways_that_work(c, s, a, b):
    with pytest.raises(df.MapInputError, match=r"identity.map\(\): argument 'x' is a DataFrame"):
        identity.map(pd.DataFrame({"a": [1]}))
    with pytest.raises(df.MapInputError, match=r"got DataFrame from task 'frame'.*to_dict"):
        await identity.map(frame()).compute(client=c)
    with pytest.raises(df.MapInputError, match="to_dict"):
        identity.map(frame()).compute(scheduler="sync")
    with pytest.raises(df.MapInputError, match=r"item 0 is a DataFrame, not a list to flatten"):
        df.flatten(identity.map([pd.DataFrame({"a": [1]})])).compute(scheduler="sync")
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_spliced_items_look_to_other_plugins_like_items_a_client_sent(c, s, a, b):
    """The dashboard's /graph page (distributed's GraphLayout) lays out every spliced
    task and edge, and forgets them cleanly: no "Plugin failed" in the scheduler log."""
    from distributed.diagnostics.graph_layout import GraphLayout
    from distributed.utils_test import captured_logger

    layout = GraphLayout(s)
    s.add_plugin(layout)
    pipelines = [
        reducer(process.map(process.map(generate_list(20)))),
        reducer(metric.map(df.flatten(services.map(generate_list(4))))),
        reducer(process.map(generate_list(20), batch_size=3, max_concurrency=2)),
    ]
    with captured_logger("distributed.scheduler") as log:
        for node in pipelines:
            (fut,) = await df.submit_async(node, client=c)
            await async_poll_for(fut.done, timeout=10)
            for key, ts in s.tasks.items():
                assert key in layout.index
                for dep in ts.dependencies:
                    assert (dep.key, key) in layout.index_edge
            await fut
            del fut
            await no_tasks_left(s)
    assert "Plugin failed" not in log.getvalue()
    assert not layout.index and not layout.index_edge
    layout.reset_index()  # what the page does on its next refresh


@df.flow
def per_account(account):
    return reducer(metric.map(services(account)))


@gen_cluster(client=True)
async def test_a_maps_task_group_counts_exactly_its_items(c, s, a, b):
    """Items are group ``gated``; the list is ``gated.map``; dynflow's own tasks are
    ``dynflow-*``, in every shape: chained, nested, batched, lanes, sub-flows per item."""
    from collections import Counter

    seen: Counter = Counter()

    class Names:
        def update_graph(self, scheduler, *, tasks=(), **kwargs):
            seen.update(key_split(k) for k in tasks)

    s.add_plugin(type("P", (Names, __import__("distributed").SchedulerPlugin), {})())
    GATE.clear()
    m = gated.map(generate_list(3))
    (fut,) = await df.submit_async(m, client=c)
    await async_poll_for(lambda: (m.item_name, 2) in s.tasks, timeout=10)
    now = Counter(key_split(k) for k in s.tasks)
    assert now == {"generate_list": 1, "gated": 3, "gated.map": 1, "dynflow-expand": 1}
    GATE.set()
    assert await fut == [0, 1, 2]
    del fut
    seen.clear()
    others = [
        reducer(process.map(process.map(generate_list(5), max_concurrency=2))),
        reducer(metric.map(df.flatten(services.map(generate_list(3))))),
        reducer(per_account.map(generate_list(3))),
    ]
    assert await df.compute(*others, client=c) == (10, 12, 12)
    user = {"generate_list", "process", "process.map", "reducer", "services", "services.map"}
    user |= {"metric", "metric.map", "per_account", "per_account.map"}
    assert {n for n in seen if not n.startswith("dynflow-")} <= user
    assert seen["process"] == 10  # 5 items of each of two chained maps


@df.task
def pair(x, y):
    return (x, y)


@gen_cluster(client=True)
async def test_flatten_zipped_with_another_mapped_argument(c, s, a, b):
    """The elements of all parents together are zipped with the other argument, on a
    cluster as in sync mode (a nested expansion per parent would see only its own)."""
    flat = df.flatten(generate_list.map([1, 2]))  # [0, 0, 1]
    nodes = [
        pair.map(flat, ["a", "b", "c"]),
        pair.map(flat, generate_list(3)),
        pair.map(flat, process.map([7, 8, 9])),
    ]
    values = [[(0, "a"), (0, "b"), (1, "c")], [(0, 0), (0, 1), (1, 2)], [(0, 7), (0, 8), (1, 9)]]
    for node, value in zip(nodes, values, strict=True):
        assert await node.compute(client=c) == value
        assert node.compute(scheduler="sync") == value
    with pytest.raises(df.MapLengthError, match=r"x=3 \(from flatten\(\.\.\.\)\), y=2"):
        await pair.map(flat, ["a", "b"]).compute(client=c)
    with pytest.raises(df.MapLengthError, match=r"x=3 \(from flatten\(\.\.\.\)\), y=2"):
        pair.map(flat, ["a", "b"]).compute(scheduler="sync")


def test_values_that_cannot_be_mapped_are_refused_naming_the_argument():
    for value in (None, 3, np.array(5)):
        with pytest.raises(df.MapInputError, match=r"identity.map\(\).*argument 'x' is a"):
            identity.map(value)


@df.task
def zero_d():
    return np.array(5)


@gen_cluster(client=True)
async def test_a_0d_array_from_a_node_is_refused_naming_the_map(c, s, a, b):
    with pytest.raises(df.MapInputError, match=r"got ndarray from task 'zero_d' \(not iterable\)"):
        await identity.map(zero_d()).compute(client=c)
    with pytest.raises(df.MapInputError, match="not iterable"):
        identity.map(zero_d()).compute(scheduler="sync")


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_wait_for_a_map_waits_item_by_item(c, s, a):
    """``g.map(xs, wait_for=f.map(xs))``: item i of g waits for item i of f only, and
    its failure; a plain node in wait_for still orders every item."""
    EVENTS.clear()
    first = record.map("f", generate_list(6), 0.05)
    second = record.map("g", generate_list(6), wait_for=first)
    (fut,) = await df.submit_async(second, client=c)
    await async_poll_for(lambda: (second.item_name, 5) in s.tasks, timeout=10)
    for i in range(6):
        deps = {d.key for d in s.tasks[(second.item_name, i)].dependencies}
        assert (first.item_name, i) in deps
        assert not any(
            k[0] == first.item_name and k != (first.item_name, i) for k in deps if type(k) is tuple
        )
    assert await fut == list(range(6))
    assert EVENTS.index(("g", 0)) < EVENTS.index(("f", 5))  # no barrier
    for i in range(6):
        assert EVENTS.index(("f", i)) < EVENTS.index(("g", i))


@df.task
def fails_on_two(x):
    if x == 2:
        raise ValueError("two")
    return x


@gen_cluster(client=True)
async def test_an_item_waiting_for_a_failed_item_fails_with_it(c, s, a, b):
    waited = fails_on_two.map(generate_list(4))
    m = process.map(generate_list(4), wait_for=waited)
    with pytest.raises(
        df.MapItemError, match=r"1 of 4 items failed, at index 2 \(failed in task 'fails_on_two'\)"
    ):
        await m.compute(client=c)
    with pytest.raises(df.MapItemError, match=r"at index 2 \(failed in task 'fails_on_two'\)"):
        m.compute(scheduler="sync")
    # waited for whole (a batched map cannot be waited for item by item): the same
    batched = process.map(
        generate_list(4), wait_for=fails_on_two.map(generate_list(4), batch_size=2)
    )
    with pytest.raises(df.MapItemError, match=r"at index 2 \(failed in task 'fails_on_two'\)"):
        await batched.compute(client=c)
    # joined item by item, the two maps' arguments are named with their map
    with pytest.raises(
        df.MapLengthError, match=r"process.map\(\) item=4 .*fails_on_two.map\(\) x=3"
    ):
        await process.map(generate_list(4), wait_for=fails_on_two.map([0, 1, 3])).compute(client=c)


@df.task
def join_pair(pair):
    a, b = pair
    return f"{a}{b}"


@gen_cluster(client=True)
async def test_product_maps_over_every_pair_in_row_major_order(c, s, a, b):
    letters = process.map(["a", "b"])  # a map node, read whole
    nodes = [
        join_pair.map(df.product(generate_list(2), ["x", "y", "z"])),
        join_pair.map(df.product(letters, generate_list(2))),
        process.map(join_pair.map(df.product([1], ["q"])), 2),  # a map chained on it
        join_pair.map(df.product(generate_list(0), ["x"])),
    ]
    values = [["0x", "0y", "0z", "1x", "1y", "1z"], ["a0", "a1", "b0", "b1"], ["1q1q"], []]
    for node, value in zip(nodes, values, strict=True):
        assert await node.compute(client=c) == value
        assert node.compute(scheduler="sync") == value
    with pytest.raises(df.MapInputError, match=r"product\(\): argument 1 is a int"):
        df.product([1], 5)
    with pytest.raises(TypeError, match="two or more"):
        df.product([1])
    with pytest.raises(df.MapInputError, match=r"product\(\): argument 0 is a dict"):
        await join_pair.map(df.product(identity({"a": 1}), [1])).compute(client=c)
