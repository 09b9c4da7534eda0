"""df.as_completed holds at most ``dynflow.as-completed.window-bytes`` of results at once.

The results are :class:`Blob` objects that count themselves as they arrive in this
process (unpickled): with one worker, which never unpickles a result (no transfers),
every Blob unpickled here is one the client received, so :data:`PEAK` is the most bytes
of results the client held at any moment, whatever held them (a window, a batch, a
slice, a leftover reference), measured at each arrival.
"""

from __future__ import annotations

import sys
import weakref

import dask.config
import pytest
from distributed.utils_test import gen_cluster
from utils import generate_list, no_tasks_left

import dynflow as df
from dynflow.client._connect import install

#: the Blobs alive in this process that arrived over the network
LIVE: weakref.WeakSet = weakref.WeakSet()
#: the most bytes those held at once
PEAK = [0]


class Blob:
    """``size`` bytes of data; nbytes as the scheduler counts it (``sizeof``)."""

    __slots__ = ("__weakref__", "data")

    def __init__(self, size: int) -> None:
        self.data = bytes(size)

    def __sizeof__(self) -> int:
        return sys.getsizeof(self.data) + 32

    def __reduce__(self):
        return (_arrived, (self.data,))


def _arrived(data: bytes) -> Blob:
    """A Blob unpickled: counted while it lives."""
    blob = Blob.__new__(Blob)
    blob.data = data
    LIVE.add(blob)
    PEAK[0] = max(PEAK[0], sum(len(b.data) for b in LIVE))
    return blob


@df.task
def blob(i, size):
    return Blob(size)


async def held_at_most(stream, n: int, size: int) -> int:
    """Iterate ``stream`` (``n`` items of ``size`` bytes), holding nothing of its own;
    the most bytes the client held at once."""
    PEAK[0] = 0
    seen = []
    async for i, value in stream:
        assert len(value.data) == size
        seen.append(i)
        del value  # the loop's own reference: the client's window is what is measured
    assert sorted(seen) == list(range(n))
    return PEAK[0]


ITEM = 100_000  # bytes per item
BOUND = 1_000_000  # the window's bound: about 10 items


@pytest.mark.parametrize(
    "batch_size, n",
    [
        (None, 40),  # tasks of 100 kB: ~9 to a window, not 32
        ("auto", 80),  # batches of 5 items (one worker, 2 threads): one or two to a window
        (25, 50),  # batches of 2.5 MB: each in slices of ~9 items
    ],
)
@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)])
async def test_the_client_holds_at_most_window_bytes_of_results(c, s, a, batch_size, n):
    with dask.config.set({"dynflow.as-completed.window-bytes": BOUND}):
        stream = df.as_completed(blob.map(generate_list(n), ITEM, batch_size=batch_size), client=c)
    # read when as_completed() was called, not while iterating
    assert dask.config.get("dynflow.as-completed.window-bytes") != BOUND
    peak = await held_at_most(stream, n, ITEM)
    assert ITEM <= peak <= BOUND, f"the client held {peak} bytes at once (bound {BOUND})"
    await no_tasks_left(s)


@pytest.mark.parametrize("batch_size", [None, 3])
@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)])
async def test_a_task_bigger_than_the_bound_still_comes_alone(c, s, a, batch_size):
    """Progress: an item bigger than the bound is fetched alone; a batch of them, one
    item at a time. Never more than one item at once."""
    big = 300_000
    with dask.config.set({"dynflow.as-completed.window-bytes": "100kB"}):
        stream = df.as_completed(blob.map(generate_list(6), big, batch_size=batch_size), client=c)
        peak = await held_at_most(stream, 6, big)
    assert peak == big
    await no_tasks_left(s)


def test_a_synchronous_loop_holds_at_most_window_bytes(client):
    """A plain ``for`` with a synchronous client (workers in other processes: every
    Blob unpickled in this process is the client's)."""
    n = 60
    with dask.config.set({"dynflow.as-completed.window-bytes": BOUND}):
        stream = df.as_completed(blob.map(generate_list(n), ITEM, batch_size=20), client=client)
    PEAK[0] = 0
    seen = []
    for i, value in stream:
        assert len(value.data) == ITEM
        seen.append(i)
        del value
    assert sorted(seen) == list(range(n))
    assert ITEM <= PEAK[0] <= BOUND, f"the client held {PEAK[0]} bytes at once"


@gen_cluster(client=True)
async def test_the_bound_has_a_default_and_the_scheduler_refuses_a_bad_window(c, s, a, b):
    assert dask.utils.parse_bytes(dask.config.get("dynflow.as-completed.window-bytes")) > 0
    await install(c)
    for bad in ({"limit": 0}, {"limit": 10, "max_bytes": -1}, {"limit": 10, "wait": "x"}):
        reply = await c.scheduler.dynflow_stream_next(stream_id="none", **bad)
        assert reply["status"] == "error", reply
        assert next(iter(bad.keys() - {"limit"}), "limit") in reply["message"]
