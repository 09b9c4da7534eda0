"""Result caching, issue #20, on every path a call takes.

- ``cache_key_fn`` gets the call's arguments by name (bound to the function's
  parameters, defaults filled in), and a key function that raises or returns something
  other than a string fails only its own call, naming the task;
- a task's cache identity survives ``with_options`` and sub-flows built on a worker
  that cannot read the script's source;
- a dynamic task passes its ``result_storage`` (and ``cache_expiration``,
  ``refresh_cache``) on to the cached tasks of the graph it returns;
- temporary files of writers killed mid-write are removed, a directory in an entry's
  place is reported, a bad ``dynflow.cache.*`` config value is named;
- a bad option of ``@df.task(...)``/``@df.flow(...)`` names the function.

The paths: a plain task, a map item, a batch item (``batch_size=2`` and ``"auto"``), a
sub-flow item (a flow mapped), an async task; on a real cluster (``gen_cluster``, whose
workers run in this process, so the calls made are counted in ``CALLS``) and with
``scheduler="sync"``. The storage is fsspec's ``memory://`` or a local directory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import linecache
import shutil
import tempfile
import threading
import time
import uuid

import dask
import distributed
import fsspec
import pytest
from distributed.utils_test import async_poll_for, gen_cluster
from utils import no_tasks_left

import dynflow as df
from dynflow._protocol import TRACKER
from dynflow.worker._cache import STALE_AFTER, TEMPORARY

CALLS: collections.Counter = collections.Counter()
_LOCK = threading.Lock()

#: every path a call can take (an async task's too: ASYNC_PATHS)
PATHS = ASYNC_PATHS = ("plain", "map", "batch", "auto", "subflow")


def called(name, x):
    with _LOCK:
        CALLS[name, x] += 1


@pytest.fixture(autouse=True)
def fresh():
    CALLS.clear()
    yield


def memory_storage():
    return f"memory://dynflow-test-{uuid.uuid4().hex}"


@contextlib.contextmanager
def local_storage(prefix):
    """A local directory (the workers of ``gen_cluster`` take no ``tmp_path``), removed
    at the end."""
    folder = tempfile.mkdtemp(prefix=prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def entries(storage):
    """The cache entries under ``storage``: {task name: number of entries}."""
    fs, root = fsspec.core.url_to_fs(storage)
    if not fs.exists(root):
        return {}
    out: collections.Counter = collections.Counter()
    for path in fs.find(root):
        name, key = path[len(root.rstrip("/")) + 1 :].split("/")[-2:]
        if not path[len(root.rstrip("/")) + 1 :].startswith(".") and ".tmp-" not in key:
            out[name] += 1
    return dict(out)


@df.task
def listed(xs):
    return list(xs)


def subflow_of(t, **kwargs):
    """A flow calling ``t`` once, to be mapped (its items are sub-flows, built on a
    worker on a cluster)."""

    @df.flow
    def each(x):
        return t(x, **kwargs)

    return each


def through(t, path, xs, ratio=1.0, **kwargs):
    """A node whose value is the list of ``t``'s results for ``xs``, each call made on
    ``path``; ``kwargs`` go to every call, ``ratio`` is the map's min_success_ratio."""
    if path == "plain":
        return listed([t(x, **kwargs) for x in xs])
    if path == "map":
        return t.map(xs, min_success_ratio=ratio, **kwargs)
    if path in ("batch", "auto"):
        size = 2 if path == "batch" else "auto"
        return t.map(xs, batch_size=size, min_success_ratio=ratio, **kwargs)
    assert path == "subflow"
    return subflow_of(t, **kwargs).map(xs, min_success_ratio=ratio)


async def on_cluster(node, c):
    return await node.compute(client=c)


def in_sync(node):
    return node.compute(scheduler="sync")


# ------------------------------------------------------------- 3: keyed by name
ACCOUNTS = [{"id": "acme"}, {"id": "initech"}, {"id": "globex"}]


@df.task(cache=True, cache_key_fn=lambda account, **kw: account["id"])  # the README's
def fetch(account, region="eu"):
    called("fetch", account["id"])
    return f"{account['id']}@{region}"


