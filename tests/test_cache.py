"""Result caching: ``cache=True`` persists each successful call; later runs read it.

The workers of ``gen_cluster`` run in this process, so the calls made are counted in a
module-level counter (``CALLS``); the storage is a local directory (``tmp_path``) or
fsspec's ``memory://``.
"""

from __future__ import annotations

import collections
import tempfile
import threading
import uuid

import dask
import fsspec
import pytest
from distributed.utils_test import async_poll_for, gen_cluster
from utils import generate_list, no_tasks_left

import dynflow as df

CALLS: collections.Counter = collections.Counter()
_LOCK = threading.Lock()
FAIL: set = set()  # items that fail while listed


def called(name, x):
    with _LOCK:
        CALLS[name, x] += 1


@df.task(cache=True)
def square(x):
    called("square", x)
    if x in FAIL:
        raise ValueError(f"item {x} fails")
    return x * x


@df.task
def total(xs):
    return sum(xs)


@df.task
def plain(x):
    called("plain", x)
    return x + 1


def entries(storage):
    """The cache entries under ``storage``, by task name."""
    fs, root = fsspec.core.url_to_fs(storage)
    if not fs.exists(root):
        return {}
    out = collections.defaultdict(set)
    for path in fs.find(root):
        name, key = path[len(root.rstrip("/")) + 1 :].split("/")[-2:]
        if not name.startswith(".") and ".tmp-" not in key:
            out[name].add(key)
    return dict(out)


@pytest.fixture(autouse=True)
def fresh():
    CALLS.clear()
    FAIL.clear()
    yield
    FAIL.clear()


def cached_square(storage, **options):
    return square.with_options(result_storage=str(storage), **options)


