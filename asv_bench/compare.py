"""dynflow against plain Dask and peer systems on the seed pattern, and dynflow's expansion latency.

    python asv_bench/compare.py                       # N = 1000 10000 (peers: 1000), 3 runs each
    python asv_bench/compare.py --n 1000 10000 --repeat 5 --expansion-n 1000 100000
    python asv_bench/compare.py --profile             # + cProfile of the largest splice
    python asv_bench/compare.py --systems dask dynflow ray --n 10000 --expansion-n
    python asv_bench/compare.py --dynamic 12 16 --expansion-n \
        --systems dask-delayed dask-worker-client ray-nested    # dynamic tasks only

One LocalCluster (2 worker processes x 1 thread, the scheduler in this process) serves
every measurement. The seed pattern is generate_list -> process.map -> reducer with a
trivial per-item function; plain Dask pulls the list to the client in between
(``client.submit(gen).result()`` -> ``client.map`` -> ``client.submit(sum, futures)``).
dynflow and plain Dask runs alternate, the scheduler is idle before each, and the best
of ``--repeat`` runs is reported. The expansion latency (generator in memory -> every
per-item task waiting in the scheduler) is measured on the scheduler exactly as the asv
``ExpansionSuite`` does it, by ``benchmarks/_util.py``.

The peer systems (``peers.py``): Ray (``ray.init(num_cpus=2)``), Prefect 3 with its
ThreadPoolTaskRunner (capped: ``--prefect-threads``) and Prefect 3 with prefect-dask's
DaskTaskRunner on a LocalCluster of the same shape, both Prefect flavours talking to one
``prefect server`` started for the purpose. They run after the Dask cluster above is
closed, one system after the other, at ``--peer-n`` items (default: ``--n`` if given,
else 1000; Prefect costs tens of ms per item). A peer whose package is not installed is
skipped with a ``skipped: <reason>`` line.

``--dynamic N ...`` adds the dynamic-task comparison (``benchmarks/dynamic.py``): the
recursive ``fib(N)`` as dynflow dynamic tasks (every call returns ``add(fib(n - 1),
fib(n - 2))``, spliced in its place), as a static ``dask.delayed`` tree of the same calls
built on the client, as Dask tasks-from-tasks (``worker_client``) and as Ray nested tasks
(``ray.get`` inside the task); plus the ``--tail-steps`` tail loop, with the scheduler's
task count near step 100 and at the end, and dynflow's own scheduler time per spliced task.
For every system the seed table gives the client (driver) process's peak RSS during its
runs, sampled by a psutil thread every 5 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import peers  # noqa: E402
from benchmarks import _util as u  # noqa: E402


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", HERE, "status", "--porcelain", "--", "../dynflow"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() + (" (dynflow/ modified)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def header(saturation: Any) -> None:
    import dask
    import dask.config
    import distributed

    import dynflow

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"dynflow {dynflow.__version__} @ {git_commit()}, dask {dask.__version__}, "
        f"distributed {distributed.__version__}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {load}"
    )
    from importlib import metadata

    versions = []
    for dist in ("ray", "prefect", "prefect-dask"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} not installed")
    print(f"peers: {', '.join(versions)}")
    print(
        "cluster: LocalCluster(n_workers=2, threads_per_worker=1, processes=True), "
        f"worker-saturation {saturation} (dynflow's embedded default: "
        f"{dask.config.get('dynflow.local-cluster.worker-saturation')})\n"
    )


#: the seed pattern's contenders: plain Dask, dynflow (default options: adaptive
#: grouping), dynflow one task per item (batch_size=None), dynflow batch_size="auto"
SYSTEMS = (
    "dask",
    "dynflow",
    "dynflow-per-item",
    "dynflow-auto",
    "dynflow-stream",
    "dynflow-stream-per-item",
)
#: the peer systems, in the order they run (peers.py)
PEERS = ("ray", "prefect-threads", "prefect-dask")

MB = 2**20


class Results:
    """Wall times and driver peak RSS per (N, system)."""

    def __init__(self, sampler: peers.RssSampler) -> None:
        self.sampler = sampler
        self.runs: dict[tuple[int, str], list[float]] = {}
        self.base: dict[tuple[int, str], int] = {}  # driver RSS before the first run
        self.notes: dict[str, str] = {}

    def measure(self, n: int, system: str, run) -> float:
        key = (n, system)
        self.base.setdefault(key, self.sampler.rss())
        with self.sampler.measuring(key):
            t0 = time.perf_counter()
            out = run(n)
            dt = time.perf_counter() - t0
        if out != u.expected(n):
            raise AssertionError(f"{system}, n={n}: got {out}, want {u.expected(n)}")
        self.runs.setdefault(key, []).append(dt)
        return dt

    def best(self, n: int, system: str) -> float | None:
        r = self.runs.get((n, system))
        return min(r) if r else None

    def ratio(self, n: int, system: str, ref: str) -> str:
        r = self.best(n, ref)
        return f"{self.best(n, system) / r:.2f}x" if r else "-"

    def print_table(self, repeat: int) -> None:
        keys = sorted(self.runs, key=lambda k: (k[0], (SYSTEMS + PEERS).index(k[1])))
        if not keys:
            return
        print(f"Seed pattern (generate_list -> per-item process -> reduce), best of {repeat} runs")
        print(
            f"{'N':>7}  {'system':<16}{'best s':>9}{'median s':>10}{'ms/item':>9}"
            f"{'vs dynflow':>11}{'vs dask':>8}{'peak RSS MB':>12}{'+MB':>6}"
        )
        for n, system in keys:
            b = self.best(n, system)
            med = statistics.median(self.runs[n, system])
            peak = self.sampler.peak.get((n, system), 0)
            print(
                f"{n:>7}  {system:<16}{b:>9.3f}{med:>10.3f}{b / n * 1e3:>9.3f}"
                f"{self.ratio(n, system, 'dynflow'):>11}{self.ratio(n, system, 'dask'):>8}"
                f"{peak / MB:>12.0f}"
                f"{(peak - self.base[n, system]) / MB:>6.0f}"
            )
        print(
            "ms/item: best wall time / N (the per-item work is trivial: this is the "
            "per-item overhead).\npeak RSS: the client (driver) process only, sampled with "
            "psutil every 5 ms during that system's runs; +MB: over its RSS before the "
            "first of them. dask/dynflow's driver also hosts the LocalCluster's scheduler; "
            "Ray's GCS/raylet/workers, Prefect's server and all Dask workers are other "
            "processes and not counted."
        )
        for system, note in self.notes.items():
            print(f"  {system}: {note}")
        ns_by_system: dict[str, list[int]] = {}
        for n, system in keys:
            ns_by_system.setdefault(system, []).append(n)
        slopes = {s: ns for s, ns in ns_by_system.items() if len(ns) > 1}
        if slopes:
            print("\nmarginal cost per item (slope of the best times, smallest to largest N):")
            for system, ns in slopes.items():
                lo, hi = min(ns), max(ns)
                slope = (self.best(hi, system) - self.best(lo, system)) / (hi - lo)
                print(f"  {system:<16} N={lo}..{hi}: {slope * 1e3:.3f} ms/item")
        print()


def seed_table(client, ns: list[int], repeat: int, systems: list[str], res: Results) -> None:
    """dask / dynflow / dynflow-auto on the shared cluster, runs alternating."""
    for n in ns:
        for _ in range(repeat):
            for system in systems:  # alternate, so that drift hits all alike
                u.wait_idle(client)
                res.measure(n, system, lambda n, s=system: u.run_seed(s, client, n))


def start_prefect_server(stack: contextlib.ExitStack) -> peers.PrefectServer | None:
    """One prefect server for both Prefect flavours, stopped when ``stack`` closes."""
    t0 = time.perf_counter()
    try:
        server = stack.enter_context(peers.prefect_server())
    except Exception as e:  # noqa: BLE001 - report it, go on with the others
        print(f"prefect server: failed to start: {type(e).__name__}: {str(e)[:1000]}")
        return None
    print(
        f"prefect server: {server.env['PREFECT_API_URL']} up in "
        f"{time.perf_counter() - t0:.1f} s (its own PREFECT_HOME, telemetry off, "
        "logging at WARNING)"
    )
    return server


def peer_table(systems: list[str], ns: list[int], repeat: int, res: Results, threads: int) -> None:
    """The peers, one after the other, each set up and torn down around its runs."""
    rss = res.sampler.rss
    wanted = [s for s in PEERS if s in systems]
    runnable = []
    for system in wanted:
        lacking = peers.missing(system)
        if lacking:
            print(
                f"{system}: skipped: {', '.join(lacking)} not installed ({peers.INSTALL[system]})"
            )
        else:
            runnable.append(system)
    if not runnable:
        return
    with contextlib.ExitStack() as stack:
        server: peers.PrefectServer | None = None
        server_tried = False
        for system in runnable:
            prefect = system.startswith("prefect")
            if prefect and not server_tried:
                # started only now, so that its background services do not run beside Ray
                server, server_tried = start_prefect_server(stack), True
            if prefect and server is None:
                print(f"{system}: skipped: no prefect server")
                continue
            before = rss()
            try:
                if system == "ray":
                    session = peers.ray_seed(num_cpus=2)
                    res.notes[system] = "ray.init(num_cpus=2), dashboard off"
                elif system == "prefect-threads":
                    session = peers.prefect_threads(max_workers=threads)
                    res.notes[system] = (
                        f"ThreadPoolTaskRunner(max_workers={threads}) (Prefect's default is "
                        "unbounded: one thread per task), tasks run in the driver"
                    )
                else:
                    session = peers.prefect_dask(server.env)
                    res.notes[system] = (
                        "DaskTaskRunner(address=) on LocalCluster(2 workers x 1 thread, "
                        "processes); workers share the one prefect server"
                    )
                t0 = time.perf_counter()
                with session as run:
                    run(10)  # warm-up: imports, worker processes, the server's first rows
                    print(
                        f"{system}: set up and warmed up in {time.perf_counter() - t0:.1f} s; "
                        f"driver RSS {before / MB:.0f} MB before, {rss() / MB:.0f} MB after"
                    )
                    server_cpu: list[tuple[float, float, float]] = []
                    for n in ns:
                        for i in range(repeat):
                            if server is None or not prefect:
                                dt = res.measure(n, system, run)
                                print(f"  {system} N={n} run {i + 1}/{repeat}: {dt:.3f} s")
                                continue
                            server.wait_quiet()  # the server idle before each run
                            c0 = server.cpu()
                            dt = res.measure(n, system, run)
                            c1 = server.cpu()
                            drain = server.wait_quiet()
                            c2 = server.cpu()
                            server_cpu.append((c1 - c0, c2 - c1, drain))
                            print(
                                f"  {system} N={n} run {i + 1}/{repeat}: {dt:.3f} s; prefect "
                                f"server CPU {c1 - c0:.1f} s during the run, then busy "
                                f"{drain:.1f} s more ({c2 - c1:.1f} s CPU) after the flow "
                                "returned",
                                flush=True,
                            )
                    if server_cpu:
                        during, after, drain = (
                            statistics.median(x[i] for x in server_cpu) for i in range(3)
                        )
                        res.notes[system] += (
                            f"; prefect server (idle before each run): median {during:.1f} s "
                            f"CPU during a run, {after:.1f} s more in the {drain:.1f} s after "
                            "the flow returned (not in the wall time)"
                        )
            except Exception as e:  # noqa: BLE001 - report it, go on with the others
                print(f"{system}: failed: {type(e).__name__}: {str(e)[:500]}")
    print()


def stream_latency_table(client, n: int, repeat: int) -> None:
    """Seconds from a stream's yield to its item starting (README "Streaming sources")."""
    latencies: list[float] = []
    for _ in range(repeat):
        u.wait_idle(client)
        latencies += u.stream_latency(client, n)
    ms = sorted(x * 1e3 for x in latencies)
    print(
        f"Stream: yield -> item start, {len(ms)} items 0.2 s apart on the idle cluster: "
        f"median {statistics.median(ms):.1f} ms, p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, "
        f"max {ms[-1]:.1f} ms\n"
    )


