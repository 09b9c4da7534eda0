"""The embedded LocalCluster, each test in a fresh interpreter (``sys.executable``).

Every child runs without ``DASK_DYNFLOW__ADDRESS``, in its own session, so that on a
timeout the whole process group (the LocalCluster's worker processes included) is killed.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from processes import run_python

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 90  # seconds for one child interpreter, under pytest's 120 s per test


def run_script(source: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return run_python([str(script)], cwd=tmp_path)


def alive_after(children: list[list], timeout: float) -> list[str]:
    """Of the ``(pid, create_time, cmdline)`` processes, those running after ``timeout``.

    Zombies count as gone. Any process still running is killed before returning.
    """

    def running() -> list[psutil.Process]:
        out = []
        for pid, created, _ in children:
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    deadline = time.monotonic() + timeout
    while (alive := running()) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the condition, bounded by the deadline
    leaked = []
    for p in alive:
        try:
            leaked.append(" ".join(p.cmdline()))
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return leaked


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


IMPORT_SCRIPT = """
    import json
    import threading

    import psutil
    import distributed
    import distributed.client

    threads_before = threading.active_count()
    import dynflow
    import dynflow.scheduler  # the preload module, too

    print(json.dumps({
        "threads_before": threads_before,
        "threads_after": threading.active_count(),
        "global_clients": len(distributed.client._global_clients),
        "children": len(psutil.Process().children(recursive=True)),
    }))
"""


def test_import_starts_nothing(tmp_path):
    proc = run_script(IMPORT_SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = last_json(proc.stdout)
    assert info["threads_after"] == info["threads_before"]
    assert info["global_clients"] == 0
    assert info["children"] == 0
    assert proc.stderr == ""


EMBEDDED_SCRIPT = """
    import json
    import logging
    import urllib.request

    import psutil
    from distributed import LocalCluster

    import dynflow as df

    logging.basicConfig(level=logging.INFO)


    @df.task
    def generate_list(n):
        return list(range(n))


    @df.task
    def process(item, factor):
        return item * factor


    @df.task
    def reducer(results):
        return sum(results)


    @df.flow
    def seed(n, factor):
        return reducer(process.map(generate_list(n), factor=df.unmapped(factor)))


    # the guard is needed: the LocalCluster spawns worker processes, which import
    # this module again
    if __name__ == "__main__":
        first = df.get_client()
        r1 = seed(20, 3)
        children = sorted(
            (p.pid, p.create_time(), " ".join(p.cmdline())[-80:])
            for p in psutil.Process().children(recursive=True)
        )
        second = df.get_client()
        r2 = seed.build(10, 2).compute()
        base = first.dashboard_link.rsplit("/", 1)[0]
        page = urllib.request.urlopen(base + "/individual-dynflow")
        view = json.load(urllib.request.urlopen(df.dashboard_link() + "view.json"))
        runs = json.load(urllib.request.urlopen(base + "/dynflow/runs.json"))
        print(json.dumps({
            "page": page.status,
            "view": [view["run"] != "", "dynflow-node" in view["html"]],
            "runs": [r["name"] for r in runs],
            "same_client": first is second,
            "local_cluster": isinstance(first.cluster, LocalCluster),
            "same_cluster": first.cluster is second.cluster,
            "r1": r1,
            "r2": r2,
            "children": children,
            "pids_after_second_use":
                sorted(p.pid for p in psutil.Process().children(recursive=True)),
            "dashboard": first.dashboard_link,
    }))
"""


def test_embedded_cluster_is_started_once_reused_and_closed_at_exit(tmp_path):
    proc = run_script(EMBEDDED_SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = last_json(proc.stdout)
    assert info["r1"] == 3 * sum(range(20))
    assert info["r2"] == 2 * sum(range(10))
    assert info["same_client"] and info["same_cluster"]
    # the dynflow dashboard page is there, and its data holds both runs, newest first
    assert info["page"] == 200
    assert info["view"] == [True, True]  # the page itself (df.dashboard_link()), drawn
    assert info["runs"] == ["seed", "seed"]
    assert info["local_cluster"]
    # one LocalCluster: its worker processes were there after the first use, and the
    # second use started no more
    assert info["children"]
    assert info["pids_after_second_use"] == [pid for pid, _, _ in info["children"]]
    # the dashboard link is logged at INFO, once
    started = [line for line in proc.stderr.splitlines() if "dashboard" in line]
    assert len(started) == 1, proc.stderr
    assert "http://" in started[0] and info["dashboard"] in started[0]
    # closed at exit: the worker processes go away with the interpreter (some may still
    # be finishing their own shutdown when it has exited: wait for that, bounded)
    assert not alive_after(info["children"], timeout=15)
    assert "Traceback" not in proc.stderr, proc.stderr


def test_fan_out_example_runs(tmp_path):
    proc = run_python([str(REPO / "examples" / "fan_out.py"), "--n", "30"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "30 items processed" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def test_compute_inside_a_task_on_the_embedded_cluster(tmp_path):
    """Inside a task, dynflow uses the cluster the task runs on: no LocalCluster is
    started inside a worker process, and a one-thread worker does not deadlock."""
    proc = run_script(
        """
        import dask
        import dynflow as df

        @df.task
        def inc(x):
            return x + 1

        @df.flow
        def inner(n):
            return inc(n)

        @df.task
        def add(a, b):
            return a + b

        @df.task
        def outer(n):
            # a flow called inside a task is its output node; returned, it runs in the
            # task's place; node.compute() runs on the task's cluster and waits
            return add(inner(n), inc(n).compute())

        if __name__ == "__main__":
            with dask.config.set({"dynflow.local-cluster.n-workers": 1,
                                  "dynflow.local-cluster.threads-per-worker": 1}):
                print(outer(1).compute())
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "4"
    assert "daemonic" not in proc.stderr


def test_dask_scheduler_address_is_honoured(tmp_path):
    """distributed's own ``scheduler-address`` (DASK_SCHEDULER_ADDRESS) is used when
    ``dynflow.address`` is not set: no embedded cluster is started."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, processes=False, protocol="tcp", dashboard_address=":0"
    ) as cluster:
        script = tmp_path / "script.py"
        script.write_text(
            textwrap.dedent(
                """
                import dynflow as df

                @df.task
                def inc(x):
                    return x + 1

                if __name__ == "__main__":
                    print(inc(1).compute(), df.get_client().scheduler.address)
                """
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_DYNFLOW__")}
        env["DASK_SCHEDULER_ADDRESS"] = cluster.scheduler_address
        proc = run_python([str(script)], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", cluster.scheduler_address]


def test_a_script_without_a_main_guard_fails_at_once_saying_what_to_add(tmp_path):
    proc = run_script(
        """
        import dynflow as df

        @df.task
        def inc(x):
            return x + 1

        def main():
            return inc.map([1, 2]).compute()

        print(main())
        """,
        tmp_path,
    )
    assert proc.returncode != 0
    assert 'Put that code under `if __name__ == "__main__":`' in proc.stderr
    assert "script.py, line 11" in proc.stderr
    assert len(proc.stderr.splitlines()) < 30, proc.stderr  # no wall of tracebacks
