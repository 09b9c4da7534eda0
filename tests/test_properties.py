"""Property test: random pipelines give the same result on dynflow and in plain Python."""

from __future__ import annotations

import dask
import pytest
from distributed import Client, LocalCluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dynflow as df


class ItemFailed(Exception):
    pass


@df.task
def make(xs):
    return list(xs)


@df.task
def affine(x, a, b, bad):
    if x % 7 == bad:
        raise ItemFailed(f"{x} is bad")
    return a * x + b


@df.task
def add(x, y):
    return x + y


@df.task
def spread(x):
    return list(range(x % 4))


@df.task
def total(xs):
    return sum(xs)


@df.task
def describe(xs):
    return [type(x).__name__ if isinstance(x, Exception) else x for x in xs]


# --- the same operations in plain Python; an item is a value or an exception


def py_affine(x, a, b, bad):
    if isinstance(x, Exception):
        return x
    return ItemFailed(f"{x} is bad") if x % 7 == bad else a * x + b


def py_add(x, y):
    for v in (x, y):
        if isinstance(v, Exception):
            return v
    return x + y


def py_flatten_spread(items):
    out = []
    for x in items:
        if isinstance(x, Exception):
            out.append(x)  # a failed parent stands for its unknown children
        else:
            out += list(range(x % 4))
    return out


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("affine"),
            st.integers(-3, 3),
            st.integers(-5, 5),
            st.integers(-1, 6),
            st.sampled_from([None, None, 2]),
        ),
        st.tuples(st.just("zip")),
        st.tuples(st.just("flatten"), st.sampled_from([None, None, 2])),
        st.tuples(st.just("unmapped"), st.integers(0, 9)),
        st.tuples(st.just("zip-concrete")),
    ),
    min_size=1,
    max_size=4,
)


def build(base, program, concrete, batch=None, ratio=1.0):
    """(dynflow map node, plain-Python items) for a program over `base`; the last map
    has min_success_ratio `ratio`."""
    node = affine.map(base if concrete else make(base), 1, 0, -1, batch_size=batch)
    items = list(base)
    for op in program:
        if op[0] == "affine":
            _, a, b, bad, size = op
            node = affine.map(node, a, b, bad, batch_size=size)
            items = [py_affine(x, a, b, bad) for x in items]
        elif op[0] == "zip":
            node = add.map(node, affine.map(node, 2, 1, -1))
            items = [py_add(x, py_affine(x, 2, 1, -1)) for x in items]
        elif op[0] == "flatten":
            node = affine.map(df.flatten(spread.map(node, batch_size=op[1])), 1, 0, -1)
            items = py_flatten_spread(items)
        elif op[0] == "zip-concrete":  # zipped with a list known when the graph is built
            node = add.map(node, list(range(len(items))))
            items = [py_add(x, i) for i, x in enumerate(items)]
        else:
            static = total(make([op[1], 1]))
            node = add.map(node, df.unmapped(static))
            items = [py_add(x, op[1] + 1) for x in items]
    node = affine.map(node, 1, 0, -1, min_success_ratio=ratio)
    return node, items


def outcome(compute):
    """A run's value, or what its error says (type, map, indices, origin, cause)."""
    try:
        return ("value", compute())
    except df.MapItemError as e:
        cause = e.__cause__
        return ("MapItemError", e.task_name, e.failed, e.total, e.origin, type(cause).__name__)
    except Exception as e:  # noqa: BLE001 - compared between the two schedulers
        return (type(e).__name__,)


@pytest.fixture(scope="module")
def shared_client():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    base=st.lists(st.integers(0, 20), max_size=6),
    program=ops,
    concrete=st.booleans(),
    tolerant=st.booleans(),
    batch=st.sampled_from([None, None, 2, "auto"]),
    ratio=st.sampled_from([1.0, 1.0, 0.5, 0.75, 0.0]),
)
def test_random_pipelines_match_plain_python_and_sync_mode(
    shared_client, base, program, concrete, tolerant, batch, ratio
):
    """Values, failures (map, indices, origin) and tolerated ratios are the same on the
    cluster, in sync mode and in plain Python."""
    node, items = build(base, program, concrete, batch, ratio)
    consumer = describe(df.allow_failure(node) if tolerant else node)
    on_cluster = outcome(lambda: consumer.compute(client=shared_client))
    assert outcome(lambda: consumer.compute(scheduler="sync")) == on_cluster
    failed = [i for i, x in enumerate(items) if isinstance(x, Exception)]
    if tolerant:
        expected = [type(x).__name__ if isinstance(x, Exception) else x for x in items]
        assert on_cluster == ("value", expected)
    elif failed and not (ratio < 1 and len(items) - len(failed) >= ratio * len(items)):
        assert on_cluster[:3] == ("MapItemError", "affine", failed)
        assert on_cluster[4:] == ("affine", "ItemFailed")
    else:
        assert on_cluster == ("value", [None if i in failed else x for i, x in enumerate(items)])


