"""dynflow's scheduler handlers sent bad calls directly by a client.

Any dask client can call them with anything. Each bad call is refused with an error
naming what is wrong, answered at once, and leaves the scheduler as it was: no task,
client, stream or run-index entry left behind, and ``Scheduler.validate_state`` passes
(validation is on throughout). The runs around them then finish as usual.
"""

from __future__ import annotations

import time

import dask.config
import pytest
from dask._task_spec import Task, TaskRef
from distributed import Event, Future
from distributed.protocol.serialize import ToPickle
from distributed.utils_test import async_poll_for, captured_logger, gen_cluster
from utils import generate_list, no_tasks_left, process, reducer

import dynflow as df
from dynflow._compat import want_keys
from dynflow._protocol import SPLICE, SPLICE_HANDLER, TRACKER
from dynflow.client._connect import install

#: seconds a refused call may take, round trip (a 300,000-item splice took 13 s)
ANSWERED_WITHIN = 2.0


async def answered(call):
    """The reply of ``call``, which must come at once."""
    start = time.monotonic()
    reply = await call
    took = time.monotonic() - start
    assert took < ANSWERED_WITHIN, f"the scheduler took {took:.1f} s to answer"
    return reply


async def still_responsive(c, s):
    await answered(c.scheduler.identity())
    s.validate_state()


@df.task
def held(x, event):
    """Waits for the distributed Event ``event``: the run is live meanwhile."""
    from distributed import Event as DEvent

    assert DEvent(event).wait(timeout=30)
    return x


def inc(x):
    return x + 1


def wait_then(event, value):
    from distributed import Event as DEvent

    assert DEvent(event).wait(timeout=30)
    return value


# ------------------------------------------------------------------ streams
@gen_cluster(client=True)
async def test_stream_open_refuses_a_client_the_scheduler_does_not_know(c, s, a, b):
    """Once, an unknown id made the scheduler invent that client, which then held the
    run's items for ever."""
    release = Event("handlers-open", client=c)
    m = held.map(generate_list(4), "handlers-open")
    (fut,) = await df.submit_async(reducer(df.allow_failure(m)), client=c)
    tracker = s.extensions[TRACKER]
    clients = set(s.clients)
    for client, message in (
        ("nobody", "no client 'nobody' on this scheduler"),
        (["not", "an", "id"], "must be str"),
    ):
        reply = await answered(
            c.scheduler.dynflow_stream_open(run_id=fut.run.id, node=m.key, client=client)
        )
        assert reply["status"] == "error" and message in reply["message"], reply
        assert not tracker.streams.streams
    await release.set()
    assert await fut == 6
    del fut
    await no_tasks_left(s)
    assert set(s.clients) == clients
    await still_responsive(c, s)


@gen_cluster(client=True)
async def test_a_stream_nobody_reads_is_closed_once_its_run_ended(c, s, a, b):
    """The client opened a stream and never read it (nor closed it): after the run
    ended and ``dynflow.as-completed.idle-timeout`` passed without a read, the stream
    is closed and what it kept is released; nothing of the run stays."""
    release = Event("handlers-unread", client=c)
    m = held.map(generate_list(5), "handlers-unread")
    with dask.config.set({"dynflow.as-completed.idle-timeout": "300ms"}):
        (fut,) = await df.submit_async(reducer(df.allow_failure(m)), client=c)
        reply = await c.scheduler.dynflow_stream_open(run_id=fut.run.id, node=m.key, client=c.id)
        assert reply["status"] == "OK"
        streams = s.extensions[TRACKER].streams
        await release.set()
        assert await fut == 10
        assert (await fut.run.info())["state"] == "finished"
        del fut
        await no_tasks_left(s, timeout=10)
    assert not streams.streams and not streams.by_node
    await still_responsive(c, s)


@gen_cluster(client=True)
async def test_a_stream_read_to_its_end_is_closed_by_the_scheduler(c, s, a, b):
    """A client that took every item and never closed the stream: the scheduler closed
    it when it handed out the last one (done), with the run."""
    release = Event("handlers-drained", client=c)
    m = held.map(generate_list(5), "handlers-drained")
    (fut,) = await df.submit_async(reducer(df.allow_failure(m)), client=c)
    stream_id = (await c.scheduler.dynflow_stream_open(run_id=fut.run.id, node=m.key, client=c.id))[
        "stream"
    ]
    streams = s.extensions[TRACKER].streams
    await release.set()
    keys, done = [], False
    while not done:
        reply = await answered(c.scheduler.dynflow_stream_next(stream_id=stream_id, limit=2))
        keys += [item["key"] for item in reply["items"]]
        done = reply["done"]
    assert len(keys) == 5
    assert stream_id not in streams.streams and not streams.by_node
    futures = [Future(k, c) for k in keys]  # as as_completed fetches them, then lets go
    want_keys(c, keys)
    assert sorted(await c.gather(futures)) == list(range(5))
    del futures
    assert await fut == 10
    del fut
    await no_tasks_left(s)
    await still_responsive(c, s)


