"""Run tracking: per-node counts on the scheduler, RunFuture, progress bars, labels."""

from __future__ import annotations

import asyncio
import io
import re

import pytest
from distributed import Event
from distributed.utils_test import async_poll_for, gen_cluster

import dynflow as df
from dynflow._protocol import TRACKER
from dynflow.views._progress import TextProgress, WidgetProgress


@df.task
def numbers(n):
    return list(range(n))


@df.task(task_run_name="inv-{x}")
def inv(x):
    return 1 / x


@df.task
def total(xs):
    return sum(x for x in xs if not isinstance(x, BaseException))


@df.task
def pair(x):
    return [x, x]


@df.task
def ident(x):
    return x


@df.task
def held(name, n):
    Event(name).wait()
    return list(range(n))


@df.task
def inc(x):
    return x + 1


def by_label(run, info):
    return {node.label: info["nodes"][node.key] for node in run.graph.nodes}


@gen_cluster(client=True)
async def test_counts_of_a_finished_run_per_node(c, s, a, b):
    m = inv.map(numbers(5))  # item 0 fails (1 / 0)
    (fut,) = await df.submit_async(total(df.allow_failure(m)), client=c, name="inverse")
    assert isinstance(fut, df.RunFuture)
    assert await fut == pytest.approx(1 + 1 / 2 + 1 / 3 + 1 / 4)
    info = await fut.run.info()
    assert info["name"] == "inverse"
    assert info["state"] == "finished"
    counts = by_label(fut.run, info)
    assert counts["numbers"] == {
        "total": 1,
        "pending": 0,
        "running": 0,
        "done": 1,
        "failed": 0,
        "cached": 0,
    }
    assert counts["inv.map()"] == {
        "total": 5,
        "pending": 0,
        "running": 0,
        "done": 4,
        "failed": 1,
        "cached": 0,
    }
    assert counts["total"]["done"] == 1
    (failure,) = info["failures"][m.key]
    assert failure["label"] == "inv-0"
    assert list(failure["index"]) == [0]
    assert failure["error"].startswith("ZeroDivisionError")


@gen_cluster(client=True)
async def test_batched_and_nested_maps_count_items(c, s, a, b):
    batched = inv.map(numbers(10), batch_size=3)  # 4 tasks, item 0 fails
    nested = ident.map(df.flatten(pair.map(numbers(4))))  # 4 parents x 2
    futs = await df.submit_async(
        total(df.allow_failure(batched)), total(nested), client=c, name="two"
    )
    await c.gather(futs)
    info = await futs[0].run.info()
    counts = by_label(futs[0].run, info)
    assert counts["inv.map()"]["total"] == 10
    assert (counts["inv.map()"]["done"], counts["inv.map()"]["failed"]) == (9, 1)
    assert counts["pair.map()"]["total"] == 4
    assert counts["flatten(pair.map())"]["total"] == 0  # only mapped over: never a task
    assert counts["ident.map()"] == {
        "total": 8,
        "pending": 0,
        "running": 0,
        "done": 8,
        "failed": 0,
        "cached": 0,
    }


@df.task
def pair_of_inverse(x):
    return [1 / x, 1 / x]


@gen_cluster(client=True)
async def test_a_failed_parent_counts_as_one_failed_item(c, s, a, b):
    """As in the list (and MapItemError): a failed parent item of flatten(m) stands for
    its unknown children as one failed item."""
    m = ident.map(df.flatten(pair_of_inverse.map(numbers(3))))  # parent 0 fails
    (fut,) = await df.submit_async(df.allow_failure(m), client=c)
    got = await fut
    assert isinstance(got[0], ZeroDivisionError) and got[1:] == [1.0, 1.0, 0.5, 0.5]
    counts = by_label(fut.run, await fut.run.info())
    assert counts["ident.map()"] == {
        "total": 5,
        "pending": 0,
        "running": 0,
        "done": 4,
        "failed": 1,
        "cached": 0,
    }


@gen_cluster(client=True)
async def test_chained_items_after_a_failure_count_as_failed(c, s, a, b):
    m = inc.map(inv.map(numbers(3)))
    (fut,) = await df.submit_async(total(df.allow_failure(m)), client=c)
    await fut
    counts = by_label(fut.run, await fut.run.info())
    assert counts["inc.map()"]["failed"] == 1  # item 0 never ran: its input failed
    assert counts["inc.map()"]["done"] == 2