@gen_cluster(client=True)
async def test_a_rerun_redoes_only_the_failed_item(c, s, a, b):
    storage = tempfile.mkdtemp(prefix="dynflow-test-cache-")  # a local directory
    sq = cached_square(storage)
    FAIL.add(3)
    with pytest.raises(df.MapItemError, match="at index 3"):
        await total(sq.map(generate_list(6))).compute(client=c)
    assert all(CALLS["square", i] == 1 for i in range(6))
    assert len(entries(storage)["square"]) == 5  # a failed call is never written
    FAIL.clear()
    (fut,) = await df.submit_async(total(sq.map(generate_list(6))), client=c)
    assert await fut == sum(i * i for i in range(6))
    assert [CALLS["square", i] for i in range(6)] == [1, 1, 1, 2, 1, 1]
    # the run's counts: five items read from the storage, one run
    info = await fut.run.info()
    counts = next(v for k, v in info["nodes"].items() if "square" in k)
    assert counts["cached"] == 5 and counts["done"] == 1 and counts["total"] == 6
    del fut
    # a third run: every item cached, still one task per item
    assert await total(sq.map(generate_list(6))).compute(client=c) == 55
    assert [CALLS["square", i] for i in range(6)] == [1, 1, 1, 2, 1, 1]
    assert len(entries(storage)["square"]) == 6
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_changed_inputs_functions_and_versions_recompute(c, s, a, b):
    storage = f"memory://dynflow-test-{uuid.uuid4().hex}"
    sq = cached_square(storage)
    assert await total(sq.map([1, 2])).compute(client=c) == 5
    assert await total(sq.map([1, 2, 3])).compute(client=c) == 14  # only 3 is new
    assert [CALLS["square", i] for i in (1, 2, 3)] == [1, 1, 1]
    # a new cache_version is a new identity
    assert await total(sq.with_options(cache_version="2").map([1, 2])).compute(client=c) == 5
    assert [CALLS["square", i] for i in (1, 2)] == [2, 2]
    # an edited function (same task name, other source) recomputes
    namespace: dict = {}
    exec("def square(x):\n    return x * x * 1\n", namespace)  # noqa: S102 - an edit
    edited = df.task(namespace["square"], cache=True, result_storage=storage)
    before = len(entries(storage)["square"])
    assert await total(edited.map([1, 2])).compute(client=c) == 5
    assert len(entries(storage)["square"]) == before + 2
    # with a cache_version, the version is the identity: a fixed function that keeps
    # it reads what the first one stored (the README's "fix it, run the same again")
    versioned = df.task(namespace["square"], cache=True, result_storage=storage)
    v1 = versioned.with_options(cache_version="1")
    assert await total(v1.map([5, 6])).compute(client=c) == 61
    exec("def square(x):\n    return x * x + 0\n", namespace)  # noqa: S102 - a fix
    fixed = df.task(namespace["square"], cache=True, result_storage=storage, cache_version="1")
    count = len(entries(storage)["square"])
    assert await total(fixed.map([5, 6, 7])).compute(client=c) == 110
    assert len(entries(storage)["square"]) == count + 1  # only 7 ran
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_refresh_and_expiration(c, s, a, b):
    storage = f"memory://dynflow-test-{uuid.uuid4().hex}"
    sq = cached_square(storage)
    assert await sq(4).compute(client=c) == 16
    assert await sq(4).compute(client=c) == 16
    assert CALLS["square", 4] == 1
    assert await sq.with_options(refresh_cache=True)(4).compute(client=c) == 16
    assert CALLS["square", 4] == 2
    assert await sq.with_options(cache_expiration="1h")(4).compute(client=c) == 16
    assert CALLS["square", 4] == 2
    assert await sq.with_options(cache_expiration=0)(4).compute(client=c) == 16
    assert CALLS["square", 4] == 3
    with dask.config.set({"dynflow.cache.refresh": True}):
        assert await sq(4).compute(client=c) == 16
    assert CALLS["square", 4] == 4
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_nothing_is_cached_by_default_and_config_turns_it_on(c, s, a, b):
    storage = f"memory://dynflow-test-{uuid.uuid4().hex}"
    with dask.config.set({"dynflow.result-storage": storage}):
        assert await total(plain.map([1, 2])).compute(client=c) == 5
        assert await total(plain.map([1, 2])).compute(client=c) == 5
        assert CALLS["plain", 1] == 2 and not entries(storage)
        with dask.config.set({"dynflow.cache.enabled": True}):  # read at submit
            assert await total(plain.map([1, 2])).compute(client=c) == 5
            assert await total(plain.map([1, 2])).compute(client=c) == 5
            assert CALLS["plain", 1] == 3
            assert len(entries(storage)["plain"]) == 2
            # the task's own option wins over the config
            node = total(plain.with_options(cache=False).map([1, 2]))
            assert await node.compute(client=c) == 5
            assert CALLS["plain", 1] == 4
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_a_flow_sets_the_cache_of_its_tasks(c, s, a, b):
    storage = f"memory://dynflow-test-{uuid.uuid4().hex}"

    @df.flow(cache=True, result_storage=storage)
    def pipeline(n):
        return total(plain.map(generate_list(n)))

    assert pipeline.task_options["cache"] is True
    for _ in range(2):
        assert await pipeline.build(3).compute(client=c) == 6
    assert [CALLS["plain", i] for i in range(3)] == [1, 1, 1]
    assert len(entries(storage)["plain"]) == 3
    assert "generate_list" in entries(storage)  # every task of the flow
    # with_options on the flow, and a task that says no
    off = pipeline.with_options(cache=False)
    assert await off.build(3).compute(client=c) == 6
    assert [CALLS["plain", i] for i in range(3)] == [2, 2, 2]
    with pytest.raises(TypeError, match="flow 'pipeline': option cache_expiration=-1"):
        pipeline.with_options(cache_expiration=-1)
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_batched_items_are_cached_one_by_one(c, s, a, b):
    storage = f"memory://dynflow-test-{uuid.uuid4().hex}"
    sq = cached_square(storage)
    assert await total(sq.map(generate_list(7), batch_size=3)).compute(client=c) == 91
    assert len(entries(storage)["square"]) == 7
    # unbatched now: the entries are the same calls
    assert await total(sq.map(generate_list(7))).compute(client=c) == 91
    assert all(CALLS["square", i] == 1 for i in range(7))
    (fut,) = await df.submit_async(total(sq.map(generate_list(7), batch_size=3)), client=c)
    assert await fut == 91
    info = await fut.run.info()
    counts = next(v for k, v in info["nodes"].items() if "square" in k)
    assert counts["cached"] == 7 and counts["done"] == 0
    del fut
    await no_tasks_left(s)