def expansion_table(client, ns: list[int], repeat: int, profile: bool) -> None:
    probe = u.install_probe(client)
    print(f"Expansion (generator in memory -> all per-item tasks waiting), best of {repeat}")
    print(
        f"{'N':>8} {'latency ms':>11} {'us/item':>8} {'median us':>10} "
        f"{'splice ms':>10} {'hop ms':>7}"
    )
    per_item: dict[int, float] = {}
    for n in ns:
        recs = [u.measure_expansion(client, probe, n) for _ in range(repeat)]
        b = min(recs, key=lambda r: r.latency)
        per_item[n] = b.latency / n * 1e6
        med = statistics.median(r.latency for r in recs) / n * 1e6
        print(
            f"{n:>8} {b.latency * 1e3:>11.1f} {per_item[n]:>8.1f} {med:>10.1f} "
            f"{b.splice * 1e3:>10.1f} {b.hop * 1e3:>7.1f}"
        )
    if len(ns) > 1:
        lo, hi = min(ns), max(ns)
        print(
            f"\nper-item latency at N={hi} / at N={lo}: {per_item[hi] / per_item[lo]:.2f} "
            "(1.00 = linear in N)"
        )
    u.remove_probe(client, probe)
    if profile and ns:
        n = max(ns)
        probe = u.install_probe(client, profile=True)
        rec = u.measure_expansion(client, probe, n)
        print(
            f"\ncProfile of the scheduler-side splice at N={n} "
            f"({rec.splice:.2f} s under the profiler):"
        )
        print(u.probe_profile(client, probe, limit=25))
        u.remove_probe(client, probe)
    print()


