"""Every change dynflow makes to the live scheduler's state, as a few named operations.

The splice (:mod:`dynflow.extension._splice`), the run tracker
(:mod:`dynflow.extension._tracker`) and the ``as_completed`` streams
(:mod:`dynflow.extension._streams`) change the scheduler's state only through this module,
and read its tasks through the read helpers below. Nothing else in dynflow writes a
``TaskState`` field or calls a private ``Scheduler`` method. The client, worker and
dask shims stay in :mod:`dynflow._compat`.

Operations (each with its pre- and postconditions in its docstring, and its own test on
a live scheduler with validation on, ``tests/test_scheduler_ops.py``):

- :func:`create_tasks`: released tasks for task specs, with priorities, annotations,
  spans and their dependency edges; one pass, rolled back with :func:`forget` on failure;
- :func:`rewire`: a waiting or released task gets a new task spec, and its dependency
  edges (and ``waiting_on``/``waiters``) follow: "add a dependency";
- :func:`repoint_dependents`: readers of one task read another instead (:func:`rewire`
  for each);
- :func:`end_run`: a processing task's run ends now (its late result is refused);
- :func:`respec`, :func:`make_alias`, :func:`make_call`: a released task runs another
  spec, its old inputs let go of;
- :func:`hold`, :func:`unhold`: a task waits in ``no-worker`` once ready (a worker
  restriction no worker meets), then runs (named concurrency limits);
- :func:`put_in_memory`: a task just created is in memory on the worker that holds its
  value already (a stream's chunk), as distributed's ``update_data`` makes scattered data;
- :func:`drop_stray_data`: a worker lets go of data stored under a key the scheduler
  does not hold there (a stale stream chunk), as distributed's ``add-keys`` answers one;
- :func:`forget`: tasks nothing uses go, as distributed forgets a task nobody needs;
- :func:`keep_for_client`, :func:`release_for_client`: the scheduler keeps keys for a
  client as if it held futures of them, then lets go;
- :func:`commit`: the recommendations the operations returned are run;
- :func:`announce`: the other scheduler plugins hear of tasks made or rewired;
- :func:`install`, :func:`uninstall`, :func:`give_workers_plugin`: handlers, stream
  handlers, an extension, a worker plugin;
- :func:`send_to_client`, :func:`http_application`,
  :func:`register_dashboard_page`: one client's event, the HTTP server, the dashboard.

Conventions: every operation is synchronous and runs on the scheduler's event loop;
operations that need transitions add recommendations to a ``recs`` dict (``{key:
finish state}``) and the caller ends its pass with one :func:`commit`, with no ``await``
in between (``Scheduler.transitions`` pops the *last* recommendation first). A violated
precondition raises :class:`SchedulerStateError` before anything changes. Once the
recommendations are committed, ``Scheduler.validate_state()`` holds.

distributed and dask internals touched here (checked against every release in
:data:`CHECKED_DISTRIBUTED`, dask of the same number; the differences are noted):

- ``Scheduler.tasks``, ``.clients``, ``.computations``, ``.total_nthreads``,
  ``.plugins``, ``.extensions``, ``.handlers``, ``.stream_handlers`` (a stream handler
  is called as ``handler(worker=address, **msg)`` by ``Server.handle_stream``);
- ``Scheduler.new_task(key, spec, state, computation)``;
- ``Scheduler._apply_annotations(tasks, annotations_by_type[, global_annotations])``
  (``global_annotations`` from 2025.2; before, per key only);
- ``Scheduler.transition(key, finish, stimulus_id)`` (one step, its messages sent, its
  recommendations returned), ``Scheduler.transitions(recs, stimulus_id)``;
- ``Scheduler.client_desires_keys(keys, client)`` (creates a ``ClientState`` for an
  unknown client and warns for an unknown key: :func:`keep_for_client` checks both
  first), ``Scheduler.client_releases_keys(keys, client, stimulus_id)``;
- ``Scheduler.register_worker_plugin(comm, plugin, name, *, idempotent)`` (keyword-only
  and required from 2026.6) with a plugin pickled by ``distributed.protocol.pickle``,
  ``Scheduler.send_all(client_msgs, worker_msgs)``,
  ``Scheduler.http_application`` (tornado: routes added to it),
  ``distributed.dashboard.scheduler.applications``;
- ``TaskState`` fields read: ``key``, ``state``, ``run_id``, ``run_spec``, ``priority``,
  ``annotations``, ``dependencies``, ``dependents``, ``waiters``, ``waiting_on``,
  ``who_has``, ``who_wants``, ``processing_on`` (``WorkerState.address``), ``nbytes``,
  ``WorkerState.executing`` (from heartbeats),
  ``exception_blame``, ``exception_text``; written: ``run_spec``, ``priority``,
  ``run_id`` (-1: ``stimulus_task_finished`` refuses the ended run's ``task-finished``),
  ``exception_blame``, ``waiting_on``, ``waiters``, ``dependencies``/``dependents``
  (``TaskState.add_dependency``; ``discard`` for an edge that goes), ``_queueable`` (the
  flag distributed's P2P shuffle sets to keep root-ish tasks out of the queue),
  ``worker_restrictions``, ``host_restrictions``, ``loose_restrictions`` (a held task:
  ``Scheduler.valid_workers`` finds no worker, so the scheduler keeps it in
  ``no-worker`` until they are given back), ``state`` and ``type`` with
  ``TaskState.set_nbytes`` and
  ``Scheduler.add_replica(ts, ws)`` on a worker of ``Scheduler.workers`` (a stream's chunk
  put in memory where its source stored it, as ``Scheduler.update_data`` does);
- ``Scheduler.worker_send(address, msg)`` with the worker's ``remove-replicas`` message
  (``{"op", "keys", "stimulus_id"}``: it releases a key it holds in memory);
- the ``spans`` extension's ``observe_tasks(tss, code, span_metadata)``;
- ``SchedulerPlugin.update_graph`` of the other plugins, called with dynflow's client
  name and keyword arguments of its own (``dependencies=`` too before 2025.5, which
  ``GraphLayout.update_graph`` requires through 2025.4), and ``GraphLayout``'s
  ``index_edge``, ``next_edge_index``, ``new_edges``;
- the keyword arguments of ``SchedulerPlugin.transition``: ``startstops`` of a
  ``processing -> memory`` transition, and the ``"remove-client-"`` prefix of the
  ``stimulus_id`` of the transitions a departing client causes;
- dask's ``dask._task_spec``: ``GraphNode`` (``.key``, ``.dependencies``,
  ``.substitute``), ``Task`` (``.func``, ``.args``), ``Alias``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from functools import cache
from inspect import signature
from time import time
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from dask._task_spec import Alias, GraphNode, Task
from distributed.diagnostics.graph_layout import GraphLayout
from distributed.protocol.pickle import dumps

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed import Scheduler
    from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin
    from distributed.scheduler import Recs, TaskState

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKED_DISTRIBUTED",
    "NewTasks",
    "SchedulerStateError",
    "announce",
    "commit",
    "create_tasks",
    "end_run",
    "forget",
    "keep_for_client",
    "make_alias",
    "make_call",
    "release_for_client",
    "repoint_dependents",
    "respec",
    "rewire",
]

#: the distributed releases (and dask of the same number) this module was read against
#: and ``tests/test_scheduler_ops.py`` and the core tests passed on
CHECKED_DISTRIBUTED = ("2025.1.0", "2025.4.1", "2025.9.3", "2026.1.2", "2026.6.0", "2026.8.0")


class SchedulerStateError(RuntimeError):
    """An operation's precondition does not hold; nothing was changed."""


