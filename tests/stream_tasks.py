"""Streaming sources' tasks, importable by workers in other processes (by reference)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

from distributed import Event

import dynflow as df

#: what items ran and how often (workers in this process only), and the source's lead
SEEN: dict[int, int] = {}
LEAD = [0]  # the most items yielded ahead of those processed
LOCK = threading.Lock()
ATTEMPTS = [0]


def reset() -> None:
    with LOCK:
        SEEN.clear()
        LEAD[0] = 0
        ATTEMPTS[0] = 0


@df.task
def numbers(n):
    """The plainest stream: 0, 1, ..., n - 1."""
    yield from range(n)


@df.task
async def anumbers(n):
    """An async generator."""
    for i in range(n):
        await asyncio.sleep(0)
        yield i


@df.task
def annotated(n) -> Iterator[int]:
    """A plain function that returns an iterator, annotated so."""
    return iter(range(n))


@df.task
def listed(n):
    return list(range(n))


@df.task
def inc(x):
    return x + 1


@df.task
def record(x):
    """Counts each item it sees (in-process workers)."""
    with LOCK:
        SEEN[x] = SEEN.get(x, 0) + 1
    return x


@df.task
def fails_on(x, bad):
    if x == bad:
        raise KeyError(f"item {x}")
    return x


@df.task
def pair(x):
    return [x, x]


@df.task
def total(xs):
    return sum(xs)


@df.task
def lockstep(n, prefix):
    """Yields item i only once item i - 1 was processed downstream: only a map that
    starts items while the source runs can finish it."""
    for i in range(n):
        yield i
        if not Event(f"{prefix}-{i}").wait(timeout=30):
            raise TimeoutError(f"item {i} was not processed while the source waited")


@df.task
def mark(x, prefix):
    Event(f"{prefix}-{x}").set()
    return 2 * x


@df.task
def fails_after(n, message):
    """Yields n items, then raises."""
    yield from range(n)
    raise ValueError(message)


@df.task(retries=1, retry_delay=0.05)
def flaky_source(n, fail_at):
    """Fails once, at item ``fail_at`` (in-process workers), then yields all n."""
    for i in range(n):
        if i == fail_at and ATTEMPTS[0] == 0:
            ATTEMPTS[0] += 1
            raise ConnectionError("the page timed out")
        yield i


@df.task
def watched(n):
    """Yields n items, noting how far ahead of the processed ones it ran."""
    for i in range(n):
        with LOCK:
            LEAD[0] = max(LEAD[0], i - len(SEEN))
        yield i


@df.task
def gated(n, gate_from, event):
    """Yields n items; before item ``gate_from`` it waits for ``event`` (set after a kill)."""
    for i in range(n):
        if i == gate_from:
            assert Event(event).wait(timeout=60)
        yield i


@df.task
def payload(n, size):
    """n items of ``size`` random bytes each."""
    for _ in range(n):
        yield os.urandom(size)


@df.task
def length(b):
    return len(b)


RUNNING = [0, 0]  # items of `busy` running now, and the most at once


@df.task
def busy(x):
    """Takes 20 ms, counting how many run at once (in-process workers)."""
    import time

    with LOCK:
        RUNNING[0] += 1
        RUNNING[1] = max(RUNNING[1], RUNNING[0])
    time.sleep(0.02)
    with LOCK:
        RUNNING[0] -= 1
    return x


@df.task
def rowsum(row):
    """The sum of one row of an array."""
    return float(sum(row))


@df.task(priority=5)
def inc_first(x):
    """inc, with a priority: its graph's tasks carry annotations."""
    return x + 1


def ten_times(x):
    return 10 * x


def wait_for_first(part, event):
    """A bag partition's function: partition 1 waits until an item of partition 0 ran."""
    if part and part[0] != 0:
        assert Event(event).wait(timeout=30), "no item of partition 0 ran first"
    return part


@df.task
def first_item_done(x, event):
    if x == 0:
        Event(event).set()
    return x


@df.flow
def summed_stream(n):
    """A sub-flow holding a stream, mapped per item."""
    return total(inc.map(numbers(n)))


@df.task
def returns_stream_pipeline(n):
    """A dynamic task whose returned graph holds a stream."""
    return total(inc.map(numbers(n)))


STOPPED = threading.Event()


@df.task
def endless(gap):
    """Yields forever, slowly; notes when it is stopped (in-process workers)."""
    import time

    try:
        i = 0
        while True:
            yield i
            i += 1
            time.sleep(gap)
    finally:
        STOPPED.set()


@df.task(pure=True)
def slow_numbers(n, gap):
    """A pure stream (its key is the same in every run), yielding slowly."""
    import time

    for i in range(n):
        yield i
        time.sleep(gap)


@df.task
def unpicklable(n, at):
    """Yields n items; item ``at`` is a lock (it cannot be pickled)."""
    for i in range(n):
        yield threading.Lock() if i == at else i


@df.task(timeout=0.5)
def too_slow(n):
    """A source whose items come slower than its timeout allows in all."""
    import time

    for i in range(n):
        time.sleep(0.1)
        yield i


@df.task
def size_of(x):
    """The length of a list, or an array's shape."""
    return getattr(x, "shape", None) or len(x)


@df.task
def gated_logged(n, gate_from, event, log):
    """``gated``, noting each call of the function in the file ``log`` (any process)."""
    import time

    with open(log, "a") as f:
        f.write("call\n")
    for i in range(n):
        if i == gate_from:
            assert Event(event).wait(timeout=60)
        yield i
        time.sleep(0.005)  # a chunk every 2 items or so


def fail_on_three(part):
    """A bag partition's function: the partition holding 3 fails."""
    if 3 in part:
        raise KeyError("partition with 3")
    return part
