"""dynflow on a TLS-secured cluster started from the CLI (``dask scheduler --protocol tls``).

A CA and a certificate/key per role (scheduler, worker, client) are made with the
``openssl`` program (tests/tls_certs.py). The user's script is run as a user would run
it: it sets nothing but dask config (environment variables) and uses dynflow's own API.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import Client
from distributed.security import Security
from processes import STARTUP_TIMEOUT, CLICluster, run_python, subprocess_env, wait_until
from tls_certs import TLSFiles, make_certs

pytestmark = pytest.mark.slow

SCRIPT_TIMEOUT = 60  # seconds, for a client script (2 slow cores)


@dataclass
class TLSCluster(CLICluster):
    """A ``dask scheduler --protocol tls`` and ``dask worker tls://...`` processes."""

    certs: TLSFiles | None = None

    @property
    def address(self) -> str:
        return json.loads(self.scheduler_file.read_text())["address"]

    def start(self, n_workers: int, scheduler_args: tuple[str, ...] = ()) -> None:
        assert self.certs is not None
        tls = ("--protocol", "tls", *self.certs.cli_args("scheduler"))
        super().start(n_workers=0, scheduler_args=(*tls, *scheduler_args))
        try:
            wait_until(self._file_ready, STARTUP_TIMEOUT, "the scheduler file")
        except BaseException:
            self.dump_logs()
            raise
        for i in range(n_workers):  # as a user would: the scheduler's tls:// address
            self._spawn(
                f"worker-{i}",
                [
                    "worker",
                    self.address,
                    *self.certs.cli_args("worker"),
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--no-nanny",
                    "--name",
                    f"w{i}",
                ],
            )

    def security(self) -> Security:
        assert self.certs is not None
        return Security(
            require_encryption=True,
            tls_ca_file=str(self.certs.ca_file),
            tls_client_cert=str(self.certs.certs["client"]),
            tls_client_key=str(self.certs.keys["client"]),
        )

    def client(self, n_workers: int) -> Client:
        try:
            c = Client(
                self.address,
                security=self.security(),
                timeout=STARTUP_TIMEOUT,
                set_as_default=False,
            )
            if n_workers:
                c.wait_for_workers(n_workers, timeout=STARTUP_TIMEOUT)
        except BaseException:
            self.dump_logs()
            raise
        return c


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> TLSFiles:
    return make_certs(tmp_path_factory.mktemp("tls-certs"))


@contextmanager
def tls_cluster(
    directory: Path, certs: TLSFiles, n_workers: int, preload: bool
) -> Iterator[tuple[TLSCluster, Client]]:
    """A TLS cluster and a (TLS) client of the test's own; everything stopped at the end."""
    directory.mkdir()
    cluster = TLSCluster(directory, certs=certs)
    client = None
    try:
        cluster.start(n_workers, ("--preload", "dynflow.scheduler") if preload else ())
        client = cluster.client(n_workers)
        yield cluster, client
    finally:
        if client is not None:
            client.close()
        cluster.stop()


def has_extension(client: Client) -> bool:
    return client.run_on_scheduler(
        lambda dask_scheduler: (
            "dynflow" in dask_scheduler.plugins and "dynflow_splice" in dask_scheduler.handlers
        )
    )


# The user's script: tasks in __main__ (shipped by value), the cluster from dask config.
USER_SCRIPT = textwrap.dedent(
    """
    import json
    import time

    import dynflow as df


    @df.task
    def generate_list(n):
        return list(range(n))


    @df.task(retries=2)
    def process(item, factor):
        return item * factor


    @df.task
    def reducer(results):
        return sum(results)


    @df.task
    def upto(n):
        return list(range(n))


    @df.task
    def square(x):
        return x * x


    @df.task
    def collect(results):
        return list(results)


    @df.flow
    def seed(n, factor):
        return reducer(process.map(generate_list(n), factor=df.unmapped(factor)))


    if __name__ == "__main__":
        out = {"seed": seed(30, 3)}
        nested = upto.map(generate_list(5))  # [[], [0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
        out["flatten"] = collect(square.map(df.flatten(nested))).compute()
        chained = square.map(process.map(generate_list(6), factor=df.unmapped(2)))
        out["chained"] = collect(chained).compute()
        (future,) = df.submit(seed.build(12, 1))
        out["submitted"] = future.result(timeout=30)
        deadline = time.monotonic() + 10
        info = future.run.info()
        while info["state"] != "finished" and time.monotonic() < deadline:
            time.sleep(0.05)
            info = future.run.info()
        out["run"] = {
            "state": info["state"],
            "counts": {n.label: info["nodes"][n.key] for n in future.run.graph.nodes},
        }
        client = df.get_client()
        out["address"] = client.scheduler.address
        out["workers"] = sorted(client.scheduler_info()["workers"])
        print("RESULT " + json.dumps(out))
    """
)