class NewTasks(NamedTuple):
    """Task specs to create together (:func:`create_tasks`).

    The ``i``-th spec gets the priority ``(*priority, i, *suffix)``; ``i`` counts the
    specs skipped too (keys that exist, keys not in ``only``), so a spec keeps its
    priority whichever others are made.
    """

    specs: Sequence[GraphNode]
    priority: tuple[float, ...]
    suffix: tuple[int, ...] = ()
    #: for all of them (resources, span, retries, ...; a callable: called with the key)
    annotations: Mapping[str, Any] = {}
    #: may the scheduler queue them as root-ish tasks (else they go to the workers as
    #: soon as they are ready, as if ``worker-saturation`` were ``inf`` for them)
    queue: bool = False
    #: create only the specs whose keys are in it (None: all)
    only: Container[Key] | None = None


# ------------------------------------------------------------------------------ reads
def get_task(s: Scheduler, key: Key) -> TaskState | None:
    """The scheduler's task ``key``, or None."""
    return s.tasks.get(key)


def has_task(s: Scheduler, key: Key) -> bool:
    return key in s.tasks


def task_state(s: Scheduler, key: Key) -> str | None:
    """The state of the scheduler's task ``key`` (None: it has none)."""
    ts = s.tasks.get(key)
    return None if ts is None else ts.state


