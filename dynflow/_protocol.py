"""What the client, the workers and the scheduler agree on: names, topics, keys, states.

Nothing here runs anything; every layer may import it.

Glossary (the words dynflow's code and docs use, in Dask's terms):

expander
    A task (``dynflow-expand-<token>``) that depends on a map's upstream values. It runs
    on a worker, measures them where they are (list-like? equal lengths?) and asks the
    scheduler to *splice*.
splice
    The scheduler extension's synchronous pass that adds a map's per-item tasks to the
    live scheduler, as if a client had sent them, and wires them into the collectors.
collector
    A task that gathers a map's items into its list (the map node's key); before the
    splice it is a placeholder that depends on the expander only.
expansion group
    Maps that share one length and one expander: a map and the maps chained on it item
    by item. A map over ``flatten(m)`` is a *nested* group, expanded once per item of
    ``m``: its items are ``(item name, i, j)`` and ``(i,)`` is their *prefix*.
dynamic task
    A task whose function returned a graph (a node, or nodes in a container): the
    graph is spliced into the scheduler and the task's key becomes an alias of its
    output (:meth:`dynflow.extension._splice.SpliceExtension.graph_splice`).
stage
    One map of an expansion group, as its plan describes it (function, arguments with
    item markers, options).
raw list
    A map's items with the failure records left in, as a map chained on it reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "EXPANDER_PREFIX",
    "FINAL_STATES",
    "FORWARD_TOPIC",
    "GRAPH_SPLICE_HANDLER",
    "CACHED_TOPIC",
    "IN_PLACE_TOPIC",
    "ITEM_TOPIC",
    "LABEL_TOPIC",
    "LIMITS",
    "LIMITS_HANDLER",
    "LIMIT_ANNOTATION",
    "LOG_TOPIC",
    "OWN_LIMIT_PREFIX",
    "RUN_SEP",
    "base_name",
    "run_name",
    "RETRY_TOPIC",
    "RAW_PREFIX",
    "RUNS_HANDLER",
    "PAGE_PLUGIN",
    "RUN_FORGET_HANDLER",
    "RUN_ITEMS_HANDLER",
    "RUN_START_HANDLER",
    "RUN_STATUS_HANDLER",
    "SET_LIMIT_HANDLER",
    "SOURCE_TOPIC",
    "SPLICE",
    "SPLICE_HANDLER",
    "SPLICE_KEY_PLUGIN",
    "SPLICE_TOPIC",
    "STREAM_CHUNK_HANDLER",
    "STREAM_CLOSE_HANDLER",
    "STREAM_END_HANDLER",
    "STREAM_NEXT_HANDLER",
    "STREAM_OPEN_HANDLER",
    "STREAM_START_HANDLER",
    "TRACKER",
    "at",
    "lane_key",
    "own_limit",
    "own_limit_size",
    "raw_key",
    "sum_counts",
]

# ------------------------------------------------------------------ the extensions
#: the splice extension's name (scheduler plugin and extension)
SPLICE = "dynflow"
#: the run tracker's name (scheduler plugin and extension)
TRACKER = "dynflow-runs"

#: the concurrency limits' name (scheduler plugin and extension), the annotation of a
#: task that carries a limit (its value: the limit's name), and its handlers: a client
#: sets a limit; a client reads the limits set (those of a graph, before it sends it)
LIMITS = "dynflow-limits"
LIMIT_ANNOTATION = "dynflow_limit"
SET_LIMIT_HANDLER = "dynflow_set_limit"
LIMITS_HANDLER = "dynflow_limits"

#: scheduler handlers: an expander asks for its splice; a client registers a run, asks
#: for one run's state, or for every run's
SPLICE_HANDLER = "dynflow_splice"
#: the worker plugin that holds the key an expander signs its splice request with: the
#: scheduler made it and gave it to its workers only, so a request it verifies comes
#: from a worker, with the length that worker measured
SPLICE_KEY_PLUGIN = "dynflow-splice-key"
#: a dynamic task (its function returned a graph) asks for that graph in its place
GRAPH_SPLICE_HANDLER = "dynflow_graph_splice"
RUN_START_HANDLER = "dynflow_run_start"
#: a stream's source: asks how many of its items the scheduler has (a request), hands
#: on a chunk of items, says it ended (messages on its worker's stream)
STREAM_START_HANDLER = "dynflow_stream_start"
STREAM_CHUNK_HANDLER = "dynflow_stream_chunk"
STREAM_END_HANDLER = "dynflow_stream_end"
#: the topic of a stream's events (items yielded so far, its end), for the run views
SOURCE_TOPIC = "dynflow-source"
#: the scheduler plugin that serves the dynflow page (dynflow.views._dashboard)
PAGE_PLUGIN = "dynflow-page"
#: a page of a map's items, by state and label (the dashboard's list of items)
RUN_ITEMS_HANDLER = "dynflow_run_items"
#: client -> scheduler: a run whose graph could not be sent; the tracker forgets it
RUN_FORGET_HANDLER = "dynflow_run_forget"
RUN_STATUS_HANDLER = "dynflow_run_status"
RUNS_HANDLER = "dynflow_runs"
#: as_completed: a client streams a map's finished items (open, next window, close)
STREAM_OPEN_HANDLER = "dynflow_stream_open"
STREAM_NEXT_HANDLER = "dynflow_stream_next"
STREAM_CLOSE_HANDLER = "dynflow_stream_close"

# ------------------------------------------------------------------------ events
#: worker -> scheduler: an item holds a failure record (``{"key", "index", "label",
#: "error", "upstream"}``)
ITEM_TOPIC = "dynflow-item"
#: worker -> scheduler: the running task's (or batch item's) value was read from the
#: result storage, the call did not run (``{"key"}``)
CACHED_TOPIC = "dynflow-cached"
#: worker -> scheduler: a map item's label (``task_run_name``), as it starts (``{"key",
#: "label"}``): the dashboard lists and searches items by label
LABEL_TOPIC = "dynflow-label"
#: worker -> scheduler: a call failed and is retried (``{"key"}``: the task, or the
#: batch item): the views count retries per node
RETRY_TOPIC = "dynflow-retry"
#: worker -> scheduler: a dynamic task computed its returned graph in place, making
#: these calls (``{"key", "calls": {task name: count}}``): the views count them
IN_PLACE_TOPIC = "dynflow-in-place"
#: worker -> scheduler: a line a call printed or logged (``{"key", "tag", "stream", "text"}``)
LOG_TOPIC = "dynflow-log"
#: scheduler -> the client that submitted a run: those lines
FORWARD_TOPIC = "dynflow-log-forward"
#: the splice extension, after each splice: ``{"expander", "n", "added", "start", "end"}``
#: (seconds on the scheduler's ``time.perf_counter``), for benchmarks and monitoring
SPLICE_TOPIC = "dynflow-splice"

# -------------------------------------------------------------------------- keys
#: the name of every expander task (``dynflow-expand-<token>``)
EXPANDER_PREFIX = "dynflow-expand"


def at(key: Any, prefix: tuple[int, ...]) -> Any:
    """The key made for ``key`` (an expander, a collector) at ``prefix``: nested
    expansions add the parent items' indices, ``(key, *prefix)``."""
    return (key, *prefix) if prefix else key


