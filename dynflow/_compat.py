"""Where dynflow touches distributed beyond its public API, in one place.

distributed is pinned (``pyproject.toml``, :data:`SUPPORTED_DISTRIBUTED`) because of
these; the suite runs with the scheduler's and the workers' validation on, which checks
every state they change.

Scheduler (the splice, :mod:`dynflow.cluster._splice`):

- :func:`new_task`, :func:`apply_annotations`, :func:`observe_spans`: what
  ``Scheduler.update_graph`` does for a client's tasks (``Scheduler.new_task``,
  ``Scheduler._apply_annotations``, the ``spans`` extension's ``observe_tasks``);
- ``TaskState`` fields the splice reads and writes directly: ``state``, ``run_id``,
  ``run_spec``, ``priority``, ``annotations``, ``dependents``, ``dependencies``
  (``add_dependency``), ``waiting_on``, ``waiters``, ``who_has``, ``exception_blame``;
  then ``Scheduler.transitions`` and ``Scheduler.computations``;
- :func:`bypass_queuing`: ``TaskState._queueable``, the per-task flag that keeps a
  root-ish task out of the scheduler's queue (set by distributed's P2P shuffle too);
- :func:`add_layout_edges`: the dashboard's ``GraphLayout`` plugin's edge index;
- :func:`send_to_client`: ``Scheduler.send_all`` (the run tracker forwards output);
- :func:`http_application`: the scheduler's tornado application (the tracker's JSON);
- :func:`register_dashboard_page`: the dashboard's page registry
  (``distributed.dashboard.scheduler.applications``).

Client:

- :func:`want_keys`: the client's ``client-desires-keys`` message, as
  ``Client._inform_scheduler_of_futures`` sends it for published futures
  (``as_completed`` fetches items the scheduler keeps for it).

Worker:

- :func:`expander_run_id`: the worker state machine's ``TaskState.run_id`` of the
  running expander (the splice refuses a stale one);
- :func:`secede_async`: the worker state machine's ``SecedeEvent`` (an async task gives
  up its slot; ``distributed.secede`` works only in a task's own thread).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from inspect import signature
from time import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Scheduler
    from distributed.diagnostics.graph_layout import GraphLayout
    from distributed.scheduler import TaskState

__all__ = [
    "SUPPORTED_DISTRIBUTED",
    "add_layout_edges",
    "apply_annotations",
    "bypass_queuing",
    "dashboard_serves",
    "expander_run_id",
    "http_application",
    "local_scheduler",
    "new_task",
    "observe_spans",
    "register_dashboard_page",
    "secede_async",
    "send_to_client",
    "update_graph_extras",
    "want_keys",
]


#: the distributed releases whose internals this module uses (as pyproject.toml pins them)
SUPPORTED_DISTRIBUTED = ">=2025.1.0,<2026.9"


def supported_distributed(version: str | None) -> bool:
    """Whether distributed ``version`` is one dynflow's splice works with."""
    from packaging.specifiers import SpecifierSet

    return version is not None and version in SpecifierSet(SUPPORTED_DISTRIBUTED)


# ----------------------------------------------------------------------- scheduler
def new_task(scheduler: Scheduler, spec: Any, computation: Any) -> TaskState:
    """A released task for ``spec``, as ``update_graph`` makes one for a client's task."""
    return scheduler.new_task(spec.key, spec, "released", computation)


def apply_annotations(
    scheduler: Scheduler, tasks: list[TaskState], annotations: dict[str, Any]
) -> None:
    """Give ``tasks`` the ``annotations`` (resources, priority, span, ...)."""
    if _has_global_annotations(type(scheduler)):
        scheduler._apply_annotations(
            tasks=tasks, annotations_by_type={}, global_annotations=annotations
        )
    else:  # distributed < 2025.2: per-key annotations only
        scheduler._apply_annotations(
            tasks=tasks,
            annotations_by_type={
                name: {ts.key: value(ts.key) if callable(value) else value for ts in tasks}
                for name, value in annotations.items()
            },
        )


@cache
def _has_global_annotations(scheduler_type: type) -> bool:
    """Whether ``Scheduler._apply_annotations`` takes ``global_annotations`` (2025.2+)."""
    return "global_annotations" in signature(scheduler_type._apply_annotations).parameters