@df.task(cache=True, cache_key_fn=lambda account, **kw: account["id"])
async def afetch(account, region="eu"):
    called("afetch", account["id"])
    return f"{account['id']}@{region}"


@df.task(cache=True, cache_key_fn=lambda account, region: f"{account['id']}-{region}")
def fetch_in(account, region="eu"):
    called("fetch_in", account["id"])
    return f"{account['id']}@{region}"


def _check_keyed_by_name(results, name):
    """``results(task, path, **kwargs)`` computes ``through(task, path, ACCOUNTS)``."""
    want = [f"{a['id']}@us" for a in ACCOUNTS]
    assert results("us") == want  # a second argument: by name, the key fn ignores it
    assert results("eu") == want  # keyed by the account alone: the same entries
    assert [CALLS[name, a["id"]] for a in ACCOUNTS] == [1, 1, 1]
    CALLS.clear()


@gen_cluster(client=True)
async def test_cache_key_fn_gets_the_arguments_by_name(c, s, a, b):
    for task, paths in ((fetch, PATHS), (afetch, ASYNC_PATHS)):
        for path in paths:
            t = task.with_options(result_storage=memory_storage())
            got = {}
            for region in ("us", "eu"):
                got[region] = await on_cluster(through(t, path, ACCOUNTS, region=region), c)
            _check_keyed_by_name(got.__getitem__, task.name)
    await no_tasks_left(s)


def test_cache_key_fn_gets_the_arguments_by_name_in_sync_mode():
    for task, paths in ((fetch, PATHS), (afetch, ASYNC_PATHS)):
        for path in paths:
            t = task.with_options(result_storage=memory_storage())

            def results(region, t=t, path=path):
                return in_sync(through(t, path, ACCOUNTS, region=region))

            _check_keyed_by_name(results, task.name)


def test_cache_key_fn_gets_defaults_and_star_args_by_name():
    t = fetch_in.with_options(result_storage=memory_storage())
    for path in PATHS:  # region left out: its default is the key fn's region
        assert in_sync(through(t, path, ACCOUNTS[:1])) == ["acme@eu"]
    assert CALLS["fetch_in", "acme"] == 1

    @df.task(
        cache=True,
        result_storage=memory_storage(),
        cache_key_fn=lambda first, rest, **options: f"{first}+{len(rest)}:{sorted(options)}",
    )
    def tally(first, *rest, **options):
        called("tally", first)
        return first + sum(rest)

    assert tally(1, 2, 3, scale=2).compute(scheduler="sync") == 6
    assert tally(1, 5, 5, scale=3).compute(scheduler="sync") == 6  # "1+2:['scale']"
    assert tally(1, 2, 3).compute(scheduler="sync") == 6  # another key
    assert CALLS["tally", 1] == 2


# ------------------------------------------------- 4: a key fn fails its call only
class Opaque:
    """Not a key: its text holds its address, different in every process."""


def bad_key(x):
    if x == 2:
        raise KeyError(f"no key for {x}")
    if x == 3:
        return Opaque()
    if x == 4:
        return 4  # not a string either
    return f"x={x}"


@df.task(cache=True, cache_key_fn=bad_key)
def bad_keyed(x):
    called("bad_keyed", x)
    return x * 10


@df.task(cache=True, cache_key_fn=bad_key)
async def abad_keyed(x):
    called("abad_keyed", x)
    return x * 10


XS = [0, 1, 2, 3, 4]


def _check_failed_items(name, error):
    """The MapItemError of a map of ``bad_keyed`` over ``XS``."""
    assert isinstance(error, df.MapItemError)
    assert error.failed == [2, 3, 4] and error.total == 5
    raised, opaque, number = error.errors[2], error.errors[3], error.errors[4]
    assert isinstance(raised, RuntimeError)
    assert f"task {name!r}" in str(raised)
    assert "its cache_key_fn raised KeyError: 'no key for 2'" in str(raised)
    assert "by name: x" in str(raised)
    assert isinstance(opaque, TypeError) and f"task {name!r}" in str(opaque)
    assert "cache_key_fn returned <" in str(opaque) and "of type Opaque" in str(opaque)
    assert "expected a str" in str(opaque)
    assert isinstance(number, TypeError) and "returned 4, of type int" in str(number)


