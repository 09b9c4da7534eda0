"""Dynamic tasks: a task that returns a node has that node's graph spliced in its place.

Two shapes, both pure overhead (the per-call work is trivial):

- the recursive ``fib(N)``: ``fib(n)`` returns ``add(fib(n - 1), fib(n - 2))``, a new
  graph of three tasks per call, spliced into the scheduler; ``2 F(N+1) - 1`` fib calls
  and ``F(N+1) - 1`` additions, every one a task of its own (fib(12): 697 tasks,
  fib(16): 4,789, fib(20): 32,836);
- the tail loop ``step(state, n)``, which returns ``step(state + 1, n)`` until
  ``state >= n``: each step is spliced in the place of the one before, and finished
  steps are forgotten as the loop goes, so the scheduler holds a bounded number of tasks
  however many steps run (:class:`TaskCountProbe` measures it).

Every cluster here is a ``LocalCluster`` of 2 worker processes x 1 thread (the shape of
``map.py``'s suites, :func:`~benchmarks._util.start_cluster`), started in ``setup`` and
closed in ``teardown``; ``setup`` also runs the seed pattern and a small dynamic graph of
each shape once, so that the scheduler extension is installed, the first (request) splice
has happened and the workers have imported this module before anything is timed.

The task functions live in this module, and workers unpickle them by reference: they
import ``benchmarks.dynamic`` (``start_cluster`` puts ``asv_bench/`` on ``sys.path``).
The plain-Dask counterparts used by ``compare.py --dynamic`` live here too: a static
``dask.delayed`` tree of the same calls, and tasks-from-tasks with ``worker_client``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import dask
from distributed import Client, worker_client
from distributed.diagnostics.plugin import SchedulerPlugin

import dynflow as df

from ._util import SPLICE_EXTENSION, start_cluster, stop_cluster, wait_idle, warm_up
from .map import _WallTimeSuite


# ----------------------------------------------------------------- task functions
@df.task
def add(a: int, b: int) -> int:
    return a + b


@df.task
def fib(n: int) -> Any:
    """``n`` for n < 2, else the node ``add(fib(n - 1), fib(n - 2))``, run in its place."""
    return n if n < 2 else add(fib(n - 1), fib(n - 2))


@df.task
def step(state: int, n: int) -> Any:
    """A tail loop: each step returns the next step, until the state reaches n."""
    return state if state >= n else step(state + 1, n)


def fib_value(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def fib_tasks(n: int, system: str = "dynflow") -> int:
    """The tasks one ``fib(n)`` makes: calls and additions, or (``"dask-delayed"``, the
    static tree, where the calls with n >= 2 only build the graph) leaves and additions."""
    leaves = fib_value(n + 1)  # calls with n < 2
    if system == "dask-delayed":
        return leaves + leaves - 1
    return (2 * leaves - 1) + (leaves - 1)


def plain_add(a: int, b: int) -> int:
    return a + b


def plain_leaf(n: int) -> int:
    return n


def plain_step(state: int, n: int) -> int:
    return state + 1 if state < n else state


def fib_delayed(n: int) -> Any:
    """The static tree of the same calls, built on the client: a leaf task per call with
    n < 2, an addition per call with n >= 2 (``pure=False``: every call a task)."""
    if n < 2:
        return dask.delayed(plain_leaf, pure=False)(n)
    return dask.delayed(plain_add, pure=False)(fib_delayed(n - 1), fib_delayed(n - 2))


def fib_worker_client(n: int) -> int:
    """Dask tasks from tasks: submit both children and their sum, wait for the sum.

    ``worker_client()`` secedes this task's thread while it waits (the worker starts
    another), so every level waiting on its children holds a thread.
    """
    if n < 2:
        return n
    with worker_client() as client:
        a = client.submit(fib_worker_client, n - 1, pure=False)
        b = client.submit(fib_worker_client, n - 2, pure=False)
        return client.submit(plain_add, a, b, pure=False).result()


# -------------------------------------------------------------------- runners
def _check(what: str, got: int, want: int) -> int:
    if got != want:
        raise AssertionError(f"{what}: got {got}, want {want}")
    return got


def fib_dynflow(client: Client, n: int) -> int:
    """dynflow: ``fib(n)`` computed on the cluster, every call spliced in as it runs."""
    return _check(f"dynflow fib({n})", fib(n).compute(client=client), fib_value(n))


def fib_dask_delayed(client: Client, n: int) -> int:
    """Plain Dask: the static tree built here and computed on the cluster (not optimized,
    so that no task is fused away)."""
    out = client.compute(fib_delayed(n), optimize_graph=False).result()
    return _check(f"dask.delayed fib({n})", out, fib_value(n))


def fib_dask_worker_client(client: Client, n: int) -> int:
    """Plain Dask: tasks submitting tasks from the workers (:func:`fib_worker_client`)."""
    out = client.submit(fib_worker_client, n, pure=False).result()
    return _check(f"worker_client fib({n})", out, fib_value(n))


def tail_dynflow(client: Client, steps: int) -> int:
    """dynflow: the ``steps``-step tail loop, each step spliced in place of the last."""
    return _check(f"dynflow tail loop ({steps})", step(0, steps).compute(client=client), steps)


def step_chain(steps: int) -> Any:
    """``steps`` dependent ``dask.delayed`` calls of :func:`plain_step`, built here."""
    state: Any = 0
    for _ in range(steps):
        state = dask.delayed(plain_step, pure=False)(state, steps)
    return state


def tail_dask_delayed(client: Client, steps: int) -> int:
    """Plain Dask: a static chain of ``steps`` dependent calls (not optimized, not fused)."""
    out = client.compute(step_chain(steps), optimize_graph=False).result()
    return _check(f"dask.delayed chain ({steps})", out, steps)


def warm_up_dynamic(client: Client) -> None:
    """:func:`~benchmarks._util.warm_up`, then a small graph of each shape: the first
    graph splice on a scheduler is a request, later ones are stream messages."""
    warm_up(client)
    fib_dynflow(client, 8)
    tail_dynflow(client, 20)
    wait_idle(client)


# ------------------------------------------------------------- task-count probe
class TaskCountProbe(SchedulerPlugin):
    """The scheduler's task count, at every transition, per window of loop steps.

    While armed (:meth:`arm` ... :meth:`collect`), the ``transition`` hook reads
    ``len(scheduler.tasks)`` after every transition (new tasks are always transitioned
    right after they are created, so this sees the exact peak, not a sample of it) and
    keeps the largest value per window of ``window`` steps. The step number is the count
    of tasks dynflow's extension has spliced since :meth:`arm` (``tasks_added``): one per
    step of a tail loop. The first transition of each window also records the time, for
    the time per step along the loop. Costs a few attribute lookups per transition.
    """

    name = "dynflow-bench-task-count"
    idempotent = False

    def __init__(self, window: int = 100) -> None:
        self.window = window
        self.scheduler: Any = None
        self.armed = False
        self.base = 0
        self.peaks: dict[int, int] = {}
        self.starts: dict[int, float] = {}
        self.end = 0.0

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def _added(self) -> int:
        extension = self.scheduler.extensions.get(SPLICE_EXTENSION)
        return 0 if extension is None else extension.tasks_added

    def arm(self) -> None:
        self.base = self._added()
        self.peaks.clear()
        self.starts.clear()
        self.armed = True

    def collect(self) -> dict[str, Any]:
        self.armed = False
        return {
            "window": self.window,
            "steps": self._added() - self.base,
            "peaks": dict(self.peaks),
            "starts": dict(self.starts),
            "end": self.end,
        }

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if not self.armed:
            return
        w = (self._added() - self.base) // self.window
        count = len(self.scheduler.tasks)
        if count > self.peaks.get(w, -1):
            if w not in self.peaks:
                self.starts[w] = time.perf_counter()
            self.peaks[w] = count
        self.end = time.perf_counter()


def _probe_call(dask_scheduler: Any, name: str, method: str) -> Any:
    return getattr(dask_scheduler.plugins[name], method)()


def install_task_count_probe(client: Client, window: int = 100) -> str:
    """Register a fresh :class:`TaskCountProbe` on the client's scheduler; its name."""
    probe = TaskCountProbe(window)
    probe.name = f"{TaskCountProbe.name}-{uuid.uuid4().hex[:8]}"
    client.register_plugin(probe, name=probe.name)
    return probe.name


