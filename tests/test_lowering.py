"""Lowering without a cluster: which maps expand together, and what their plans make."""

from __future__ import annotations

import pytest
from dask._task_spec import Task
from utils import generate_list, process, reducer

import dynflow as df
from dynflow._protocol import EXPANDER_PREFIX, lane_key, raw_key
from dynflow.graph._node import topological
from dynflow.lowering._expansion import Collector, Expansion
from dynflow.lowering._groups import ExpansionGroups
from dynflow.lowering._lower import lower_distributed, lower_local, plan_stage
from dynflow.lowering._markers import ItemRefs
from dynflow.lowering._stage import batch_size
from dynflow.worker._collect import gather, gather_concat, gather_raw
from dynflow.worker._expander import expand, unspliced


@df.task
def lists(x):
    return [x, x]


@df.flow
def twice_flow(x):
    return process(process(x))


def groups_of(*outputs):
    groups = ExpansionGroups()
    for node in topological(outputs):
        groups.visit(node)
    return groups


def test_a_chained_map_joins_its_upstream_maps_group():
    first = process.map(generate_list(3))
    second = process.map(first)
    g = groups_of(second)
    assert g.find(g.group[first.key]) == g.find(g.group[second.key])
    assert g.how == {(second.key, 0): "stage"}
    assert len([f for f in g.groups() if g.parent_of(f) is None]) == 1


def test_a_map_over_a_flatten_is_a_nested_group():
    parents = lists.map(generate_list(3))
    children = process.map(df.flatten(parents))
    g = groups_of(children)
    child, parent = g.group[children.key], g.group[parents.key]
    assert g.parent_of(child) == g.find(parent)
    assert g.how == {(children.key, 0): "nest"}
    assert g.depth_chain(child) == [g.find(child), g.find(parent)]


def test_a_map_over_a_batched_map_joins_it_but_a_flow_run_per_item_does_not():
    first = process.map(generate_list(3), batch_size=2)
    second = process.map(first)
    g = groups_of(second)
    assert g.find(g.group[first.key]) == g.find(g.group[second.key])
    assert g.how == {(second.key, 0): "stage"}
    per_item = twice_flow.map(first)  # built on a worker: it cannot know an "auto" size
    g = groups_of(per_item)
    assert g.find(g.group[first.key]) != g.find(g.group[per_item.key])


def test_a_map_does_not_join_a_group_whose_list_it_needs():
    """The cycle rule: the second map's static argument needs the first map's whole list,
    so joining would make the expander wait for its own collector."""
    first = process.map(generate_list(3))
    second = process.map(first, df.unmapped(reducer(first)))
    g = groups_of(second)
    assert g.find(g.group[first.key]) != g.find(g.group[second.key])
    assert g.how == {}


def test_a_flatten_zipped_with_a_whole_list_is_not_nested():
    flat = df.flatten(lists.map(generate_list(2)))
    both = process.map(flat, [1, 2, 3, 4])
    g = groups_of(both)
    assert g.how == {} and g.parent_of(g.group[both.key]) is None


def test_distributed_graph_has_an_expander_and_placeholder_collectors():
    gen = generate_list(3)
    m = process.map(gen)
    out = reducer(m)
    graph = dict(lower_distributed([out]))
    (ekey,) = [k for k in graph if isinstance(k, str) and k.startswith(EXPANDER_PREFIX)]
    assert graph[ekey].func is expand
    assert graph[m.key].func is unspliced  # replaced by the splice
    assert set(graph) == {gen.key, ekey, m.key, out.key}
    assert (m.item_name, 0) not in graph  # items exist only once the scheduler splices


def test_local_graph_runs_each_map_as_one_task_of_its_raw_list():
    m = process.map(generate_list(3))
    graph = dict(lower_local([m]))
    assert raw_key(m.key) in graph
    assert graph[m.key].func is gather_raw


def test_measure_checks_lengths_and_lists_what_cannot_be_indexed():
    m = process.map(generate_list(3))
    plan = plan_stage(m, {})
    exp = Expansion("e", (plan.stage,), (), plan.sources, (), ())
    (source,) = plan.sources
    assert exp.measure({source: [1, 2, 3]}) == (3, {})
    assert exp.measure({source: {5}}) == (1, {source: [5]})
    with pytest.raises(df.MapInputError, match=r"process.map\(\): argument 'item'.*got str"):
        exp.measure({source: "abc"})
    with pytest.raises(df.MapInputError, match="one-shot iterator"):
        exp.measure({source: iter([1])})
    zipped = process.map(generate_list(3), [1, 2])
    zp = plan_stage(zipped, {})
    zexp = Expansion("e", (zp.stage,), (), zp.sources, tuple(zp.concretes), ())
    with pytest.raises(df.MapLengthError, match="item=3.*factor=2"):
        zexp.measure({next(iter(zp.sources)): [1, 2, 3]})


@pytest.mark.parametrize(
    "options, keys",
    [
        ({}, [("i", 0), ("i", 1), ("i", 2), ("i", 3), ("i", 4)]),
        ({"batch_size": 2}, [("i", 0), ("i", 1), ("i", 2)]),
        ({"max_concurrency": 2}, [("i", t) for t in range(5)]),
    ],
)
def test_stage_items_plain_batched_and_in_lanes(options, keys):
    m = process.map(generate_list(5), **options)
    stage = plan_stage(m, {}).stage
    batches = Expansion("e", (stage,), (), {}, (), ()).batches(5, 1)
    refs = ItemRefs("e", frozenset(), batches)
    tasks = stage.items((), 5, refs)
    items = [t.key for t in tasks if t.key[0] == stage.key]
    assert [(("i",) + k[1:]) for k in items] == keys
    lanes = [t.key for t in tasks if t.key[0] == lane_key(stage.key)]
    if options.get("max_concurrency"):
        # item t waits for the lane token of item t - 2; the last two need none
        assert lanes == [(lane_key(stage.key), t) for t in range(3)]
        by_key = {t.key: t for t in tasks}
        assert (lane_key(stage.key), 0) in by_key[(stage.key, 2)].dependencies
    else:
        assert lanes == []


def test_collectors_read_items_or_batches():
    plain = Collector("list", "items", "process")
    task = plain.task((), 3)
    assert isinstance(task, Task) and task.func is gather
    assert task.dependencies == {("items", 0), ("items", 1), ("items", 2)}
    task = plain.task((), 5, batches={"items": 2})
    assert task.func is gather_concat
    assert task.dependencies == {("items", 0), ("items", 1), ("items", 2)}
    nested = Collector("list", "items", "process").task((4,), 2)
    assert nested.key == ("list", 4) and nested.dependencies == {("items", 4, 0), ("items", 4, 1)}


def test_auto_batch_size_is_about_eight_tasks_per_thread():
    assert batch_size("auto", 1000, 4) == 32
    assert batch_size("auto", 3, 4) == 1
    assert batch_size(7, 1000, 4) == 7