@gen_cluster(client=True)
async def test_concurrent_runs_of_one_flow(c, s, a, b):
    storage = f"memory://dynflow-test-{uuid.uuid4().hex}"
    sq = cached_square(storage)
    futures = []
    for _ in range(3):
        futures += await df.submit_async(total(sq.map(generate_list(20))), client=c)
    assert [await f for f in futures] == [sum(i * i for i in range(20))] * 3
    assert len(entries(storage)["square"]) == 20  # one whole entry per item
    assert await total(sq.map(generate_list(20))).compute(client=c) == 2470
    del futures
    await no_tasks_left(s)


def test_sync_mode_reads_and_writes_the_same_entries(tmp_path):
    sq = cached_square(tmp_path)
    assert total(sq.map([1, 2, 3])).compute(scheduler="sync") == 14
    assert total(sq.map([1, 2, 3])).compute(scheduler="sync") == 14
    assert [CALLS["square", i] for i in (1, 2, 3)] == [1, 1, 1]
    assert len(entries(tmp_path)["square"]) == 3


class Opaque:
    """No ``__dask_tokenize__``, and it does not pickle (a lock): its token is random."""

    def __init__(self):
        self.lock = threading.Lock()


def test_an_argument_without_a_deterministic_token_is_not_cached(tmp_path):
    @df.task(cache=True, result_storage=str(tmp_path))
    def uses(obj, x):
        called("uses", x)
        return x

    with pytest.warns(RuntimeWarning, match=r"task 'uses': argument 'obj' \(Opaque\) has no"):
        assert uses(Opaque(), 1).compute(scheduler="sync") == 1
    assert not entries(tmp_path)
    # a cache_key_fn decides instead
    keyed = uses.with_options(cache_key_fn=lambda obj, x: f"x={x}")
    assert keyed(Opaque(), 1).compute(scheduler="sync") == 1
    assert keyed(Opaque(), 1).compute(scheduler="sync") == 1
    assert CALLS["uses", 1] == 2


def test_a_corrupt_entry_is_missing_with_a_warning(tmp_path):
    sq = cached_square(tmp_path)
    assert sq(5).compute(scheduler="sync") == 25
    (key,) = entries(tmp_path)["square"]
    (tmp_path / "square" / key).write_bytes(b"not an entry")
    with pytest.warns(RuntimeWarning, match="task 'square': the cached result .* is corrupt"):
        assert sq(5).compute(scheduler="sync") == 25
    assert CALLS["square", 5] == 2
    assert sq(5).compute(scheduler="sync") == 25  # rewritten
    assert CALLS["square", 5] == 2


