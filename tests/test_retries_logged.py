"""Retries say so: each retry is logged on the worker (as Prefect logs it), forwarded to
the client with ``log_prints``, and counted per node in the views."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest
from distributed.utils_test import captured_logger, gen_cluster

import dynflow as df
from dynflow._protocol import FORWARD_TOPIC
from dynflow.views._render import short_repr_counts

#: calls so far, per (test, x): the in-process workers of gen_cluster share it
CALLS: Counter = Counter()
LOCK = threading.Lock()


def _attempt(tag: str, x: int) -> int:
    with LOCK:
        CALLS[tag, x] += 1
        return CALLS[tag, x]


@df.task(retries=3, task_run_name="acct-{x}", retry_on=(ConnectionError,))
def flaky(tag, x):
    if x % 2 and _attempt(tag, x) < 3:  # odd items fail twice, then succeed
        raise ConnectionError(f"down {x}")
    return x


@df.task
def numbers(n):
    return list(range(n))


@df.task
def total(xs):
    return sum(xs)


@pytest.mark.parametrize("batch", [None, 2])
@gen_cluster(client=True)
async def test_each_retry_is_logged_and_counted(c, s, a, b, batch):
    tag = f"cluster-{batch}"
    with captured_logger("dynflow.retries") as log:
        m = flaky.map(df.unmapped(tag), numbers(4), batch_size=batch)
        (fut,) = await df.submit_async(total(m), client=c)
        assert await fut == 6
    lines = log.getvalue().splitlines()
    assert len(lines) == 4, lines  # items 1 and 3, twice each
    assert (
        "flaky item 3 (acct-3): attempt 1 of 4 failed with ConnectionError('down 3'); "
        "retrying in 0.0 s" in lines
    ), lines
    assert (
        "flaky item 1 (acct-1): attempt 2 of 4 failed with ConnectionError('down 1'); "
        "retrying in 0.0 s" in lines
    ), lines
    info = await fut.run.info()
    (key,) = [n.key for n in fut.run.graph.nodes if n.label == "flaky.map()"]
    counts = info["nodes"][key]
    assert counts["retries"] == 4 and counts["done"] == 4, counts
    grouped = "" if batch is None else ", in 2 tasks"  # batch_size=2 groups them
    assert short_repr_counts(counts) == "4/4 done, 4 retries" + grouped
    plain = [n.key for n in fut.run.graph.nodes if n.label.startswith("total")]
    assert "retries" not in info["nodes"][plain[0]]  # only nodes that retried say so


def test_retries_are_logged_in_sync_mode():
    with captured_logger("dynflow.retries") as log:
        assert df.compute(total(flaky.map("sync", numbers(2))), scheduler="sync") == (1,)
        assert flaky("sync-plain", 5).compute(scheduler="sync") == 5
    lines = log.getvalue().splitlines()
    assert lines == [
        "flaky item 1 (acct-1): attempt 1 of 4 failed with ConnectionError('down 1'); "
        "retrying in 0.0 s",
        "flaky item 1 (acct-1): attempt 2 of 4 failed with ConnectionError('down 1'); "
        "retrying in 0.0 s",
        "flaky (acct-5): attempt 1 of 4 failed with ConnectionError('down 5'); retrying in 0.0 s",
        "flaky (acct-5): attempt 2 of 4 failed with ConnectionError('down 5'); retrying in 0.0 s",
    ]


@gen_cluster(client=True)
async def test_with_log_prints_the_client_sees_each_retry(c, s, a, b):
    await numbers(0).compute(client=c)  # installs the client's handler, replaced next
    lines: list[str] = []
    got = asyncio.Event()

    def handler(event):
        _, msg = event
        lines.append(f"[{msg['tag']}] {msg['text']}")
        if sum("retrying" in line for line in lines) >= 2:
            got.set()

    c.subscribe_topic(FORWARD_TOPIC, handler)
    noisy = flaky.with_options(log_prints=True)
    assert await noisy("forwarded", 7).compute(client=c) == 7
    await asyncio.wait_for(got.wait(), 10)
    assert (
        "[acct-7] WARNING dynflow.retries: flaky (acct-7): attempt 1 of 4 failed with "
        "ConnectionError('down 7'); retrying in 0.0 s"
    ) in lines, lines