def count_tasks(client: Client, probe: str, run: Any) -> dict[str, Any]:
    """Run ``run()`` with the probe armed; the probe's record (:meth:`TaskCountProbe.collect`),
    plus ``seconds``, the wall time of ``run()``."""
    wait_idle(client)
    client.run_on_scheduler(_probe_call, name=probe, method="arm")
    t0 = time.perf_counter()
    try:
        run()
    finally:
        seconds = time.perf_counter() - t0
        record = client.run_on_scheduler(_probe_call, name=probe, method="collect")
    record["seconds"] = seconds
    return record


def peak_between(record: dict[str, Any], first: int, last: int) -> int:
    """The probe's peak task count over steps ``first`` .. ``last`` (whole windows)."""
    w = record["window"]
    values = [p for k, p in record["peaks"].items() if first // w <= k <= last // w]
    return max(values) if values else 0


def ms_per_step(record: dict[str, Any], first: int, last: int) -> float:
    """Milliseconds per step from the window of step ``first`` to the window of step
    ``last`` (or the end of the run), on the scheduler's clock."""
    w, starts = record["window"], record["starts"]
    lo = first // w
    hi = last // w + 1
    t1 = starts.get(hi, record["end"])
    steps = min(hi * w, record["steps"]) - lo * w
    return (t1 - starts[lo]) / steps * 1e3


# ------------------------------------------------------------ splice timer
def _splice_timer(dask_scheduler: Any, action: str) -> dict[str, float] | None:
    """On the scheduler: ``"arm"`` wraps dynflow's graph-splice handlers (the request
    and the stream message) with a timer, and the scheduler's ``transitions`` with
    another; ``"collect"`` puts them back and returns the time spent in the handlers
    (``seconds``), the part of it spent in distributed's own transitions of the new tasks
    and of the replaced one (``transitions``: deciding a worker, sending the tasks,
    which every task of any graph costs), the number of splices and the tasks they made."""
    from dynflow._protocol import GRAPH_SPLICE_HANDLER

    extension = dask_scheduler.extensions[SPLICE_EXTENSION]
    if action == "arm":
        totals = {"seconds": 0.0, "transitions": 0.0, "splices": 0, "tasks": 0}
        inside = [False]
        dask_scheduler._dynflow_bench_splice_timer = totals

        def timed(handler: Any) -> Any:
            def run(*args: Any, **kwargs: Any) -> Any:
                added = extension.tasks_added
                inside[0] = True
                t0 = time.perf_counter()
                try:
                    return handler(*args, **kwargs)
                finally:
                    totals["seconds"] += time.perf_counter() - t0
                    inside[0] = False
                    totals["splices"] += 1
                    totals["tasks"] += extension.tasks_added - added

            run.original = handler  # type: ignore[attr-defined]
            return run

        transitions = dask_scheduler.transitions

        def timed_transitions(*args: Any, **kwargs: Any) -> Any:
            if not inside[0]:
                return transitions(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return transitions(*args, **kwargs)
            finally:
                totals["transitions"] += time.perf_counter() - t0

        dask_scheduler.transitions = timed_transitions
        for table in (dask_scheduler.handlers, dask_scheduler.stream_handlers):
            table[GRAPH_SPLICE_HANDLER] = timed(table[GRAPH_SPLICE_HANDLER])
        return None
    for table in (dask_scheduler.handlers, dask_scheduler.stream_handlers):
        table[GRAPH_SPLICE_HANDLER] = getattr(
            table[GRAPH_SPLICE_HANDLER], "original", table[GRAPH_SPLICE_HANDLER]
        )
    dask_scheduler.__dict__.pop("transitions", None)  # the class's method again
    return dask_scheduler.__dict__.pop("_dynflow_bench_splice_timer", None)


def time_splices(client: Client, run: Any) -> dict[str, float]:
    """Run ``run()`` with the scheduler's graph-splice handlers timed (see
    :func:`_splice_timer`); adds ``us_per_task`` (handler time per task made),
    ``us_per_task_own`` (the same without distributed's transitions: dynflow's cost of
    splicing) and ``us_per_splice``."""
    client.run_on_scheduler(_splice_timer, action="arm")
    try:
        run()
    finally:
        totals = client.run_on_scheduler(_splice_timer, action="collect")
    tasks, splices = max(totals["tasks"], 1), max(totals["splices"], 1)
    totals["us_per_splice"] = totals["seconds"] / splices * 1e6
    totals["us_per_task"] = totals["seconds"] / tasks * 1e6
    totals["us_per_task_own"] = (totals["seconds"] - totals["transitions"]) / tasks * 1e6
    return totals


# ---------------------------------------------------------------------- suites
class DynamicSuite(_WallTimeSuite):
    """The recursive ``fib(N)``: every call returns a graph, spliced in its place.

    ``2 F(N+1) - 1`` fib calls and ``F(N+1) - 1`` additions, each a task of its own
    (fib(12): 697 tasks, fib(16): 4,789, fib(20): 32,836). ``compare.py --dynamic``
    compares it with a static ``dask.delayed`` tree, Dask tasks-from-tasks and Ray.
    """

    params = [12, 16, 20]
    param_names = ["n"]

    def setup(self, n: int) -> None:
        self.cluster, self.client = start_cluster(processes=True)
        warm_up_dynamic(self.client)

    def time_fib(self, n: int) -> None:
        """Wall time of ``fib(n).compute()``, from building the node to the checked value."""
        fib_dynflow(self.client, n)


class TailLoopSuite(_WallTimeSuite):
    """A 10,000-step tail loop: each ``step`` returns the next one, spliced in its place.

    ``time_tail_loop`` is the wall time of the whole loop. The ``track_*`` values come
    from one more loop run once per environment in ``setup_cache``, on a cluster of its
    own, with a :class:`TaskCountProbe` reading the scheduler's task count at every
    transition: the peak must stay flat, the same around step 100 as at the end.
    """

    steps = 10_000
    window = 100

    def setup_cache(self) -> dict[str, Any]:
        cluster, client = start_cluster(processes=True)
        try:
            warm_up_dynamic(client)
            probe = install_task_count_probe(client, self.window)
            record = count_tasks(client, probe, lambda: tail_dynflow(client, self.steps))
            wait_idle(client)  # nothing of the loop is left in the scheduler
        finally:
            stop_cluster(cluster, client)
        if record["steps"] != self.steps:
            raise AssertionError(f"{record['steps']} steps spliced, want {self.steps}")
        return record

    def setup(self, record: dict[str, Any]) -> None:
        super().setup()

    def time_tail_loop(self, record: dict[str, Any]) -> None:
        """Wall time of ``step(0, 10_000).compute()``, building the node to the value."""
        tail_dynflow(self.client, self.steps)

    def track_peak_tasks(self, record: dict[str, Any]) -> int:
        """The most tasks the scheduler held at once during the whole loop."""
        return peak_between(record, 0, self.steps)

    track_peak_tasks.unit = "tasks"

    def track_peak_tasks_near_step_100(self, record: dict[str, Any]) -> int:
        """The most tasks the scheduler held at once over steps 100-199."""
        return peak_between(record, 100, 199)

    track_peak_tasks_near_step_100.unit = "tasks"

    def track_peak_tasks_at_end(self, record: dict[str, Any]) -> int:
        """The most tasks the scheduler held at once over the last 100 steps."""
        return peak_between(record, self.steps - self.window, self.steps)

    track_peak_tasks_at_end.unit = "tasks"
