"""The dynflow page in the Dask dashboard and its JSON data, over real HTTP.

The page is a bokeh document: its HTML holds no run data (the browser fetches that over
a websocket), so the data is checked through the JSON routes and the page once in
headless Chromium, whose screenshot must show the run. Chromium is Debian's ``chromium``
package (``.ci/run`` installs it and sets ``DYNFLOW_REQUIRE_CHROMIUM=1``, so CI cannot skip).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from distributed import Client
from distributed.utils_test import gen_cluster
from processes import CLICluster
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

import dynflow as df
import dynflow.scheduler  # noqa: F401  (registers the page before any scheduler starts)
from dynflow.views._dashboard import MENU_PAGE, PAGE
from dynflow.views._render import short_repr_counts

DASHBOARD = {"dashboard": True, "dashboard_address": "127.0.0.1:0"}


@df.task
def numbers(n):
    return list(range(n))


@df.task
def square(x):
    if x == 3:
        raise ValueError("three")
    return x * x


@df.task
def total(xs):
    return sum(x for x in xs if not isinstance(x, BaseException))


@df.task
def gated_numbers(n, gate):
    """``numbers(n)`` once the file ``gate`` exists (the test holds the run there)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate} never appeared")
        time.sleep(0.05)
    return list(range(n))


async def fetch(s, path):
    url = f"http://127.0.0.1:{s.http_server.port}{path}"
    return await AsyncHTTPClient().fetch(url, raise_error=False)


@gen_cluster(client=True, scheduler_kwargs=DASHBOARD)
async def test_the_page_and_the_json_answer(c, s, a, b):
    (fut,) = await df.submit_async(
        total(df.allow_failure(square.map(numbers(5)))), client=c, name="squares"
    )
    assert await fut == 0 + 1 + 4 + 16

    page = await fetch(s, PAGE)
    assert page.code == 200
    assert b"view.json" in page.body  # the page asks for its parts
    view = json.loads((await fetch(s, "/dynflow/view.json")).body)
    assert view["run"] == fut.run.id and view["runs"][0][0] == fut.run.id
    assert "squares" in view["html"] and "dynflow-node" in view["html"]  # the graph
    assert "dynflow-timeline-bar" in view["html"]  # when each node ran
    assert [label for _, label in view["maps"]] == ["square.map()"]
    assert "items 1-5 of 5 matching" in view["items"]
    failed = json.loads((await fetch(s, "/dynflow/view.json?state=failed&q=")).body)
    assert "items 1-1 of 1 matching" in failed["items"]
    # the dashboard's menu entry (where the scheduler started with it) shows the page
    menu = await fetch(s, MENU_PAGE)
    assert menu.code == 200 and b"bokeh" in menu.body.lower()

    listing = await fetch(s, "/dynflow/runs.json")
    assert listing.code == 200
    (run,) = json.loads(listing.body)
    assert (run["id"], run["name"], run["state"]) == (fut.run.id, "squares", "finished")

    one = await fetch(s, f"/dynflow/runs/{fut.run.id}.json")
    data = json.loads(one.body)
    map_key = next(n.key for n in fut.run.graph.nodes if n.label == "square.map()")
    assert data["nodes"][map_key] == {
        "total": 5,
        "pending": 0,
        "running": 0,
        "done": 4,
        "failed": 1,
        "cached": 0,
    }
    assert {n["key"] for n in data["graph"]["nodes"]} == {n.key for n in fut.run.graph.nodes}
    assert (await fetch(s, "/dynflow/runs/0123abcd.json")).code == 404


@gen_cluster(client=True, scheduler_kwargs=DASHBOARD)
async def test_the_page_is_in_the_dashboard_menu(c, s, a, b):  # with the preload
    status = await fetch(s, "/status")
    assert status.code == 200
    assert b"individual-dynflow" in status.body


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("DYNFLOW_REQUIRE_CHROMIUM"):
        pytest.fail("DYNFLOW_REQUIRE_CHROMIUM is set but chromium is not installed")
    return found


