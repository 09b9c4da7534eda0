"""Task functions for the real-process tests (tests/test_remote.py).

They live in an importable module (not in the test file) because the scheduler and the
workers started from the CLI must unpickle them: those processes get this directory on
their PYTHONPATH.
"""

from __future__ import annotations

import dynflow as df


class RemoteItemError(Exception):
    """Raised by :func:`fail_on` on a worker; must reach the caller with this type."""


@df.task
def generate_list(n):
    return list(range(n))


@df.task
def process(item, factor):
    return item * factor


@df.task
def reducer(results):
    return sum(results)


@df.task
def where(item):
    """The address of the worker that ran this item, after a little work."""
    from distributed import get_worker

    sum(i * i for i in range(20_000))
    return get_worker().address


@df.task
def collect(results):
    return list(results)


@df.task
def fail_on(item, bad):
    if item == bad:
        raise RemoteItemError(f"item {item} is bad")
    return item


@df.flow
def seed(n, factor):
    return reducer(process.map(generate_list(n), factor=df.unmapped(factor)))


@df.task
def slow_item(item, seconds):
    """An item that takes a while (stands for real work)."""
    import time

    time.sleep(seconds)
    return item


@df.task
def fail_with_worker_only_error(item, bad):
    """Raises an exception whose class only the workers can import (a module written
    into the workers' directory by the test)."""
    import worker_only_errors

    if item == bad:
        raise worker_only_errors.WorkerOnlyError(f"item {item} is bad")
    return item


# ------------------------------------------------------------------ dynamic tasks
# (tests/test_dynamic_cluster.py): a task whose function returns nodes has their graph
# spliced into the scheduler in its place.


@df.task
def add(a, b):
    return a + b


@df.task
def fib(n):
    """Recursive: each call returns a graph of two calls and an addition."""
    return n if n < 2 else add(fib(n - 1), fib(n - 2))


@df.task
def step(state, n):
    """A tail loop: each step returns the next one, until the state reaches n."""
    return state if state >= n else step(state + 1, n)


@df.task
def fan_out(n, factor):
    """Returns a map: the seed pattern runs in the task's place."""
    return reducer(process.map(generate_list(n), factor=df.unmapped(factor)))


@df.task
def gate(x, event):
    """Passes ``x`` on once the test has set the ``distributed.Event`` named ``event``."""
    from distributed import Event

    if not Event(event).wait(timeout=60):
        raise TimeoutError(f"the event {event!r} was not set")
    return x


@df.task
def gated_fib_sum(n, event):
    """fib(n) + fib(n - 1), the second term held at a gate until the test's event."""
    return add(fib(n), gate(fib(n - 1), event))


@df.task
def held_countdown(n, event):
    """Not a tail call: depth n, each level waits for the one below; the bottom one
    waits for the test's event."""
    return gate(0, event) if n == 0 else add(held_countdown(n - 1, event), 1)


@df.task
async def async_fib(n):
    import asyncio

    await asyncio.sleep(0)
    return n if n < 2 else add(async_fib(n - 1), async_fib(n - 2))


@df.task
async def async_step(state, n):
    import asyncio

    await asyncio.sleep(0)
    return state if state >= n else async_step(state + 1, n)


@df.task
async def async_fan_out(n, factor):
    import asyncio

    await asyncio.sleep(0)
    return reducer(process.map(generate_list(n), factor=df.unmapped(factor)))