def _check_tolerated(values):
    """``allow_failure`` of that map: the exceptions in place of the failed items."""
    assert values[:2] == [0, 10]
    assert [type(v) for v in values[2:]] == [RuntimeError, TypeError, TypeError]


async def _check_key_fn_failures(compute, task, path):
    """``compute(node)`` (a coroutine) on ``path``: each bad item fails alone; the
    others are cached."""
    name = task.name
    t = task.with_options(result_storage=memory_storage())
    if path == "plain":  # a plain task raises, naming the task
        with pytest.raises(RuntimeError, match=rf"task '{name}': its cache_key_fn raised Key"):
            await compute(t(2))
        with pytest.raises(TypeError, match=rf"task '{name}': its cache_key_fn returned <"):
            await compute(t(3))
        assert await compute(listed([t(0), t(1)])) == [0, 10]
    else:
        with pytest.raises(df.MapItemError) as info:
            await compute(through(t, path, XS))
        _check_failed_items(name, info.value)
        _check_tolerated(await compute(listed(df.allow_failure(through(t, path, XS)))))
        assert await compute(through(t, path, XS, ratio=0.4)) == [0, 10, None, None, None]
    assert [CALLS[name, x] for x in XS] == [1, 1, 0, 0, 0]  # read back; 2-4 never ran
    CALLS.clear()


@gen_cluster(client=True)
async def test_a_failing_cache_key_fn_fails_only_its_call(c, s, a, b):
    async def compute(node):
        return await node.compute(client=c)

    for task, paths in ((bad_keyed, PATHS), (abad_keyed, ASYNC_PATHS)):
        for path in paths:
            await _check_key_fn_failures(compute, task, path)
    await no_tasks_left(s)


def test_a_failing_cache_key_fn_fails_only_its_call_in_sync_mode():
    async def compute(node):
        return in_sync(node)

    for task, paths in ((bad_keyed, PATHS), (abad_keyed, ASYNC_PATHS)):
        for path in paths:
            asyncio.run(_check_key_fn_failures(compute, task, path))


def test_a_failing_cache_key_fn_names_the_map_item(tmp_path):
    t = bad_keyed.with_options(result_storage=str(tmp_path))
    with pytest.raises(df.MapItemError) as info:
        t.map(XS).compute(scheduler="sync")
    assert "task 'bad_keyed' (index 2): its cache_key_fn raised" in str(info.value.errors[2])


# ------------------------------------- 5: the identity through with_options, sub-flows
def script_task(storage):
    """A cached task whose function's source can be read now (through ``linecache``, as
    a notebook cell's), and a function that makes it unreadable: as on a worker that
    cannot read the script the task was defined in."""
    filename = f"<dynflow-test-script-{uuid.uuid4().hex}>"
    source = "def shout(x):\n    called('shout', x)\n    return x + 100\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"called": called}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - a script's function
    t = df.task(namespace["shout"], cache=True, result_storage=storage)
    return t, lambda: linecache.cache.pop(filename, None)


@df.flow(log_prints=False)  # a flow option: its tasks are with_options copies
def per_item_of(t, x):
    return t(x)


def _shouts(n):
    return [x + 100 for x in range(n)]


@gen_cluster(client=True)
async def test_with_options_and_sub_flow_items_hit_the_top_level_entries(c, s, a, b):
    storage = memory_storage()
    t, forget = script_task(storage)
    try:
        assert await t.map(list(range(4))).compute(client=c) == _shouts(4)  # top level
        forget()  # from now on, nobody can read the function's source
        copy = t.with_options(retries=1)
        assert copy._identity() == t._identity()
        for path in ("plain", "map", "batch", "auto"):
            assert await on_cluster(through(copy, path, list(range(4))), c) == _shouts(4)
        # a sub-flow per item, built on a worker, with_options copies of t in it
        items = per_item_of.map(df.unmapped(t), list(range(4)))
        assert await items.compute(client=c) == _shouts(4)
        assert await on_cluster(through(t, "subflow", list(range(4))), c) == _shouts(4)
    finally:
        forget()
    assert [CALLS["shout", x] for x in range(4)] == [1, 1, 1, 1]
    assert entries(storage) == {"shout": 4}
    # what identifies the task still counts
    assert t.with_options(name="other")._identity() != t._identity()
    assert t.with_options(cache_version="2")._identity() != t._identity()
    await no_tasks_left(s)