@pytest.mark.slow
def test_chromium_screenshot_shows_the_run(tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from PIL import Image

    cluster = CLICluster(tmp_path)
    client = None
    try:
        # a scheduler started without any flag of dynflow's: the first run adds the page
        cluster.start(
            n_workers=1,
            scheduler_args=("--dashboard", "--dashboard-address", "127.0.0.1:0"),
        )
        client = cluster.client(n_workers=1)
        assert total(df.allow_failure(square.map(numbers(6)))).compute(client=client) == 46
        shot = tmp_path / "dynflow-page.png"
        boxes = asyncio.run(screenshot(chromium, _dashboard(client) + PAGE, shot, tmp_path))
        assert boxes == 3  # numbers, square.map(), total
        assert df.dashboard_link(client) == _dashboard(client) + PAGE
        keep = os.environ.get("DYNFLOW_SCREENSHOT_DIR")
        if keep:
            shutil.copy(shot, Path(keep) / shot.name)
        image = Image.open(shot).convert("RGB")
        colours = image.getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 50, "the screenshot is blank"
        # the map's box is drawn with its progress: done (green) and failed (red) parts
        greens = sum(n for n, (r, g, b_) in colours if g > r + 40 and g > b_ + 40)
        reds = sum(n for n, (r, g, b_) in colours if r > g + 80 and r > b_ + 80)
        assert greens > 100 and reds > 20, "the run's progress is not on the page"

        # a 10,000-item map with a failed item: during the run (held before its list
        # exists), then after it; the page says what the JSON says
        gate = tmp_path / "gate"
        node = total(df.allow_failure(square.map(gated_numbers(10_000, str(gate)))))
        (fut,) = df.submit(node, client=client, name="ten-thousand")
        url = _dashboard(client) + PAGE
        during = tmp_path / "during.png"
        asyncio.run(screenshot(chromium, url, during, tmp_path, text := []))
        page = text[0]
        assert "ten-thousand" in page and fut.run.id[:8] in page, page[:2000]
        assert "running" in page or "pending" in page, page[:2000]
        gate.write_text("")
        assert fut.result() == sum(x * x for x in range(10_000)) - 9
        runs = json.loads(urllib.request.urlopen(_dashboard(client) + "/dynflow/runs.json").read())
        (run,) = [r for r in runs if r["id"] == fut.run.id]
        assert run["state"] == "finished"
        square_map = next(n.key for n in fut.run.graph.nodes if n.label == "square.map()")
        expected = short_repr_counts(run["nodes"][square_map])
        # the map grouped its items (batch_size="adaptive", the default): it says so
        assert re.fullmatch(r"9,999/10,000 done, 1 failed, in \d+ tasks", expected), expected
        after = tmp_path / "after.png"
        asyncio.run(screenshot(chromium, url, after, tmp_path, text := []))
        page = text[0]
        assert expected in page and "finished" in page, page[:3000]
        assert "index 3" in page  # the failed item, written as every view writes it
        assert "items 1-50 of 10,000 matching" in page  # the map's items, a page of them
        assert "Timeline" in page and "item " in page  # when nodes ran; item percentiles
        if keep:
            shutil.copy(after, Path(keep) / "dynflow-page-10k.png")
        del fut
    finally:
        if client is not None:
            client.close()
        cluster.stop()


@pytest.mark.slow
def test_chromium_shows_the_page_of_a_users_local_cluster(tmp_path):
    """A LocalCluster the user made (no preload, no flag): the first run adds the page."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from distributed import LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        m = square.map(numbers(300))
        assert total(df.allow_failure(m)).compute(client=client) == sum(
            x * x for x in range(300) if x != 3
        )
        url = df.dashboard_link(client)
        assert url == _dashboard(client) + PAGE
        boxes = asyncio.run(screenshot(chromium, url, tmp_path / "p.png", tmp_path, text := []))
        assert boxes == 3
        assert "299/300 done, 1 failed" in text[0] and "Timeline" in text[0], text[0][:2000]


# the page's text, inside bokeh's shadow DOM too
PAGE_TEXT = """(function text(root) {
  let t = [];
  const walk = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) {
    const p = walk.currentNode.parentNode;
    if (!p || !['STYLE', 'SCRIPT'].includes(p.nodeName)) t.push(walk.currentNode.nodeValue);
  }
  for (const el of root.querySelectorAll('*')) { if (el.shadowRoot) t.push(text(el.shadowRoot)); }
  return t.join(' ');
})(document)"""

# counts the flow graph's boxes, inside bokeh's shadow DOM too
COUNT_BOXES = """(function count(root) {
  let n = root.querySelectorAll('.dynflow-node').length;
  for (const el of root.querySelectorAll('*')) { if (el.shadowRoot) n += count(el.shadowRoot); }
  return n;
})(document)"""


async def screenshot(
    chromium: str, url: str, path: Path, tmp: Path, text: list | None = None
) -> int:
    """Open ``url`` in headless Chromium, wait until the graph is drawn, save a PNG.

    Driven over the DevTools protocol: the page draws itself after bokeh's websocket
    delivers the document, which a one-shot ``--screenshot`` does not wait for.
    Returns the number of graph boxes on the page; ``text`` gets the page's text.
    """
    proc = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp / 'profile'}",
            "--window-size=1200,900",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        for line in proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/..."
            if "DevTools listening on" in line:
                port = int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                break
        assert port is not None, "chromium did not start its DevTools server"
        listing = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/json/list")
        target = next(t for t in json.loads(listing.body) if t["type"] == "page")
        ws = await websocket_connect(target["webSocketDebuggerUrl"])
        ids = iter(range(1, 1_000_000))

        async def call(method: str, **params: object) -> dict:
            i = next(ids)
            await ws.write_message(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                reply = json.loads(await ws.read_message())
                if reply.get("id") == i:
                    return reply["result"]

        await call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        boxes = 0
        while boxes == 0:  # the page has no event to wait for: poll the DOM
            assert time.monotonic() < deadline, "the flow graph never appeared on the page"
            found = await call("Runtime.evaluate", expression=COUNT_BOXES, returnByValue=True)
            boxes = found["result"]["value"]
            if boxes == 0:
                await asyncio.sleep(0.2)
        shot = await call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        if text is not None:
            found = await call("Runtime.evaluate", expression=PAGE_TEXT, returnByValue=True)
            text.append(found["result"]["value"])
        ws.close()
        return boxes
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def _dashboard(client: Client) -> str:
    link = client.dashboard_link  # http://host:port/status
    return link.rsplit("/", 1)[0]


@df.task(task_run_name="item-{x}")
def labelled(x):
    if x % 50 == 7:
        raise ValueError(f"bad {x}")
    return x


@gen_cluster(client=True, scheduler_kwargs=DASHBOARD)
async def test_a_maps_items_by_state_and_label(c, s, a, b):
    from dynflow._protocol import TRACKER

    for batch in (None, 40):
        m = labelled.map(numbers(300), batch_size=batch)
        (fut,) = await df.submit_async(total(df.allow_failure(m)), client=c)
        await fut
        tracker = s.extensions[TRACKER]
        key = next(n.key for n in fut.run.graph.nodes if n.label == "labelled.map()")
        page = tracker.run_items(fut.run.id, key, 0, 10)
        assert page["total"] == page["matched"] == 300
        assert [it["index"] for it in page["items"]] == [[i] for i in range(10)]
        assert [it["label"] for it in page["items"]] == [f"item-{i}" for i in range(10)]
        assert page["items"][7]["state"] == "failed"
        assert page["items"][7]["error"] == "ValueError: bad 7"
        assert page["items"][0]["state"] == "done" and page["items"][0]["seconds"] >= 0
        failed = tracker.run_items(fut.run.id, key, 0, 100, state="failed")
        assert [it["index"][0] for it in failed["items"]] == [7, 57, 107, 157, 207, 257]
        found = tracker.run_items(fut.run.id, key, 0, 100, query="ITEM-12")
        assert found["matched"] == 11  # item-12, item-120 ... item-129
        # over HTTP, a page at a time
        path = f"/dynflow/runs/{fut.run.id}/items.json?node={key}&offset=290&limit=50"
        body = json.loads((await fetch(s, path)).body)
        assert [it["index"][0] for it in body["items"]] == list(range(290, 300))
        assert (await fetch(s, f"/dynflow/runs/{fut.run.id}/items.json?node=nope")).code == 404
        del fut


@gen_cluster(client=True, scheduler_kwargs=DASHBOARD)
async def test_a_failed_runs_finished_items_are_done_while_its_future_is_held(c, s, a, b):
    """A notebook holds a failed run's future: its items are released, not pending."""
    from dynflow._protocol import TRACKER

    for batch in (None, 40):
        (fut,) = await df.submit_async(
            total(labelled.map(numbers(300), batch_size=batch)), client=c
        )
        with pytest.raises(df.MapItemError):
            await fut
        tracker = s.extensions[TRACKER]
        key = next(n.key for n in fut.run.graph.nodes if n.label == "labelled.map()")
        done = tracker.run_items(fut.run.id, key, 0, 1000, state="done")
        failed = tracker.run_items(fut.run.id, key, 0, 1000, state="failed")
        assert failed["matched"] == 6
        assert done["matched"] == 294, tracker.run_items(fut.run.id, key, 0, 10)
        page = tracker.run_items(fut.run.id, key, 0, 10)
        assert [it["state"] for it in page["items"]] == ["done"] * 7 + ["failed"] + ["done"] * 2
        del fut


