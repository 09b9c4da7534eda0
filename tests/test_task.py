"""Graph building: tasks, nodes, keys, options. Nothing here runs on a cluster."""

from __future__ import annotations

import pytest
from dask.utils import key_split

import dynflow as df


@df.task
def inc(x, y=1):
    return x + y


@df.task(pure=True)
def add(x, y):
    return x + y


@df.task(name="custom", retries=3)
def named(*args, **kwargs):
    return args, kwargs


def test_calling_a_task_returns_a_lazy_node():
    n = inc(1)
    assert isinstance(n, df.Node)
    assert n.task is inc
    assert key_split(n.key) == "inc"


def test_bare_and_parametrised_decorators():
    assert inc.options["retries"] == 0 and inc.name == "inc"
    assert named.name == "custom" and named.options["retries"] == 3
    assert key_split(named(1).key) == "custom"


def test_fn_is_the_plain_function():
    assert inc.fn(1) == 2
    assert inc.fn.__name__ == "inc"


def test_with_options_returns_a_new_task():
    t = inc.with_options(retries=5, name="inc2")
    assert t is not inc and t.options["retries"] == 5 and t.name == "inc2"
    assert inc.options["retries"] == 0
    assert t.fn is inc.fn


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"retries": -1}, "retries=-1"),
        ({"retries": "3"}, "retries='3'"),
        ({"bogus": 1}, "unknown option 'bogus'"),
        ({"pure": 1}, "pure=1"),
    ],
)
def test_bad_options_are_rejected_naming_the_task(opts, match):
    with pytest.raises(TypeError, match=match) as info:
        inc.with_options(**opts)
    assert "inc" in str(info.value)


def test_pure_keys_are_deterministic_and_impure_keys_unique():
    assert add(1, 2).key == add(1, 2).key
    assert add(1, 2).key != add(2, 1).key
    assert inc(1).key != inc(1).key
    assert add(inc(1), 2).key != add(inc(1), 2).key  # an impure upstream


def test_nodes_in_containers_are_dependencies():
    a, b, c = inc(1), inc(2), inc(3)
    n = named([a, (b,)], key={"x": c}, other=5)
    assert {d.key for d in n.dependencies} == {a.key, b.key, c.key}


def test_wait_for_adds_ordering_dependencies():
    a = inc(1)
    n = inc(2, wait_for=[a])
    assert n.dependencies == (a,)
    with pytest.raises(TypeError, match="wait_for must hold nodes"):
        inc(2, wait_for=[5])


def test_arguments_that_do_not_bind_fail_at_build_time():
    with pytest.raises(TypeError, match=r"inc\(\): .*signature is inc\(x, y=1\)"):
        inc(1, 2, 3)
    with pytest.raises(TypeError, match=r"inc\(\): missing a required argument: 'x'"):
        inc()
    with pytest.raises(TypeError, match=r"inc.map\(\): .*unexpected keyword argument 'z'"):
        inc.map([1], z=2)


def test_nodes_are_immutable():
    n = inc(1)
    with pytest.raises(AttributeError, match="immutable"):
        n._key = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        n.foo = 1  # type: ignore[attr-defined]


def test_bool_of_a_node_raises_with_a_hint():
    with pytest.raises(TypeError, match="Move the decision into a @task"):
        bool(inc(1))
    with pytest.raises(df.LazyValueError):
        if inc(1):
            pass


def test_len_and_iter_of_a_node_point_to_map():
    with pytest.raises(TypeError, match=r"\.map\(node\)"):
        len(inc(1))
    with pytest.raises(TypeError, match=r"\.map\(node\)"):
        list(inc(1))


def test_repr_is_short():
    assert repr(inc(1)).startswith("<Node inc-")
    assert repr(inc) == "<Task inc(x, y=1)>"
    assert "inc.map()" in repr(inc.map([1]))


def test_compute_rejects_non_nodes():
    with pytest.raises(TypeError, match="expected dynflow nodes"):
        df.compute(5, scheduler="sync")


def test_unknown_local_scheduler():
    with pytest.raises(ValueError, match="scheduler='nope'"):
        inc(1).compute(scheduler="nope")


def test_sync_scheduler_runs_in_process_in_order():
    calls = []

    @df.task
    def record(x, *_):
        calls.append(x)
        return x

    a = record("a")
    b = record("b", a)
    c = record("c", b)
    assert c.compute(scheduler="sync") == "c"
    assert calls == ["a", "b", "c"]


