"""Runs are Dask spans: Dask's own views break time down per run and per map."""

from __future__ import annotations

import distributed
from distributed.utils_test import gen_cluster

import dynflow as df


@df.task
def numbers(n):
    return list(range(n))


@df.task
def inc(x):
    return x + 1


@df.task
def double(x):
    return 2 * x


@df.task
def total(xs):
    return sum(xs)


@df.flow
def pipeline(n):
    return total(double.map(inc.map(numbers(n)), batch_size=2))


def _spans(s) -> dict[tuple, list]:
    """Span name -> the spans of that name, each as its set of task group names."""
    out: dict[tuple, list] = {}
    for sp in s.extensions["spans"].spans.values():
        out.setdefault(sp.name, []).append({tg.name.split("-")[0] for tg in sp.groups})
    return out


@gen_cluster(client=True)
async def test_a_run_is_a_span_and_each_map_a_span_inside_it(c, s, a, b):
    (fut,) = await df.submit_async(pipeline.build(6), client=c)
    assert await fut == 2 * sum(range(1, 7))
    spans = _spans(s)
    run = s.extensions["spans"].spans[fut.run.span_id]
    assert run.name == ("pipeline",)
    # the run's own tasks: the source, the reducer, dynflow's expander and lists
    assert {"numbers", "total", "dynflow"} <= spans["pipeline",][0]
    # each map's items (and batches) in a span of the map's task, inside the run's
    assert spans["pipeline", "inc"] == [{"inc"}]
    assert spans["pipeline", "double"] == [{"double"}]
    (inner,) = [sp for sp in s.extensions["spans"].spans.values() if sp.name[-1] == "inc"]
    assert inner.parent is run
    # Dask's per-span figures count the items' compute time under the map's span
    assert inner.cumulative_worker_metrics, "no fine performance metrics for the map"


@gen_cluster(client=True)
async def test_a_run_submitted_inside_a_users_span_nests_in_it(c, s, a, b):
    with distributed.span("nightly"):
        (fut,) = await df.submit_async(total(inc.map(numbers(3))), client=c)
    assert await fut == 6
    names = set(_spans(s))
    assert ("nightly", "total") in names  # a run without a flow is named after its output
    assert ("nightly", "total", "inc") in names


@df.task
def fib(n):
    if n < 2:
        return n
    return add(fib(n - 1), fib(n - 2))


@df.task
def add(x, y):
    return x + y


@gen_cluster(client=True)
async def test_a_dynamic_tasks_returned_graph_runs_in_its_span(c, s, a, b):
    (fut,) = await df.submit_async(fib(6), client=c)
    assert await fut == 8
    spans = _spans(s)
    assert ("fib",) in spans and {"fib", "add"} <= spans["fib",][0], spans
    assert ("default",) not in spans, spans