def test_with_options_and_sub_flow_items_hit_the_top_level_entries_in_sync_mode():
    storage = memory_storage()
    t, forget = script_task(storage)
    try:
        assert t.map(list(range(4))).compute(scheduler="sync") == _shouts(4)
        forget()
        copy = t.with_options(retries=1)
        for path in ("plain", "map", "batch", "auto"):
            assert in_sync(through(copy, path, list(range(4)))) == _shouts(4)
        assert in_sync(per_item_of.map(df.unmapped(t), list(range(4)))) == _shouts(4)
        # sent by value (pickled), then copied: still the same entries
        import cloudpickle

        sent = cloudpickle.loads(cloudpickle.dumps(t)).with_options(refresh_cache=False)
        assert sent._identity() == t._identity()
    finally:
        forget()
    assert [CALLS["shout", x] for x in range(4)] == [1, 1, 1, 1]


# -------------------------------------------- 6: what a dynamic task passes on
@df.task(cache=True)
def inner(x):
    called("inner", x)
    return x + 1


@df.task
def dynamic(x):
    return inner(x)


@df.task
async def adynamic(x):
    return inner(x)


@df.task
def returns(xs, shape):
    """A dynamic task whose graph calls ``inner`` per item, on the path ``shape``."""
    return through(inner, shape, xs)


@df.flow(result_storage="memory://dynflow-test-flow-storage")
def flow_of_dynamic(xs):
    return dynamic.map(xs)


def _dynamic_cases():
    """(task whose calls return a graph, path of its calls, its argument per call)."""
    for path in PATHS:
        yield dynamic, path, [1, 2, 3]
    for path in ASYNC_PATHS:
        yield adynamic, path, [1, 2, 3]
    for shape in PATHS:  # the returned graph: a call, a map, batches, sub-flow items
        yield returns.with_options(name=f"returns_{shape}"), "plain", [[1, 2, 3], shape]


def _values(caller, path, args):
    if caller.name.startswith("returns_"):
        xs, shape = args
        return listed([caller(xs, shape)]), [[x + 1 for x in xs]]
    return through(caller, path, args), [x + 1 for x in args]


async def _check_passed_on(compute, caller, path, args):
    right, wrong = memory_storage(), memory_storage()
    with dask.config.set({"dynflow.result-storage": wrong}):  # not where they go
        dyn = caller.with_options(result_storage=right)
        for _ in range(2):
            node, want = _values(dyn, path, args)
            assert await compute(node) == want, (caller.name, path)
        assert entries(right) == {"inner": 3}, (caller.name, path)
        assert not entries(wrong), (caller.name, path)
        assert [CALLS["inner", x] for x in (1, 2, 3)] == [1, 1, 1], (caller.name, path)
        # refresh_cache is passed on too: the calls run again
        node, want = _values(dyn.with_options(refresh_cache=True), path, args)
        assert await compute(node) == want
        assert [CALLS["inner", x] for x in (1, 2, 3)] == [2, 2, 2], (caller.name, path)
    CALLS.clear()


@gen_cluster(client=True)
async def test_a_dynamic_task_passes_its_result_storage_on(c, s, a, b):
    async def compute(node):
        return await node.compute(client=c)

    for caller, path, args in _dynamic_cases():
        await _check_passed_on(compute, caller, path, args)
    await no_tasks_left(s)


def test_a_dynamic_task_passes_its_result_storage_on_in_sync_mode():
    async def compute(node):
        return in_sync(node)

    for caller, path, args in _dynamic_cases():
        asyncio.run(_check_passed_on(compute, caller, path, args))


@gen_cluster(client=True)
async def test_a_flows_storage_reaches_the_graph_its_dynamic_tasks_return(c, s, a, b):
    wrong = memory_storage()
    with dask.config.set({"dynflow.result-storage": wrong}):
        assert await flow_of_dynamic.build([1, 2]).compute(client=c) == [2, 3]
        assert flow_of_dynamic.build([1, 2]).compute(scheduler="sync") == [2, 3]
        # the task's own option wins over its caller's
        own = memory_storage()
        mine = inner.with_options(result_storage=own)

        @df.task
        def calls_mine(x):
            return mine(x)

        assert await calls_mine.with_options(result_storage=wrong)(5).compute(client=c) == 6
        assert entries(own) == {"inner": 1}
    assert entries("memory://dynflow-test-flow-storage")["inner"] == 2
    assert not entries(wrong)
    assert CALLS["inner", 1] == 1 and CALLS["inner", 2] == 1
    await no_tasks_left(s)


