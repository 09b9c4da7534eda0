"""dynflow against plain Dask on the seed pattern, and dynflow's expansion latency.

    python asv_bench/compare.py                       # N = 1000 10000, 3 runs each
    python asv_bench/compare.py --n 1000 10000 --repeat 5 --expansion-n 1000 100000
    python asv_bench/compare.py --profile             # + cProfile of the largest splice

One LocalCluster (2 worker processes x 1 thread, the scheduler in this process) serves
every measurement. The seed pattern is generate_list -> process.map -> reducer with a
trivial per-item function; plain Dask pulls the list to the client in between
(``client.submit(gen).result()`` -> ``client.map`` -> ``client.submit(sum, futures)``).
dynflow and plain Dask runs alternate, the scheduler is idle before each, and the best
of ``--repeat`` runs is reported. The expansion latency (generator in memory -> every
per-item task waiting in the scheduler) is measured on the scheduler exactly as the asv
``ExpansionSuite`` does it, by ``benchmarks/_util.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from benchmarks import _util as u  # noqa: E402


def _commit() -> str:
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


def header() -> None:
    import dask
    import distributed

    import dynflow

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"dynflow {dynflow.__version__} @ {_commit()}, dask {dask.__version__}, "
        f"distributed {distributed.__version__}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {load}"
    )
    print("cluster: LocalCluster(n_workers=2, threads_per_worker=1, processes=True)\n")


#: the seed pattern's contenders: plain Dask, dynflow, dynflow with batch_size="auto"
SYSTEMS = ("dask", "dynflow", "dynflow-auto")


def seed_table(client, ns: list[int], repeat: int) -> None:
    systems = SYSTEMS
    best: dict[tuple[int, str], float] = {}
    runs: dict[tuple[int, str], list[float]] = {}
    for n in ns:
        for _ in range(repeat):
            for system in systems:  # alternate, so that drift hits both alike
                u.wait_idle(client)
                t0 = time.perf_counter()
                u.run_seed(system, client, n)
                runs.setdefault((n, system), []).append(time.perf_counter() - t0)
        for system in systems:
            best[n, system] = min(runs[n, system])

    print(f"Seed pattern, best of {repeat} runs")
    print(f"{'N':>8}  {'system':<12} {'best s':>8} {'median s':>9} {'ms/item':>8} {'vs dask':>8}")
    for n in ns:
        for system in SYSTEMS:
            b = best[n, system]
            med = statistics.median(runs[n, system])
            ratio = b / best[n, "dask"]
            print(f"{n:>8}  {system:<12} {b:>8.3f} {med:>9.3f} {b / n * 1e3:>8.3f} {ratio:>7.2f}x")
    if len(ns) > 1:
        lo, hi = min(ns), max(ns)
        print(f"\nmarginal cost per item between N={lo} and N={hi} (slope of best times):")
        for system in SYSTEMS:
            slope = (best[hi, system] - best[lo, system]) / (hi - lo)
            print(f"  {system:<12} {slope * 1e3:.3f} ms/item")
    print()


def expansion_table(client, ns: list[int], repeat: int, profile: bool) -> None:
    probe = u.install_probe(client)
    print(f"Expansion (generator in memory -> all per-item tasks waiting), best of {repeat}")
    print(
        f"{'N':>8} {'latency ms':>11} {'us/item':>8} {'median us':>10} "
        f"{'splice ms':>10} {'hop ms':>7} {'gc ms':>7} {'gc gen2':>8}"
    )
    per_item: dict[int, float] = {}
    for n in ns:
        recs = [u.measure_expansion(client, probe, n) for _ in range(repeat)]
        b = min(recs, key=lambda r: r.latency)
        per_item[n] = b.latency / n * 1e6
        med = statistics.median(r.latency for r in recs) / n * 1e6
        print(
            f"{n:>8} {b.latency * 1e3:>11.1f} {per_item[n]:>8.1f} {med:>10.1f} "
            f"{b.splice * 1e3:>10.1f} {b.hop * 1e3:>7.1f} {b.gc_time * 1e3:>7.1f} "
            f"{b.gc_collections[2]:>8}"
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
            f"({rec.splice:.2f} s under the profiler, {rec.gc_time:.2f} s of it in gc):"
        )
        print(u.probe_profile(client, probe, limit=25))
        u.remove_probe(client, probe)
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n",
        type=int,
        nargs="+",
        default=[1000, 10000],
        help="item counts for the seed pattern (default: 1000 10000)",
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
        "--profile",
        action="store_true",
        help="also print a cProfile of the splice at the largest --expansion-n",
    )
    args = parser.parse_args(argv)

    header()
    cluster, client = u.start_cluster(processes=True)
    try:
        u.warm_up(client)
        if args.n:
            seed_table(client, sorted(args.n), args.repeat)
        if args.expansion_n:
            expansion_table(client, sorted(args.expansion_n), args.repeat, args.profile)
    finally:
        u.stop_cluster(cluster, client)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at the end: {load}")


if __name__ == "__main__":
    main()