def state_in(tasks: Mapping[Any, TaskState], key: Key) -> str | None:
    """The state of task ``key`` in ``tasks`` (the scheduler's ``tasks``, or any
    mapping of task states); None when it is not there."""
    ts = tasks.get(key)
    return None if ts is None else ts.state


def tasks_of(s: Scheduler) -> Mapping[Key, TaskState]:
    """The scheduler's tasks by key, to read only (:func:`state_in`)."""
    return s.tasks


def state(ts: TaskState) -> str:
    return ts.state


def current_run(s: Scheduler, key: Key, run_id: int, worker: str | None = None) -> TaskState | None:
    """Task ``key`` if it is processing in the run ``run_id`` (a worker's call from
    inside that run) — on ``worker``, if given — else None (a stale or repeated call,
    or a worker that does not run it)."""
    ts = s.tasks.get(key)
    if ts is None or ts.state != "processing" or ts.run_id != run_id:
        return None
    if worker is not None and (ts.processing_on is None or ts.processing_on.address != worker):
        return None
    return ts


def dependents(ts: TaskState, states: Container[str] | None = None) -> list[TaskState]:
    """The tasks that read ``ts`` (those in ``states`` only, if given)."""
    if states is None:
        return list(ts.dependents)
    return [d for d in ts.dependents if d.state in states]


def wanted_by_client(ts: TaskState) -> bool:
    """Whether a client holds a future of ``ts`` (or the scheduler keeps it for one)."""
    return bool(ts.who_wants)


def dependency_keys(ts: TaskState) -> list[Key]:
    """The keys ``ts`` reads."""
    return [d.key for d in ts.dependencies]


def priority(ts: TaskState) -> tuple[float, ...]:
    return ts.priority or ()


def annotation(ts: TaskState, name: str) -> Any:
    """``ts``'s annotation ``name`` (None if it has none)."""
    return (ts.annotations or {}).get(name)


def is_task_spec(obj: Any) -> bool:
    """Whether ``obj`` is a dask task spec (a ``GraphNode``: ``Task``, ``Alias``, ...)."""
    return isinstance(obj, GraphNode)


def task_call(ts: TaskState) -> tuple[Callable[..., Any], tuple[Any, ...]] | None:
    """The function and the arguments of ``ts``'s task spec, if it is a dask ``Task``
    (its arguments as given: nested task specs are not computed)."""
    spec = ts.run_spec
    if not isinstance(spec, Task):
        return None
    return spec.func, spec.args


def reaches(s: Scheduler, start: Iterable[Key], target: Key) -> bool:
    """Whether ``target`` is among the keys ``start`` or what they read, walking the
    dependencies of the scheduler's tasks that are not in memory (those computed read
    nothing any more)."""
    todo = list(start)
    seen: set[Key] = set()
    tasks = s.tasks
    while todo:
        k = todo.pop()
        if k == target:
            return True
        if k in seen:
            continue
        seen.add(k)
        dts = tasks.get(k)
        if dts is not None and dts.state != "memory":
            todo.extend(d.key for d in dts.dependencies)
    return False


def total_threads(s: Scheduler) -> int:
    """The threads of all the scheduler's workers."""
    return s.total_nthreads


def executing_keys(s: Scheduler) -> list[Any]:
    """The keys the workers said they are executing (not only assigned: queued on a
    worker is not executing), as of each worker's last heartbeat."""
    return [ts.key for ws in s.workers.values() for ts in ws.executing]


def has_client(s: Scheduler, client: str) -> bool:
    """Whether ``client`` is connected to the scheduler."""
    return client in s.clients


def has_waiters(s: Scheduler, key: Key) -> bool:
    """Whether a waiting task reads task ``key`` (so it stays in memory for it)."""
    ts = s.tasks.get(key)
    return ts is not None and bool(ts.waiters)


def nbytes(s: Scheduler, key: Key) -> int:
    """The size of task ``key``'s result as the workers reported it (0: unknown)."""
    ts = s.tasks.get(key)
    return max(0, ts.nbytes) if ts is not None else 0


def failure_text(s: Scheduler, key: Key) -> str | None:
    """The ``repr`` of the exception that made task ``key`` err (its own, or that of
    the task it blames), as the worker reported it; None if unknown."""
    ts = s.tasks.get(key)
    if ts is None:
        return None
    blame = ts.exception_blame or ts
    return blame.exception_text or None


