"""``task.map(upstream)``: scheduler-side expansion, and the seed pattern end to end.

Every cluster here is a ``LocalCluster`` of 2 worker processes x 1 thread, started in
``setup`` and closed in ``teardown``; its scheduler runs in the benchmark's own process.
``setup`` also runs the pipeline once with dynflow and once with plain Dask, so that the
scheduler extension is installed and the workers have imported everything before
anything is timed. The per-item function is trivial: what is measured is overhead.
"""

from __future__ import annotations

from ._util import (
    chained,
    install_probe,
    large_unmapped,
    measure_expansion,
    nested,
    run_seed,
    start_cluster,
    stop_cluster,
    stream_all,
    tracker_bytes_per_item,
    warm_up,
)


class _WallTimeSuite:
    """Shared shape of the wall-time suites: one run per sample, a fresh cluster per param."""

    timeout = 600
    number = 1
    repeat = (1, 3, 120.0)
    warmup_time = 0.0

    def setup(self, *params: object) -> None:
        self.cluster, self.client = start_cluster(processes=True)
        warm_up(self.client)

    def teardown(self, *params: object) -> None:
        stop_cluster(self.cluster, self.client)


class ExpansionSuite:
    """From the generator finishing until every per-item task is known to the scheduler.

    Measured on the scheduler by :class:`~benchmarks._util.ExpansionProbe`: from the
    mapped upstream task (``generate_list``) transitioning to memory until dynflow's
    ``dynflow_splice`` handler returns, i.e. the expander has been dispatched and run,
    its RPC received, and the per-item tasks created, wired into the collector and
    transitioned to waiting. The run is cancelled right after the splice (the measured
    interval ends there; running 100,000 items on two workers takes minutes).

    These are ``track_*`` benchmarks because the value is not the wall time of the
    benchmark method itself; each returns the best of ``repeat_runs`` runs.
    """

    params = [1_000, 10_000, 100_000]
    param_names = ["n"]
    timeout = 600
    repeat_runs = 3

    def setup(self, n: int) -> None:
        self.cluster, self.client = start_cluster(processes=True)
        warm_up(self.client)
        self.probe = install_probe(self.client)

    def teardown(self, n: int) -> None:
        stop_cluster(self.cluster, self.client)

    def _best(self, n: int, field: str) -> float:
        runs = [measure_expansion(self.client, self.probe, n) for _ in range(self.repeat_runs)]
        return min(getattr(r, field) for r in runs)

    def track_latency(self, n: int) -> float:
        """Seconds from the generator finishing until all n per-item tasks are waiting."""
        return self._best(n, "latency")

    track_latency.unit = "seconds"

    def track_latency_per_item_us(self, n: int) -> float:
        """track_latency divided by n, in microseconds per item (flat if linear in n)."""
        return self._best(n, "latency") / n * 1e6

    track_latency_per_item_us.unit = "us"

    def track_splice_per_item_us(self, n: int) -> float:
        """The scheduler-side splice alone (no expander round trip), microseconds per item."""
        return self._best(n, "splice") / n * 1e6

    track_splice_per_item_us.unit = "us"


