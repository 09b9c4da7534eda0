"""dynflow across hosts: network namespaces stand in for four machines.

A ``dask scheduler``, two ``dask worker`` processes and a client script each run on a
"host" of their own: a network namespace joined to a private bridge on a /24 made for
the test (``tests/hosts.py``), and a UTS namespace with the host's name. The processes
know each other only by their addresses on that /24. The client names the scheduler
with ``DASK_DYNFLOW__ADDRESS`` and runs the seed pattern over a list of about 0.5 MB,
a map over ``df.flatten`` of a map, and a chained map. The test checks the results, that
items ran on both worker hosts, and that the client's interface received far fewer bytes
than the list: the list stays on the workers.

Needs root, ``ip`` and ``unshare``; skips without them, unless ``DYNFLOW_REQUIRE_NETNS=1``
(then it fails).
"""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import host_tasks as ht
import hosts
import pytest
from processes import STARTUP_TIMEOUT, subprocess_env, wait_until

SCHEDULER, HOST_A, HOST_B, CLIENT = "scheduler", "host-a", "host-b", "client"
WORKER_HOSTS = (HOST_A, HOST_B)
PORT = 8786  # the scheduler's namespace is private: a fixed port cannot clash
N_ITEMS = 2_000  # the big list: N_ITEMS strings of ht.ITEM_CHARS characters
FACTOR = 3
N_GROUPS = 30  # outer items of the flatten; item i has i % 4 + 1 children
N_CHAINED = 60
RUN_TIMEOUT = 60  # seconds, for the client script, startup included (2 slow cores)

