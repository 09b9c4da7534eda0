"""Processes for the tests that run real ones: scripts, and a ``dask`` CLI cluster.

- :func:`run_python`: ``python *args`` in its own session, killed with its children on
  timeout;
- :class:`CLICluster`: a ``dask scheduler`` and ``dask worker`` processes, each logging to a
  file, stopped workers first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from distributed import Client
from distributed.utils_test import poll_for

TESTS_DIR = Path(__file__).resolve().parent
STARTUP_TIMEOUT = 60  # seconds, for a process to come up (2 slow cores)
STOP_TIMEOUT = 10  # seconds, before a terminated process is killed


def subprocess_env() -> dict[str, str]:
    """The environment of every child: this tests dir importable, no dynflow address."""
    env = dict(os.environ)
    env.pop("DASK_DYNFLOW__ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds, saying ``what``."""

    def fail() -> None:  # before poll_for's own failure, which cannot say what
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    poll_for(condition, timeout, fail_func=fail)


@dataclass
class CLICluster:
    """A scheduler and workers started with the ``dask`` CLI, each logging to a file."""

    directory: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    extension_at_start: bool | None = None
    logs: list[Path] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)  # the workers' own variables

    @property
    def scheduler_file(self) -> Path:
        return self.directory / "scheduler.json"

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        log = self.directory / f"{name}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dask", *args],
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**subprocess_env(), **(env or {})},
                cwd=self.directory,
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def start(self, n_workers: int, scheduler_args: tuple[str, ...] = ()) -> None:
        sf = str(self.scheduler_file)
        self._spawn(
            "scheduler",
            [
                "scheduler",
                "--scheduler-file",
                sf,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                *scheduler_args,
            ],
        )
        # workers wait for the scheduler file themselves: start them all at once
        for i in range(n_workers):
            self._spawn(
                f"worker-{i}",
                [
                    "worker",
                    "--scheduler-file",
                    sf,
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--no-nanny",
                    "--name",
                    f"w{i}",
                ],
                self.worker_env,
            )

    def client(self, n_workers: int) -> Client:
        try:
            wait_until(self._file_ready, STARTUP_TIMEOUT, "the scheduler file")
            c = Client(
                scheduler_file=str(self.scheduler_file),
                timeout=STARTUP_TIMEOUT,
                set_as_default=False,
            )
            c.wait_for_workers(n_workers, timeout=STARTUP_TIMEOUT)
        except BaseException:
            self.dump_logs()
            raise
        return c

    def _file_ready(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                self.dump_logs()
                raise AssertionError(f"{p.args} exited early with rc {p.returncode}")
        return self.scheduler_file.exists() and self.scheduler_file.stat().st_size > 0

    def dump_logs(self) -> None:
        for log in self.logs:
            sys.stderr.write(f"----- {log.name} -----\n{log.read_text(errors='replace')}\n")

    def stop(self) -> None:
        """Workers first, then the scheduler; each killed if it does not exit in time."""
        workers, scheduler = self.procs[1:], self.procs[:1]
        for group in (workers, scheduler):
            for p in group:
                if p.poll() is None:
                    p.terminate()
            for p in group:
                try:
                    p.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=STOP_TIMEOUT)


def run_python(
    args: list[str], cwd: Path, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python *args`` in its own session; on timeout kill its whole process group.

    ``env``: default, this environment without ``DASK_DYNFLOW__*`` variables.
    """
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_DYNFLOW__")}
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"python {args} did not finish in {timeout}s\n{out}\n{err}")
    finally:
        if proc.poll() is None:  # an exception other than the timeout: leave nothing behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