def test_listing_items_stays_fast_at_100k():
    """The page's queries scan the items once: filtering 100,000 by label or state."""
    from dynflow.extension._itemtable import FAILED
    from dynflow.extension._runs import NodeState, RunState

    run = RunState("r", "big", "client", {"nodes": [], "edges": []}, ())
    ns = NodeState(run, "m", "map", None, "m-items", 0)
    n = 100_000
    ns.sized((), n, None)
    ns.labels = {("m-items", i): f"tile-{i}" for i in range(n)}
    for i in range(0, n, 1000):
        ns.table.set(("m-items", i), FAILED)
    ns.memory = n
    t0 = time.perf_counter()
    page = ns.list_items({}, 0, 50)
    by_label = ns.list_items({}, 0, 50, query="tile-9999")
    failed = ns.list_items({}, 0, 50, state="failed")
    seconds = time.perf_counter() - t0
    assert page["matched"] == n and len(page["items"]) == 50
    assert by_label["matched"] == 11  # tile-9999, tile-99990 ... tile-99999
    assert failed["matched"] == 100
    assert seconds < 2.0, seconds  # 0.06 s on the 2-core development machine


@df.task
def wait_for_event(x):
    from distributed import Event

    Event("dynflow-release-queued").wait()
    return x


@gen_cluster(
    client=True,
    scheduler_kwargs=DASHBOARD,
    nthreads=[("127.0.0.1", 1)],
    config={"distributed.scheduler.worker-saturation": float("inf")},
)
async def test_items_sent_to_a_busy_worker_are_queued_not_running(c, s, a):
    from distributed import Event

    release = Event("dynflow-release-queued", client=c)
    (fut,) = await df.submit_async(total(wait_for_event.map(numbers(4))), client=c)

    async def queued() -> str:
        return json.loads((await fetch(s, "/dynflow/view.json")).body)["html"]

    # all 4 items are assigned to the one thread; one executes, three wait in its queue
    deadline = time.monotonic() + 15
    while "(3 queued)" not in (page := await queued()):
        assert time.monotonic() < deadline, page
        await asyncio.sleep(0.1)
    await release.set()
    assert await fut == 6
