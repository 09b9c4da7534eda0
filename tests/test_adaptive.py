"""Adaptive clusters: spliced items count for the scheduler's scaling decisions."""

from __future__ import annotations

import time

import pytest
from distributed import Client, LocalCluster
from processes import wait_until
from utils import generate_list

import dynflow as df

pytestmark = pytest.mark.slow


@df.task
def slow_item(x):
    time.sleep(0.3)  # stands for real work
    return x


@df.task
def total(xs):
    return sum(xs)


def test_an_adaptive_cluster_scales_up_for_a_map_and_back_down():
    """The map's length is known only on the cluster; once its items are spliced the
    adaptive cluster sees their work, adds workers, and removes them afterwards."""
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        cluster.adapt(minimum=1, maximum=4, interval="100ms", target_duration="1s", wait_count=2)
        (fut,) = df.submit(total(slow_item.map(generate_list(40))), client=client)
        most = 0

        def scaled_up() -> bool:
            nonlocal most
            most = max(most, len(client.scheduler_info()["workers"]))
            return most >= 3

        wait_until(scaled_up, 30, "the adaptive cluster to scale up")
        assert fut.result(timeout=60) == sum(range(40))
        wait_until(
            lambda: len(client.scheduler_info()["workers"]) == 1,
            30,
            "the adaptive cluster to scale back down",
        )