def compute_startstops(transition_kwargs: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The ``startstops`` a worker reported with a ``processing -> memory`` transition
    (``SchedulerPlugin.transition``'s keyword arguments), if any."""
    return transition_kwargs.get("startstops")


def caused_by_client_leaving(stimulus_id: str) -> bool:
    """Whether a transition's ``stimulus_id`` is that of a client's departure
    (``Scheduler.remove_client``), not of its release of the keys."""
    return stimulus_id.startswith("remove-client")


# ----------------------------------------------------------------------------- create
def create_tasks(
    s: Scheduler,
    groups: Iterable[NewTasks],
    annotations_by_key: Mapping[Key, Mapping[str, Any]] | None = None,
) -> list[TaskState]:
    """Released tasks for the specs of ``groups`` whose keys the scheduler lacks (keys
    that exist are reused: an expander that runs again, a pure call made twice).

    Pre: every dependency of every spec to create is a task of the scheduler or one of
    the specs created. Post, for each task returned (in group, then spec order): it is
    in ``s.tasks``, ``released``, with its spec; its priority (see :class:`NewTasks`);
    its group's annotations, then ``annotations_by_key``'s for its key (restrictions,
    resources, retries, span, as distributed applies them); kept out of the scheduler's
    queue unless its group's ``queue``; its dependency edges on both sides (added once
    all are made: a task may read one made after it); its task group in the last
    computation and observed by the spans extension. Nobody wants or waits for it, and
    no transition ran: the caller recommends it ``waiting``, makes a waiting task read
    it (:func:`rewire`) or :func:`forget`\\ s it, in the same pass.

    Should a dependency be missing (:class:`SchedulerStateError`) or anything else fail,
    the tasks made are forgotten first: the scheduler is as it was.

    Per task, this is what ``Scheduler.update_graph`` does for a client's task, with
    nothing checked twice: a splice creates up to millions of them.
    """
    tasks = s.tasks
    new_task = s.new_task
    computation = s.computations[-1] if s.computations else None
    new: list[TaskState] = []
    try:
        for g in groups:
            start = len(new)
            only, before, after = g.only, g.priority, g.suffix
            for i, spec in enumerate(g.specs):
                key = spec.key
                if key in tasks or (only is not None and key not in only):
                    continue
                ts = new_task(key, spec, "released", computation)
                ts.priority = (*before, i, *after)
                new.append(ts)
            created = new[start:]
            _annotate(s, created, g.annotations, annotations_by_key)
            if not g.queue:
                for ts in created:
                    ts._queueable = False
        for ts in new:  # all made first: items may read items of later stages
            for dep in ts.run_spec.dependencies:  # type: ignore[union-attr]
                dts = tasks.get(dep)
                if dts is None:
                    raise SchedulerStateError(
                        f"task {str(ts.key)!r} reads {str(dep)!r}, which the scheduler "
                        "does not have"
                    )
                ts.add_dependency(dts)
        spans = s.extensions.get("spans")
        if spans is not None and new:
            spans.observe_tasks(new, code=(), span_metadata={"collections": []})
    except BaseException:
        forget(s, new, f"dynflow-create-failed-{time()}")
        raise
    return new


def _annotate(
    s: Scheduler,
    tasks: list[TaskState],
    annotations: Mapping[str, Any],
    by_key: Mapping[Key, Mapping[str, Any]] | None,
) -> None:
    """``annotations`` for all of ``tasks``, each key's own (``by_key``) over them."""
    if not tasks:
        return
    if by_key:
        plain = []
        for ts in tasks:
            own = by_key.get(ts.key)
            if own:
                _apply_annotations(s, [ts], {**annotations, **own})
            else:
                plain.append(ts)
        tasks = plain
    if annotations and tasks:
        _apply_annotations(s, tasks, annotations)


def _apply_annotations(
    s: Scheduler, tasks: list[TaskState], annotations: Mapping[str, Any]
) -> None:
    if _has_global_annotations(s):
        s._apply_annotations(
            tasks=tasks, annotations_by_type={}, global_annotations=dict(annotations)
        )
    else:  # distributed < 2025.2: per-key annotations only
        s._apply_annotations(
            tasks=tasks,
            annotations_by_type={
                name: {ts.key: value(ts.key) if callable(value) else value for ts in tasks}
                for name, value in annotations.items()
            },
        )


_GLOBAL_ANNOTATIONS: dict[type, bool] = {}


def _has_global_annotations(s: Scheduler) -> bool:
    """Whether ``Scheduler._apply_annotations`` takes ``global_annotations`` (2025.2+)."""
    known = _GLOBAL_ANNOTATIONS.get(type(s))
    if known is None:
        parameters = signature(type(s)._apply_annotations).parameters
        known = _GLOBAL_ANNOTATIONS[type(s)] = "global_annotations" in parameters
    return known


# ------------------------------------------------------------------------------ edges
def rewire(
    s: Scheduler,
    ts: TaskState,
    spec: GraphNode,
    recs: Recs,
    drop: Iterable[TaskState] = (),
) -> list[Key]:
    """Waiting or released ``ts`` gets the task spec ``spec``: its dependencies become
    its old ones less ``drop``, plus ``spec``'s. Returns the keys of the dependencies
    added (for the dashboard's edges).

    Pre: ``ts`` is waiting or released; every dependency of ``spec`` is a task of the
    scheduler; ``drop`` are dependencies of ``ts``; no new dependency reads ``ts`` (the
    caller knows: a collector's items are new, a returned graph was checked).

    Post: the edges on both sides as said; ``ts`` is among no dropped task's waiters and
    waits for none; a dropped task nothing wants, waits for or reads any more is
    recommended ``forgotten``, one that is only read no more by waiting tasks
    ``released`` (what distributed decides when a reader goes). For a waiting ``ts``, as
    ``released -> waiting`` leaves a task: it waits on its dependencies not in memory;
    it is among the waiters of each (a released one is recommended ``waiting``, which
    adds it); an erred one makes it erred (recommended, blaming the same task); with
    nothing to wait for, it is recommended ``processing``. A released ``ts`` waits for
    its dependencies when it is wanted again.
    """
    st = ts.state
    if st != "waiting" and st != "released":
        raise SchedulerStateError(f"rewire: {str(ts.key)!r} is {st}, not waiting or released")
    tasks = s.tasks
    try:
        wanted = [tasks[k] for k in spec.dependencies]
    except KeyError as e:
        raise SchedulerStateError(
            f"rewire: {str(ts.key)!r} would read {str(e.args[0])!r}, which the scheduler "
            "does not have"
        ) from None
    dropped = set(drop)
    if not dropped <= ts.dependencies:
        raise SchedulerStateError(f"rewire: {str(ts.key)!r} does not read all it should drop")
    for dts in dropped:
        ts.dependencies.discard(dts)
        dts.dependents.discard(ts)
        if dts.waiters:
            dts.waiters.discard(ts)
        if ts.waiting_on:
            ts.waiting_on.discard(dts)
        _let_go(dts, recs)
    ts.run_spec = spec
    dependencies = ts.dependencies
    added: list[Key] = []
    if st == "released":  # it waits for them when it is wanted again
        for dts in wanted:
            if dts not in dependencies:
                added.append(dts.key)
                ts.add_dependency(dts)
        return added
    waiting_on = ts.waiting_on
    if waiting_on is None:
        waiting_on = ts.waiting_on = set()
    for dts in wanted:  # as released -> waiting does for each dependency
        if dts not in dependencies:
            added.append(dts.key)
            ts.add_dependency(dts)
        if not dts.who_has:
            waiting_on.add(dts)
        dst = dts.state
        if dst == "released":
            recs.setdefault(dts.key, "waiting")  # its released -> waiting adds ts
        elif dst == "erred":
            ts.exception_blame = dts.exception_blame
            recs[ts.key] = "erred"
        else:
            if dts.waiters is None:
                dts.waiters = set()
            dts.waiters.add(ts)
    if not waiting_on and recs.get(ts.key) != "erred":
        recs[ts.key] = "processing"
    return added


def _let_go(dts: TaskState, recs: Recs) -> None:
    """``dts`` lost a reader: recommend what distributed would for it."""
    if dts.who_wants or dts.waiters:
        return
    if not dts.dependents:
        recs[dts.key] = "forgotten"
    elif dts.state != "released" and dts.state != "erred":
        recs.setdefault(dts.key, "released")


def repoint_dependents(
    s: Scheduler,
    old: TaskState,
    new: TaskState,
    readers: Iterable[TaskState],
    recs: Recs,
) -> None:
    """Each of ``readers`` (waiting or released dependents of ``old``) reads ``new``
    instead: its task spec has the key substituted (dask's ``GraphNode.substitute``)
    and its edges follow (:func:`rewire`, dropping ``old``). Once nothing reads ``old``
    and no client wants it, it is recommended ``forgotten``.

    Call it before :func:`end_run` of a processing ``old``: ``processing -> released``
    recommends ``waiting`` for a task that waiting tasks still read.
    """
    for d in list(readers):
        spec = cast(GraphNode, d.run_spec).substitute({old.key: new.key})
        rewire(s, d, spec, recs, drop=(old,))


# ------------------------------------------------------------------------- runs
def end_run(s: Scheduler, ts: TaskState, stimulus_id: str) -> Recs:
    """Processing ``ts``'s run ends now: one ``processing -> released`` step (its worker
    is told ``free-keys``; the worker's counts are undone against the dependencies it
    was dispatched with), and the ``task-finished`` that run may still send is refused
    as a stale run's (``run_id`` -1, which ``stimulus_task_finished`` compares).

    Pre: ``ts`` is processing. Post: it is released, its edges unchanged. Returns the
    step's recommendations (``waiting`` for ``ts`` if a client or a waiting task still
    wants it; else its inputs nobody else needs are released), and ``forgotten`` for
    ``ts`` if nothing wants or reads it any more.

    Change its spec or its inputs (:func:`respec`) only after this: a processing task's
    inputs are counted on its worker (``needs_what``, network occupancy).
    """
    if ts.state != "processing":
        raise SchedulerStateError(f"end_run: {str(ts.key)!r} is {ts.state}, not processing")
    ts.run_id = -1
    recs = dict(s.transition(ts.key, "released", stimulus_id))
    if (
        state(ts) == "released"
        and ts.key not in recs
        and not (ts.who_wants or ts.waiters or ts.dependents)
    ):
        recs[ts.key] = "forgotten"
    return recs


def respec(s: Scheduler, ts: TaskState, spec: GraphNode, recs: Recs) -> None:
    """Released ``ts`` (a run ended: :func:`end_run`) runs ``spec`` when it runs again,
    and reads only ``spec``'s dependencies: its other inputs are let go of (released or
    forgotten where nothing else needs them; :func:`rewire`)."""
    if ts.state != "released":
        raise SchedulerStateError(f"respec: {str(ts.key)!r} is {ts.state}, not released")
    keep = set(spec.dependencies)
    rewire(s, ts, spec, recs, drop=[d for d in ts.dependencies if d.key not in keep])


def make_alias(s: Scheduler, ts: TaskState, target: TaskState, recs: Recs) -> None:
    """Released ``ts`` takes ``target``'s value once ``target`` has one
    (:func:`respec` with ``Alias(ts, target)``)."""
    respec(s, ts, Alias(ts.key, target.key), recs)


def make_call(
    s: Scheduler, ts: TaskState, func: Callable[..., Any], args: tuple[Any, ...], recs: Recs
) -> None:
    """Released ``ts`` runs ``func(*args)`` (literal arguments) when it runs again
    (:func:`respec`)."""
    respec(s, ts, Task(ts.key, func, *args), recs)


# ---------------------------------------------------------------------------- holding
#: a held task's saved restrictions: (worker, host, loose)
Saved = tuple[Any, Any, Any]


def hold(ts: TaskState, tag: str) -> Saved:
    """Keep a task that is not running from starting: it gets the worker restriction
    ``tag``, which no worker's address is, and no host restriction, strictly, so when
    it is ready the scheduler puts it in ``no-worker``, where it waits holding no
    worker thread. Returns its own restrictions, for :func:`unhold`.

    Precondition: ``ts`` is released, waiting or no-worker (never processing).
    """
    if ts.state not in ("released", "waiting", "no-worker"):
        raise SchedulerStateError(f"hold: {str(ts.key)!r} is {ts.state}")
    saved = (ts.worker_restrictions, ts.host_restrictions, ts.loose_restrictions)
    ts.worker_restrictions = {tag}
    ts.host_restrictions = None
    ts.loose_restrictions = False
    return saved


def unhold(ts: TaskState, saved: Saved, recs: Recs) -> None:
    """Let a task :func:`hold` kept go: its own restrictions back; if it waits in
    ``no-worker``, it is recommended to ``processing`` (the scheduler picks a worker)."""
    ts.worker_restrictions, ts.host_restrictions, ts.loose_restrictions = saved
    if ts.state == "no-worker":
        recs[ts.key] = "processing"


# ----------------------------------------------------------------------------- forget
def put_in_memory(
    s: Scheduler, ts: TaskState, worker: str, nbytes: int, typename: str = "list"
) -> bool:
    """Released ``ts``, just made by :func:`create_tasks` (nobody waits for it yet), is
    in memory on ``worker``, which holds its value already: what
    ``Scheduler.update_data`` does for scattered data, for a task that keeps its spec
    (should its only copy be lost, it is computed again, as any task). False, and
    nothing changed, when ``worker`` is not one of the scheduler's.

    Post: ``ts`` is ``memory``, with ``nbytes``, its value's type name ``typename``
    (distributed checks that a computed task has one) and ``worker`` among its holders; the
    caller makes it read (tasks that wait for it) in the same pass, or it is never let
    go of."""
    if ts.state != "released" or ts.waiters or ts.who_wants:
        raise SchedulerStateError(f"put_in_memory: {str(ts.key)!r} is {ts.state} or wanted")
    ws = s.workers.get(worker)
    if ws is None:
        return False
    ts.state = "memory"
    ts.set_nbytes(nbytes)
    ts.type = typename
    s.add_replica(ts, ws)
    return True


def drop_stray_data(s: Scheduler, worker: str, key: Key, stimulus_id: str) -> bool:
    """``worker`` stored data under ``key`` that the scheduler does not hold there (a
    chunk a stream's stale run stored, which distributed's ``update_data`` does not
    report): the worker is told to let go of it, with the ``remove-replicas`` message
    distributed's ``add-keys`` handler sends for a key it does not know. Nothing when
    the scheduler holds ``key`` on ``worker`` (False) or the worker is gone.

    Post: no scheduler state changed; the worker releases ``key`` if it has it in memory."""
    ts = s.tasks.get(key)
    ws = s.workers.get(worker)
    if ws is None or (ts is not None and ws in (ts.who_has or ())):
        return False
    s.worker_send(worker, {"op": "remove-replicas", "keys": [key], "stimulus_id": stimulus_id})
    return True


def forget(s: Scheduler, tasks: Sequence[TaskState], stimulus_id: str) -> None:
    """Forget ``tasks`` (made in this pass and not used yet, or nothing uses them any
    more), as distributed forgets a task nobody needs: its edges go, and dependencies
    that nothing else needs are forgotten too.

    Pre: each is released, no client wants it, nothing waits for it, and whatever reads
    it is among ``tasks``. Post: none of them is in ``s.tasks``; no edge to them is left.
    """
    if not tasks:
        return
    mine = {id(ts) for ts in tasks}
    for ts in tasks:
        if (
            ts.state != "released"
            or ts.who_wants
            or ts.waiters
            or any(id(d) not in mine for d in ts.dependents)
        ):
            raise SchedulerStateError(f"forget: {str(ts.key)!r} is wanted or read")
    # dependencies first: Scheduler.transitions pops the last recommendation first, so
    # a task is forgotten after those that read it
    order: list[Key] = []
    seen: set[int] = set()
    for root in tasks:
        stack: list[tuple[TaskState, bool]] = [(root, False)]
        while stack:
            ts, expanded = stack.pop()
            if expanded:
                order.append(ts.key)
                continue
            if id(ts) in seen:
                continue
            seen.add(id(ts))
            stack.append((ts, True))
            stack.extend((d, False) for d in ts.dependencies if id(d) in mine)
    s.transitions(dict.fromkeys(order, "forgotten"), stimulus_id)


# ---------------------------------------------------------------------------- clients
def keep_for_client(s: Scheduler, client: str, keys: Collection[Key]) -> None:
    """The scheduler keeps ``keys`` for ``client`` as if it held futures of them (the
    client is told of those finished already), until :func:`release_for_client`.

    Pre: the client is connected and the keys are tasks of the scheduler.
    """
    if client not in s.clients:
        raise SchedulerStateError(f"keep_for_client: no client {client!r}")
    missing = [k for k in keys if k not in s.tasks]
    if missing:
        raise SchedulerStateError(f"keep_for_client: no tasks {missing[:5]}")
    s.client_desires_keys(keys=list(keys), client=client)


def release_for_client(s: Scheduler, client: str, keys: Collection[Key], stimulus_id: str) -> None:
    """``client`` no longer wants ``keys``: those nobody else needs are released or
    forgotten (the transitions run). A client that is gone wants nothing (the scheduler
    dropped its wants when it left): nothing to do."""
    if keys and client in s.clients:
        s.client_releases_keys(keys=list(keys), client=client, stimulus_id=stimulus_id)


# ----------------------------------------------------------------------------- commit
def commit(s: Scheduler, recs: Recs, stimulus_id: str) -> None:
    """Run the recommendations the operations returned (``Scheduler.transitions``)."""
    if recs:
        s.transitions(recs, stimulus_id)


# ----------------------------------------------------------------------------- plugins
def announce(
    s: Scheduler,
    new: Sequence[TaskState],
    rewired: Mapping[Key, Sequence[Key]],
    stimulus_id: str,
    *,
    client: str,
    skip: SchedulerPlugin | None = None,
    **extra: Any,
) -> None:
    """``update_graph`` for the scheduler's other plugins (all but ``skip``), as if
    ``client`` had sent the tasks ``new`` and the rewired tasks (``{key: [keys it
    reads now]}``). ``extra``: dynflow's own keyword arguments (plugins take
    ``**kwargs``). A plugin that fails is logged, as ``update_graph`` does.

    No client can change an existing key's dependencies, so plugins that keep edges
    never hear of new edges of a rewired task: distributed's ``GraphLayout`` (the
    dashboard's /graph page) is given them directly, else it fails on every rewired
    task it forgets.
    """
    touched = [*new, *(s.tasks[k] for k in rewired)]
    keys = [ts.key for ts in touched]
    annotations: dict[str, dict[Key, Any]] = {}
    for ts in new:
        for k, v in (ts.annotations or {}).items():
            annotations.setdefault(k, {})[ts.key] = v
    priorities: Any = {ts.key: ts.priority for ts in touched}
    if _wants_dependencies():
        extra["dependencies"] = {ts.key: {d.key for d in ts.dependencies} for ts in touched}
    for plugin in list(s.plugins.values()):
        if plugin is skip:
            continue
        try:
            plugin.update_graph(
                s,
                client=client,
                tasks=keys,
                keys=set(),
                annotations=annotations,
                priority=priorities,
                stimulus_id=stimulus_id,
                **extra,
            )
            if isinstance(plugin, GraphLayout):
                _add_layout_edges(plugin, ((d, c) for c, ds in rewired.items() for d in ds))
        except Exception:
            logger.exception("plugin %r failed in update_graph after a splice", plugin)


@cache
def _wants_dependencies() -> bool:
    """Whether ``SchedulerPlugin.update_graph`` takes ``dependencies`` (before 2025.5)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    return "dependencies" in signature(SchedulerPlugin.update_graph).parameters


def _add_layout_edges(layout: GraphLayout, edges: Iterable[tuple[Key, Key]]) -> None:
    """Give the dashboard's ``GraphLayout`` new ``(dependency, dependent)`` edges of tasks
    it laid out already, as its ``update_graph`` records them."""
    for edge in edges:
        if edge not in layout.index_edge:
            layout.index_edge[edge] = layout.next_edge_index
            layout.next_edge_index += 1
            layout.new_edges.append(edge)


# ------------------------------------------------------------------ install, messages
def install(
    s: Scheduler,
    name: str,
    extension: Any,
    handlers: Mapping[str, Callable[..., Any]],
    stream_handlers: Mapping[str, Callable[..., Any]] | None = None,
) -> None:
    """Serve ``handlers`` (RPC: a client's or worker's ``scheduler.<name>(**kwargs)``)
    and ``stream_handlers`` (messages ``{"op": name, ...}`` on a worker's batched stream,
    called with ``worker=<its address>``; one that raises closes the worker's stream),
    and register ``extension`` as ``s.extensions[name]``."""
    s.handlers.update(handlers)
    s.stream_handlers.update(stream_handlers or {})
    s.extensions[name] = extension


def uninstall(
    s: Scheduler,
    name: str,
    handlers: Iterable[str],
    stream_handlers: Iterable[str] = (),
) -> None:
    """Undo :func:`install` (for the handler names given)."""
    for h in handlers:
        s.handlers.pop(h, None)
    for h in stream_handlers:
        s.stream_handlers.pop(h, None)
    s.extensions.pop(name, None)


async def give_workers_plugin(s: Scheduler, plugin: WorkerPlugin, name: str) -> None:
    """Give every worker, present and future, the worker plugin ``plugin`` (a new one
    of the same name replaces it), as distributed's P2P shuffle does."""
    await s.register_worker_plugin(None, dumps(plugin), name=name, idempotent=False)


def send_to_client(s: Scheduler, client: str, topic: str, event: Any) -> None:
    """Send an event on ``topic`` to one client only (``log_event`` sends to all)."""
    msg = {"op": "event", "topic": topic, "event": (time(), event)}
    s.send_all({client: [msg]}, worker_msgs={})


def http_application(s: Scheduler) -> Any:
    """The scheduler's tornado application (None without an HTTP server)."""
    return getattr(s, "http_application", None)


def register_dashboard_page(path: str, doc: Callable[..., Any]) -> None:
    """Add a bokeh page to the dashboard of schedulers started from now on (distributed
    reads its pages once, at start)."""
    from distributed.dashboard.scheduler import applications

    applications.setdefault(path, doc)