def _snapshot(dask_scheduler, run_id):
    """On the scheduler, at one moment: each node's counts, and the units of each node
    that dask itself has in processing (weighted as the tracker weighs them)."""
    from dynflow._protocol import TRACKER

    tracker = dask_scheduler.extensions[TRACKER]
    run = tracker.runs.get(run_id)
    if run is None:
        return None
    processing = dict.fromkeys(run.nodes, 0)
    if run.finished is None:
        for ts in dask_scheduler.tasks.values():
            if ts.state != "processing":
                continue
            key = ts.key
            ns = tracker.index.get(key[0] if type(key) is tuple else key)
            if ns is not None and ns.run is run:
                processing[ns.key] += ns.weight(key)
    return {
        "state": run.state,
        "counts": {k: ns.counts() for k, ns in run.nodes.items()},
        "processing": processing,
    }


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    base=st.lists(st.integers(0, 20), min_size=1, max_size=8),
    program=ops,
    batch=st.sampled_from([None, 2]),
)
def test_counts_follow_the_scheduler_and_never_go_down(shared_client, base, program, batch):
    """Polled while random pipelines run: each node's running units are the ones dask
    has in processing, the counts add up to the total, and finished units never go
    down; at the end every unit is finished."""
    node, items = build(base, program, False, batch)
    (fut,) = df.submit(describe(df.allow_failure(node)), client=shared_client)
    last: dict[str, int] = {}
    while True:
        snap = shared_client.run_on_scheduler(_snapshot, run_id=fut.run.id)
        assert snap is not None
        for key, c in snap["counts"].items():
            finished = c["done"] + c["failed"] + c["cached"]
            assert finished >= last.get(key, 0), (key, last.get(key), c)
            last[key] = finished
            if snap["state"] in ("pending", "running"):
                assert c["running"] == snap["processing"][key], (key, c, snap)
            if c["total"] is not None:
                assert finished + c["running"] + c["pending"] == c["total"], (key, c)
        if snap["state"] != "pending" and snap["state"] != "running":
            break
    assert snap["state"] == "finished"
    fut.result()
    for key, c in snap["counts"].items():
        assert c["running"] == c["pending"] == 0, (key, c)
        assert c["done"] + c["failed"] + c["cached"] == (c["total"] or 0), (key, c)
    del fut


def with_sizes(program, size):
    """``program`` with every map's batch_size set to ``size``."""
    out = []
    for op in program:
        if op[0] == "affine":
            out.append((*op[:4], size))
        elif op[0] == "flatten":
            out.append(("flatten", size))
        else:
            out.append(op)
    return out


#: "adaptive" grouping even for the few items of these pipelines: at least one task per
#: worker thread, no minimum length (the real rule keeps maps of <= 256 items per item)
GROUP_SMALL = {"dynflow.adaptive.min-items": 0, "dynflow.adaptive.tasks-per-thread": 1}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    base=st.lists(st.integers(0, 20), max_size=9),
    program=ops,
    concrete=st.booleans(),
    tolerant=st.booleans(),
    ratio=st.sampled_from([1.0, 1.0, 0.5, 0.0]),
)
def test_adaptive_grouping_gives_what_one_task_per_item_gives(
    shared_client, base, program, concrete, tolerant, ratio
):
    """Random pipelines whose maps group their items adaptively (maps left unset, which
    is "adaptive", and maps set to it), one task per item, and fixed batches of 2: the
    same values and the same errors (map, indices, origin, cause), and the same as in
    sync mode."""

    def run(size, scheduler=None):
        # the last map of a pipeline sets no batch_size: it reads dynflow.batch-size
        with dask.config.set({"dynflow.batch-size": size}):
            node, _ = build(base, with_sizes(program, size), concrete, size, ratio)
        consumer = describe(df.allow_failure(node) if tolerant else node)
        if scheduler == "sync":
            return outcome(lambda: consumer.compute(scheduler="sync"))
        return outcome(lambda: consumer.compute(client=shared_client))

    with dask.config.set(GROUP_SMALL):
        adaptive = run("adaptive")
    per_item, fixed = run(None), run(2)
    assert adaptive == per_item == fixed == run("adaptive", "sync")
