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
