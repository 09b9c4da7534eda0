"""Peer systems on the seed pattern, for ``compare.py``: Prefect 3 and Ray.

Each peer is a context manager that sets the system up, yields ``run(n) -> int`` (the
seed pattern, generate_list -> per-item process -> reduce, trivial per-item work,
returning the reduced value), and tears everything down on exit, whatever happens:

- :func:`prefect_threads`: Prefect 3, ``@flow`` with its default ``ThreadPoolTaskRunner``,
  capped at ``max_workers`` threads (uncapped, it started one thread per mapped task in
  an earlier trial: about 4,900 threads at N = 10k, until its API server answered 503).
- :func:`prefect_dask`: the same flow with prefect-dask's ``DaskTaskRunner`` on its own
  ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``.
- :func:`ray_seed`: Ray, ``ray.init(num_cpus=2)``; remote generate, ``ray.get`` the list,
  one remote task per item, a remote reducer over all of them.
- :func:`ray_fib`: Ray nested tasks for ``compare.py --dynamic``: the recursive ``fib(n)``
  submitting its two calls from inside the task and waiting for them with ``ray.get``.

Both Prefect peers talk to ONE ``prefect server`` (:func:`prefect_server`), started as a
subprocess on 127.0.0.1 with a throw-away ``PREFECT_HOME`` and stopped on exit; the
flow's process and every Dask worker get its ``PREFECT_API_URL``. (With Prefect's
default ephemeral API every worker process would start a server of its own.) Telemetry
is off (``PREFECT_SERVER_ANALYTICS_ENABLED=false``, ``DO_NOT_TRACK=1``; Ray:
``RAY_USAGE_STATS_ENABLED=0``) and Prefect logs at WARNING, so that the per-task-run
INFO lines neither flood the output nor travel to the API. The server keeps ingesting a
run's events for a while after the flow returned (:meth:`PrefectServer.wait_quiet`);
``compare.py`` waits for it to go quiet before each run and reports its CPU time.

:func:`missing` says which packages a peer lacks (``compare.py`` then prints
``skipped: ...``); nothing here imports a peer's package before it is needed, so this
module imports without them. The task functions are defined inside the context managers
and travel to Ray's and Dask's workers by value (cloudpickle), so workers need not
import this module.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psutil

#: the packages each peer needs, and how the comparison installed them
REQUIRES: dict[str, tuple[str, ...]] = {
    "prefect-threads": ("prefect",),
    "prefect-dask": ("prefect", "prefect_dask"),
    "ray": ("ray",),
}
INSTALL = {  # fastapi 0.155+ breaks `prefect server start` of prefect 3.8.8 (Body(min_items=))
    "prefect-threads": 'pip install "prefect>=3.8,<3.9" "fastapi<0.155"',
    "prefect-dask": 'pip install "prefect>=3.8,<3.9" "fastapi<0.155" prefect-dask',
    "ray": "pip install ray",
}

#: default cap on the ThreadPoolTaskRunner's threads (Prefect's own default: unbounded)
PREFECT_THREADS = 8


def missing(system: str) -> list[str]:
    """The packages ``system`` needs that cannot be imported here (no import done)."""
    lacking = []
    for module in REQUIRES[system]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            lacking.append(module)
    return lacking


def expected(n: int, factor: int = 2) -> int:
    return factor * n * (n - 1) // 2


# ------------------------------------------------------------------ driver memory
class RssSampler:
    """Peak resident set size of THIS process (the client / driver), per label.

    A daemon thread reads ``psutil.Process().memory_info().rss`` every ``interval``
    seconds and keeps the maximum for the label currently set (``None``: not recorded).
    ``resource.getrusage``'s ``ru_maxrss`` is no use here: it is the high-water mark of
    the whole process lifetime, not of one system's runs.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.proc = psutil.Process()
        self.label: object = None
        self.peak: dict[object, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def _sample(self) -> None:
        label = self.label
        if label is not None:
            rss = self.rss()
            if rss > self.peak.get(label, 0):
                self.peak[label] = rss

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @contextlib.contextmanager
    def measuring(self, label: object) -> Iterator[None]:
        self.label = label
        self._sample()
        try:
            yield
        finally:
            self._sample()
            self.label = None

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -------------------------------------------------------------------------- Ray
@contextlib.contextmanager
def _ray(num_cpus: int) -> Iterator[Any]:
    """``ray`` started with ``num_cpus`` CPUs, no dashboard, quiet; shut down on exit."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=True,
        logging_level="warning",
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def ray_seed(num_cpus: int = 2) -> Iterator[Callable[[int], int]]:
    """Ray with 2 CPUs: the driver pulls the list, then one remote task per item."""

    def generate(n: int) -> list[int]:
        return list(range(n))

    def process(item: int, factor: int) -> int:
        return item * factor

    def reduce(*results: int) -> int:  # top-level ObjectRef arguments are resolved
        return sum(results)

    with _ray(num_cpus) as ray:
        r_generate, r_process, r_reduce = (ray.remote(f) for f in (generate, process, reduce))

        def run(n: int, factor: int = 2) -> int:
            items = ray.get(r_generate.remote(n))
            refs = [r_process.remote(x, factor) for x in items]
            return ray.get(r_reduce.remote(*refs))

        yield run


@contextlib.contextmanager
def ray_fib(num_cpus: int = 2) -> Iterator[Callable[[int], int]]:
    """Ray nested tasks: ``fib(n)`` submits ``fib(n - 1)`` and ``fib(n - 2)`` from inside
    the task and blocks in ``ray.get`` until both are done (Ray lends the blocked task's
    CPU to others meanwhile, starting more worker processes as needed)."""
    with _ray(num_cpus) as ray:

        @ray.remote
        def fib(n: int) -> int:
            if n < 2:
                return n
            return sum(ray.get([fib.remote(n - 1), fib.remote(n - 2)]))

        def run(n: int) -> int:
            return ray.get(fib.remote(n))

        yield run


# ---------------------------------------------------------------------- Prefect
#: environment for the Prefect server, this process and the Dask workers
PREFECT_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_UI_ENABLED": "false",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Importing prefect configures logging so that distributed logs at INFO: undo it."""
    log = logging.getLogger("distributed")
    old = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(old)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class PrefectServer:
    """A running ``prefect server``: its environment, and how busy it is."""

    def __init__(self, env: dict[str, str], pid: int) -> None:
        self.env = env
        self.proc = psutil.Process(pid)

    def cpu(self) -> float:
        """CPU seconds used so far by the server and its children."""
        total = 0.0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def wait_quiet(self, window: float = 0.5, busy: float = 0.05, timeout: float = 300.0) -> float:
        """Wait until the server uses under ``busy`` of a CPU over ``window`` seconds.

        After a flow run returns, the server goes on ingesting the run's events for
        seconds (about 10 s after 500 task runs here); a run started meanwhile competes
        with it for the 2 cores. Returns the seconds waited.
        """
        t0 = time.monotonic()
        while True:
            c0 = self.cpu()
            time.sleep(window)
            if self.cpu() - c0 < busy * window:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"prefect server still busy after {timeout}s")