def run_user_script(cluster: TLSCluster, directory: Path, **config: str) -> dict:
    script = directory / "pipeline.py"
    script.write_text(USER_SCRIPT)
    env = subprocess_env()
    env.update(config)
    start = time.monotonic()
    proc = run_python([str(script)], cwd=directory, timeout=SCRIPT_TIMEOUT, env=env)
    if proc.returncode != 0:
        cluster.dump_logs()
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < SCRIPT_TIMEOUT
    (line,) = (line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def check_results(out: dict, cluster: TLSCluster) -> None:
    assert out["seed"] == 3 * sum(range(30))
    assert out["flatten"] == [x * x for n in range(5) for x in range(n)]
    assert out["chained"] == [(2 * i) ** 2 for i in range(6)]
    assert out["submitted"] == sum(range(12))
    run = out["run"]
    assert run["state"] == "finished"
    assert run["counts"]["process.map()"] == {
        "total": 12,
        "pending": 0,
        "running": 0,
        "done": 12,
        "failed": 0,
        "cached": 0,
    }
    assert run["counts"]["reducer"]["done"] == 1
    # the script used the TLS scheduler from its config, and every worker is on TLS
    assert out["address"] == cluster.address
    assert out["address"].startswith("tls://127.0.0.1:")
    assert len(out["workers"]) == 2
    assert all(w.startswith("tls://") for w in out["workers"])


def tls_config(cluster: TLSCluster, certs: TLSFiles) -> dict[str, str]:
    return {"DASK_DYNFLOW__ADDRESS": cluster.address, **certs.client_env()}


def test_pipeline_on_a_tls_scheduler_with_the_preload(certs, tmp_path):
    with tls_cluster(tmp_path / "cluster", certs, n_workers=2, preload=True) as (cluster, client):
        assert cluster.address.startswith("tls://")
        assert has_extension(client)  # the preload installed it
        out = run_user_script(cluster, tmp_path, **tls_config(cluster, certs))
        check_results(out, cluster)


def test_pipeline_on_a_plain_tls_scheduler(certs, tmp_path):
    with tls_cluster(tmp_path / "cluster", certs, n_workers=2, preload=False) as (cluster, client):
        assert not has_extension(client)
        out = run_user_script(cluster, tmp_path, **tls_config(cluster, certs))
        check_results(out, cluster)
        assert has_extension(client)  # installed by the script's client, over TLS


FAILING_SCRIPT = textwrap.dedent(
    """
    import dynflow as df

    @df.task
    def one():
        return 1

    if __name__ == "__main__":
        print(one().compute())
    """
)


def test_a_plain_tcp_connection_to_the_tls_scheduler_fails_at_once(certs, tmp_path):
    with tls_cluster(tmp_path / "cluster", certs, n_workers=0, preload=False) as (cluster, _):
        env = subprocess_env()
        env["DASK_DYNFLOW__ADDRESS"] = cluster.address.replace("tls://", "tcp://", 1)
        env["DASK_DYNFLOW__CONNECT_TIMEOUT"] = "30s"  # it fails long before this
        proc, elapsed = run_failing_script(tmp_path, env)
        assert elapsed < 20, proc.stderr  # an error, not a wait for the timeout
        assert "CommClosedError" in last_line(proc), proc.stderr
        log = cluster.directory / "scheduler.log"
        wait_until(
            lambda: "TLS handshake failed" in log.read_text(errors="replace"),
            5,
            "the scheduler to log the failed handshake",
        )


def test_a_tls_address_without_certificates_fails_with_a_clear_error(certs, tmp_path):
    with tls_cluster(tmp_path / "cluster", certs, n_workers=0, preload=False) as (cluster, _):
        env = subprocess_env()
        env["DASK_DYNFLOW__ADDRESS"] = cluster.address  # but no distributed.comm.tls.*
        proc, elapsed = run_failing_script(tmp_path, env)
        # dynflow names the missing keys before it connects (distributed alone fails with
        # a bare TypeError, then waits twice the connect timeout at exit)
        assert "distributed's TLS configuration is missing" in proc.stderr, proc.stderr
        assert "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in proc.stderr
        assert f"dynflow.address {cluster.address!r}" in proc.stderr
        assert elapsed < 20
        # the same from distributed's own key: the error names the key that was set
        del env["DASK_DYNFLOW__ADDRESS"]
        env["DASK_SCHEDULER_ADDRESS"] = cluster.address
        proc, elapsed = run_failing_script(tmp_path, env)
        assert f"scheduler-address {cluster.address!r}" in proc.stderr, proc.stderr
        assert elapsed < 20


def run_failing_script(
    directory: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess, float]:
    script = directory / "one.py"
    script.write_text(FAILING_SCRIPT)
    start = time.monotonic()
    proc = run_python([str(script)], cwd=directory, timeout=SCRIPT_TIMEOUT, env=env)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0, proc.stdout
    return proc, elapsed


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else ""
