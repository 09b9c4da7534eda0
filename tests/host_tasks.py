"""Task functions for the multi-host test (tests/test_hosts.py).

Importable, like ``tests/remote_tasks.py``, because the scheduler and the workers, each
in its own network namespace, must unpickle them (they get this directory on their
PYTHONPATH). Every per-item task says which host it ran on (``socket.gethostname()``:
each process of the test runs in its own UTS namespace with the host's name).
"""

from __future__ import annotations

import collections
import socket

import dynflow as df

ITEM_CHARS = 250  # each item of make_items: a string this long


def item(i: int) -> str:
    """Item ``i`` of :func:`make_items`: its index, then padding up to ITEM_CHARS."""
    return f"{i:08d}".ljust(ITEM_CHARS, "x")


@df.task
def make_items(n):
    """The big list: it must stay on the workers, never reach the client."""
    return [item(i) for i in range(n)]


@df.task
def tag(it, factor):
    """``(index * factor, length, host)``: small, whatever the item's size."""
    sum(i * i for i in range(2_000))  # a little work, as a real item would do
    return int(it[:8]) * factor, len(it), socket.gethostname()


@df.task
def summarize(results):
    """What the client gets back from the big map: a few numbers and a host count."""
    hosts = collections.Counter(host for _, _, host in results)
    return {
        "count": len(results),
        "total": sum(v for v, _, _ in results),
        "chars": sum(n for _, n, _ in results),
        "hosts": dict(hosts),
    }


@df.task
def make_ints(n):
    return list(range(n))


@df.task
def expand(i):
    """Item ``i`` of the outer map becomes ``i % 4 + 1`` children."""
    return [10 * i + j for j in range(i % 4 + 1)]


@df.task
def square(x):
    return x * x, socket.gethostname()


@df.task
def inc(x):
    return x + 1


@df.task
def double(x):
    return 2 * x, socket.gethostname()


@df.task
def collect(results):
    return list(results)
