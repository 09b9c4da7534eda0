"""Result caching: the seed pattern with a cached per-item task, missing and hitting.

``reducer(process_cached.map(generate_list(n)))``, where ``process_cached`` is the seed
pattern's trivial per-item function with ``cache=True``: every item's result is written
to the result storage when it misses, and read back instead of running when it hits.
Three runs of the same pipeline, so that the difference is the cache's cost:

- ``time_uncached``: the same task with ``cache=False`` (the baseline);
- ``time_miss``: every item misses (a fresh, empty storage directory per sample): the
  cache key, a lookup that finds nothing, the call, and the entry written;
- ``time_hit``: every item hits (the storage filled by a run in ``setup``): the cache
  key, the entry read and deserialized, the call skipped.

The storage is a local directory (``tempfile.mkdtemp``), removed in ``teardown``.
``setup`` fills the hit storage for every benchmark of the suite (asv does not tell
``setup`` which benchmark follows), so each sample's setup costs one miss run.

The ``track_*`` values, the per-item extra cost of a hit and of a miss over the uncached
run, come from runs made once per environment in ``setup_cache`` on a cluster of its own:
for each N, the best of ``repeat_runs`` runs of each kind (interleaved), and a check that
the hit runs wrote nothing (every item did hit).

Every cluster here is a ``LocalCluster`` of 2 worker processes x 1 thread
(:func:`~benchmarks._util.start_cluster`), started in ``setup`` and closed in
``teardown``. The task function lives in this module, and workers unpickle it by
reference: they import ``benchmarks.cache`` (``start_cluster`` puts ``asv_bench/`` on
``sys.path``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from distributed import Client

import dynflow as df

from ._util import (
    expected,
    generate_list,
    reducer,
    start_cluster,
    stop_cluster,
    wait_idle,
    warm_up,
)
from .map import _WallTimeSuite

STORAGE_PREFIX = "dynflow-bench-cache-"


# ----------------------------------------------------------------- task functions
@df.task(cache=True)
def process_cached(item: int, factor: int) -> int:
    """The seed pattern's per-item work (trivial: the cache's cost dominates), cached."""
    return item * factor


#: the same task, never cached: the baseline
process_uncached = process_cached.with_options(cache=False)


def cached_task(storage: str) -> df.Task:
    """``process_cached`` writing to and reading from ``storage``."""
    return process_cached.with_options(result_storage=storage)


def new_storage() -> str:
    """A fresh, empty local storage directory."""
    return tempfile.mkdtemp(prefix=STORAGE_PREFIX)


def remove_storage(storage: str | None) -> None:
    if storage is not None:
        shutil.rmtree(storage, ignore_errors=True)


def entries(storage: str) -> dict[str, tuple[int, int]]:
    """Every file under ``storage``: its inode and mtime (an entry rewritten by a miss
    is a new file moved into place, so both change)."""
    out = {}
    for folder, _, files in os.walk(storage):
        for name in files:
            st = os.stat(os.path.join(folder, name))
            out[os.path.join(folder, name)] = (st.st_ino, st.st_mtime_ns)
    return out


# -------------------------------------------------------------------- runners
def seed_with(client: Client, task: df.Task, n: int, factor: int = 2) -> int:
    """``reducer(task.map(generate_list(n)))`` on the cluster, checked."""
    out = reducer(task.map(generate_list(n), factor=df.unmapped(factor))).compute(client=client)
    if out != expected(n, factor):
        raise AssertionError(f"{task.name}, n={n}: got {out}, want {expected(n, factor)}")
    return out


def fill(client: Client, task: df.Task, storage: str, n: int) -> None:
    """Run the pipeline once with ``task`` (storing in ``storage``): n entries."""
    seed_with(client, task, n)
    wait_idle(client)
    found = len(entries(storage))
    if found != n:
        raise AssertionError(f"{found} entries in {storage} after a run of {n} items")


def warm_up_cache(client: Client) -> None:
    """:func:`~benchmarks._util.warm_up`, then a small cached run that misses and one that
    hits, and an uncached one: the workers import this module, fsspec and the cache code
    before anything is timed."""
    warm_up(client)
    storage = new_storage()
    try:
        task = cached_task(storage)
        fill(client, task, storage, 100)
        seed_with(client, task, 100)
        seed_with(client, process_uncached, 100)
        wait_idle(client)
    finally:
        remove_storage(storage)


def timed_seed(client: Client, task: df.Task, n: int) -> float:
    """Seconds of one :func:`seed_with` run, started with the scheduler idle."""
    wait_idle(client)
    t0 = time.perf_counter()
    seed_with(client, task, n)
    return time.perf_counter() - t0


def measure(client: Client, n: int, runs: int = 3) -> dict[str, float]:
    """Best of ``runs`` runs of each kind, interleaved (uncached, miss, hit): seconds per
    run and milliseconds per item, and the extra ms per item of a miss and of a hit over
    the uncached run. Every miss run gets a fresh storage; every hit run reads one storage
    filled beforehand, and must leave it as it was (no item was written: all hit)."""
    hit_storage = new_storage()
    try:
        hit_task = cached_task(hit_storage)
        fill(client, hit_task, hit_storage, n)
        before = entries(hit_storage)
        times: dict[str, list[float]] = {"uncached": [], "miss": [], "hit": []}
        for _ in range(runs):
            times["uncached"].append(timed_seed(client, process_uncached, n))
            miss_storage = new_storage()
            try:
                miss_task = cached_task(miss_storage)
                times["miss"].append(timed_seed(client, miss_task, n))
                wait_idle(client)
                if len(entries(miss_storage)) != n:
                    raise AssertionError(f"a miss run of {n} items did not write {n} entries")
            finally:
                remove_storage(miss_storage)
            times["hit"].append(timed_seed(client, hit_task, n))
            if entries(hit_storage) != before:
                raise AssertionError(f"a hit run of {n} items wrote to the storage")
        wait_idle(client)
    finally:
        remove_storage(hit_storage)
    out: dict[str, float] = {"n": n, "runs": runs}
    for kind, samples in times.items():
        out[f"{kind}_s"] = min(samples)
        out[f"{kind}_ms_per_item"] = min(samples) / n * 1e3
        out[f"{kind}_samples"] = samples  # type: ignore[assignment]
    for kind in ("miss", "hit"):
        out[f"{kind}_ms_per_item_extra"] = (out[f"{kind}_s"] - out["uncached_s"]) / n * 1e3
    return out


# ---------------------------------------------------------------------- suites
class CacheSuite(_WallTimeSuite):
    """The seed pattern with ``process`` cached: every item missing, every item hitting,
    and not cached at all (the same task with ``cache=False``); local-disk storage.

    ``time_*`` are wall times of one run, from building the graph to the checked result.
    ``track_*_ms_per_item_extra`` are ``(kind - uncached) / N`` in milliseconds, each
    kind the best of ``repeat_runs`` runs made once per environment in ``setup_cache``.
    """

    params = [1_000, 10_000]
    param_names = ["n"]
    repeat_runs = 3

    def setup_cache(self) -> dict[int, dict[str, float]]:
        cluster, client = start_cluster(processes=True)
        try:
            warm_up_cache(client)
            return {n: measure(client, n, self.repeat_runs) for n in self.params}
        finally:
            stop_cluster(cluster, client)

    def setup(self, figures: dict, n: int) -> None:
        self.miss_storage = self.hit_storage = None
        super().setup()  # the cluster, warmed up
        warm_up_cache(self.client)
        self.miss_storage = new_storage()  # empty: every item misses
        self.miss_task = cached_task(self.miss_storage)
        self.hit_storage = new_storage()  # filled: every item hits
        self.hit_task = cached_task(self.hit_storage)
        fill(self.client, self.hit_task, self.hit_storage, n)

    def teardown(self, figures: dict, n: int) -> None:
        super().teardown()
        remove_storage(self.miss_storage)
        remove_storage(self.hit_storage)

    def time_uncached(self, figures: dict, n: int) -> None:
        """Wall time of the pipeline with n items, ``process`` not cached (baseline)."""
        seed_with(self.client, process_uncached, n)

    def time_miss(self, figures: dict, n: int) -> None:
        """Wall time with n items, every item missing: each result written to local disk."""
        seed_with(self.client, self.miss_task, n)

    def time_hit(self, figures: dict, n: int) -> None:
        """Wall time with n items, every item read from the (filled) local-disk storage."""
        seed_with(self.client, self.hit_task, n)

    def track_hit_ms_per_item_extra(self, figures: dict, n: int) -> float:
        """(best hit run - best uncached run) / n, in ms: what a hit adds per item."""
        return figures[n]["hit_ms_per_item_extra"]

    track_hit_ms_per_item_extra.unit = "ms"

    def track_miss_ms_per_item_extra(self, figures: dict, n: int) -> float:
        """(best miss run - best uncached run) / n, in ms: what a miss adds per item."""
        return figures[n]["miss_ms_per_item_extra"]

    track_miss_ms_per_item_extra.unit = "ms"
