"""Shared pieces of the dynflow benchmarks: the seed pattern, clusters, and the probe.

Used by the asv suites in this package and by ``asv_bench/compare.py``, so that every
number is measured the same way.

- The seed pattern, ``generate_list -> process.map -> reducer``, with dynflow
  (:func:`seed_dynflow`) and with plain Dask on the same cluster, the list pulled to the
  client in between (:func:`seed_plain`). The per-item function is trivial on purpose:
  what is measured is the scheduling overhead, not the work.
- :class:`ExpansionProbe`, a scheduler plugin that measures, on the scheduler's own
  clock, the expansion of a map: from the mapped upstream task (the generator)
  transitioning to memory until dynflow's splice has returned (the event it logs), i.e.
  until every per-item task exists in the scheduler and has been transitioned to waiting.

The task functions live in this module (not in ``__main__``) and workers unpickle them
by reference, so workers must be able to import ``benchmarks._util``. asv imports the
suite through a private import hook that spawned worker processes do not have;
:func:`start_cluster` therefore puts ``asv_bench/`` on ``sys.path`` first, which spawned
workers inherit.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import dask.config
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

import dynflow as df
from dynflow._protocol import EXPANDER_PREFIX, SPLICE, SPLICE_TOPIC, TRACKER

#: the splice extension's name, and the topic of the event it logs after each splice
SPLICE_EXTENSION, SPLICE_TOPIC = SPLICE, SPLICE_TOPIC
#: the keys of dynflow's top-level expander tasks start with this
EXPANDER_PREFIX = f"{EXPANDER_PREFIX}-"


# ----------------------------------------------------------------- the seed pattern
@df.task
def generate_list(n: int) -> list[int]:
    """``n`` distinct items; their number is known only when this has run."""
    return list(range(n))


@df.task
def process(item: int, factor: int) -> int:
    """The per-item work: trivial, so that the scheduling overhead dominates."""
    return item * factor


@df.task
def reducer(results: list[int]) -> int:
    return sum(results)


def plain_generate(n: int) -> list[int]:
    return list(range(n))


def plain_process(item: int, factor: int) -> int:
    return item * factor


def expected(n: int, factor: int = 2) -> int:
    return factor * n * (n - 1) // 2


#: :func:`seed_graph`'s map sets no batch_size (the default: ``dynflow.batch-size``)
DEFAULT = "default"


def seed_graph(n: int, factor: int = 2, batch_size: int | str | None = DEFAULT) -> df.Node:
    """The dynflow seed pipeline's output node (fresh keys on every call); its map's
    ``batch_size`` as given (:data:`DEFAULT`: none given, dynflow's default)."""
    items = generate_list(n)
    options = {} if batch_size == DEFAULT else {"batch_size": batch_size}
    return reducer(process.map(items, factor=df.unmapped(factor), **options))


def stream_all(client: Client, n: int, factor: int = 2) -> int:
    """Every item of the batched seed map streamed with ``df.as_completed``; their sum."""
    items = process.map(generate_list(n), factor, batch_size="auto")
    out = sum(value for _, value in df.as_completed(items, client=client))
    if out != expected(n, factor):
        raise AssertionError(f"as_completed: got {out}, want {expected(n, factor)}")
    return out


def seed_dynflow(client: Client, n: int, factor: int = 2) -> int:
    """generate_list -> process.map -> reducer, expanded inside the scheduler, with
    default options (``batch_size="adaptive"``)."""
    return seed_graph(n, factor).compute(client=client)


def seed_dynflow_per_item(client: Client, n: int, factor: int = 2) -> int:
    """:func:`seed_dynflow` with one scheduler task per item (``batch_size=None``)."""
    return seed_graph(n, factor, batch_size=None).compute(client=client)


def seed_dynflow_auto(client: Client, n: int, factor: int = 2) -> int:
    """:func:`seed_dynflow` with ``batch_size="auto"`` (about 8 tasks per worker thread)."""
    return seed_graph(n, factor, batch_size="auto").compute(client=client)


@df.task
def generate_stream(n: int) -> Iterator[int]:
    """The seed's generator as a stream: item ``i`` can start as soon as it is yielded."""
    yield from range(n)


def seed_dynflow_stream(client: Client, n: int, factor: int = 2) -> int:
    """:func:`seed_dynflow` over a stream (README "Streaming sources"), default options."""
    items = generate_stream(n)
    return reducer(process.map(items, factor=df.unmapped(factor))).compute(client=client)


def seed_dynflow_stream_per_item(client: Client, n: int, factor: int = 2) -> int:
    """:func:`seed_dynflow_stream` with one scheduler task per item."""
    items = generate_stream(n)
    node = reducer(process.map(items, factor=df.unmapped(factor), batch_size=None))
    return node.compute(client=client)


@df.task
def paced(n: int, gap: float) -> Iterator[tuple[int, float]]:
    """``n`` items, ``gap`` seconds apart, each with the time it was yielded."""
    for i in range(n):
        if i:
            time.sleep(gap)
        yield i, time.time()


@df.task
def started(item: tuple[int, float]) -> float:
    """Seconds from the item's yield to this call starting (one host's clock)."""
    return time.time() - item[1]


def stream_latency(client: Client, n: int = 20, gap: float = 0.2) -> list[float]:
    """Seconds from each yield to its item starting, on an idle cluster: ``n`` items,
    ``gap`` seconds apart (each flushes alone: the source waits between them)."""
    return started.map(paced(n, gap), batch_size=None).compute(client=client)


def seed_plain(client: Client, n: int, factor: int = 2) -> int:
    """The same pipeline in plain Dask: the list travels to the client and back.

    ``pure=False`` everywhere, as dynflow's default: every call is a fresh task (with
    ``pure=True`` equal items would share one task, and repeated runs could reuse
    results still held by the scheduler).
    """
    lst = client.submit(plain_generate, n, pure=False).result()
    futures = client.map(plain_process, lst, factor=factor, pure=False)
    total = client.submit(sum, futures, pure=False)
    return total.result()


@df.task
def children(item: int, m: int) -> list[int]:
    """``m`` children of a parent item (the nested benchmarks' middle level)."""
    return [item * m + j for j in range(m)]


def chained(client: Client, n: int) -> int:
    """generate_list -> process.map -> process.map -> reducer: pipelined per item."""
    first = process.map(generate_list(n), factor=df.unmapped(1))
    out = reducer(process.map(first, factor=df.unmapped(2))).compute(client=client)
    if out != expected(n):
        raise AssertionError(f"chained maps, n={n}: got {out}, want {expected(n)}")
    return out


def nested(client: Client, parents: int, m: int) -> int:
    """parents -> children.map (m each) -> process.map(flatten(...)) -> reducer."""
    kids = children.map(generate_list(parents), m=df.unmapped(m))
    out = reducer(process.map(df.flatten(kids), factor=df.unmapped(2))).compute(client=client)
    if out != expected(parents * m):
        raise AssertionError(f"nested maps, {parents}x{m}: got {out}")
    return out


@df.task
def scaled(item: int, table: Any) -> float:
    """An item's work that reads a large table every item receives."""
    return float(table[item % len(table)])


def large_unmapped(client: Client, n: int, mbytes: int) -> float:
    """``n`` items each receiving the same ``mbytes`` MB array (``df.unmapped``)."""
    import numpy as np

    table = np.ones(mbytes * 125_000)
    out = reducer(scaled.map(generate_list(n), df.unmapped(table))).compute(client=client)
    if out != n:
        raise AssertionError(f"large unmapped argument, n={n}: got {out}, want {n}")
    return out


def run_seed(system: str, client: Client, n: int) -> int:
    fn = {
        "dynflow": seed_dynflow,
        "dynflow-per-item": seed_dynflow_per_item,
        "dynflow-auto": seed_dynflow_auto,
        "dynflow-stream": seed_dynflow_stream,
        "dynflow-stream-per-item": seed_dynflow_stream_per_item,
        "dask": seed_plain,
    }[system]
    out = fn(client, n)
    if out != expected(n):
        raise AssertionError(f"{system} seed pipeline, n={n}: got {out}, want {expected(n)}")
    return out


# ------------------------------------------------------------- scheduler memory
def retained_bytes(obj: Any) -> int:
    """Bytes of every object reachable from ``obj`` (``sys.getsizeof`` each, once),
    not counting classes, modules, functions and the scheduler's own state: what a
    tracker structure keeps alive by itself."""
    import gc
    import types

    from distributed import Scheduler

    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, Scheduler)
    seen: set[int] = set()
    todo, total = [obj], 0
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, skip):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        todo.extend(gc.get_referents(o))
    return total