@df.task
def opened(name, xs):
    """``xs``, once the test sets the event ``name`` (bounded: 10 s)."""
    if not distributed.Event(name).wait(timeout=10):
        raise TimeoutError(f"event {name!r} was never set")
    return xs


@gen_cluster(client=True)
async def test_the_storage_read_at_submit_reaches_graphs_built_on_workers(c, s, a, b):
    """``dynflow.result-storage`` is read where the graph is built (here) and travels
    with it, also to what workers build later: sub-flow items, a returned graph."""
    at_submit, later = memory_storage(), memory_storage()
    event = f"dynflow-test-{uuid.uuid4().hex}"
    xs = opened(event, [1, 2, 3])
    with dask.config.set({"dynflow.result-storage": at_submit}):
        futures = await df.submit_async(
            through(inner, "subflow", xs), returns(xs, "map"), returns(xs, "subflow"), client=c
        )
    with dask.config.set({"dynflow.result-storage": later}):
        await distributed.Event(event, client=c).set()
        assert [await f for f in futures] == [[2, 3, 4]] * 3
    assert entries(at_submit) == {"inner": 3} and not entries(later)
    del futures
    await no_tasks_left(s)


# ----------------------- 7: killed writers' files, a directory in the way, bad config
@df.task(cache=True)
def square(x):
    called("square", x)
    return x * x


@df.task(cache=True)
async def asquare(x):
    called("asquare", x)
    return x * x


def temporaries(storage, task_name):
    fs, root = fsspec.core.url_to_fs(storage)
    folder = f"{root.rstrip('/')}/{TEMPORARY}/{task_name}"
    return sorted(p.rsplit("/", 1)[-1] for p in fs.find(folder)) if fs.exists(folder) else []


def plant(storage, task_name, age):
    """A temporary file as a writer that started ``age`` seconds ago leaves it when it
    is killed mid-write (``<key>.tmp-<seconds>-<uuid>``); its name."""
    fs, root = fsspec.core.url_to_fs(storage)
    folder = f"{root.rstrip('/')}/{TEMPORARY}/{task_name}"
    fs.makedirs(folder, exist_ok=True)
    name = f"{uuid.uuid4().hex}.tmp-{int(time.time() - age)}-{uuid.uuid4().hex}"
    fs.pipe_file(f"{folder}/{name}", b"half an ent")
    return name


async def _check_sweep(compute, task, path, storage):
    t = task.with_options(result_storage=storage)
    stale = plant(storage, task.name, 2 * STALE_AFTER)
    writing = plant(storage, task.name, 5)  # a write in progress: kept
    assert temporaries(storage, task.name) == sorted([stale, writing])
    assert await compute(through(t, path, [1, 2, 3])) == [1, 4, 9]
    assert temporaries(storage, task.name) == [writing], (task.name, path)
    assert entries(storage) == {task.name: 3}


@gen_cluster(client=True)
async def test_a_killed_writers_temporary_file_is_removed(c, s, a, b):
    async def compute(node):
        return await node.compute(client=c)

    for task, paths in ((square, PATHS), (asquare, ASYNC_PATHS)):
        for path in paths:
            await _check_sweep(compute, task, path, memory_storage())
            with local_storage("dynflow-test-sweep-") as storage:
                await _check_sweep(compute, task, path, storage)
    await no_tasks_left(s)


def test_a_killed_writers_temporary_file_is_removed_in_sync_mode(tmp_path):
    async def compute(node):
        return in_sync(node)

    for task, paths in ((square, PATHS), (asquare, ASYNC_PATHS)):
        for path in paths:
            storage = str(tmp_path / f"{task.name}-{path}")
            asyncio.run(_check_sweep(compute, task, path, storage))