#: the name of every raw list (``dynflow-raw-<map or flatten key>``)
RAW_PREFIX = "dynflow-raw-"


def raw_key(key: str) -> str:
    """The key of the raw list (failure records left in) of map or flatten ``key``."""
    return f"{RAW_PREFIX}{key}"


#: a map's own ``max_concurrency`` kept as a concurrency limit (a map nested per chunk of a
#: stream, whose items no lanes can chain): the name carries the size, so the limits
#: plugin sets it when its first task arrives
#: between a name and the token of the lowering that made it (a stream's tasks: each
#: run's own, see :func:`dynflow.lowering._lower.lower_distributed`)
RUN_SEP = "~"


def run_name(name: str, run: str) -> str:
    """``name`` of run ``run``: ``"inc-3f2a~9c1d"``."""
    return f"{name}{RUN_SEP}{run}"


def base_name(name: Any) -> Any:
    """The name a run's own name was made from (:func:`run_name`); others as they are."""
    if type(name) is str and RUN_SEP in name:
        return name.partition(RUN_SEP)[0]
    return name


OWN_LIMIT_PREFIX = "dynflow-max-concurrency-"


def own_limit(item_name: str, n: int) -> str:
    """The concurrency limit name of map ``item_name``'s ``max_concurrency=n``."""
    return f"{OWN_LIMIT_PREFIX}{n}-{item_name}"


def own_limit_size(name: str) -> int | None:
    """``n`` of a name made by :func:`own_limit` (None: a user's limit)."""
    if not name.startswith(OWN_LIMIT_PREFIX):
        return None
    size, _, _ = name[len(OWN_LIMIT_PREFIX) :].partition("-")
    return int(size) if size.isdigit() else None


def lane_key(item_name: str) -> str:
    """The name of the lane tokens of a map with ``max_concurrency``."""
    return f"dynflow-lane-{item_name}"


# -------------------------------------------------------------------------- runs
#: the states of a run after which nothing changes
FINAL_STATES = frozenset({"finished", "failed", "cancelled"})

#: the counts of one node of a run: units are tasks, or items for a map
COUNTS = ("pending", "running", "done", "failed", "cached")


def sum_counts(counts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-node counts added up: each of :data:`COUNTS` (None counts as 0), the known
    ``total``, and whether every total is ``known`` (a map's is not until it expanded).

    >>> sum_counts([{"total": 3, "done": 1, "pending": 2}, {"total": None, "done": 4}])
    {'pending': 2, 'running': 0, 'done': 5, 'failed': 0, 'cached': 0, 'total': 3, 'known': False}
    """
    out: dict[str, Any] = {**dict.fromkeys(COUNTS, 0), "total": 0, "known": True}
    for c in counts:
        total = c.get("total")
        if total is None:
            out["known"] = False
        else:
            out["total"] += total
        for k in COUNTS:
            out[k] += c.get(k) or 0
    return out