CLIENT_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import time

    import dynflow as df
    import host_tasks as ht

    def rx_bytes():  # this namespace's interface (`ip netns exec` mounts its /sys)
        with open("/sys/class/net/eth0/statistics/rx_bytes") as f:
            return int(f.read())

    n_items, factor, n_groups, n_chained = map(int, sys.argv[1:5])
    client = df.get_client()  # from DASK_DYNFLOW__ADDRESS
    client.wait_for_workers(2, timeout=30)
    workers = sorted(client.scheduler_info()["workers"])

    rx0, t0 = rx_bytes(), time.monotonic()
    seed = ht.summarize(
        ht.tag.map(ht.make_items(n_items), factor=df.unmapped(factor))
    ).compute()
    nested = ht.collect(ht.square.map(df.flatten(ht.expand.map(ht.make_ints(n_groups))))).compute()
    chained = ht.collect(ht.double.map(ht.inc.map(ht.make_ints(n_chained)))).compute()
    seconds, rx1 = time.monotonic() - t0, rx_bytes()

    print(json.dumps({
        "scheduler": client.scheduler.address,
        "workers": workers,
        "seed": seed,
        "nested": nested,
        "chained": chained,
        "run_seconds": seconds,
        "run_rx_bytes": rx1 - rx0,
    }))
    """
)


@pytest.fixture
def network() -> Iterator[hosts.Network]:
    """The four hosts; deleted afterwards, whatever happened."""
    reason = hosts.unavailable()
    if reason:
        hosts.skip_or_fail(reason)
    net = hosts.Network((SCHEDULER, HOST_A, HOST_B, CLIENT))
    try:
        net.create()
    except hosts.NetnsUnavailable as e:
        hosts.skip_or_fail(str(e))
    try:
        yield net
    finally:
        net.close()


def dump_logs(directory: Path) -> None:
    for log in sorted(directory.glob("*.log")):
        sys.stderr.write(f"----- {log.name} -----\n{log.read_text(errors='replace')}\n")


@pytest.mark.slow
def test_dynflow_across_hosts(network, tmp_path):
    started = time.monotonic()
    sched = network.hosts[SCHEDULER]
    address = f"tcp://{sched.ip}:{PORT}"
    env = subprocess_env()  # this tests dir on PYTHONPATH: host_tasks imports everywhere
    dask = [sys.executable, "-m", "dask"]
    servers = {
        SCHEDULER: network.spawn(
            SCHEDULER,
            [*dask, "scheduler", "--host", sched.ip, "--port", str(PORT), "--no-dashboard"],
            tmp_path / "scheduler.log",
            env,
        )
    }
    for name in WORKER_HOSTS:
        worker = [
            *dask, "worker", address,
            "--host", network.hosts[name].ip,
            "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", name,
        ]  # fmt: skip
        servers[name] = network.spawn(name, worker, tmp_path / f"{name}.log", env)
    script = tmp_path / "client_script.py"
    script.write_text(CLIENT_SCRIPT)
    rx_before = network.rx_bytes(CLIENT)
    client = network.spawn(
        CLIENT,
        [sys.executable, str(script), *map(str, (N_ITEMS, FACTOR, N_GROUPS, N_CHAINED))],
        tmp_path / "client.log",
        {
            **env,
            "DASK_DYNFLOW__ADDRESS": address,  # how the client finds the scheduler
            "DASK_DYNFLOW__CONNECT_TIMEOUT": f"{STARTUP_TIMEOUT}s",  # it may start first
        },
    )

    def client_done() -> bool:
        for name, p in servers.items():
            if p.poll() is not None:
                raise AssertionError(f"the process on {name} exited early with rc {p.returncode}")
        return client.poll() is not None

    try:
        wait_until(client_done, RUN_TIMEOUT, "the client script")
        assert client.returncode == 0, f"the client script exited with {client.returncode}"
        rx_client = network.rx_bytes(CLIENT) - rx_before
        lines = (tmp_path / "client.log").read_text().splitlines()  # stderr is there too
        out = json.loads(next(line for line in reversed(lines) if line.startswith("{")))

        # everyone met on the private /24, at the addresses given
        assert out["scheduler"] == address
        assert {w.rsplit(":", 1)[0] for w in out["workers"]} == {
            f"tcp://{network.hosts[n].ip}" for n in WORKER_HOSTS
        }

        # results, exact
        items = ht.make_items.fn(N_ITEMS)
        seed = out["seed"]
        assert seed["count"] == N_ITEMS
        assert seed["total"] == FACTOR * sum(range(N_ITEMS))
        assert seed["chars"] == N_ITEMS * ht.ITEM_CHARS
        children = [c for i in range(N_GROUPS) for c in ht.expand.fn(i)]
        assert [v for v, _ in out["nested"]] == [c * c for c in children]
        assert [v for v, _ in out["chained"]] == [2 * (i + 1) for i in range(N_CHAINED)]

        # items ran on both worker hosts, and only there
        assert set(seed["hosts"]) == set(WORKER_HOSTS), seed["hosts"]
        assert sum(seed["hosts"].values()) == N_ITEMS
        assert {h for _, h in out["nested"]} <= set(WORKER_HOSTS)
        assert {h for _, h in out["chained"]} <= set(WORKER_HOSTS)

        # the list never came through the client: its interface received a small
        # fraction of the list's size, over the whole script (connecting included)
        list_bytes = len(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))
        assert list_bytes > 400_000
        assert 0 < out["run_rx_bytes"] <= rx_client
        assert rx_client < list_bytes / 5, (rx_client, list_bytes)
        print(
            f"list {list_bytes} B; client received {rx_client} B in all, "
            f"{out['run_rx_bytes']} B during the runs ({out['run_seconds']:.2f} s); "
            f"items per host {seed['hosts']}; {time.monotonic() - started:.1f} s in all"
        )
    except BaseException:
        network.stop()
        dump_logs(tmp_path)
        raise


def test_unavailable_namespaces_skip_unless_required(monkeypatch):
    """Without ``ip`` the test skips; with DYNFLOW_REQUIRE_NETNS=1 it fails instead."""
    monkeypatch.setattr(hosts.shutil, "which", lambda program: None)
    monkeypatch.setattr(hosts.os, "geteuid", lambda: 0)
    reason = hosts.unavailable()
    assert reason == "no `ip` program on PATH"
    with pytest.raises(hosts.NetnsUnavailable, match="no `ip` program"):
        hosts.Network(("a",)).create()

    monkeypatch.delenv(hosts.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no `ip` program"):
        hosts.skip_or_fail(reason)
    monkeypatch.setenv(hosts.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="DYNFLOW_REQUIRE_NETNS=1 is set"):
        hosts.skip_or_fail(reason)