def _block_entries(storage, task_name):
    """Each entry of ``task_name`` replaced by an (empty) directory; their paths."""
    fs, root = fsspec.core.url_to_fs(storage)
    blocked = []
    for path in fs.find(f"{root.rstrip('/')}/{task_name}"):
        fs.rm_file(path)
        fs.makedirs(path)
        blocked.append(path)
    return blocked


DIRECTORY = r"task '{}': the result could not be cached at '.*' \(a directory is in the entry's"


def test_a_directory_in_an_entrys_place_is_reported_in_sync_mode(tmp_path):
    for task, paths in ((square, PATHS), (asquare, ASYNC_PATHS)):
        for path in paths:
            storage = str(tmp_path / f"{task.name}-{path}")
            t = task.with_options(result_storage=storage)
            assert in_sync(through(t, path, [1, 2])) == [1, 4]
            blocked = _block_entries(storage, task.name)
            assert len(blocked) == 2
            for run in (2, 3):  # never cached, never silently
                with pytest.warns(RuntimeWarning, match=DIRECTORY.format(task.name)) as seen:
                    assert in_sync(through(t, path, [1, 2])) == [1, 4]
                assert {str(w.message).split("'")[3] for w in seen} == set(blocked)
                assert [CALLS[task.name, x] for x in (1, 2)] == [run, run]
            fs, _ = fsspec.core.url_to_fs(storage)
            assert all(fs.isdir(p) and not fs.ls(p) for p in blocked)  # nothing moved in
            assert temporaries(storage, task.name) == []
            CALLS.clear()


@pytest.mark.filterwarnings("ignore:task '.*square'.*:RuntimeWarning")  # in-process workers
@gen_cluster(client=True)
async def test_a_directory_in_an_entrys_place_is_reported(c, s, a, b):
    forwarded: list = []

    def told(where):
        """Whether the warning about each blocked path was logged by the workers (and
        forwarded to this client: not yet from inside a sub-flow item, see below)."""
        logged = [e[1]["text"] for e in s.get_events("dynflow-log")]
        return all(
            any(p in t and "a directory is in the entry's" in t for t in texts)
            for texts in (logged, forwarded)
            for p in where
        )

    for task, paths in ((square, PATHS), (asquare, ASYNC_PATHS)):
        for path in paths:
            with local_storage("dynflow-test-directory-") as storage:
                t = task.with_options(result_storage=storage)
                assert await on_cluster(through(t, path, [1, 2]), c) == [1, 4]
                blocked = _block_entries(storage, task.name)
                # after the client's first run (its own handler of the topic is set then)
                c.subscribe_topic("dynflow-log-forward", lambda e: forwarded.append(e[1]["text"]))
                assert await on_cluster(through(t, path, [1, 2]), c) == [1, 4]
                if path == "subflow":  # the run tracker does not forward a sub-flow's lines
                    forwarded.extend(e[1]["text"] for e in s.get_events("dynflow-log"))
                await async_poll_for(lambda blocked=blocked: told(blocked), timeout=5)
                assert [CALLS[task.name, x] for x in (1, 2)] == [2, 2], (task.name, path)
                fs, _ = fsspec.core.url_to_fs(storage)
                assert all(fs.isdir(p) and not fs.ls(p) for p in blocked)
                assert temporaries(storage, task.name) == []
            CALLS.clear()
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_async_batch_items_read_from_the_storage_are_counted(c, s, a, b):
    """An async task's reads and writes run in a thread, which is told the batch's key
    (else the run never hears that its items were cached, nor the warnings)."""
    t = asquare.with_options(result_storage=memory_storage())
    for _ in range(2):
        (fut,) = await df.submit_async(t.map(list(range(6)), batch_size=2), client=c)
        assert await fut == [x * x for x in range(6)]
    assert [CALLS["asquare", x] for x in range(6)] == [1] * 6

    def counts(info):
        return next(v for k, v in info["nodes"].items() if "asquare" in k)

    # the tracker hears of the items as they finish
    tracker, run_id = s.extensions[TRACKER], fut.run.id
    await async_poll_for(lambda: counts(tracker.run_status(run_id))["cached"] == 6, timeout=5)
    last = counts(await fut.run.info())  # as the client reads it
    assert last["cached"] == 6 and last["done"] == 0
    del fut
    await no_tasks_left(s)