def bypass_queuing(tasks: list[TaskState]) -> None:
    """Send ``tasks`` to workers as soon as they are ready, as if ``worker-saturation``
    were ``inf`` for them alone (the scheduler does not queue them as root tasks)."""
    for ts in tasks:
        ts._queueable = False


def observe_spans(scheduler: Scheduler, tasks: list[TaskState]) -> None:
    """Register ``tasks`` with the spans extension (worker heartbeats need it)."""
    spans = scheduler.extensions.get("spans")
    if spans is not None and tasks:
        spans.observe_tasks(tasks, code=(), span_metadata={"collections": []})


def update_graph_extras(tasks: list[TaskState]) -> dict[str, Any]:
    """Keyword arguments that ``SchedulerPlugin.update_graph`` needs beyond those every
    release passes: before distributed 2025.5, ``dependencies`` (``{key: {key, ...}}``)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    if not _wants_dependencies(SchedulerPlugin):
        return {}
    return {"dependencies": {ts.key: {d.key for d in ts.dependencies} for ts in tasks}}


@cache
def _wants_dependencies(plugin_type: type) -> bool:
    return "dependencies" in signature(plugin_type.update_graph).parameters


def add_layout_edges(layout: GraphLayout, edges: Iterable[tuple[Any, Any]]) -> None:
    """Give the dashboard's ``GraphLayout`` new ``(dependency, dependent)`` edges of tasks
    it laid out already, as its ``update_graph`` records them."""
    for edge in edges:
        if edge not in layout.index_edge:
            layout.index_edge[edge] = layout.next_edge_index
            layout.next_edge_index += 1
            layout.new_edges.append(edge)


def send_to_client(scheduler: Scheduler, client: str, topic: str, event: Any) -> None:
    """Send an event on ``topic`` to one client only (``log_event`` sends to all)."""
    msg = {"op": "event", "topic": topic, "event": (time(), event)}
    scheduler.send_all({client: [msg]}, worker_msgs={})


def http_application(scheduler: Scheduler) -> Any:
    """The scheduler's tornado application (None without an HTTP server)."""
    return getattr(scheduler, "http_application", None)


def dashboard_serves(scheduler: Scheduler, path: str) -> bool:
    """Whether the scheduler's dashboard serves the bokeh page ``path`` (its pages are
    those registered before it started)."""
    app = http_application(scheduler)
    for bokeh in getattr(app, "applications", None) or ():
        if path in (getattr(bokeh, "_applications", None) or {}):
            return True
    return False


def register_dashboard_page(path: str, doc: Callable[..., Any]) -> None:
    """Add a bokeh page to the dashboard of schedulers started from now on (distributed
    reads its pages once, at start)."""
    from distributed.dashboard.scheduler import applications

    applications.setdefault(path, doc)


# -------------------------------------------------------------------------- client
def want_keys(client: Any, keys: list) -> None:
    """Tell the scheduler that ``client`` holds futures of ``keys`` (made for keys that
    exist already): it reports their state, which finishes those futures."""
    client._send_to_scheduler({"op": "client-desires-keys", "keys": list(keys)})


# -------------------------------------------------------------------------- dask
def local_scheduler(name: str) -> Callable[..., Any]:
    """dask's ``get`` function of the local scheduler ``name`` ("sync", "threads", ...).

    Before dask 2025.4 ``get_scheduler`` warns when a distributed client exists, even
    though the local scheduler was asked for by name; newer releases do not.
    """
    import warnings

    from dask.base import get_scheduler

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Running on a single-machine scheduler", UserWarning)
        return get_scheduler(scheduler=name)


# -------------------------------------------------------------------------- worker
def expander_run_id(key: Any) -> int:
    """The worker's run id of the task ``key`` it runs (-1 if it does not know it)."""
    from distributed import get_worker

    ts = get_worker().state.tasks.get(key)
    return ts.run_id if ts is not None else -1


def secede_async(key: Any) -> None:
    """Free the worker slot of the async task ``key``, which runs on the event loop.

    As ``distributed.secede()`` does for a task in a worker thread: the worker then
    runs other tasks while this one awaits, and it finishes as a long-running task.
    """
    from distributed import get_worker
    from distributed.worker_state_machine import SecedeEvent

    worker = get_worker()
    worker.handle_stimulus(
        SecedeEvent(key=key, compute_duration=0.0, stimulus_id=f"dynflow-secede-{time()}")
    )