@contextlib.contextmanager
def prefect_server(timeout: float = 120.0) -> Iterator[PrefectServer]:
    """``prefect server start`` on 127.0.0.1:<free port>, a fresh PREFECT_HOME.

    Yields a :class:`PrefectServer`, whose ``env`` points a process at it (applied to
    ``os.environ`` while the context is open, so that processes started meanwhile
    inherit it). The server runs in a session of its own; on exit that process group is
    terminated (killed after 20 s) and PREFECT_HOME removed.
    """
    home = tempfile.mkdtemp(prefix="dynflow-bench-prefect-")
    port = _free_port()
    env = dict(PREFECT_ENV, PREFECT_HOME=home, PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    server_env = dict(os.environ, **env)
    server_env.pop("PREFECT_API_URL")
    log = open(os.path.join(home, "server.log"), "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.flush()
                with open(log.name, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy within {timeout}s")
            time.sleep(0.25)
        with _environ(env):
            yield PrefectServer(env, proc.pid)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _prefect_flow():
    """The seed pattern as a Prefect flow (built after the environment is set)."""
    from prefect import flow, task, unmapped

    @task
    def generate(n: int) -> list[int]:
        return list(range(n))

    @task
    def process(item: int, factor: int) -> int:
        return item * factor

    @task
    def reduce(results: list[int]) -> int:
        return sum(results)

    @flow(name="dynflow-bench-seed")
    def seed(n: int, factor: int = 2) -> int:
        items = generate.submit(n).result()
        futures = process.map(items, factor=unmapped(factor))
        return reduce.submit(futures).result()

    return seed


@contextlib.contextmanager
def prefect_threads(max_workers: int = PREFECT_THREADS) -> Iterator[Callable[[int], int]]:
    """The flow on a ThreadPoolTaskRunner(max_workers); the server must be running."""
    from prefect.task_runners import ThreadPoolTaskRunner

    seed = _prefect_flow().with_options(task_runner=ThreadPoolTaskRunner(max_workers=max_workers))
    yield lambda n: seed(n)


@contextlib.contextmanager
def prefect_dask(api_env: dict[str, str]) -> Iterator[Callable[[int], int]]:
    """The flow on prefect-dask's DaskTaskRunner, connected to a LocalCluster(2 x 1).

    The cluster is started here, once, with ``api_env`` (PREFECT_API_URL etc.) in its
    workers' environment, and every flow run connects to it by address.
    """
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    with _environ(api_env), _quiet_distributed():
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            env=dict(api_env),  # Nanny sets it in each worker process
        )
    try:
        seed = _prefect_flow().with_options(
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)
        )
        with _quiet_distributed():
            yield lambda n: seed(n)
    finally:
        with _quiet_distributed():
            cluster.close()
