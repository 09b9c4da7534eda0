"""The scripts in ``examples/``, each run as a user would: ``python examples/<name>.py``.

Every example checks its own result against a plain-Python computation and exits
non-zero when they differ; here each one runs in a fresh interpreter, first on its own
embedded LocalCluster, then with ``--address`` against one shared cluster started with
the ``dask`` CLI.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client
from processes import CLICluster, run_python

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TIMEOUT = 60  # seconds for one example (a few seconds each on 2 cores)
EMBEDDED = "dynflow started a local Dask cluster"  # logged at INFO when one is started

# (script, small size arguments, a regular expression the last line of stdout matches)
CASES = [
    ("fan_out", ["--n", "30"], r"^30 items processed on the cluster: "),
    (
        "satellite_tiles",
        ["--n", "5", "--tile-size", "32"],
        r"^5 tiles predicted on the cluster: mosaic 64x96, vegetation [\d.]+% .*accuracy",
    ),
    (
        "accounts_services",
        ["--n", "6", "--failure-rate", "0.5"],
        r"^6 accounts, \d+ services: \d+ requests, \d+ errors "
        r"\(\d+ API calls, [1-9]\d* answered 503 and retried\)$",
    ),
    (
        "hyperparameter_sweep",
        ["--n", "3", "--samples", "200"],
        r"^30 models trained on the cluster; best: degree \d+, alpha ",
    ),
    (
        "monte_carlo",
        ["--n", "20", "--samples", "5000"],
        r"^pi ~ 3\.\d+ from 100000 points in 20 simulations \(batch_size=None\)",
    ),
    (
        "monte_carlo",
        ["--n", "50", "--samples", "2000", "--batch-size", "auto"],
        r"^pi ~ 3\.\d+ from 100000 points in 50 simulations \(batch_size=auto\)",
    ),
    (
        "quad_tree",
        ["--size", "128", "--min-size", "8"],
        r"^quad tree of a 128x128 scene: \d+ regions of 8 to \d+ pixels, [1-9]\d* dynamic "
        r"splits on the cluster",
    ),
    ("typed_pipeline", [], r"^\(40\.0, 4, 8, 44\.0\)$"),
    (
        "parallel_subflows",
        ["--n", "4"],
        r"^3 of 4 data sets summarised in parallel sub-flows, 1 failed: \d+ rows",
    ),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


def example_env() -> dict[str, str]:
    """This checkout's dynflow first on the path; a small embedded cluster; no address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_DYNFLOW__")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["DASK_DYNFLOW__LOCAL_CLUSTER__N_WORKERS"] = "2"
    env["DASK_DYNFLOW__LOCAL_CLUSTER__THREADS_PER_WORKER"] = "1"
    return env


def run_example(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_python([str(EXAMPLES / f"{name}.py"), *args], cwd, TIMEOUT, example_env())


def check(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.search(pattern, last), (pattern, proc.stdout)
    assert "Traceback" not in proc.stderr, proc.stderr


def test_every_example_is_tested():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == {name for name, _, _ in CASES}


@pytest.mark.parametrize(("name", "args", "pattern"), CASES, ids=IDS)
def test_example_on_an_embedded_cluster(name, args, pattern, tmp_path):
    proc = run_example(name, args, tmp_path)
    check(proc, pattern)
    assert EMBEDDED in proc.stderr


@pytest.fixture(scope="module")
def cli_address(tmp_path_factory) -> Iterator[str]:
    """One plain ``dask scheduler`` and two single-threaded ``dask worker`` processes."""
    cluster = CLICluster(tmp_path_factory.mktemp("examples-cluster"))
    client: Client | None = None
    try:
        cluster.start(n_workers=2)
        client = cluster.client(n_workers=2)
        yield client.scheduler.address
    finally:
        if client is not None:
            client.close()
        cluster.stop()


@pytest.mark.parametrize(("name", "args", "pattern"), CASES, ids=IDS)
def test_example_with_address(name, args, pattern, cli_address, tmp_path):
    extra = ["--api-host", "127.0.0.1"] if name == "accounts_services" else []
    proc = run_example(name, [*args, *extra, "--address", cli_address], tmp_path)
    check(proc, pattern)
    assert EMBEDDED not in proc.stderr  # the CLI cluster did the work