def test_compute_several_nodes_shares_upstream_work():
    calls = []

    @df.task
    def source():
        calls.append(1)
        return 10

    s = source()
    assert df.compute(inc(s), inc(s, 5), s, scheduler="sync") == (11, 15, 10)
    assert calls == [1]


# ------------------------------------------------- dynflow keywords vs parameters
@df.task
def train(cfg, batch_size=64, max_concurrency=1, min_success_ratio=0.0, wait_for=None):
    return (cfg, batch_size, max_concurrency, min_success_ratio, wait_for)


@df.task
def plain(cfg):
    return cfg


@pytest.mark.parametrize(
    "keyword, value",
    [("batch_size", 32), ("max_concurrency", 3), ("min_success_ratio", 0.5), ("wait_for", 7)],
)
def test_a_parameter_named_like_a_dynflow_keyword_gets_the_users_value(keyword, value):
    """The function's own parameter always wins; the map keeps dynflow's defaults."""
    m = train.map([1, 2], **{keyword: value})
    got = m.compute(scheduler="sync")
    position = ["batch_size", "max_concurrency", "min_success_ratio", "wait_for"].index(keyword)
    assert [r[1 + position] for r in got] == [value, value]
    assert (m.batch_size, m.max_concurrency, m.min_success_ratio) == ("adaptive", None, 1.0)
    assert m.dependencies == ()
    if keyword == "wait_for":  # also on a plain call
        assert train(1, wait_for=7).compute(scheduler="sync")[4] == 7


def test_with_options_sets_dynflow_keywords_when_the_function_has_them():
    before = plain(0)
    t = train.with_options(
        batch_size=2, max_concurrency=1, min_success_ratio=0.5, wait_for=[before]
    )
    m = t.map([1, 2, 3], batch_size=32)
    assert (m.batch_size, m.max_concurrency, m.min_success_ratio) == (2, 1, 0.5)
    assert before in m.dependencies and before in t(1).dependencies
    assert [r[1] for r in m.compute(scheduler="sync")] == [32, 32, 32]
    # the map's keyword overrides the task's default where the function lacks it
    assert plain.with_options(batch_size=2).map([1], batch_size=3).batch_size == 3
    with pytest.raises(TypeError, match="option batch_size=0"):
        plain.with_options(batch_size=0)
    with pytest.raises(TypeError, match="wait_for must hold nodes"):
        plain(1, wait_for=[3])


def test_pure_map_keys_include_the_map_options():
    pt = plain.with_options(pure=True)
    keys = {
        pt.map([1, 2]).key,
        pt.map([1, 2], min_success_ratio=0.5).key,
        pt.map([1, 2], batch_size=2).key,
        pt.map([1, 2], max_concurrency=1).key,
    }
    assert len(keys) == 4
    assert pt.map([1, 2], batch_size=2).key == pt.map([1, 2], batch_size=2).key


@pytest.mark.parametrize(
    "misuse, words",
    [
        (lambda n: n + 1, "`+`"),
        (lambda n: 1 - n, "`-`"),
        (lambda n: n * 2, "`*`"),
        (lambda n: n < 3, "`<`"),
        (lambda n: -n, "-node"),
        (lambda n: n[0], "cannot be indexed"),
        (lambda n: 3 in n, "x in node"),
        (lambda n: n.result(), "not a future"),
        (lambda n: int(n), "int(node)"),
        (lambda n: f"{n:d}", "format"),
    ],
)
def test_using_a_node_as_a_value_says_what_to_do(misuse, words):
    node = inc(1)
    with pytest.raises((df.LazyValueError, TypeError)) as info:
        misuse(node)
    if words != "format":
        assert isinstance(info.value, df.LazyValueError)
        assert words in str(info.value)
        assert "@task" in str(info.value) or "compute()" in str(info.value)


@df.task
def calls_a_task_inside(x):
    return inc(x) + 1  # a node, not a value: inside a task, inc.fn(x) was meant


def test_a_task_called_inside_a_task_then_used_says_so():
    with pytest.raises(df.LazyValueError, match=r"made inside task 'calls_a_task_inside'.*inc\.fn"):
        calls_a_task_inside(1).compute(scheduler="sync")
    with pytest.raises(df.MapItemError) as info:
        calls_a_task_inside.map([1]).compute(scheduler="sync")
    assert "inc.fn" in str(info.value.__cause__)
