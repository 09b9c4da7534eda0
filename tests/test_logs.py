"""log_prints: task output forwarded to the submitting client; task_run_name labels."""

from __future__ import annotations

import asyncio
import logging

import dask.config
import pytest
from distributed.utils_test import async_poll_for, gen_cluster

import dynflow as df
from dynflow._protocol import FORWARD_TOPIC, LOG_TOPIC, TRACKER


@df.task(task_run_name="square-{x}")
def square(x):
    print(f"squaring {x}")
    logging.getLogger("user.code").warning("x is %s", x)
    return x * x


@df.task
def listed(n):
    print("listing")
    return list(range(n))


@df.task(task_run_name=lambda account, map_index: f"{account}#{map_index}")
def fetch(account):
    if account == "b":
        raise ConnectionError(f"cannot reach {account}")
    return account.upper()


@df.task
def total(xs):
    return sum(xs)


@df.flow(log_prints=True)
def squares(n):
    return total(square.map(listed(n)))


@df.flow
def quiet(n):
    return total(square.map(listed(n)))


async def collect(c, expected):
    """Replace the client's printing handler with one that collects ``expected`` lines."""
    lines: list[str] = []
    done = asyncio.Event()

    def handler(event):
        _, msg = event
        lines.append(f"[{msg['tag']}] {msg['text']}")
        if len(lines) >= expected:
            done.set()

    c.subscribe_topic(FORWARD_TOPIC, handler)
    return lines, done


@gen_cluster(client=True)
async def test_prints_and_logs_are_forwarded_tagged_with_the_label(c, s, a, b):
    await listed(0).compute(client=c)  # installs the client's own handler, replaced next
    lines, done = await collect(c, expected=7)  # 1 + 3 prints + 3 warnings
    assert await squares.build(3).compute(client=c) == 0 + 1 + 4
    await asyncio.wait_for(done.wait(), 10)
    assert "[listing] listing" not in lines
    assert "[listed] listing" in lines
    for x in range(3):
        assert f"[square-{x}] squaring {x}" in lines
        assert f"[square-{x}] WARNING user.code: x is {x}" in lines


@gen_cluster(client=True)
async def test_nothing_is_forwarded_by_default(c, s, a, b):
    assert await quiet.build(3).compute(client=c) == 5
    # a worker's events reach the scheduler before the task's result does
    assert s.get_events(LOG_TOPIC) == ()


@gen_cluster(client=True)
async def test_the_config_key_turns_forwarding_on(c, s, a, b):
    with dask.config.set({"dynflow.log-prints": True}):
        assert await quiet.build(2).compute(client=c) == 1
    texts = [msg["text"] for _, msg in s.get_events(LOG_TOPIC)]
    assert "squaring 1" in texts


@gen_cluster(client=True)
async def test_a_task_option_overrides_the_flow(c, s, a, b):
    @df.flow(log_prints=True)
    def muted(n):
        return total(square.with_options(log_prints=False).map(listed(n)))

    assert await muted.build(2).compute(client=c) == 1
    texts = [msg["text"] for _, msg in s.get_events(LOG_TOPIC)]
    assert texts == ["listing"]


@gen_cluster(client=True)
async def test_failed_items_are_named_by_their_label(c, s, a, b):
    with pytest.raises(df.MapItemError, match=r"at index 1 \(b#1\)") as info:
        await fetch.map(["a", "b", "c"]).compute(client=c)
    assert info.value.labels == {1: "b#1"}
    assert isinstance(info.value.__cause__, ConnectionError)


def test_labels_work_with_local_schedulers():
    with pytest.raises(df.MapItemError, match=r"\(b#1\)"):
        fetch.map(["a", "b"]).compute(scheduler="sync")


def test_bad_options_are_rejected_when_the_task_is_made():
    with pytest.raises(TypeError, match="task_run_name=3"):
        df.task(task_run_name=3)(len)
    with pytest.raises(TypeError, match="log_prints='yes'"):
        df.flow(log_prints="yes")(len)


@df.task(log_prints=True)
def shout(x):
    print(f"shouting {x}")
    return x


@df.flow
def per_item(x):
    return shout(shout(x))


@df.task
def recursing(n):
    if n == 0:
        return shout(n)
    return recursing(n - 1)


@pytest.mark.parametrize("kind", ["sub-flow item", "dynamic task"])
@gen_cluster(client=True)
async def test_prints_of_tasks_made_on_the_cluster_reach_the_client(c, s, a, b, kind):
    """Tasks a splice made (a sub-flow run per item, a graph a task returned) belong to
    the run too: what they print reaches the client that submitted it."""
    await listed(0).compute(client=c)  # installs the client's own handler, replaced next
    expected = 6 if kind == "sub-flow item" else 1
    lines, done = await collect(c, expected=expected)
    if kind == "sub-flow item":
        assert await total(per_item.map(listed(3))).compute(client=c) == 3
    else:
        assert await recursing(3).compute(client=c) == 0
    await asyncio.wait_for(done.wait(), 10)
    wanted = [f"shouting {x}" for x in range(3)] if kind == "sub-flow item" else ["shouting 0"]
    assert all(any(line.endswith(text) for line in lines) for text in wanted), lines
    # what the tracker kept to route them goes with the tasks
    await async_poll_for(lambda: not s.extensions[TRACKER].owners, timeout=5)


def test_a_template_naming_an_unknown_field_is_refused_when_the_task_is_made():
    with pytest.raises(
        TypeError, match=r"task 'f': option task_run_name='x-\{nope\}' names 'nope'"
    ):

        @df.task(task_run_name="x-{nope}")
        def f(x):
            return x

    @df.task(task_run_name="x-{x}-{map_index}-{cfg[k]}")  # parameters, map_index, items
    def g(x, cfg):
        return x

    assert g.name == "g"


@df.task(task_run_name=lambda x: f"item-{x}")  # names only the argument it wants
def labelled(x):
    if x == 2:
        raise ValueError("two")
    return x


@gen_cluster(client=True)
async def test_a_label_callable_gets_the_fields_it_names(c, s, a, b):
    with pytest.raises(df.MapItemError, match=r"at index 2 \(item-2\)"):
        await labelled.map(listed(3)).compute(client=c)
    with pytest.raises(df.MapItemError, match=r"at index 2 \(item-2\)"):
        labelled.map(range(3)).compute(scheduler="sync")


@df.task(log_prints=True, task_run_name="pages-{n}")
def paged(n):
    """A stream whose prints are forwarded, tagged with its label."""
    for i in range(n):
        print(f"page {i}")
        yield i


@gen_cluster(client=True)
async def test_a_streams_prints_are_tagged_with_its_label(c, s, a, b):
    await listed(0).compute(client=c)  # installs the client's own handler, replaced next
    lines, done = await collect(c, expected=3)
    assert await total(square.map(paged(3))).compute(client=c) == 0 + 1 + 4
    await asyncio.wait_for(done.wait(), 10)
    assert [f"[pages-3] page {i}" for i in range(3)] == [x for x in lines if "page " in x]