# ------------------------------------------------------------------- splices
def splice_wrapper(s, during):
    """The splice handler, which runs ``during(kwargs)`` first when the expander's own
    request comes (the expander is processing then); the calls ``during`` makes come
    through it too and go straight to the real handler."""
    real = s.handlers[SPLICE_HANDLER]
    seen: list = []

    async def handler(**kwargs):
        if not seen:
            seen.append(kwargs)
            await during(kwargs)
        return real(**kwargs)

    s.handlers[SPLICE_HANDLER] = handler
    return real, seen


async def refused(c, s, requests):
    """Send each ``(request, message)`` to ``dynflow_splice``: refused at once, naming
    ``message``, nothing added."""
    ext = s.extensions[SPLICE]
    keys, added = set(s.tasks), ext.tasks_added
    for request, message in requests:
        reply = await answered(c.scheduler.dynflow_splice(**request))
        assert reply["status"] == "error" and message in reply["message"], (request, reply)
        assert set(s.tasks) == keys and ext.tasks_added == added
        s.validate_state()


@gen_cluster(client=True)
async def test_a_splice_the_expander_did_not_make_is_refused_at_once(c, s, a, b):
    """While the expander of a 5-item map is processing, a client claims other lengths
    (up to 300,000 items), with the expander's own signature, a made-up one or none:
    each is refused in a moment and adds nothing; the map then gets its 5 items."""
    await install(c)

    async def during(good):
        signed = {"digest": good["digest"]} if "digest" in good else {}
        base = {"expander": good["expander"], "task_run_id": good["task_run_id"], "listed": []}
        await refused(
            c,
            s,
            [
                ({**base, "n": 6, **signed}, "is not signed by a worker of this scheduler"),
                ({**base, "n": 300_000, **signed}, "is not signed by a worker"),
                ({**base, "n": 300_000, "digest": "0" * 64}, "is not signed by a worker"),
                ({**base, "n": 300_000}, "(the request has no signature)"),
                ({**base, "n": -1, **signed}, "n must be an int >= 0"),
                ({**base, "n": "5", **signed}, "n must be an int >= 0"),
                ({**base, "n": 5, "listed": [{"a": 1}], **signed}, "listed must be a list"),
                ({**base, "n": 5, "extra": 1, **signed}, "unknown: ['extra']"),
                ({"expander": [{"a": 1}], "task_run_id": 1, "n": 1, "listed": []}, "task key"),
            ],
        )

    real, seen = splice_wrapper(s, during)
    try:
        assert await reducer(process.map(generate_list(5))).compute(client=c) == 10
    finally:
        s.handlers[SPLICE_HANDLER] = real
    assert seen, "the expander never called"
    await no_tasks_left(s)
    await still_responsive(c, s)


@gen_cluster(client=True)
async def test_a_signed_splice_must_fit_the_plan(c, s, a, b):
    """Even signed (by a caller holding the workers' key), a request the expander's plan
    cannot make is refused: a length other than the mapped tuple's, a listed source
    that is not mapped, items for a failed source, sub-flow tasks for no sub-flow."""
    from dynflow.worker._expander import splice_digest

    await install(c)
    key = s.extensions[SPLICE].key

    async def during(good):
        def sign(**request):
            request = {"listed": [], "failed": False, "subflow_tasks": None, **request}
            request["digest"] = splice_digest(
                key,
                good["expander"],
                good["task_run_id"],
                request["n"],
                request["listed"],
                request["subflow_tasks"],
                request["failed"],
            )
            if request["subflow_tasks"] is not None:
                request["subflow_tasks"] = ToPickle(request["subflow_tasks"])
            return {"expander": good["expander"], "task_run_id": good["task_run_id"], **request}

        await refused(
            c,
            s,
            [
                (sign(n=300_000), "has 3 items; the request says n=300000"),
                (
                    sign(n=3, listed=["some-other-key"]),
                    "listed must be a list of at most 0 task keys",
                ),
                (sign(n=3, failed=True), "a failed source has no items"),
                (sign(n=3, subflow_tasks={0: []}), "sub-flow tasks are expected for stages []"),
            ],
        )

    real, seen = splice_wrapper(s, during)
    try:
        assert await process.map([1, 2, 3], 2).compute(client=c) == [2, 4, 6]
    finally:
        s.handlers[SPLICE_HANDLER] = real
    assert seen
    await no_tasks_left(s)
    await still_responsive(c, s)


