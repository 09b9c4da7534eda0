"""dynflow against real processes started from the CLI: `dask scheduler`, `dask worker`.

The task functions live in ``tests/remote_tasks.py`` so that the scheduler and the
workers (which get this directory on their PYTHONPATH) can unpickle them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import remote_tasks as rt
from distributed import Client
from processes import TESTS_DIR, CLICluster, run_python, subprocess_env, wait_until

import dynflow as df

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[CLICluster, Client]]:
    """A plain ``dask scheduler`` (no preload) and two single-threaded workers."""
    c = CLICluster(tmp_path_factory.mktemp("cli-cluster"))
    client = None
    try:
        c.start(n_workers=2)
        client = c.client(n_workers=2)
        c.extension_at_start = has_extension(client)
        yield c, client
    finally:
        if client is not None:
            client.close()
        c.stop()


@pytest.fixture
def client(cluster) -> Client:
    return cluster[1]


def scheduler_task_count(client: Client) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def has_extension(client: Client) -> bool:
    return client.run_on_scheduler(
        lambda dask_scheduler: (
            "dynflow" in dask_scheduler.plugins and "dynflow_splice" in dask_scheduler.handlers
        )
    )


def test_seed_pattern_on_a_plain_cli_scheduler(cluster, client):
    assert not cluster[0].extension_at_start  # a plain scheduler: no dynflow yet
    assert rt.seed.build(50, 3).compute(client=client) == 3 * sum(range(50))


def test_the_extension_is_installed_by_the_client_on_first_use(client):
    rt.seed.build(3, 1).compute(client=client)
    assert has_extension(client)


def tasks_added(client: Client) -> int:
    """How many per-item tasks the scheduler extension has spliced in so far."""
    return client.run_on_scheduler(
        lambda dask_scheduler: dask_scheduler.extensions["dynflow"].tasks_added
    )


def test_scheduler_holds_no_tasks_after_the_run(client):
    node = rt.reducer(rt.process.map(rt.generate_list(20), factor=df.unmapped(2)))
    node.compute(client=client)  # installs the extension, if no test did before
    before = tasks_added(client)
    node = rt.reducer(rt.process.map(rt.generate_list(20), factor=df.unmapped(2)))
    assert node.compute(client=client) == 2 * sum(range(20))
    assert tasks_added(client) - before == 20  # spliced into the live scheduler
    wait_until(lambda: scheduler_task_count(client) == 0, 5, "the scheduler to forget")


def test_items_run_on_both_workers(client):
    # Start from an empty scheduler: distributed spreads the items over the workers
    # only while it sees them as "root-ish", which needs the upstream task group
    # ("generate_list", shared by every run) to be small; leftovers of earlier runs
    # that are not forgotten yet would send all items to the worker holding the list.
    wait_until(lambda: scheduler_task_count(client) == 0, 5, "the scheduler to forget")
    workers = set(client.scheduler_info()["workers"])
    assert len(workers) == 2
    addresses = rt.collect(rt.where.map(rt.generate_list(40))).compute(client=client)
    assert len(addresses) == 40
    assert set(addresses) == workers


def test_remote_task_error_keeps_its_type_and_traceback(client):
    with pytest.raises(rt.RemoteItemError, match="item 3 is bad") as info:
        rt.fail_on(3, bad=3).compute(client=client)
    tb = "".join(traceback.format_tb(info.value.__traceback__))
    assert "fail_on" in tb
    assert "remote_tasks.py" in tb


def test_remote_item_error_reaches_the_caller_with_its_type_and_traceback(client):
    node = rt.collect(rt.fail_on.map(rt.generate_list(5), bad=df.unmapped(3)))
    with pytest.raises(df.MapItemError, match="fail_on") as info:
        node.compute(client=client)
    assert info.value.failed == [3] and info.value.total == 5
    # the item's own exception, unchanged, with the traceback from the worker
    cause = info.value.__cause__
    assert type(cause) is rt.RemoteItemError
    assert str(cause) == "item 3 is bad"
    tb = "".join(traceback.format_tb(cause.__traceback__))
    assert "fail_on" in tb
    assert "remote_tasks.py" in tb


def test_a_later_run_after_an_error_still_works(client):
    with pytest.raises(df.MapItemError):
        rt.collect(rt.fail_on.map(rt.generate_list(4), bad=df.unmapped(0))).compute(client=client)
    assert rt.seed.build(10, 3).compute(client=client) == 3 * sum(range(10))
    wait_until(lambda: scheduler_task_count(client) == 0, 5, "the scheduler to forget")


def test_scheduler_started_with_the_preload(tmp_path):
    c = CLICluster(tmp_path)
    client = None
    try:
        c.start(n_workers=1, scheduler_args=("--preload", "dynflow.scheduler"))
        client = c.client(n_workers=1)
        # before any dynflow compute: the preload installed the extension
        assert has_extension(client)
        node = rt.reducer(rt.process.map(rt.generate_list(12), factor=df.unmapped(5)))
        assert node.compute(client=client) == 5 * sum(range(12))
    finally:
        if client is not None:
            client.close()
        c.stop()


DISCOVERY_SCRIPT = textwrap.dedent(
    """
    import psutil
    import remote_tasks as rt

    import dynflow as df

    node = rt.reducer(rt.process.map(rt.generate_list(7), factor=df.unmapped(3)))
    print("result", node.compute())
    print("flow", rt.seed(4, 10))
    print("address", df.get_client().scheduler.address)
    print("same-client", df.get_client() is df.get_client())
    print("children", len(psutil.Process().children(recursive=True)))
    """
)


def test_address_from_the_environment_is_used(cluster, tmp_path):
    cli, client = cluster
    address = client.scheduler.address
    script = tmp_path / "discover.py"
    script.write_text(DISCOVERY_SCRIPT)
    env = subprocess_env()
    env["DASK_DYNFLOW__ADDRESS"] = address
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["result"] == str(3 * sum(range(7)))
    assert lines["flow"] == str(10 * sum(range(4)))
    assert lines["address"] == address  # the CLI scheduler, not a LocalCluster
    assert lines["same-client"] == "True"
    assert lines["children"] == "0"  # no LocalCluster worker processes
    assert "LocalCluster" not in proc.stderr
    assert "started a local Dask cluster" not in proc.stderr
    # the first run there says, once, where the dynflow page is (a plain scheduler: the
    # run added it), or that the scheduler has no dashboard
    said = proc.stderr.count("dynflow: runs on ") + proc.stderr.count("has no dashboard")
    assert said == 1, proc.stderr
    assert "tcp://" not in proc.stderr.split("dynflow: ", 1)[1].split("\n", 1)[0]
    # the script's client has disconnected, and it left no tasks behind
    wait_until(
        lambda: (
            set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients)))
            <= {client.id, "fire-and-forget"}
        ),
        5,
        "the script's client to disconnect",
    )
    wait_until(lambda: scheduler_task_count(client) == 0, 5, "the scheduler to forget")
    assert len(client.scheduler_info()["workers"]) == 2
    assert psutil.pid_exists(cli.procs[0].pid)


def test_fan_out_example_against_the_cli_scheduler(client, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(TESTS_DIR.parent / "examples" / "fan_out.py"),
            "--n",
            "30",
            "--address",
            client.scheduler.address,
        ],
        env=subprocess_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert "30 items processed" in proc.stdout


LONG_RUN = textwrap.dedent(
    """
    import sys
    import remote_tasks as rt
    import dynflow as df

    # one task per item: the test counts the items in the scheduler
    node = rt.reducer(
        rt.slow_item.map(rt.generate_list(400), df.unmapped(0.1), batch_size=None)
    )
    print("submitting", flush=True)
    if sys.argv[1:] == ["submit"]:
        print(node.submit().result(), flush=True)
    else:
        print(node.compute(), flush=True)
    """
)


def start_script(address: str, tmp_path: Path, how: str = "compute") -> subprocess.Popen:
    script = tmp_path / "long_run.py"
    script.write_text(LONG_RUN)
    env = subprocess_env()
    env["DASK_DYNFLOW__ADDRESS"] = address
    env["DASK_DYNFLOW__CONNECT_TIMEOUT"] = "5s"
    return subprocess.Popen(
        [sys.executable, str(script), how],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def items_in_scheduler(client: Client) -> int:
    return client.run_on_scheduler(
        lambda dask_scheduler: sum(
            isinstance(k, tuple) and k[0].startswith("slow_item") for k in dask_scheduler.tasks
        )
    )


def test_ctrl_c_in_a_script_leaves_no_orphan_tasks(client, tmp_path):
    wait_until(lambda: scheduler_task_count(client) == 0, 5, "an empty scheduler")
    proc = start_script(client.scheduler.address, tmp_path)
    try:
        wait_until(lambda: items_in_scheduler(client) == 400, 60, "the map to expand")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    # the run's tasks are all dropped: nothing keeps running on the cluster
    wait_until(lambda: scheduler_task_count(client) == 0, 20, "the scheduler to forget")


@pytest.mark.parametrize("how", ["compute", "submit"])
def test_losing_the_scheduler_gives_a_clear_error_not_a_hang(tmp_path, how):
    """``compute()`` and ``RunFuture.result()`` give the same error."""
    c = CLICluster(tmp_path)
    c.start(n_workers=1)
    watcher = c.client(n_workers=1)
    try:
        proc = start_script(watcher.scheduler.address, tmp_path, how)
        wait_until(lambda: items_in_scheduler(watcher) == 400, 60, "the map to expand")
        watcher.close()
        c.procs[0].kill()  # the scheduler dies mid-run
        started = time.monotonic()
        try:
            _, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
        elapsed = time.monotonic() - started
    finally:
        c.stop()
    assert proc.returncode != 0
    assert "SchedulerLostError: lost the connection to the scheduler" in err, err[-3000:]
    assert elapsed < 60, f"the client took {elapsed:.0f} s to report the lost scheduler"


def test_an_exception_only_the_workers_can_import_still_arrives_as_map_item_error(cluster):
    """The client cannot import the failed item's exception class: the MapItemError
    arrives all the same, the cause a RemoteError standing in for it."""
    c, client = cluster
    (c.directory / "worker_only_errors.py").write_text(
        "class WorkerOnlyError(Exception):\n    pass\n"
    )
    with pytest.raises(df.MapItemError, match=r"1 of 3 items failed, at index 1") as info:
        rt.reducer(rt.fail_with_worker_only_error.map([0, 1, 2], 1)).compute(client=client)
    cause = info.value.__cause__
    assert isinstance(cause, df.RemoteError)
    assert cause.type_name == "worker_only_errors.WorkerOnlyError"
    assert "item 1 is bad" in str(cause) and "WorkerOnlyError" in str(info.value)
    # a plain task: a stand-in named after the original class
    with pytest.raises(df.RemoteError, match="WorkerOnlyError: item 1 is bad"):
        rt.fail_with_worker_only_error(1, 1).compute(client=client)
    with pytest.raises(df.RemoteError, match="WorkerOnlyError"):
        rt.fail_with_worker_only_error(1, 1).submit(client=client).result()


SCRIPT_ERROR = textwrap.dedent(
    """
    import dynflow as df

    class ScriptError(Exception):
        pass

    @df.task
    def numbers(n):
        return list(range(n))

    @df.task
    def check(x):
        if x == 3:
            raise ScriptError(f"{x} is bad")
        return x

    if __name__ == "__main__":
        for batch in (None, 2):
            try:
                check.map(numbers(5), batch_size=batch).compute()
            except df.MapItemError as e:
                cause = e.__cause__
                print(batch, e.failed, type(cause).__name__, cause, isinstance(cause, ScriptError))
    """
)


def test_an_exception_class_of_the_script_arrives_from_a_batched_map(client, tmp_path):
    """An exception class defined in the script's ``__main__`` (which the workers of a
    remote cluster do not have) travels by value, also from inside a batch."""
    script = tmp_path / "script_error.py"
    script.write_text(SCRIPT_ERROR)
    env = subprocess_env()
    env["DASK_DYNFLOW__ADDRESS"] = client.scheduler.address
    proc = run_python([str(script)], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "None [3] ScriptError 3 is bad True",
        "2 [3] ScriptError 3 is bad True",
    ]


def test_as_completed_against_a_cli_cluster(client):
    m = rt.process.map(rt.generate_list(300), 2, batch_size=7)
    before = scheduler_task_count(client)
    pairs = list(df.as_completed(m, client=client))
    assert sorted(pairs) == [(i, 2 * i) for i in range(300)]
    left = client.run_on_scheduler(lambda dask_scheduler: sorted(map(str, dask_scheduler.tasks)))
    wait_until(
        lambda: scheduler_task_count(client) <= before, 10, f"the scheduler to forget {left}"
    )


BLOCK_DYNFLOW = textwrap.dedent(
    """
    import sys

    class _NoDynflow:  # a broken install: the metadata is there, the import fails
        def find_spec(self, name, path=None, target=None):
            if name == "dynflow" or name.startswith("dynflow."):
                raise ImportError("dynflow's dependencies are missing here")

    sys.meta_path.insert(0, _NoDynflow())
    """
)


def test_a_worker_that_cannot_import_dynflow_is_named_at_once(tmp_path):
    """Its version metadata passes; its tasks would fail to unpickle again and again.
    dynflow imports itself on every process first and names the one that fails."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_DYNFLOW)
    cluster = CLICluster(tmp_path, worker_env={"PYTHONPATH": f"{site}:{TESTS_DIR}"})
    client = None
    try:
        cluster.start(n_workers=1)
        client = cluster.client(n_workers=1)
        (worker,) = client.scheduler_info()["workers"]
        start = time.monotonic()
        with pytest.raises(df.ExtensionError) as info:
            rt.seed.build(3, 1).compute(client=client)
        assert time.monotonic() - start < 20
        message = str(info.value)
        assert f"worker {worker} cannot import dynflow" in message
        assert "dynflow's dependencies are missing here" in message
        assert "the scheduler cannot" not in message
    finally:
        if client is not None:
            client.close()
        cluster.stop()