BAD_CONFIG = [
    ("dynflow.cache.expiration", "soon", "null or a duration"),
    ("dynflow.cache.expiration", -5, "null or a duration"),
    ("dynflow.cache.refresh", "no", "true or false"),
    ("dynflow.result-storage", 5, "null, a local path or an fsspec URL"),
]


@pytest.mark.parametrize("key, value, expected", BAD_CONFIG)
def test_a_bad_cache_config_value_is_named(key, value, expected):
    message = rf"task '{{}}': the dask config key {key} is {value!r}; expected {expected}"
    with dask.config.set({key: value}):
        for path in PATHS:
            with pytest.raises(ValueError, match=message.format("square")):
                in_sync(through(square, path, [1, 2]))
        # read where a dynamic task's graph is built: that call's error
        with pytest.raises(ValueError, match=message.format("inner")):
            in_sync(returns([1, 2], "map"))
    assert not CALLS


def test_a_bad_cache_enabled_config_value_is_named():
    @df.task
    def plain(x):
        return x

    with dask.config.set({"dynflow.cache.enabled": "yes"}):
        with pytest.raises(
            ValueError,
            match="task 'plain': the dask config key dynflow.cache.enabled is 'yes'; "
            "expected true or false",
        ):
            plain(1).compute(scheduler="sync")


@gen_cluster(client=True)
async def test_a_bad_cache_config_value_is_named_on_a_cluster(c, s, a, b):
    message = "task 'square': the dask config key dynflow.cache.expiration is 'soon'"
    with dask.config.set({"dynflow.cache.expiration": "soon"}):
        for path in PATHS:  # a sub-flow's items are built on a worker: the same error
            with pytest.raises(ValueError, match=message):
                await on_cluster(through(square, path, [1, 2]), c)
        # a dynamic task's graph, built on a worker: that call's error
        with pytest.raises(ValueError, match=message.replace("square", "inner")):
            await on_cluster(returns([1, 2], "map"), c)
        with pytest.raises(df.MapItemError, match=message.replace("square", "inner")):
            await on_cluster(returns.map([[1, 2]], "map"), c)
    assert not CALLS
    await no_tasks_left(s)


# -------------------------------------------------- 14: options name the function
def test_a_bad_option_names_the_function_it_decorates():
    with pytest.raises(TypeError, match=r"^task 'fetch': option retries=-1; expected an int"):

        @df.task(retries=-1)
        def fetch(x): ...

    with pytest.raises(TypeError, match=r"^task 'getter': option cache_expiration='soon'"):

        @df.task(name="getter", cache_expiration="soon")
        def get(x): ...

    with pytest.raises(TypeError, match=r"^task 'fetch': unknown option 'retry'"):

        @df.task(retry=1)
        def fetch(x): ...  # noqa: F811

    with pytest.raises(TypeError, match=r"^task 'fetch': option name=3; expected a non-empty"):

        @df.task(name=3)
        def fetch(x): ...  # noqa: F811

    with pytest.raises(TypeError, match=r"^flow 'pipeline': option cache_expiration=-1"):

        @df.flow(cache_expiration=-1)
        def pipeline(x): ...

    with pytest.raises(TypeError, match=r"^flow 'pipeline': unknown option 'retries'"):

        @df.flow(retries=1)
        def pipeline(x): ...  # noqa: F811

    with pytest.raises(TypeError, match=r"^flow 'main': option wait_for=3; expected a node"):

        @df.flow(name="main", wait_for=3)
        def pipeline(x): ...  # noqa: F811

    with pytest.raises(TypeError, match=r"^main\.map\(\): min_success_ratio=2; expected"):

        @df.flow(name="main", min_success_ratio=2)
        def pipeline(x): ...  # noqa: F811


def test_with_options_and_map_options_name_the_task():
    with pytest.raises(TypeError, match=r"^task 'fetch': option retries=-1"):
        fetch.with_options(retries=-1)
    with pytest.raises(TypeError, match=r"^flow 'flow_of_dynamic': option refresh_cache=1"):
        flow_of_dynamic.with_options(refresh_cache=1)
    with pytest.raises(TypeError, match=r"^fetch\.map\(\): batch_size=0; expected"):
        fetch.map(ACCOUNTS, batch_size=0)