# -------------------------------------------------------------- graph splices
@gen_cluster(client=True)
async def test_a_malformed_graph_splice_changes_nothing(c, s, a, b):
    """A graph splice for a processing task whose graph is malformed (annotations not
    per key, a spec under another key, a cycle, no specs) is refused before anything is
    created: once, its first tasks stayed for ever (or waited on each other)."""
    await install(c)
    ext = s.extensions[SPLICE]
    release = Event("handlers-graph", client=c)
    fut = c.submit(wait_then, "handlers-graph", 42, key="held-task")
    await async_poll_for(
        lambda: "held-task" in s.tasks and s.tasks["held-task"].state == "processing", timeout=10
    )
    ts = s.tasks["held-task"]
    run_id, keys = ts.run_id, set(s.tasks)
    cycle = {"x": Task("x", inc, TaskRef("y")), "y": Task("y", inc, TaskRef("x"))}
    for tasks, output, by_key, message in [
        ({"k1": Task("k1", inc, 1)}, "k1", {"k1": 5}, "annotations must be"),
        ({"k2": Task("k3", inc, 1)}, "k2", None, "each key to its task spec"),
        (cycle, "x", None, "in a cycle"),
        ({"k4": 42}, "k4", None, "each key to its task spec"),
        ([1, 2], "k5", None, "tasks must be a dict"),
    ]:
        reply = await answered(
            c.scheduler.dynflow_graph_splice(
                key="held-task",
                task_run_id=run_id,
                tasks=ToPickle(tasks),
                output=output,
                annotations=by_key,
            )
        )
        assert reply["status"] == "error" and message in reply["message"], reply
        assert set(s.tasks) == keys, set(s.tasks) - keys
        assert (ts.state, ts.run_id) == ("processing", run_id) and not ext.dynamic_keys
        s.validate_state()
    # on a worker's stream: from a worker that does not run the task, or malformed
    # (which would close the worker's stream if it raised): nothing changes
    other = next(w for w in (a, b) if w.address != ts.processing_on.address)
    good = {"key": "held-task", "task_run_id": run_id, "tasks": {"k6": Task("k6", inc, 1)}}
    ext.graph_splice_message(worker=other.address, output="k6", **good)
    ext.graph_splice_message(worker=ts.processing_on.address, no_such_field=1)
    assert set(s.tasks) == keys and ts.state == "processing"
    await release.set()
    assert await fut == 42
    del fut
    await no_tasks_left(s)
    await still_responsive(c, s)


# ------------------------------------------------------------------------ runs
@gen_cluster(client=True)
async def test_a_malformed_run_registration_leaves_nothing(c, s, a, b):
    """Once, an unhashable output left the run's nodes in the tracker's index."""
    await install(c)
    tracker = s.extensions[TRACKER]

    def state():
        return dict(tracker.index), dict(tracker.outputs), list(tracker.runs)

    before = state()
    graph = {"nodes": [{"key": "node-1", "kind": "map", "items": "node-1-items"}], "edges": []}
    good = {"run_id": "run-1", "name": "r", "graph": graph, "outputs": ["out-1"], "client": c.id}
    for change, message in [
        ({"outputs": [{"a": 1}]}, "malformed run registration: TypeError"),
        ({"outputs": []}, "no outputs"),
        ({"graph": {**graph, "nodes": [{**graph["nodes"][0], "items": ["x"]}]}}, "must be a str"),
        ({"graph": {"nodes": "x", "edges": []}}, "malformed run registration"),
        ({"run_id": ["r"]}, "run_id and client must be str"),
        ({"client": "nobody"}, "no client 'nobody'"),
    ]:
        reply = await answered(c.scheduler.dynflow_run_start(**{**good, **change}))
        assert reply["status"] == "error" and message in reply["message"], reply
        assert state() == before
        s.validate_state()
    # the same registration, well formed, is accepted; a handler's error is logged on
    # the scheduler, under dynflow's own logger
    assert await c.scheduler.dynflow_run_start(**good) == {"status": "OK"}
    with captured_logger("dynflow.extension._tracker") as log:
        with pytest.raises(ValueError, match="invalid literal"):
            await c.scheduler.dynflow_run_items(run_id="run-1", node="node-1", limit="x")
    assert "invalid literal" in log.getvalue()
    await c.scheduler.dynflow_run_forget(run_id="run-1")
    assert state() == before
    await still_responsive(c, s)