def _bar_parts(svg: str) -> dict[str, float]:
    """The coloured parts of a notebook progress bar: state -> width in pixels."""
    from dynflow.views._render import BAR

    colour = {v: k for k, v in BAR.items()}
    parts = re.findall(r'<rect x="[^"]*" y="[^"]*" width="([^"]*)" height="6" fill="([^"]*)"', svg)
    return {colour[f]: float(w) for w, f in parts}


@gen_cluster(client=True)
async def test_one_failed_item_in_135_is_a_sliver_of_the_notebook_bar(c, s, a, b):
    m = inv.map(numbers(135))  # item 0 fails (1 / 0)
    (fut,) = await df.submit_async(total(df.allow_failure(m)), client=c)
    widgets = WidgetProgress([fut.run], interval=0.01)
    await widgets.listen()
    map_key = next(n.key for n in fut.run.graph.nodes if n.label == "inv.map()")
    parts = _bar_parts(widgets.bars[fut.run.id, map_key].value)
    assert 2.0 <= parts["failed"] <= 3.0 and parts["done"] >= 236, parts


@gen_cluster(client=True)
async def test_totals_grow_when_the_map_expands(c, s, a, b):
    release = Event("release-expansion", client=c)
    (fut,) = await df.submit_async(total(inc.map(held("release-expansion", 6))), client=c)
    text = TextProgress([fut.run], interval=0.01, file=io.StringIO())
    widgets = WidgetProgress([fut.run], interval=0.01)
    listening = asyncio.gather(text.listen(), widgets.listen())
    await async_poll_for(
        lambda: fut.run.id in text.infos and fut.run.id in widgets.infos, timeout=10
    )
    before = by_label(fut.run, text.infos[fut.run.id])
    assert before["inc.map()"]["total"] is None  # not expanded: the list does not exist
    map_key = next(n.key for n in fut.run.graph.nodes if n.label == "inc.map()")
    assert _bar_parts(widgets.bars[fut.run.id, map_key].value) == {}  # nothing done yet
    await release.set()
    await listening
    assert await fut == sum(range(1, 7))
    after = by_label(fut.run, text.infos[fut.run.id])
    assert after["inc.map()"]["total"] == 6
    assert _bar_parts(widgets.bars[fut.run.id, map_key].value) == {"done": 240.0}
    assert "6/6" in text.last or "6 done" in text.last
    assert text.file.getvalue().endswith("\n")


@gen_cluster(client=True)
async def test_a_released_unfinished_run_is_cancelled(c, s, a, b):
    (fut,) = await df.submit_async(total(inc.map(held("never-set", 3))), client=c)
    run = fut.run
    tracker = s.extensions[TRACKER]
    await async_poll_for(lambda: tracker.runs[run.id].state != "pending", timeout=10)
    fut.release()
    del fut
    await async_poll_for(lambda: tracker.runs[run.id].state == "cancelled", timeout=10)
    assert tracker.index == {} or all(ns.run.id != run.id for ns in tracker.index.values())
    await Event("never-set", client=c).set()


@gen_cluster(client=True)
async def test_history_keeps_the_newest_finished_runs(c, s, a, b):
    import dask.config

    with dask.config.set({"dynflow.dashboard.history": 2}):
        for i in range(4):
            (fut,) = await df.submit_async(inc(i), client=c, name=f"run-{i}")
            await fut
        (last,) = await df.submit_async(inc(9), client=c, name="last")
        await last
        names = [r["name"] for r in s.extensions[TRACKER].list_runs()]
    assert names == ["last", "run-3"]  # two finished runs at every moment


def test_progress_rejects_plain_values():
    with pytest.raises(TypeError, match="futures returned by dynflow's submit"):
        df.progress(42)


@gen_cluster(client=True)
async def test_progress_in_a_terminal_with_an_asynchronous_client(c, s, a, b, capsys):
    (fut,) = await df.submit_async(total(inc.map(numbers(4))), client=c, name="four")
    bar = await df.progress(fut, notebook=False, interval=0.01)
    assert isinstance(bar, TextProgress)
    assert bar.infos[fut.run.id]["state"] == "finished"
    out = capsys.readouterr().out
    assert "four finished 6/6" in out and "inc.map() 4/4 done" in out


