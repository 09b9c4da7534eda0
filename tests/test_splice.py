"""The splice extension's replies, on a real scheduler with validation on: a stale or
repeated call changes nothing; a splice for a cancelled run adds nothing; a graph splice
leaves the workers' counts right. (A splice whose collectors are all done already,
"unwanted", is an expander run again after a lost worker: tests/test_resilience.py.)"""

from __future__ import annotations

from dask._task_spec import Task
from distributed import wait
from distributed.protocol.serialize import ToPickle
from distributed.utils_test import BlockedGetData, gen_cluster, inc
from utils import generate_list, no_tasks_left, process, reducer

import dynflow as df
from dynflow._protocol import SPLICE, SPLICE_HANDLER, SPLICE_TOPIC
from dynflow.client._connect import install


async def installed(c, s):
    """The splice extension, installed by an ordinary run."""
    if SPLICE not in s.extensions:
        await process.map([1]).compute(client=c)
    return s.extensions[SPLICE]


def intercept(s, before):
    """Replace the splice handler: ``before(kwargs)`` runs first, then the real splice."""
    real = s.handlers[SPLICE_HANDLER]
    replies: list = []

    def handler(**kwargs):
        before(kwargs, replies, real)
        replies.append(real(**kwargs))
        return replies[-1]

    s.handlers[SPLICE_HANDLER] = handler
    return real, replies


@gen_cluster(client=True)
async def test_a_stale_call_changes_nothing(c, s, a, b):
    """A call with another run id of the expander (one that was rescheduled) is stale."""
    ext = await installed(c, s)
    added = ext.tasks_added

    def stale_first(kwargs, replies, real):
        replies.append(real(**{**kwargs, "task_run_id": kwargs["task_run_id"] + 1000}))
        replies.append(real(**{**kwargs, "expander": "no-such-expander"}))

    real, replies = intercept(s, stale_first)
    try:
        assert await reducer(process.map(generate_list(4))).compute(client=c) == 6
    finally:
        s.handlers[SPLICE_HANDLER] = real
    assert [r["status"] for r in replies] == ["stale", "stale", "OK"]
    assert ext.tasks_added - added == 4
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_a_repeated_call_adds_nothing(c, s, a, b):
    ext = await installed(c, s)

    def nothing(kwargs, replies, real):
        pass

    real, replies = intercept(s, nothing)
    s.handlers[SPLICE_HANDLER] = lambda **kw: (real(**kw), real(**kw))[1]
    try:
        before = ext.tasks_added
        assert await reducer(process.map(generate_list(5))).compute(client=c) == 10
    finally:
        s.handlers[SPLICE_HANDLER] = real
    assert ext.tasks_added - before == 5
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_a_splice_for_a_cancelled_run_adds_nothing(c, s, a, b):
    """The run was cancelled while its expander ran: the expander is released with it."""
    ext = await installed(c, s)
    before = ext.tasks_added
    futures: list = []

    def cancel_first(kwargs, replies, real):
        # the client lets go of the run on the scheduler, synchronously, in this pass
        s.client_releases_keys(keys=[f.key for f in futures], client=c.id, stimulus_id="test")

    real, replies = intercept(s, cancel_first)
    try:
        futures += await df.submit_async(reducer(process.map(generate_list(3))), client=c)
        await no_tasks_left(s, timeout=10)
    finally:
        s.handlers[SPLICE_HANDLER] = real
    assert [r["status"] for r in replies] == ["stale"]
    assert ext.tasks_added == before
    futures.clear()


@gen_cluster(client=True)
async def test_each_splice_is_logged_as_an_event(c, s, a, b):
    await installed(c, s)
    before = len(s.get_events(SPLICE_TOPIC))
    assert await reducer(process.map(generate_list(7))).compute(client=c) == 21
    events = s.get_events(SPLICE_TOPIC)
    assert len(events) == before + 1
    _, event = events[-1]
    assert (event["n"], event["added"], event["status"]) == (7, 7, "OK")
    assert event["end"] >= event["start"]


@gen_cluster(client=True, Worker=BlockedGetData)
async def test_a_graph_splice_while_an_input_is_in_flight_keeps_the_worker_counts(c, s, a, b):
    """A dynamic task T on worker b returned a graph before b reported holding its input x
    (the transfer from a is held here). The scheduler counts x on b for T
    (``needs_what``, network occupancy) until T leaves processing: T's run must end
    before its inputs are dropped, else the count of x stays behind for ever (once, the
    splice dropped them first: ``validate_state`` failed, and so did the cluster's last
    check, ``not ws.occupancy``)."""
    await install(c)
    x = c.submit(inc, 1, key="x", workers=[a.address])
    await wait(x)  # not its value: a's get_data is held
    t = c.submit(inc, x, key="T", workers=[b.address])
    await a.in_get_data.wait()  # b fetches x from a: held
    ts, ws = s.tasks["T"], s.workers[b.address]
    assert ts.state == "processing" and ws.needs_what.get(s.tasks["x"]) == 1
    reply = await c.scheduler.dynflow_graph_splice(
        key="T", task_run_id=ts.run_id, tasks=ToPickle({"O": Task("O", inc, 41)}), output="O"
    )
    assert reply == {"status": "OK", "added": 1}
    s.validate_state()
    assert s.tasks["x"] not in ws.needs_what
    a.block_get_data.set()
    b.block_get_data.set()
    assert await t == 42
    del x, t
    await no_tasks_left(s)