class SeedSuite(_WallTimeSuite):
    """The seed pattern end to end: generate_list -> process.map -> reducer.

    ``time_dynflow`` expands the map inside the scheduler; ``time_plain_dask`` does the
    same with plain Dask on the same kind of cluster, pulling the list to the client:
    ``client.submit(gen)`` -> ``.result()`` -> ``client.map(process, lst)`` ->
    ``client.submit(sum, futures)`` -> ``.result()``. Both check the answer.
    """

    params = [1_000, 10_000]
    param_names = ["n"]

    def time_dynflow(self, n: int) -> None:
        """Wall time of the dynflow pipeline with n items and default options (items
        grouped: batch_size="adaptive"), from building the graph to the result."""
        run_seed("dynflow", self.client, n)

    def time_dynflow_per_item(self, n: int) -> None:
        """Wall time of the dynflow pipeline with one scheduler task per item
        (``batch_size=None``; the default groups items: ``"adaptive"``)."""
        run_seed("dynflow-per-item", self.client, n)

    def time_dynflow_batched_auto(self, n: int) -> None:
        """Wall time of the dynflow pipeline with batch_size="auto" (8 tasks per thread)."""
        run_seed("dynflow-auto", self.client, n)

    def time_plain_dask(self, n: int) -> None:
        """Wall time of the same pipeline in plain Dask, the list pulled to the client."""
        run_seed("dask", self.client, n)

    def peakmem_dynflow(self, n: int) -> None:
        """Peak RSS of this process (client and scheduler) over a dynflow run with n items."""
        run_seed("dynflow", self.client, n)

    def peakmem_plain_dask(self, n: int) -> None:
        """Peak RSS of this process (client and scheduler) over a plain Dask run with n items."""
        run_seed("dask", self.client, n)


class BatchedSeedSuite(_WallTimeSuite):
    """The seed pattern with ``batch_size="auto"`` up to a million items.

    ``peakmem_*`` is the peak RSS of this process, which runs the client and the
    scheduler (the workers are other processes): it stays flat as N grows because
    neither holds anything per item.
    """

    params = [1_000, 10_000, 100_000, 1_000_000]
    param_names = ["n"]

    def time_dynflow_auto(self, n: int) -> None:
        """Wall time of the batched pipeline with n items, graph building to result."""
        run_seed("dynflow-auto", self.client, n)

    def peakmem_dynflow_auto(self, n: int) -> None:
        """Peak RSS of the client-and-scheduler process over a batched run with n items."""
        run_seed("dynflow-auto", self.client, n)

    def track_scheduler_bytes_per_item(self, n: int) -> float:
        """Bytes per item the scheduler's run tracker keeps for a finished batched run
        (the dashboard's items table; kept for each run in the history)."""
        return tracker_bytes_per_item(self.client, n)

    track_scheduler_bytes_per_item.unit = "bytes"  # type: ignore[attr-defined]


class AsCompletedSuite(_WallTimeSuite):
    """``df.as_completed`` over a batched map: every item's value streamed to this process.

    ``peakmem_*`` is the peak RSS of this process (client and scheduler): flat as N grows,
    because the client holds a bounded window of results (``client_memory.py
    --as-completed`` measures the client alone).
    """

    params = [10_000, 1_000_000]
    param_names = ["n"]

    def time_as_completed_auto(self, n: int) -> None:
        """Wall time to stream every item's value, batch_size="auto"."""
        stream_all(self.client, n)

    def peakmem_as_completed_auto(self, n: int) -> None:
        """Peak RSS while every item's value is streamed, batch_size="auto"."""
        stream_all(self.client, n)


class ChainedSuite(_WallTimeSuite):
    """Two chained maps ``g.map(f.map(items))``, expanded together and run item by item."""

    params = [1_000, 10_000]
    param_names = ["n"]

    def time_chained(self, n: int) -> None:
        """Wall time of generate_list -> f.map -> g.map -> reducer with n items."""
        chained(self.client, n)


class NestedSuite(_WallTimeSuite):
    """A map over ``flatten`` of a map: the children expand per parent, on the cluster."""

    params = [[10, 100], [100]]
    param_names = ["parents", "children"]

    def time_nested(self, parents: int, children: int) -> None:
        """Wall time of parents -> children.map -> process.map(flatten(...)) -> reducer."""
        nested(self.client, parents, children)


class LargeArgumentSuite(_WallTimeSuite):
    """A map whose items all receive one large array (``df.unmapped``): the array is a
    key of its own, sent to each worker once, not inside each item's task."""

    params = [[100], [40]]
    param_names = ["n", "mbytes"]

    def time_large_unmapped(self, n: int, mbytes: int) -> None:
        """Wall time of n items that each read the same mbytes MB array."""
        large_unmapped(self.client, n, mbytes)
