"""Streaming sources (README "Streaming sources"): a generator task mapped over.

A LocalCluster of 2 worker processes x 1 thread per param, as ``map.py``'s suites.
"""

from __future__ import annotations

from ._util import run_seed, start_cluster, stop_cluster, stream_latency, warm_up


class StreamSuite:
    """The seed pattern over a stream against the same over a list (target: <= 1.2x)."""

    timeout = 600
    number = 1
    repeat = (1, 3, 120.0)
    warmup_time = 0.0
    params = [1_000, 20_000]
    param_names = ["n"]

    def setup(self, n: int) -> None:
        self.cluster, self.client = start_cluster(processes=True)
        warm_up(self.client)
        run_seed("dynflow-stream", self.client, 10)

    def teardown(self, n: int) -> None:
        stop_cluster(self.cluster, self.client)

    def time_stream(self, n: int) -> None:
        """generate_stream -> process.map -> reducer, default options."""
        run_seed("dynflow-stream", self.client, n)

    def time_stream_per_item(self, n: int) -> None:
        """The same with one scheduler task per item."""
        run_seed("dynflow-stream-per-item", self.client, n)

    def time_list(self, n: int) -> None:
        """The same pipeline over a list (the seed), for the ratio."""
        run_seed("dynflow", self.client, n)


class StreamLatencySuite:
    """Milliseconds from a yield to its item starting, on an idle cluster (< 100 ms)."""

    timeout = 300
    number = 1
    repeat = 1
    unit = "ms"

    def setup(self) -> None:
        self.cluster, self.client = start_cluster(processes=True)
        warm_up(self.client)

    def teardown(self) -> None:
        stop_cluster(self.cluster, self.client)

    def track_latency_median(self) -> float:
        ms = sorted(x * 1e3 for x in stream_latency(self.client, 20))
        return ms[len(ms) // 2]