def _tracker_bytes(dask_scheduler: Any) -> int:
    """Bytes the run tracker keeps for the newest run (see :func:`retained_bytes`)."""
    tracker = dask_scheduler.extensions[TRACKER]
    return retained_bytes(next(reversed(tracker.runs.values())))


def tracker_bytes_per_item(client: Client, n: int) -> float:
    """Scheduler bytes the run tracker keeps, per item, for a finished batched seed run
    of ``n`` items (kept for each run in ``dynflow.dashboard.history``)."""
    run_seed("dynflow-auto", client, n)
    return client.run_on_scheduler(_tracker_bytes) / n


# ----------------------------------------------------------------------- clusters
#: asv_bench/, the directory holding this ``benchmarks`` package
ASV_BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_cluster(
    processes: bool = True, worker_saturation: Any = "default"
) -> tuple[LocalCluster, Client]:
    """2 workers x 1 thread; the scheduler runs in this process either way.

    ``worker_saturation``: the scheduler's setting; ``"default"`` is what dynflow's
    embedded cluster uses (``dynflow.local-cluster.worker-saturation``), None is
    distributed's own default.
    """
    if ASV_BENCH not in sys.path:
        sys.path.insert(0, ASV_BENCH)  # spawned workers inherit it: see the module doc
    if worker_saturation == "default":
        worker_saturation = dask.config.get("dynflow.local-cluster.worker-saturation")
    config = {}
    if worker_saturation is not None:
        config["distributed.scheduler.worker-saturation"] = worker_saturation
    with dask.config.set(config):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=processes,
            dashboard_address=":0",
        )
    client = Client(cluster, set_as_default=False)
    return cluster, client