def test_an_unwritable_storage_fails_when_the_graph_is_built(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for storage in (str(blocker / "results"), "nosuchprotocol://x"):
        with pytest.raises(df.ResultStorageError, match="the result storage .* cannot be written"):
            total(cached_square(storage).map([1, 2])).compute(scheduler="sync")
    assert not CALLS


def test_bad_cache_options_name_the_task():
    with pytest.raises(TypeError, match="task 'square': option cache_expiration='soon'"):
        square.with_options(cache_expiration="soon")
    with pytest.raises(TypeError, match="task 'square': option cache_key_fn=3"):
        square.with_options(cache_key_fn=3)
    with pytest.raises(TypeError, match="flow 'f': unknown option 'cache_versio'"):
        df.flow(lambda: None, name="f", cache_versio="1")


def test_defaults_are_bound_and_timedeltas_accepted(tmp_path):
    import datetime

    @df.task(cache=True, result_storage=str(tmp_path), cache_expiration=datetime.timedelta(days=1))
    def scaled(x, factor=5):
        called("scaled", x)
        return x * factor

    assert scaled(2).compute(scheduler="sync") == 10
    assert scaled(2, 5).compute(scheduler="sync") == 10
    assert scaled(x=2, factor=5).compute(scheduler="sync") == 10
    assert CALLS["scaled", 2] == 1
    assert scaled(2, 6).compute(scheduler="sync") == 12
    assert CALLS["scaled", 2] == 2


def test_a_script_class_argument_is_not_cached_with_a_warning(tmp_path):
    point = type("Point", (), {"__module__": "__main__"})  # as a script defines it

    @df.task(cache=True, result_storage=str(tmp_path))
    def at(p, x):
        called("at", x)
        return x

    with pytest.warns(RuntimeWarning, match=r"task 'at': argument 'p' holds a Point defined"):
        assert at(point(), 1).compute(scheduler="sync") == 1
    assert not entries(tmp_path)


@df.task(cache=True)
def returns_a_node(x):
    called("returns_a_node", x)
    return plain(x)


@gen_cluster(client=True)
async def test_a_call_that_returns_a_graph_is_not_cached_anywhere(c, s, a, b):
    storage = f"memory://dynflow-test-{uuid.uuid4().hex}"
    dyn = returns_a_node.with_options(result_storage=storage)
    for _ in range(2):
        assert await dyn(1).compute(client=c) == 2
        assert dyn(1).compute(scheduler="sync") == 2
    assert CALLS["returns_a_node", 1] == 4 and CALLS["plain", 1] == 4
    assert "returns_a_node" not in entries(storage)
    await no_tasks_left(s)


@df.flow
def per_item(x):
    return plain(x)


@gen_cluster(client=True)
async def test_a_flows_cache_reaches_the_sub_flows_it_maps(c, s, a, b):
    storage = f"memory://dynflow-test-{uuid.uuid4().hex}"

    @df.flow(cache=True, result_storage=storage)
    def outer(xs):
        return total(per_item.map(xs))

    for _ in range(2):
        assert await outer.build([1, 2, 3]).compute(client=c) == 9
    assert [CALLS["plain", i] for i in (1, 2, 3)] == [1, 1, 1]
    await no_tasks_left(s)


def test_a_task_sent_by_value_keeps_its_identity(tmp_path):
    import cloudpickle

    namespace: dict = {}
    exec("def twice(x):\n    return 2 * x\n", namespace)  # noqa: S102 - no source file
    t = df.task(namespace["twice"], cache=True, result_storage=str(tmp_path))
    copy = cloudpickle.loads(cloudpickle.dumps(t))
    assert copy._identity() == t._identity()


def test_a_large_argument_is_hashed_once_not_per_call(tmp_path, monkeypatch):
    """An unmapped array every item receives, and an upstream cached result, are not
    hashed again by each cached call in the same process."""
    import numpy as np
    from dask.base import normalize_token

    hashed = []
    real = normalize_token.dispatch(np.ndarray)

    def counting(x):
        if x.nbytes >= 2**20:
            hashed.append(x.nbytes)
        return real(x)

    monkeypatch.setattr("dynflow.worker._cache._TOKENS", {}, raising=False)
    normalize_token.register(np.ndarray)(counting)
    try:
        _hash_once(tmp_path, np, hashed)
    finally:
        normalize_token.register(np.ndarray)(real)


def _hash_once(tmp_path, np, hashed):

    @df.task(cache=True, result_storage=str(tmp_path))
    def big():
        return np.ones(2**18)  # 2 MB

    @df.task(cache=True, result_storage=str(tmp_path))
    def scale(x, arr):
        return float(arr.sum()) * x

    arr = big()
    assert scale.map(list(range(20)), arr=df.unmapped(arr)).compute(scheduler="sync") == [
        2**18 * x for x in range(20)
    ]
    assert len(hashed) == 0  # big's result is known by its cache key
    data = np.ones(2**18)
    assert scale.map(list(range(20)), arr=df.unmapped(data)).compute(scheduler="sync")[1] == 2**18
    assert len(hashed) == 1  # an array from elsewhere: hashed once, not per item


@pytest.mark.filterwarnings("ignore:task 'square'.*:RuntimeWarning")  # in-process workers
@gen_cluster(client=True)
async def test_a_workers_cache_warning_reaches_the_client(c, s, a, b):
    storage = f"memory://dynflow-test-{uuid.uuid4().hex}"
    sq = cached_square(storage)
    assert await sq(6).compute(client=c) == 36
    fs, root = fsspec.core.url_to_fs(storage)
    (key,) = entries(storage)["square"]
    fs.pipe_file(f"{root.rstrip('/')}/square/{key}", b"not an entry")
    seen = []
    c.subscribe_topic("dynflow-log-forward", lambda event: seen.append(event[1]))
    assert await sq(6).compute(client=c) == 36  # recomputed, and the client is told
    await async_poll_for(lambda: seen, timeout=5)
    assert seen[0]["tag"] == "square" and seen[0]["stream"] == "stderr"
    assert "RuntimeWarning: task 'square': the cached result" in seen[0]["text"]
    assert "is corrupt" in seen[0]["text"]
    await no_tasks_left(s)
