"""The client's memory alone on the seed pattern, against a `dask scheduler` of its own.

    python asv_bench/client_memory.py                # N = 10000 1000000, batch_size="auto"
    python asv_bench/client_memory.py --n 1000 10000 --batch-size none
    python asv_bench/client_memory.py --n 10000 100000 --batch-size 500 --budget-mb 20
    python asv_bench/client_memory.py --as-completed  # the items streamed to the client

With a LocalCluster the scheduler lives in the client's process, so asv's ``peakmem_*``
numbers include the scheduler. Here the scheduler (``dask scheduler --preload
dynflow.scheduler``) and 2 workers (``dask worker --nthreads 1 --no-nanny``) are
processes of their own, started once from the ``dask`` CLI with ``asv_bench/`` on their
PYTHONPATH (the tasks are ``benchmarks/_util.py``'s seed pattern) and the scheduler's
``worker-saturation`` set to ``--worker-saturation`` (default inf, as dynflow's embedded
cluster). This process warms the workers up; then, for each N, a FRESH client process
(``client_memory.py --child N ...``) connects, runs generate_list(N) -> process.map(items,
batch_size=...) -> reducer once (``--as-completed``: iterates ``df.as_completed`` over the
map instead, summing the items in the client), checks the answer and prints one JSON line: its RSS
after ``import dynflow`` and connecting (baseline), its lifetime peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``), the peak psutil saw every 5 ms during the run,
and the run's wall time. The table compares the peaks of the largest and smallest N
against ``--budget-mb`` (the goal: flat client memory as N grows).

Exits non-zero if a run fails; a budget miss is printed (FAIL), not an error. Every
process is stopped on exit: workers first, then the scheduler, killed if they linger.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import distributed  # noqa: E402
from benchmarks import _util as u  # noqa: E402  (imports dynflow)
from compare import MB, git_commit  # noqa: E402
from distributed import Client  # noqa: E402

STARTUP_TIMEOUT = 60.0  # seconds, for the scheduler and workers to come up
STOP_TIMEOUT = 10.0  # seconds, before a terminated process is killed
N_WORKERS = 2


def parse_batch_size(text: str) -> int | str | None:
    if text == "auto":
        return "auto"
    if text == "none":
        return None
    return int(text)


def max_rss() -> int:
    """This process's lifetime peak RSS in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ------------------------------------------------------------------ the client child
def child(
    n: int, scheduler_file: str, batch_size: int | str | None, streamed: bool = False
) -> None:
    """One run in a fresh process; its measurements as one JSON line on stdout."""
    import peers

    import dynflow as df

    sampler = peers.RssSampler()
    with Client(scheduler_file=scheduler_file, set_as_default=False) as client:
        baseline = sampler.rss()
        with sampler, sampler.measuring("run"):
            t0 = time.perf_counter()
            if streamed:  # every item's value comes to this process, a window at a time
                items = u.process.map(u.generate_list(n), 2, batch_size=batch_size)
                out = sum(v for _, v in df.as_completed(items, client=client))
            else:
                out = u.seed_graph(n, batch_size=batch_size).compute(client=client)
            wall = time.perf_counter() - t0
        if out != u.expected(n):
            raise AssertionError(f"n={n}: got {out}, want {u.expected(n)}")
        end = sampler.rss()
    record = {
        "n": n,
        "wall_s": wall,
        "baseline_rss": baseline,
        "sampled_peak_rss": sampler.peak["run"],
        "end_rss": end,
        "max_rss": max_rss(),
    }
    print(json.dumps(record), flush=True)


