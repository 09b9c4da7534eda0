"""Each operation of dynflow/extension/_ops.py on a live scheduler with validation
on (gen_cluster turns on ``distributed.scheduler.validate``, which validates every key a
transition touches, and checks the whole state of the scheduler and the workers when the
test ends). Each test also calls ``s.validate_state()`` right after the operation and
its commit, and checks the operation's postconditions.

The tasks the tests hold processing wait on :data:`GATE` (gen_cluster's workers run in
this process); every test opens it again before it ends.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from dask._task_spec import List, Task, TaskRef
from distributed import Client, Future
from distributed.diagnostics.graph_layout import GraphLayout
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils_test import async_poll_for, captured_logger, gen_cluster, inc

from dynflow.extension import _ops as ops

GATE = threading.Event()


def block(x=None):
    """Waits for :data:`GATE`; its value, "stale", must never become a task's value
    once its run was ended."""
    assert GATE.wait(30)
    return "stale"


def boom(x=None):
    raise ValueError("boom")


async def processing(s, key):
    await async_poll_for(lambda: key in s.tasks and s.tasks[key].state == "processing", 10)
    return s.tasks[key]


def held(c, s, keys):
    """Futures of scheduler-made ``keys`` for client ``c`` (the scheduler keeps them)."""
    futures = [Future(k, c) for k in keys]
    ops.keep_for_client(s, c.id, keys)
    return futures


@pytest.fixture(autouse=True)
def _gate():
    GATE.clear()
    yield
    GATE.set()


# ------------------------------------------------------------------------ create_tasks
@gen_cluster(client=True)
async def test_create_tasks(c, s, a, b):
    x = c.submit(inc, 1, key="x")
    await x
    groups = [
        ops.NewTasks(
            [Task("x", inc, 0), Task("y", inc, TaskRef("x"))],  # "x" exists: reused
            priority=(0, 1),
            suffix=(7,),
            annotations={"retries": 2},
        ),
        ops.NewTasks(
            [
                Task("skipped", inc, 0),
                Task("z", sum, List(TaskRef("y"), TaskRef("x"), TaskRef("w"))),
                Task("w", inc, 0),  # read by z, made after it
            ],
            priority=(0, 2),
            queue=True,
            only={"z", "w"},
        ),
    ]
    new = ops.create_tasks(s, groups, annotations_by_key={"z": {"retries": 5}})
    y, z, w = s.tasks["y"], s.tasks["z"], s.tasks["w"]
    assert new == [y, z, w] and "skipped" not in s.tasks
    assert {ts.state for ts in new} == {"released"}
    # the index counts the specs skipped too
    assert (y.priority, z.priority, w.priority) == ((0, 1, 1, 7), (0, 2, 1), (0, 2, 2))
    assert (y.retries, z.retries, w.retries) == (2, 5, 0)
    assert (y._queueable, z._queueable) == (False, True)
    assert z.dependencies == {y, w, s.tasks["x"]} and z in y.dependents and z in w.dependents
    assert not any(ts.who_wants or ts.waiters or ts.waiting_on for ts in new)
    assert all(ts.group.span_id is not None for ts in new)  # the spans extension saw them
    assert y.group in s.computations[-1].groups
    s.validate_state()
    (fz,) = held(c, s, ["z"])
    ops.commit(s, {"z": "waiting"}, "test")
    s.validate_state()
    assert await fz == 3 + 2 + 1


@gen_cluster(client=True)
async def test_create_tasks_with_a_missing_dependency_changes_nothing(c, s, a, b):
    """The tasks made before the missing dependency is found are forgotten again; what
    they read stays as it was."""
    x = c.submit(inc, 1, key="x")
    await x
    before = set(s.tasks)
    groups = [
        ops.NewTasks([Task("y", inc, TaskRef("x")), Task("v", inc, TaskRef("y"))], (0,)),
        ops.NewTasks([Task("z", inc, TaskRef("nowhere"))], (1,)),
    ]
    with pytest.raises(ops.SchedulerStateError, match="nowhere"):
        ops.create_tasks(s, groups)
    assert set(s.tasks) == before
    assert s.tasks["x"].state == "memory" and not s.tasks["x"].dependents
    s.validate_state()
    assert await x == 2


# ------------------------------------------------------------------------------ forget
@gen_cluster(client=True)
async def test_put_in_memory(c, s, a, b):
    """A task the worker holds already (a stream's chunk) is in memory there, with its
    spec kept: a task reading it runs at once; lost, it would be computed again."""
    a.update_data({"chunk": [1, 2, 3]})  # the worker's add-keys comes after: kept
    (ts,) = ops.create_tasks(s, [ops.NewTasks([Task("chunk", list, [7])], (0,))])
    assert ops.put_in_memory(s, ts, a.address, 99)
    assert (
        ts.state == "memory" and ts.nbytes == 99 and {w.address for w in ts.who_has} == {a.address}
    )
    with pytest.raises(ops.SchedulerStateError):
        ops.put_in_memory(s, ts, a.address, 1)  # not released: refused
    # read in the same pass (validate_state refuses a memory task nobody needs)
    (reader,) = ops.create_tasks(s, [ops.NewTasks([Task("total", sum, TaskRef("chunk"))], (1,))])
    (f,) = held(c, s, ["total"])
    ops.commit(s, {"total": "waiting"}, "test")
    s.validate_state()
    assert await f == 6  # the worker's value, not the spec's
    (other,) = ops.create_tasks(s, [ops.NewTasks([Task("nowhere", inc, 1)], (2,))])
    assert not ops.put_in_memory(s, other, "tcp://no-such-worker:1", 1)
    assert other.state == "released"
    ops.forget(s, [other], "test")
    s.validate_state()


@gen_cluster(client=True)
async def test_forget(c, s, a, b):
    x = c.submit(inc, 1, key="x")
    await x
    (w,) = ops.create_tasks(s, [ops.NewTasks([Task("w", inc, 1)], (0,))])
    new = ops.create_tasks(
        s,
        [
            ops.NewTasks(
                [Task("z", sum, List(TaskRef("y"), TaskRef("x"))), Task("y", inc, TaskRef("w"))],
                (0,),
            )
        ],
    )
    with pytest.raises(ops.SchedulerStateError):
        ops.forget(s, [w], "test")  # y reads it
    ops.forget(s, new, "test")  # z reads y: z goes first, whatever the order given
    assert not {"y", "z", "w"} & set(s.tasks)  # w, read by y only, went too
    assert s.tasks["x"].state == "memory" and not s.tasks["x"].dependents  # the client's
    s.validate_state()
    with pytest.raises(ops.SchedulerStateError):
        ops.forget(s, [s.tasks["x"]], "test")  # wanted: refused
    assert await x == 2


# ------------------------------------------------------------------------------ rewire
@gen_cluster(client=True)
async def test_rewire_a_waiting_task(c, s, a, b):
    """A map's collector C, waiting on its expander E, gets its items and another
    dependency in memory; the E -> C edge stays."""
    try:
        m = c.submit(inc, 10, key="m")
        await m  # a dependency in memory already
        e = c.submit(block, key="E")  # the expander, processing
        col = c.submit(lambda e: e, e, key="C")  # the collector, waiting on E
        await processing(s, "E")
        new = ops.create_tasks(s, [ops.NewTasks([Task(("i", j), inc, j) for j in range(3)], (0,))])
        recs = {ts.key: "waiting" for ts in reversed(new)}
        spec = Task("C", sum, List(*(TaskRef(("i", j)) for j in range(3)), TaskRef("m")))
        cts = s.tasks["C"]
        added = ops.rewire(s, cts, spec, recs)
        assert set(added) == {("i", 0), ("i", 1), ("i", 2), "m"}
        assert cts.run_spec is spec
        assert cts.dependencies == {s.tasks["E"], s.tasks["m"], *new}
        assert cts in s.tasks["m"].waiters and cts.waiting_on == {s.tasks["E"], *new}
        ops.commit(s, recs, "test")
        s.validate_state()
        assert cts.state == "waiting" and all(cts in ts.waiters for ts in new)
        await async_poll_for(lambda: all(s.tasks[("i", j)].state == "memory" for j in range(3)), 10)
        s.validate_state()
    finally:
        GATE.set()
    assert await col == 1 + 2 + 3 + 11


@gen_cluster(client=True)
async def test_rewire_a_released_task(c, s, a, b):
    """A released task gets its edges only: it waits for them when it is wanted."""
    (r,) = ops.create_tasks(s, [ops.NewTasks([Task("r", inc, 0)], (0,))])
    (d,) = ops.create_tasks(s, [ops.NewTasks([Task("d", inc, 1)], (1,))])
    recs: dict = {}
    assert ops.rewire(s, r, Task("r", inc, TaskRef("d")), recs) == ["d"]
    assert recs == {} and r.dependencies == {d} and not r.waiting_on
    s.validate_state()
    (fr,) = held(c, s, ["r"])
    ops.commit(s, {"r": "waiting"}, "test")
    assert await fr == 3


@gen_cluster(client=True)
async def test_rewire_onto_an_erred_task_errs(c, s, a, b):
    try:
        bad = c.submit(boom, key="bad")
        with pytest.raises(ValueError):
            await bad
        e = c.submit(block, key="E")
        col = c.submit(lambda e: e, e, key="C")
        await processing(s, "E")
        recs: dict = {}
        ops.rewire(s, s.tasks["C"], Task("C", sum, List(TaskRef("bad"))), recs)
        assert recs["C"] == "erred"
        ops.commit(s, recs, "test")
        s.validate_state()
        assert s.tasks["C"].state == "erred"
        assert s.tasks["C"].exception_blame is s.tasks["bad"]
        with pytest.raises(ValueError, match="boom"):
            await col
    finally:
        GATE.set()
    assert await e == "stale"


@gen_cluster(client=True)
async def test_rewire_refuses_what_it_cannot_do_and_changes_nothing(c, s, a, b):
    try:
        e = c.submit(block, key="E")
        col = c.submit(lambda e: e, e, key="C")
        ts = await processing(s, "E")
        with pytest.raises(ops.SchedulerStateError, match="processing"):
            ops.rewire(s, ts, Task("E", inc, 1), {})
        assert ts.run_spec.func is block
        cts = s.tasks["C"]
        spec, deps = cts.run_spec, set(cts.dependencies)
        with pytest.raises(ops.SchedulerStateError, match="nowhere"):
            ops.rewire(s, cts, Task("C", inc, TaskRef("nowhere")), {})
        with pytest.raises(ops.SchedulerStateError, match="drop"):
            ops.rewire(s, cts, Task("C", inc, 1), {}, drop=[cts])
        assert cts.run_spec is spec and cts.dependencies == deps
        s.validate_state()
    finally:
        GATE.set()
    assert await col == "stale"


# ------------------------------------------------ repoint_dependents, end_run, respec
@gen_cluster(client=True)
async def test_repoint_dependents_end_run_and_make_alias(c, s, a, b):
    """T (processing) returned a graph with output O: its reader D reads O, T's run
    ends and T becomes an alias of O; the ended run's result is refused."""
    try:
        x = c.submit(inc, 0, key="x")
        t = c.submit(block, x, key="T")
        d = c.submit(inc, t, key="D")
        ts = await processing(s, "T")
        x.release()  # T's input: only T reads it now
        await async_poll_for(lambda: not s.tasks["x"].who_wants, 5)
        (o,) = ops.create_tasks(s, [ops.NewTasks([Task("O", inc, 41)], ts.priority)])
        recs: dict = {}
        ops.repoint_dependents(s, ts, o, [s.tasks["D"]], recs)
        dts = s.tasks["D"]
        assert dts.dependencies == {o} and ts not in dts.dependencies and dts not in ts.dependents
        assert dts.run_spec.dependencies == {"O"} and dts.waiting_on == {o}
        assert recs["O"] == "waiting" and "T" not in recs  # a client still wants T
        recs.update(ops.end_run(s, ts, "test"))
        assert ts.state == "released" and ts.run_id == -1 and recs["T"] == "waiting"
        ops.make_alias(s, ts, o, recs)
        assert ts.dependencies == {o} and not s.tasks["x"].dependents  # x let go of
        assert recs["x"] == "forgotten"  # x: nothing reads it, no client wants it
        ops.commit(s, recs, "test")
        s.validate_state()
        assert "x" not in s.tasks
    finally:
        # the ended run returns now (a real dynamic task returns right after its splice)
        GATE.set()
    assert await d == 43
    assert await t == 42  # the ended run's "stale" was refused
    await async_poll_for(lambda: not a.state.executing_count and not b.state.executing_count, 10)
    assert await t == 42
    s.validate_state()


@gen_cluster(client=True)
async def test_a_task_nobody_reads_any_more_is_forgotten(c, s, a, b):
    """T's only reader D is repointed and no client wants T: T is forgotten."""
    try:
        t = c.submit(block, key="T")
        d = c.submit(inc, t, key="D")
        ts = await processing(s, "T")
        t.release()
        await async_poll_for(lambda: not ts.who_wants, 5)
        (o,) = ops.create_tasks(s, [ops.NewTasks([Task("O", inc, 41)], ts.priority)])
        recs: dict = {}
        ops.repoint_dependents(s, ts, o, [s.tasks["D"]], recs)
        assert recs["T"] == "forgotten"  # nothing reads it any more
        recs.update(ops.end_run(s, ts, "test"))
        assert recs["T"] == "forgotten"
        ops.commit(s, recs, "test")
        assert "T" not in s.tasks
        s.validate_state()
        assert await d == 43
    finally:
        GATE.set()


@gen_cluster(client=True)
async def test_end_run_and_make_call(c, s, a, b):
    """A processing task's run ends; it runs again as another call; the result of the
    ended run is refused."""
    try:
        x = c.submit(inc, 0, key="x")
        t = c.submit(block, x, key="T")
        ts = await processing(s, "T")
        with pytest.raises(ops.SchedulerStateError, match="not processing"):
            ops.end_run(s, s.tasks["x"], "test")
        recs = ops.end_run(s, ts, "test")
        assert ts.state == "released" and ts.run_id == -1
        assert recs == {"T": "waiting"}  # the client wants it
        with pytest.raises(ops.SchedulerStateError, match="not released"):
            ops.make_call(s, s.tasks["x"], inc, (1,), recs)
        ops.make_call(s, ts, inc, (41,), recs)
        assert not ts.dependencies and not s.tasks["x"].dependents
        assert "x" not in recs  # the client's
        ops.commit(s, recs, "test")
        s.validate_state()
    finally:
        GATE.set()
    assert await t == 42
    await async_poll_for(lambda: not a.state.executing_count and not b.state.executing_count, 10)
    assert await t == 42


@gen_cluster(client=True)
async def test_respec_to_a_failing_call(c, s, a, b):
    try:
        t = c.submit(block, key="T")
        ts = await processing(s, "T")
        recs = ops.end_run(s, ts, "test")
        ops.respec(s, ts, Task("T", boom), recs)
        ops.commit(s, recs, "test")
        s.validate_state()
        with pytest.raises(ValueError, match="boom"):
            await t
    finally:
        GATE.set()


# ----------------------------------------------------------------------------- holding
@gen_cluster(client=True)
async def test_hold_and_unhold(c, s, a, b):
    """A task held before its first transition (as the concurrency limits' update_graph
    holds it), once ready, waits in no-worker, on no worker; let go, it runs, with its
    own restrictions (here: worker b only) back."""
    x = c.submit(inc, 1, key="x")
    await x
    with pytest.raises(ops.SchedulerStateError, match="memory"):
        ops.hold(s.tasks["x"], "nowhere://")
    held: dict = {}

    class Hold(SchedulerPlugin):
        def update_graph(self, scheduler, **kwargs):
            ts = ops.get_task(scheduler, "V")
            if ts is not None and not held:
                held["V"] = ops.hold(ts, "nowhere://")

    await s.register_scheduler_plugin(Hold(), name="hold-test", idempotent=False)
    v = c.submit(inc, x, key="V", workers=[b.address])
    await async_poll_for(lambda: "V" in s.tasks and s.tasks["V"].state == "no-worker", 10)
    ts = s.tasks["V"]
    s.validate_state()
    assert "V" not in a.state.tasks and "V" not in b.state.tasks
    assert ts.worker_restrictions == {"nowhere://"}
    recs: dict = {}
    ops.unhold(ts, held["V"], recs)
    assert recs == {"V": "processing"} and ts.worker_restrictions == {b.address}
    ops.commit(s, recs, "test")
    s.validate_state()
    assert await v == 3
    assert "V" in b.data


# ----------------------------------------------------------------------------- clients
@gen_cluster(client=True)
async def test_keep_and_release_for_client(c, s, a, b):
    async with Client(s.address, asynchronous=True) as c2:
        x = c.submit(inc, 1, key="x")
        await x
        ops.keep_for_client(s, c2.id, ["x"])
        x.release()
        await async_poll_for(lambda: s.tasks["x"].who_wants == {s.clients[c2.id]}, 5)
        assert s.tasks["x"].state == "memory"
        s.validate_state()
        ops.release_for_client(s, c2.id, ["x"], "test")
        assert "x" not in s.tasks
        s.validate_state()
        with pytest.raises(ops.SchedulerStateError, match="no tasks"):
            ops.keep_for_client(s, c2.id, ["x"])
    with pytest.raises(ops.SchedulerStateError, match="no client"):
        ops.keep_for_client(s, "no-such-client", [])
    assert "no-such-client" not in s.clients
    ops.release_for_client(s, "no-such-client", ["x"], "test")  # gone: nothing to do
    assert "no-such-client" not in s.clients


# ----------------------------------------------------------------------------- plugins
class Recorder(SchedulerPlugin):
    name = "recorder"

    def __init__(self):
        self.calls: list[dict] = []

    def update_graph(self, scheduler, **kwargs):
        self.calls.append(kwargs)


class Broken(SchedulerPlugin):
    name = "broken"

    def update_graph(self, scheduler, **kwargs):
        raise RuntimeError("broken plugin")


@gen_cluster(client=True)
async def test_announce(c, s, a, b):
    r = c.submit(inc, 1, key="r")
    await r
    recorder, skipped, layout = Recorder(), Recorder(), GraphLayout(s)  # layout: has r
    skipped.name = "skipped"
    for plugin in (recorder, skipped, Broken(), layout):
        s.add_plugin(plugin, name=plugin.name)
    try:
        new = ops.create_tasks(
            s, [ops.NewTasks([Task("n", inc, 1)], (0, 1), annotations={"retries": 1})]
        )
        with captured_logger("dynflow.extension._ops") as log:
            ops.announce(s, new, {"r": ["n"]}, "test", client="me", skip=skipped, mine=42)
        assert "broken plugin" in log.getvalue()  # logged; the others heard of it
        (call,) = recorder.calls
        assert call["client"] == "me" and call["tasks"] == ["n", "r"] and call["keys"] == set()
        assert call["annotations"] == {"retries": {"n": 1}, **_span(call)}
        assert call["priority"]["n"] == (0, 1, 0) and call["mine"] == 42
        assert not skipped.calls
        assert ("n", "r") in layout.index_edge  # the rewired task's new edge
        ops.forget(s, new, "test")
    finally:
        for name in ("recorder", "skipped", "broken", layout.name):
            s.remove_plugin(name=name)


def _span(call):
    """The ``span`` annotations the spans extension gave the new tasks, if any."""
    return {"span": call["annotations"]["span"]} if "span" in call["annotations"] else {}


# ----------------------------------------------------------------------------- install
@gen_cluster(client=True)
async def test_install_and_uninstall(c, s, a, b):
    seen = []
    extension = object()
    ops.install(
        s,
        "ops-test",
        extension,
        {"ops_test_call": lambda x: x + 1},
        {"ops_test_message": lambda worker, **msg: seen.append((worker, msg))},
    )
    try:
        assert s.extensions["ops-test"] is extension
        assert await c.scheduler.ops_test_call(x=1) == 2
        a.batched_send({"op": "ops_test_message", "n": 1})
        await async_poll_for(lambda: seen, 5)
        assert seen == [(a.address, {"n": 1})]
    finally:
        ops.uninstall(s, "ops-test", ["ops_test_call"], ["ops_test_message"])
    assert "ops-test" not in s.extensions and "ops_test_call" not in s.handlers
    assert "ops_test_message" not in s.stream_handlers


# ------------------------------------------------------------------------------- reads
@gen_cluster(client=True)
async def test_reads(c, s, a, b):
    try:
        x = c.submit(inc, 1, key="x")
        await x
        bad = c.submit(boom, key="bad")
        with pytest.raises(ValueError):
            await bad
        t = c.submit(block, x, key="T")
        d = c.submit(len, t, key="D")
        ts = await processing(s, "T")
        assert ops.current_run(s, "T", ts.run_id) is ts
        assert ops.current_run(s, "T", ts.run_id, worker=ts.processing_on.address) is ts
        assert ops.current_run(s, "T", ts.run_id + 1) is None
        assert ops.current_run(s, "T", ts.run_id, worker="tcp://elsewhere:1") is None
        assert ops.current_run(s, "x", -1) is None and ops.current_run(s, "no", 0) is None
        assert ops.task_state(s, "x") == "memory" and ops.task_state(s, "no") is None
        assert ops.state_in(ops.tasks_of(s), "T") == "processing"
        assert ops.dependents(ts) == [s.tasks["D"]] and ops.dependents(ts, ("memory",)) == []
        assert ops.wanted_by_client(ts) and ops.has_task(s, "D") and not ops.has_task(s, "no")
        assert ops.has_waiters(s, "x") and not ops.has_waiters(s, "D")
        assert ops.nbytes(s, "x") > 0 and ops.nbytes(s, "no") == 0
        call = ops.task_call(ts)
        assert call is not None and call[0] is block and len(call[1]) == 1
        assert ops.task_call(s.tasks["x"]) == (inc, (1,))
        assert ops.priority(ts) == ts.priority and ops.annotation(ts, "nothing") is None
        assert ops.reaches(s, ["D"], "x") and not ops.reaches(s, ["x"], "D")
        assert ops.failure_text(s, "bad") == "ValueError('boom')"
        assert ops.failure_text(s, "x") is None and ops.failure_text(s, "no") is None
        assert ops.total_threads(s) == 3 and ops.has_client(s, c.id)
        assert ops.is_task_spec(Task("k", inc, 1)) and not ops.is_task_spec(42)
        assert ops.caused_by_client_leaving("remove-client-123")
        assert ops.compute_startstops({"startstops": [1]}) == [1]
    finally:
        GATE.set()
    assert await d == len("stale")


# ------------------------------------------------------------------- one place only
#: what changes the scheduler's state or reads its private parts: only the operations
#: module may do it (and the views' dashboard reads its tracker extension, by name)
SURGERY = re.compile(
    r"\.(dependencies|dependents|waiters|waiting_on|who_has|who_wants)\.(add|discard|clear|"
    r"remove|update|pop)\(|\.(run_spec|run_id|priority|exception_blame|_queueable|"
    r"waiting_on|waiters|dependencies|dependents|worker_restrictions|host_restrictions|"
    r"loose_restrictions) = |\.add_dependency\(|\.transitions?\(|"
    r"client_desires_keys|client_releases_keys|stream_handlers|\.handlers\[|"
    r"\.handlers\.(update|pop)|\.extensions\[|\.extensions\.pop|new_task\(|"
    r"_apply_annotations|observe_tasks|\.send_all\(|total_nthreads|\bs\.tasks\b|"
    r"scheduler\.tasks\b|register_worker_plugin|index_edge"
)


def test_only_the_operations_module_changes_the_scheduler_state():
    package = Path(ops.__file__).parent.parent
    found = [
        f"{path.relative_to(package.parent)}:{n}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.relative_to(package).as_posix() != "extension/_ops.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SURGERY.search(line) and not line.lstrip().startswith("#")
    ]
    assert not found, "\n".join(found)