def warm_up(client: Client) -> None:
    """Install dynflow's extension and import everything on the workers: run both once."""
    run_seed("dynflow", client, 100)
    run_seed("dask", client, 100)
    wait_idle(client)


def stop_cluster(cluster: LocalCluster | None, client: Client | None) -> None:
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


def _scheduler_task_count(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def wait_idle(client: Client, timeout: float = 60.0) -> None:
    """Wait until the scheduler has forgotten every task of earlier runs."""
    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(_scheduler_task_count):
        if time.monotonic() > deadline:
            raise TimeoutError("the scheduler still holds tasks of an earlier run")
        time.sleep(0.02)


# -------------------------------------------------------------- expansion probe
@dataclass
class ExpansionRecord:
    """One splice as seen by the scheduler; times in seconds on its perf_counter."""

    expander: str
    n: int
    added: int
    upstream_done: float  # the expander's last dependency transitioned to memory
    splice_start: float  # the dynflow_splice handler was called
    splice_end: float  # ... and returned: every per-item task exists and is waiting

    @property
    def latency(self) -> float:
        """Generator finished -> every per-item task known to the scheduler."""
        return self.splice_end - self.upstream_done

    @property
    def splice(self) -> float:
        """The scheduler-side splice alone (one synchronous pass on the event loop)."""
        return self.splice_end - self.splice_start

    @property
    def hop(self) -> float:
        """Generator finished -> splice called: expander dispatched, run, RPC received."""
        return self.splice_start - self.upstream_done


class ExpansionProbe(SchedulerPlugin):
    """Times dynflow's expansions on the scheduler.

    It reads the event dynflow's splice extension logs after each splice (topic
    ``dynflow-splice``: its start and end on the scheduler's ``time.perf_counter``), and
    watches the dependencies of every expander task a client submits (in
    ``update_graph``), recording when they transition to memory: the ``transition`` hook
    costs one set lookup per transition to memory and nothing else. The splice pauses
    Python's garbage collector, so no collection runs during it.

    With ``profile=True`` every splice runs under :mod:`cProfile` (the extension's
    ``profiler``); read the stats with :func:`probe_profile`.
    """

    name = "dynflow-bench-probe"
    idempotent = False

    def __init__(self, profile: bool = False) -> None:
        self.profile = profile
        self.watch: dict[Any, float | None] = {}  # expander dependency -> memory time
        self.records: list[dict[str, Any]] = []
        self.profiler: cProfile.Profile | None = None
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        if self.profile:
            extension = scheduler.extensions.get(SPLICE_EXTENSION)
            if extension is None:
                raise RuntimeError(
                    "dynflow's scheduler extension is not installed yet; compute a dynflow "
                    "graph before registering a profiling probe"
                )
            self.profiler = extension.profiler = cProfile.Profile()

    async def close(self) -> None:
        extension = (self.scheduler.extensions if self.scheduler else {}).get(SPLICE_EXTENSION)
        if extension is not None and extension.profiler is self.profiler:
            extension.profiler = None

    def update_graph(self, scheduler: Any, *, client: str, tasks: list, **kwargs: Any) -> None:
        if client == SPLICE_EXTENSION:  # dynflow telling plugins about the tasks it spliced
            return
        for key in tasks:
            if isinstance(key, str) and key.startswith(EXPANDER_PREFIX):
                ts = scheduler.tasks.get(key)
                if ts is not None:
                    for dts in ts.dependencies:
                        self.watch.setdefault(dts.key, None)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "memory" and key in self.watch:
            self.watch[key] = time.perf_counter()

    def log_event(self, topic: str, msg: Any) -> None:
        if topic != SPLICE_TOPIC or msg.get("status") != "OK":
            return
        ets = self.scheduler.tasks.get(msg["expander"])
        deps = [d.key for d in ets.dependencies] if ets is not None else []
        done = [self.watch.pop(k, None) for k in deps]
        done = [t for t in done if t is not None]
        self.records.append(
            asdict(
                ExpansionRecord(
                    expander=str(msg["expander"]),
                    n=msg["n"],
                    added=msg["added"],
                    upstream_done=max(done) if done else float("nan"),
                    splice_start=msg["start"],
                    splice_end=msg["end"],
                )
            )
        )


def _probe_records(dask_scheduler: Any, name: str, clear: bool) -> list[dict]:
    probe = dask_scheduler.plugins[name]
    out = list(probe.records)
    if clear:
        probe.records.clear()
    return out


def _probe_profile(dask_scheduler: Any, name: str, sorts: list[str], limit: int) -> str:
    probe = dask_scheduler.plugins[name]
    if probe.profiler is None:
        return "(the probe was registered without profile=True)"
    buf = io.StringIO()
    try:
        stats = pstats.Stats(probe.profiler, stream=buf)
    except TypeError:  # nothing was profiled since the last call
        return "(no splice was profiled)"
    for sort in sorts:
        stats.sort_stats(sort).print_stats(limit)
    probe.profiler = cProfile.Profile()
    return buf.getvalue()


def install_probe(client: Client, profile: bool = False) -> str:
    """Register a fresh :class:`ExpansionProbe` on the client's scheduler; its name."""
    probe = ExpansionProbe(profile=profile)
    probe.name = f"{ExpansionProbe.name}-{uuid.uuid4().hex[:8]}"
    client.register_plugin(probe, name=probe.name)
    return probe.name


def remove_probe(client: Client, name: str) -> None:
    client.unregister_scheduler_plugin(name)


def probe_records(client: Client, name: str, clear: bool = True) -> list[ExpansionRecord]:
    rows = client.run_on_scheduler(_probe_records, name=name, clear=clear)
    return [ExpansionRecord(**r) for r in rows]


def probe_profile(
    client: Client, name: str, sorts: tuple[str, ...] = ("cumulative", "tottime"), limit: int = 30
) -> str:
    """The splices' cProfile stats since the last call, as text (and reset them)."""
    return client.run_on_scheduler(_probe_profile, name=name, sorts=list(sorts), limit=limit)


def measure_expansion(
    client: Client, probe: str, n: int, complete: bool = False, timeout: float = 600.0
) -> ExpansionRecord:
    """Run the seed pipeline with ``n`` items; the probe's record of its expansion.

    By default the run is cancelled as soon as the splice has returned (what is measured
    ends there, and running 100,000 trivial items on two workers takes minutes);
    ``complete=True`` runs it to the end and checks the result.
    """
    wait_idle(client)
    probe_records(client, probe)  # drop anything older
    if complete:
        run_seed("dynflow", client, n)
        records = probe_records(client, probe)
    else:
        future = seed_graph(n).submit(client=client)
        deadline = time.monotonic() + timeout
        while not (records := probe_records(client, probe)):
            if future.done():
                future.result()  # raises the task's error, if any
                raise AssertionError("the run finished without a splice")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no splice within {timeout}s (n={n})")
            time.sleep(0.01)
        future.release()
    wait_idle(client)
    if len(records) != 1 or records[0].added != n:
        raise AssertionError(f"expected one splice adding {n} tasks, got {records}")
    if records[0].upstream_done != records[0].upstream_done:  # NaN
        raise AssertionError(
            f"the probe did not see the expander's upstream finish (are expander keys "
            f"still {EXPANDER_PREFIX!r}...?): {records[0]}"
        )
    return records[0]
