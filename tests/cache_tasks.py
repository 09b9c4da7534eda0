"""Task functions for the result-caching tests on real processes (tests/test_cache_resume.py).

They live in an importable module because the CLI-started workers must unpickle them by
reference (those processes get this directory on their PYTHONPATH). Each cached task
appends one line, its item, to a log file every time its function really runs (a call
read from the result storage does not run, so it writes nothing): the tests count
executions from that file, across clusters.
"""

from __future__ import annotations

import os
import time

import dynflow as df

GATE_TIMEOUT = 60  # seconds a gated item waits for its gate file before it fails


def log_run(log: str, item: int) -> None:
    """Append ``<item>\\n`` to ``log`` in one ``O_APPEND`` write: concurrent writers (two
    worker processes) leave whole lines."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{item}\n".encode())
    finally:
        os.close(fd)


def read_log(log: str) -> list[int]:
    """The items logged so far, in the order they started."""
    try:
        with open(log) as f:
            return [int(line) for line in f.read().splitlines()]
    except FileNotFoundError:
        return []


@df.task
def generate_list(n):
    return list(range(n))


@df.task
def total(xs):
    return sum(xs)


@df.task(cache=True)
def logged_double(item, log, seconds, gate, free):
    """Logs its run and works ``seconds``; a run that finds more than ``free`` runs in
    the log (its own included) then waits until the file ``gate`` exists, whichever item
    it is (workers do not take a map's items in index order). So a first run of more
    than ``free`` items cannot finish before the test creates the gate. The wait is
    bounded: past it the item fails."""
    log_run(log, item)
    held = len(read_log(log)) > free  # the runs logged so far, this one included
    time.sleep(seconds)
    if held:
        deadline = time.monotonic() + GATE_TIMEOUT
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"item {item}: no gate file {gate} after {GATE_TIMEOUT} s")
            time.sleep(0.05)
    return item * 2


@df.task(cache=True)
def flaky_double(item, log, bad, flag):
    """Logs its run; item ``bad`` fails while the file ``flag`` exists."""
    log_run(log, item)
    if item == bad and os.path.exists(flag):
        raise ValueError(f"item {item} fails (flag {flag} is set)")
    return item * 2