@gen_cluster(client=True)
async def test_the_live_view_of_a_run_follows_it_to_the_end(c, s, a, b):
    from dynflow.views._progress import RunView

    (fut,) = await df.submit_async(total(inc.map(numbers(3))), client=c, name="live")
    view = RunView(fut.run, interval=0.01)
    await view.listen()
    html = view.widget.value
    assert "live" in html and "finished" in html
    assert "inc.map() ×3" in html  # the map's box shows its item count


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@gen_cluster(client=True)
async def test_progress_in_a_terminal_redraws_within_its_width(c, s, a, b, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    fail = inv.map(numbers(6))  # item 0 fails: 5 done, 1 failed
    (fut,) = await df.submit_async(total(df.allow_failure(fail)), client=c, name="term")
    text = TextProgress([fut.run], interval=0.01, file=_Terminal())
    await text.listen()
    out = text.file.getvalue()
    assert "term: inv.map()" in out and "5/6 done, 1 failed" in out
    visible = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert max(len(line) for line in visible.splitlines()) <= 80
    assert "\x1b[" in out  # redrawn in place (cursor moves), not a line per update


def test_a_bar_shows_done_and_failed_in_proportion():
    from dynflow.views._progress import _counts_bar

    bar = _counts_bar({"total": 6, "done": 5, "failed": 1}, 30)
    assert bar == [("━" * 25, "green"), ("━" * 5, "red")]
    bar = _counts_bar({"total": 1000, "done": 999, "failed": 1}, 30)
    assert ("━", "red") in bar and sum(len(ch) for ch, _ in bar) == 30


@gen_cluster(client=True)
async def test_runs_say_who_started_them_and_why_they_ended(c, s, a, b):
    import socket

    (ok,) = await df.submit_async(inc(1), client=c, name="same")
    (bad,) = await df.submit_async(inv(0), client=c, name="same")
    await ok
    with pytest.raises(ZeroDivisionError):
        await bad
    infos = [await f.run.info() for f in (ok, bad)]
    assert infos[0]["id"] != infos[1]["id"]  # runs of one flow told apart
    for info in infos:
        assert info["host"] == socket.gethostname() and info["client"] == c.id
        assert info["started"] <= info["finished"]
    assert infos[0]["reason"] is None
    assert infos[1]["state"] == "failed"
    assert infos[1]["reason"].startswith("ZeroDivisionError(")
    # cancelled by the client, and a client that leaves
    (held_run,) = await df.submit_async(total(inc.map(held("never", 2))), client=c)
    run = held_run.run
    await held_run.cancel()
    tracker = s.extensions[TRACKER]
    await async_poll_for(lambda: tracker.runs[run.id].finished is not None, timeout=10)
    assert tracker.runs[run.id].reason == "cancelled by the client"
    from distributed import Client

    async with Client(s.address, asynchronous=True) as other:
        (gone,) = await df.submit_async(total(inc.map(held("never", 2))), client=other)
        gone_id = gone.run.id
    await async_poll_for(lambda: tracker.runs[gone_id].finished is not None, timeout=10)
    assert tracker.runs[gone_id].reason == "client disconnected"
    await Event("never", client=c).set()


@gen_cluster(client=True)
async def test_failed_submits_and_malformed_registrations_leave_nothing(c, s, a, b):
    import threading

    tracker = s.extensions.get(TRACKER)
    await df.submit_async(inc(1), client=c)  # installs the tracker
    tracker = s.extensions[TRACKER]
    import dask.config

    with dask.config.set({"dynflow.dashboard.history": 2}):
        for i in range(2):
            (fut,) = await df.submit_async(inc(i), client=c)
            await fut
        before = set(tracker.runs)
        assert len(before) == 2
        with pytest.raises(df.SerializationError):
            await df.submit_async(inc(threading.Lock()), client=c)
        # nothing left of it, and it did not push a finished run out of the history
        assert set(tracker.runs) == before
    for bad in (
        {"run_id": "r1", "name": "x", "graph": {"nodes": [{}], "edges": []}},
        {"run_id": "r2", "name": "x", "graph": None},
        {"run_id": "r3", "name": "x", "graph": {"nodes": [], "edges": []}, "client": "nobody"},
    ):
        args = {"outputs": [], "client": c.id, **bad}
        reply = tracker.run_start(**args)
        assert reply["status"] == "error", reply
    assert set(tracker.runs) == before and all(k not in tracker.runs for k in ("r1", "r2", "r3"))


@gen_cluster(client=True)
async def test_live_views_are_swapped_for_a_static_copy_when_the_run_ends(c, s, a, b):
    """What a notebook saved without widget state keeps: HTML and a text line."""
    import IPython.display

    from dynflow.views._progress import RunView, Static

    class Handle:
        def __init__(self, obj):
            self.shown, self.updates = obj, []

        def update(self, obj):
            self.updates.append(obj)

    handles = []

    def fake_display(obj, display_id=None):
        assert display_id is True
        handles.append(Handle(obj))
        return handles[-1]

    (fut,) = await df.submit_async(total(df.allow_failure(inv.map(numbers(4)))), client=c)
    orig = IPython.display.display
    IPython.display.display = fake_display
    try:
        bar = WidgetProgress([fut.run], interval=0.01)
        bar._ipython_display_()
        view = RunView(fut.run, interval=0.01)
        view.display.show(view.widget)
        await asyncio.gather(bar.listen(), view.listen())
    finally:
        IPython.display.display = orig
    assert [type(h.shown).__name__ for h in handles] == ["VBox", "HTML"]  # live widgets
    for h in handles:
        (static,) = h.updates
        assert isinstance(static, Static)
        assert "finished" in static._repr_html_() and "inv.map()" in static._repr_html_()
        assert repr(static).startswith(f"{fut.run.name}: finished, ")
        assert "3/5 done, 1 failed" in repr(static) or "failed" in repr(static)


@df.task
def thirty(p):
    return list(range(30))


@df.task
def slow_ident(x):
    import time

    time.sleep(0.0005)
    return x


@gen_cluster(client=True)
async def test_counts_never_go_down_while_a_flatten_pipeline_runs(c, s, a, b):
    m = slow_ident.map(df.flatten(thirty.map(numbers(40))))
    (fut,) = await df.submit_async(total(m), client=c)
    tracker = s.extensions[TRACKER]
    seen: dict[str, int] = {}
    polls = 0
    while fut.status == "pending":
        info = tracker.run_status(fut.run.id)
        for key, counts in info["nodes"].items():
            finished = counts["done"] + counts["failed"] + counts["cached"]
            assert finished >= seen.get(key, 0), (key, seen.get(key), counts)
            seen[key] = finished
        polls += 1
        await asyncio.sleep(0.002)
    assert await fut == 40 * sum(range(30))
    assert polls > 10  # it was watched while it ran
    counts = by_label(fut.run, await fut.run.info())
    assert counts["slow_ident.map()"]["done"] == 1200
    assert counts["thirty.map()"]["done"] == 40


def _retained_bytes(obj):
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parent.parent / "asv_bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from benchmarks._util import retained_bytes

    return retained_bytes(obj)


@pytest.mark.parametrize("batch_size", ["auto", None])
@gen_cluster(client=True)
async def test_finished_runs_keep_a_few_bytes_per_item(c, s, a, b, batch_size):
    """The items table's data (states, seconds, labels and errors where they exist)
    costs the scheduler a few bytes per item, kept for every run in the history."""
    n = 20_000 if batch_size else 2_000
    (fut,) = await df.submit_async(total(inc.map(numbers(n), batch_size=batch_size)), client=c)
    await fut
    tracker = s.extensions[TRACKER]
    run = tracker.runs[fut.run.id]
    assert run.state == "finished"
    (ns,) = [ns for ns in run.nodes.values() if ns.items is not None]
    page = ns.list_items(s.tasks, 0, 3)
    assert [i["state"] for i in page["items"]] == ["done"] * 3
    assert all(i["seconds"] is not None for i in page["items"])  # compute times kept
    per_item = _retained_bytes(run) / n
    assert per_item < 16, per_item  # ~5; a dict entry per item was ~150