# ---------------------------------------------------------------------- the cluster
@contextlib.contextmanager
def cli_cluster(directory: Path, env: dict[str, str]) -> Iterator[Path]:
    """``dask scheduler`` + 2 ``dask worker``s, logging to ``directory``; the scheduler file."""
    sf = directory / "scheduler.json"
    procs: list[subprocess.Popen] = []

    def spawn(name: str, args: list[str]) -> None:
        with open(directory / f"{name}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dask", *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=directory,
                )
            )

    common = ["--scheduler-file", str(sf), "--host", "127.0.0.1", "--no-dashboard"]
    try:
        spawn("scheduler", ["scheduler", *common, "--port", "0", "--preload", "dynflow.scheduler"])
        for i in range(N_WORKERS):  # they wait for the scheduler file themselves
            spawn(f"worker-{i}", ["worker", *common, "--nthreads", "1", "--no-nanny"])
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (sf.exists() and sf.stat().st_size > 0):
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args} exited early with rc {p.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no scheduler file within {STARTUP_TIMEOUT}s")
            time.sleep(0.05)
        yield sf
    except BaseException:
        for log in sorted(directory.glob("*.log")):
            sys.stderr.write(f"----- {log.name} -----\n{log.read_text(errors='replace')}\n")
        raise
    finally:
        for group in (procs[1:], procs[:1]):  # workers first, then the scheduler
            for p in group:
                if p.poll() is None:
                    p.terminate()
            for p in group:
                try:
                    p.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@contextlib.contextmanager
def warm_client(scheduler_file: Path) -> Iterator[Client]:
    """This process's client: the workers are up and have imported everything."""
    with Client(
        scheduler_file=str(scheduler_file), timeout=STARTUP_TIMEOUT, set_as_default=False
    ) as client:
        client.wait_for_workers(N_WORKERS, timeout=STARTUP_TIMEOUT)
        u.warm_up(client)  # one seed run each way (dynflow, plain Dask), then idle
        yield client


def run_child(
    n: int,
    scheduler_file: Path,
    batch_size: str,
    env: dict[str, str],
    timeout: float,
    streamed: bool = False,
) -> dict:
    """A fresh client process for one run; its JSON record (raises if it failed)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n)]
    cmd += ["--scheduler-file", str(scheduler_file), "--batch-size", batch_size]
    cmd += ["--as-completed"] if streamed else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"the client for N={n} exited with rc {proc.returncode}:\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1])


def print_table(records: list[dict], budget_mb: float) -> None:
    print(
        f"{'N':>9}{'wall s':>9}{'ms/item':>9}{'baseline MB':>13}{'peak MB':>9}"
        f"{'growth MB':>11}{'sampled peak MB':>17}"
    )
    for r in records:
        print(
            f"{r['n']:>9}{r['wall_s']:>9.2f}{r['wall_s'] / r['n'] * 1e3:>9.3f}"
            f"{r['baseline_rss'] / MB:>13.1f}{r['max_rss'] / MB:>9.1f}"
            f"{(r['max_rss'] - r['baseline_rss']) / MB:>11.1f}"
            f"{r['sampled_peak_rss'] / MB:>17.1f}"
        )
    print(
        "baseline: the client's RSS after importing dynflow and connecting; peak: its lifetime "
        "ru_maxrss; growth: peak - baseline;\nsampled peak: psutil every 5 ms during the run. "
        "Client process only: the scheduler and workers are other processes."
    )
    if len(records) > 1:
        lo, hi = min(records, key=lambda r: r["n"]), max(records, key=lambda r: r["n"])
        diff = (hi["max_rss"] - lo["max_rss"]) / MB
        verdict = "PASS" if diff <= budget_mb else "FAIL"
        print(
            f"client peak RSS at N={hi['n']} minus N={lo['n']}: {diff:+.1f} MB "
            f"(budget {budget_mb:g} MB): {verdict}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n",
        type=int,
        nargs="+",
        default=[10_000, 1_000_000],
        help="item counts (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", default="auto", help="'auto' (default), 'none' (unbatched) or an int"
    )
    parser.add_argument(
        "--budget-mb",
        type=float,
        default=50.0,
        help="allowed growth of the client's peak RSS from the smallest to the largest N (50)",
    )
    parser.add_argument(
        "--worker-saturation",
        default="inf",
        help="the scheduler's distributed.scheduler.worker-saturation (default: inf)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per client run")
    parser.add_argument(
        "--as-completed",
        action="store_true",
        help="stream every item's value to the client with df.as_completed",
    )
    parser.add_argument("--child", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--scheduler-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        batch_size = parse_batch_size(args.batch_size)
    except ValueError:
        parser.error(f"--batch-size: 'auto', 'none' or an int, not {args.batch_size!r}")
    if args.child is not None:
        child(args.child, args.scheduler_file, batch_size, args.as_completed)
        return 0

    import dask

    import dynflow

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"dynflow {dynflow.__version__} @ {git_commit()}, dask {dask.__version__}, distributed "
        f"{distributed.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load average {load}\ncluster: dask scheduler --preload dynflow.scheduler "
        f"(worker-saturation {args.worker_saturation}) + {N_WORKERS} x dask worker --nthreads 1; "
        f"batch_size={batch_size!r}; a fresh client process per N",
        flush=True,
    )
    env = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION=args.worker_saturation)
    env.pop("DASK_DYNFLOW__ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH", "")) if p)
    records, failed = [], False
    with (
        tempfile.TemporaryDirectory(prefix="dynflow-client-memory-") as tmp,
        cli_cluster(Path(tmp), env) as sf,
        warm_client(sf) as client,
    ):
        for n in sorted(args.n):
            u.wait_idle(client)  # nothing left of earlier runs on the scheduler
            try:
                record = run_child(n, sf, args.batch_size, env, args.timeout, args.as_completed)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"N={n}: failed: {e}", flush=True)
                failed = True
                continue
            records.append(record)
            print(f"N={n}: {record['wall_s']:.2f} s", flush=True)
    print()
    print_table(records, args.budget_mb)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