DYNAMIC = ("dynflow", "dask-delayed", "dask-worker-client", "ray-nested")


def dynamic_table(ns: list[int], repeat: int, tail_steps: int, systems: list[str]) -> None:
    """fib(N) per system, best of ``repeat``; then the tail loop on the same cluster."""
    from benchmarks import dynamic as dyn

    runs: dict[tuple[int, str], list[float]] = {}
    splice: dict[int, dict[str, float]] = {}

    def measure(n: int, system: str, run) -> None:
        t0 = time.perf_counter()
        run(n)
        runs.setdefault((n, system), []).append(time.perf_counter() - t0)

    cluster, client = u.start_cluster(processes=True)
    try:
        dyn.warm_up_dynamic(client)
        dask_runs = {
            "dynflow": lambda n: dyn.fib_dynflow(client, n),
            "dask-delayed": lambda n: dyn.fib_dask_delayed(client, n),
            "dask-worker-client": lambda n: dyn.fib_dask_worker_client(client, n),
        }
        for n in ns:
            for _ in range(repeat):
                for system, run in dask_runs.items():
                    if system in systems:
                        u.wait_idle(client)
                        measure(n, system, run)
            if "dynflow" in systems:
                u.wait_idle(client)
                splice[n] = dyn.time_splices(client, lambda n=n: dyn.fib_dynflow(client, n))
        tail: dict[str, Any] = {}
        if tail_steps:
            probe = dyn.install_task_count_probe(client, window=100)
            record = dyn.count_tasks(client, probe, lambda: dyn.tail_dynflow(client, tail_steps))
            u.wait_idle(client)
            t0 = time.perf_counter()
            dyn.tail_dask_delayed(client, tail_steps)
            tail = {"record": record, "chain": time.perf_counter() - t0}
    finally:
        u.stop_cluster(cluster, client)
    if "ray-nested" in systems:
        lacking = peers.missing("ray")
        if lacking:
            needed = ", ".join(lacking)
            print(f"ray-nested: skipped: {needed} not installed ({peers.INSTALL['ray']})")
        else:
            with peers.ray_fib(num_cpus=2) as run:
                run(8)  # warm-up: worker processes
                for n in ns:
                    for _ in range(repeat):
                        measure(n, "ray-nested", run)

    print(f"Dynamic tasks: recursive fib(N), best of {repeat} runs (2 workers x 1 thread)")
    print(
        f"{'N':>4} {'fib calls':>10}  {'system':<20}{'best s':>8}{'median s':>10}"
        f"{'vs dynflow':>12}{'vs dask-delayed':>16}"
    )
    for n in ns:
        calls = 2 * dyn.fib_value(n + 1) - 1
        ref = {s: min(runs[n, s]) for s in DYNAMIC if (n, s) in runs}
        for system in DYNAMIC:
            if system not in ref:
                continue
            b = ref[system]
            vs_dyn = f"{b / ref['dynflow']:.2f}x" if "dynflow" in ref else "-"
            vs_dask = f"{b / ref['dask-delayed']:.2f}x" if "dask-delayed" in ref else "-"
            med = statistics.median(runs[n, system])
            print(f"{n:>4} {calls:>10}  {system:<20}{b:>8.3f}{med:>10.3f}{vs_dyn:>12}{vs_dask:>16}")
    print(
        "dynflow: each fib call is a task that returns add(fib(n-1), fib(n-2)), spliced "
        "in its place;\ndask-delayed: the static tree of the same calls built on the "
        "client (a task per leaf and per addition, optimize_graph=False);\n"
        "dask-worker-client: each call submits its children from the worker and waits "
        "(worker_client, seceded);\nray-nested: each call submits its children and "
        "blocks in ray.get (ray.init(num_cpus=2))."
    )
    for n, t in splice.items():
        print(
            f"scheduler, fib({n}): {t['splices']} splices made {t['tasks']} tasks, "
            f"{t['us_per_task']:.0f} us per task in the splice handler, of which "
            f"{t['us_per_task_own']:.0f} us dynflow's own (the rest: distributed's "
            "transitions of the new tasks)"
        )
    if tail:
        rec, steps = tail["record"], tail_steps
        print(
            f"\nTail loop, {steps} steps: {rec['seconds']:.2f} s "
            f"({rec['seconds'] / steps * 1e3:.2f} ms/step); the static dask.delayed chain "
            f"of {steps} calls: {tail['chain']:.2f} s. Scheduler tasks, most at once: "
            f"steps 100-199: {dyn.peak_between(rec, 100, 199)}, last 100 steps: "
            f"{dyn.peak_between(rec, steps - 100, steps)}, whole loop: "
            f"{dyn.peak_between(rec, 0, steps)}"
        )
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n",
        type=int,
        nargs="+",
        default=None,
        help="item counts for the seed pattern (default: 1000 10000)",
    )
    parser.add_argument(
        "--peer-n",
        type=int,
        nargs="+",
        default=None,
        help="item counts for the peer systems (default: --n if given, else 1000)",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=SYSTEMS + PEERS + DYNAMIC[1:],
        default=list(SYSTEMS + PEERS + DYNAMIC[1:]),
        metavar="SYSTEM",
        help=f"systems to run (default: all of {' '.join(SYSTEMS + PEERS + DYNAMIC[1:])}; "
        "dynflow always runs in the --dynamic table)",
    )
    parser.add_argument(
        "--prefect-threads",
        type=int,
        default=peers.PREFECT_THREADS,
        help="max_workers of Prefect's ThreadPoolTaskRunner "
        f"(default {peers.PREFECT_THREADS}; Prefect's own default is unbounded)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    parser.add_argument(
        "--expansion-n",
        type=int,
        nargs="*",
        default=[1000, 10000, 100000],
        help="item counts for the expansion latency (none: skip it)",
    )
    parser.add_argument(
        "--worker-saturation",
        default="default",
        help="the Dask cluster's distributed.scheduler.worker-saturation: 'default' is "
        "dynflow's embedded-cluster setting (inf), 'none' distributed's own (1.1), or a number",
    )
    parser.add_argument(
        "--stream-latency",
        type=int,
        default=0,
        metavar="N",
        help="also time yield -> item start of a stream: N items 0.2 s apart, on the idle "
        "cluster (0: skip it)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print a cProfile of the splice at the largest --expansion-n",
    )
    parser.add_argument(
        "--dynamic",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="fib(N) sizes for the dynamic-task comparison (none: skip it; e.g. 12 16)",
    )
    parser.add_argument(
        "--tail-steps",
        type=int,
        default=10_000,
        help="steps of the dynamic tail loop measured with --dynamic (0: skip it)",
    )
    args = parser.parse_args(argv)
    ns = sorted(args.n) if args.n else [1000, 10000]
    peer_ns = sorted(args.peer_n or args.n or [1000])
    core = [s for s in SYSTEMS if s in args.systems]

    saturation: Any = args.worker_saturation
    if saturation == "none":
        saturation = None
    elif saturation not in ("default", "inf"):
        saturation = float(saturation)
    header(saturation if saturation != "default" else "default")
    with peers.RssSampler() as sampler:
        res = Results(sampler)
        if core or args.expansion_n:
            cluster, client = u.start_cluster(processes=True, worker_saturation=saturation)
            try:
                u.warm_up(client)
                if core:
                    seed_table(client, ns, args.repeat, core, res)
                if args.expansion_n:
                    expansion_table(client, sorted(args.expansion_n), args.repeat, args.profile)
                if args.stream_latency:
                    stream_latency_table(client, args.stream_latency, args.repeat)
            finally:
                u.stop_cluster(cluster, client)
        if args.dynamic:
            dyn_systems = [s for s in DYNAMIC if s in args.systems or s == "dynflow"]
            dynamic_table(sorted(args.dynamic), args.repeat, args.tail_steps, dyn_systems)
        peer_table(args.systems, peer_ns, args.repeat, res, args.prefect_threads)
        res.print_table(args.repeat)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at the end: {load}")


if __name__ == "__main__":
    main()
