"""Result caching on real processes: a run resumes from the result storage on a new
cluster after the whole old one (scheduler and every worker) was killed mid-map, and a
rerun after a failed item redoes only that item.

The clusters are ``dask`` CLI processes (:class:`~processes.CLICluster`, two workers of
one thread each); the task functions live in ``tests/cache_tasks.py``, which the workers
import by reference. Every time a cached task's function really runs it appends its item
to a log file (one ``O_APPEND`` write, so two workers leave whole lines): the tests count
executions from that file, across clusters. The storage is a ``tmp_path`` directory, and
which items it holds is read from the entries themselves (their values are ``2 * item``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from pathlib import Path

import cache_tasks as ct
import pytest
from distributed import Client
from distributed.protocol import deserialize_bytes
from processes import STOP_TIMEOUT, CLICluster, wait_until

import dynflow as df

pytestmark = pytest.mark.slow

N = 20  # items of the killed map
SECONDS = 0.2  # each item's work
FREE = 10  # runs that go on at once; later ones wait for the gate file (opened after the kill)
K = 6  # entries stored before the cluster is killed (at least)


def stored_items(storage: Path, task: str) -> set[int]:
    """The items whose entries ``storage`` holds for ``task`` (an entry's value is
    ``2 * item``; temporary files of writes in progress are not entries)."""
    folder = storage / task
    if not folder.exists():
        return set()
    items = set()
    for path in folder.iterdir():
        if ".tmp-" not in path.name:
            _, value = deserialize_bytes(path.read_bytes())
            items.add(value // 2)
    return items


def map_counts(future: df.RunFuture, task: str) -> dict:
    """The run's counts of the map of ``task`` (units are items)."""
    info = future.run.info()
    return next(v for k, v in info["nodes"].items() if task in k)


@pytest.fixture
def clusters() -> Iterator[Callable[[Path], tuple[CLICluster, Client]]]:
    """Starts CLI clusters (scheduler, two one-thread workers) in a directory each; all
    of them stopped, their clients closed, at the end."""
    started: list[CLICluster] = []
    clients: list[Client] = []

    def start(directory: Path) -> tuple[CLICluster, Client]:
        directory.mkdir()
        cluster = CLICluster(directory)
        started.append(cluster)
        cluster.start(n_workers=2)
        client = cluster.client(n_workers=2)
        clients.append(client)
        return cluster, client

    try:
        yield start
    finally:
        for client in clients:
            client.close(timeout=STOP_TIMEOUT)
        for cluster in started:
            cluster.stop()


def resume_flow(storage: Path, log: Path, gate: Path, batch_size: int | None) -> df.Node:
    """The flow of the kill test: the same graph, so the same cache keys, every time."""
    double = ct.logged_double.with_options(result_storage=str(storage))
    items = double.map(
        ct.generate_list(N),
        log=df.unmapped(str(log)),
        seconds=df.unmapped(SECONDS),
        gate=df.unmapped(str(gate)),
        free=df.unmapped(FREE),
        batch_size=batch_size,
    )
    return ct.total(items)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_a_new_cluster_resumes_after_the_whole_cluster_was_killed_mid_map(
    tmp_path, clusters, batch_size
):
    """Unbatched, and in batches of 4 (each item of a batch stored as it finishes: a
    batch in flight at the loss reruns, its stored items read back)."""
    storage, log, gate = tmp_path / "results", tmp_path / "runs.log", tmp_path / "go"
    expected = 2 * sum(range(N))

    # 1. the first cluster runs the flow until at least K items are stored ...
    first, client = clusters(tmp_path / "first")
    future = resume_flow(storage, log, gate, batch_size).submit(client=client)
    wait_until(lambda: len(stored_items(storage, "logged_double")) >= K, 60, f"{K} stored items")
    # ... then the scheduler and every worker die at once
    for proc in first.procs:
        proc.kill()
    for proc in first.procs:
        proc.wait(timeout=STOP_TIMEOUT)
    with pytest.raises(df.SchedulerLostError, match="lost the connection to the scheduler"):
        future.result(timeout=30)
    client.close(timeout=STOP_TIMEOUT)
    del future

    # what the lost cluster left: nothing runs any more, so this is final
    stored_before = stored_items(storage, "logged_double")
    ran_before = ct.read_log(str(log))
    assert len(stored_before) >= K
    assert len(stored_before) <= FREE, "a gated item finished before the kill"
    assert max(collections.Counter(ran_before).values()) == 1, ran_before
    assert stored_before <= set(ran_before)
    # started but not stored: the items in flight at the loss (one per worker thread)
    in_flight = set(ran_before) - stored_before
    assert len(in_flight) <= 2, (sorted(ran_before), sorted(stored_before))

    # 2. a fresh cluster runs the same flow to completion
    gate.touch()
    _, client = clusters(tmp_path / "second")
    future = resume_flow(storage, log, gate, batch_size).submit(client=client)
    assert future.result(timeout=60) == expected
    counts = map_counts(future, "logged_double")
    del future

    ran = ct.read_log(str(log))
    ran_second = ran[len(ran_before) :]
    times = collections.Counter(ran)
    assert set(times) == set(range(N)), "an item never ran"
    # each item stored before the loss ran exactly once in total (not in the second run)
    assert all(times[i] == 1 for i in stored_before), times
    assert not stored_before & set(ran_second)
    # only the items in flight at the loss ran twice; none more often
    assert {i for i, n in times.items() if n > 1} <= in_flight, times
    assert max(times.values()) <= 2, times
    # the second run ran every item not stored before the loss, once each
    assert sorted(ran_second) == sorted(set(range(N)) - stored_before)
    assert len(ran_second) == N - len(stored_before)
    assert counts["cached"] == len(stored_before), counts
    assert counts["done"] == N - len(stored_before), counts
    assert counts["failed"] == 0 and counts["total"] == N, counts
    assert stored_items(storage, "logged_double") == set(range(N))

    # 3. once more: every item read from the storage, nothing runs
    assert resume_flow(storage, log, gate, batch_size).compute(client=client) == expected
    assert ct.read_log(str(log)) == ran


@pytest.mark.parametrize("batch_size", [None, 3])
def test_a_rerun_redoes_only_the_failed_item(tmp_path, clusters, batch_size):
    n, bad = 8, 3
    storage, log, flag = tmp_path / "results", tmp_path / "runs.log", tmp_path / "fail"
    _, client = clusters(tmp_path / "cluster")

    def flow() -> df.Node:
        double = ct.flaky_double.with_options(result_storage=str(storage))
        items = double.map(
            ct.generate_list(n),
            log=df.unmapped(str(log)),
            bad=df.unmapped(bad),
            flag=df.unmapped(str(flag)),
            batch_size=batch_size,
        )
        return ct.total(items)

    flag.touch()
    with pytest.raises(df.MapItemError, match=f"at index {bad}"):
        flow().compute(client=client)
    assert sorted(ct.read_log(str(log))) == list(range(n))
    # a failed call is never written
    assert stored_items(storage, "flaky_double") == set(range(n)) - {bad}

    flag.unlink()
    future = flow().submit(client=client)
    assert future.result(timeout=60) == 2 * sum(range(n))
    ran = ct.read_log(str(log))
    assert ran[n:] == [bad], ran  # the rerun ran only the failed item
    assert collections.Counter(ran) == {i: 2 if i == bad else 1 for i in range(n)}
    counts = map_counts(future, "flaky_double")
    assert counts["cached"] == n - 1 and counts["done"] == 1 and counts["total"] == n, counts
    assert stored_items(storage, "flaky_double") == set(range(n))
