"""Finding the cluster, and making it ready for dynflow.

The cluster is found in this order (:func:`get_client`): an explicit ``client=``; inside
a task, the cluster the task runs on; the default ``distributed.Client``; the dask config
key ``dynflow.address``, then distributed's ``scheduler-address``; else an embedded
``LocalCluster``, started once per process on first use and closed at exit.

:func:`install` puts dynflow's scheduler extensions on a cluster once per client and
scheduler, and subscribes the client to its runs' forwarded output.
"""

from __future__ import annotations

import ast
import atexit
import contextvars
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from html import escape
from types import FrameType
from typing import Any

import dask.config
import distributed
from distributed import Client, LocalCluster, get_worker
from distributed.client import default_client
from distributed.comm.addressing import parse_address
from distributed.security import Security
from distributed.utils import is_kernel

from dynflow import __version__ as dynflow_version
from dynflow._compat import SUPPORTED_DISTRIBUTED, supported_distributed
from dynflow._protocol import FORWARD_TOPIC, LIMITS, PAGE_PLUGIN, SPLICE, TRACKER
from dynflow._public import public
from dynflow.exceptions import ExtensionError
from dynflow.extension._limits import ConcurrencyLimits
from dynflow.extension._splice import SpliceExtension
from dynflow.extension._tracker import RunTracker
from dynflow.views._dashboard import DashboardPage, page_url, register_page

logger = logging.getLogger(__name__)

__all__ = [
    "announce",
    "check_versions",
    "dashboard_link",
    "get_client",
    "install",
    "page_link",
    "print_forwarded",
]

_lock = threading.Lock()
_embedded: dict[str, Any] = {}  # "cluster", "client": the embedded LocalCluster, once made
_address_clients: dict[str, Client] = {}  # address from config -> the client made for it
# client -> id of the scheduler it installed the extensions on (a restarted scheduler at
# the same address has a new id and needs them again)
_installed: weakref.WeakKeyDictionary[Client, str] = weakref.WeakKeyDictionary()
# scheduler id -> the dynflow page's URL there ("" where its dashboard has no such page)
_pages: dict[str, str] = {}
_announced: set[str] = set()  # scheduler ids whose page link this process has printed


def get_client(client: Client | None = None) -> Client:
    """The client dynflow uses: ``client``, else the cluster's it runs on, else one found.

    In this order: ``client``; inside a task on a worker, the worker's client (the
    cluster the task runs on: never a new one); the default ``distributed.Client``; the
    config key ``dynflow.address``, then distributed's own ``scheduler-address``
    (``DASK_SCHEDULER_ADDRESS``); else the embedded ``LocalCluster``, started once per
    process on first use and closed at exit.

    Parameters
    ----------
    client : distributed.Client, optional
        Returned as is when given.

    Returns
    -------
    distributed.Client

    Examples
    --------
    >>> import dynflow as df
    >>> c = df.get_client()  # doctest: +SKIP
    """
    if client is not None:
        return client
    try:
        get_worker()
    except ValueError:
        pass
    else:  # inside a task: its own cluster
        return distributed.get_client()
    try:
        return default_client()
    except ValueError:
        pass
    source = "dynflow.address" if dask.config.get("dynflow.address", None) else "scheduler-address"
    address = dask.config.get(source, None)
    with _lock:
        if address:
            c = _address_clients.get(address)
            if c is None or c.status in ("closed", "closing"):
                _check_security(address, source)
                timeout = dask.config.get("dynflow.connect-timeout")
                c = Client(address, timeout=timeout, set_as_default=False)
                _address_clients[address] = c
                atexit.register(_close_address_clients)
            return c
        if not _embedded or _embedded["client"].status in ("closed", "closing"):
            _start_embedded()
        return _embedded["client"]


def _check_security(address: str, source: str = "dynflow.address") -> None:
    """A ``tls://`` address needs distributed's TLS configuration; say which keys, at once
    (distributed itself fails with a bare TypeError, then waits at exit). ``source``: the
    config key the address came from."""
    if not address.startswith("tls://"):
        return
    if Security().get_connection_args("client").get("ssl_context") is None:
        raise ValueError(
            f"{source} {address!r} is a TLS address, but distributed's TLS "
            "configuration is missing: set distributed.comm.tls.ca-file and "
            "distributed.comm.tls.client.cert / .key (for example "
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE=ca.pem, "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=client.pem, "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=client-key.pem)"
        )


def _start_embedded() -> None:
    def cfg(key: str) -> Any:  # one key at a time: dask normalises "_" and "-" in those
        return dask.config.get(f"dynflow.local-cluster.{key}")

    kwargs: dict[str, Any] = {"processes": cfg("processes")}
    if kwargs["processes"]:
        _check_main_guard()
    if cfg("n-workers") is not None:
        kwargs["n_workers"] = cfg("n-workers")
    if cfg("threads-per-worker") is not None:
        kwargs["threads_per_worker"] = cfg("threads-per-worker")
    register_page()  # the dashboard reads its pages when the scheduler starts
    scheduler_config = {}
    if cfg("worker-saturation") is not None:  # read when the (in-process) scheduler starts
        scheduler_config["distributed.scheduler.worker-saturation"] = cfg("worker-saturation")
    with dask.config.set(scheduler_config):
        cluster = LocalCluster(dashboard_address=cfg("dashboard-address"), **kwargs)
    client = Client(cluster, set_as_default=False)
    _embedded.update(cluster=cluster, client=client)
    atexit.register(_close_embedded)
    logger.info("dynflow started a local Dask cluster; dashboard: %s", client.dashboard_link)


def _check_main_guard() -> None:
    """Fail at once when a script starts the embedded cluster from unguarded top-level
    code: its worker processes (started with ``spawn``) import the script again, which
    would start a cluster again in each of them."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not os.path.exists(path):
        return  # interactive, a notebook, python -c: nothing is imported again
    if dask.config.get("distributed.worker.multiprocessing-method") == "fork":
        return  # forked workers do not import the script
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and not (
        frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>"
    ):
        frame = frame.f_back
    if frame is None:
        return
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return
    line = frame.f_lineno
    for stmt in tree.body:
        if stmt.lineno <= line <= (stmt.end_lineno or stmt.lineno):
            if not _is_main_guard(stmt):
                raise RuntimeError(
                    f"{os.path.basename(path)}, line {line}: this starts dynflow's local "
                    "Dask cluster from the script's top-level code, which its worker "
                    "processes would run again. Put that code under "
                    '`if __name__ == "__main__":` (or connect to a running cluster: '
                    "dynflow.address)."
                )
            return


def _is_main_guard(stmt: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either way round)."""
    if not isinstance(stmt, ast.If) or not isinstance(stmt.test, ast.Compare):
        return False
    test = stmt.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, *test.comparators]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    consts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and consts == ["__main__"]


def _close_embedded() -> None:
    if _embedded:
        _embedded.pop("client").close()
        _embedded.pop("cluster").close()


def _close_address_clients() -> None:
    while _address_clients:
        _address_clients.popitem()[1].close()


def check_versions(versions: Mapping[str, Any], imports: dict[str, Any] | None = None) -> None:
    """Refuse a cluster whose scheduler or workers lack dynflow, run another dynflow
    than this process, cannot import it, or run a distributed release the splice does
    not support.

    ``versions``: what ``Client.get_versions(packages=["dynflow"])`` returns (read from
    the installed packages' metadata); ``imports``: ``{"scheduler" or worker address:
    None, or the exception that importing dynflow raised there}``.

    Raises
    ------
    ExtensionError
        Naming each process that differs, what it runs and what is needed.
    """
    problems = []
    where = [("the scheduler", versions.get("scheduler") or {})]
    where += [(f"worker {addr}", v) for addr, v in sorted((versions.get("workers") or {}).items())]
    for name, info in where:
        packages = info.get("packages", {})
        theirs = packages.get("dynflow")
        if theirs is None:
            problems.append(f"{name} has no dynflow installed")
        elif theirs != dynflow_version:
            problems.append(f"{name} runs dynflow {theirs}")
        if not supported_distributed(packages.get("distributed")):
            problems.append(f"{name} runs distributed {packages.get('distributed')}")
    for where_, error in sorted((imports or {}).items()):
        if error is not None:
            name = "the scheduler" if where_ == "scheduler" else f"worker {where_}"
            problems.append(f"{name} cannot import dynflow ({type(error).__name__}: {error})")
    if problems:
        raise ExtensionError(
            f"this cluster cannot run dynflow {dynflow_version} (distributed "
            f"{SUPPORTED_DISTRIBUTED}): {'; '.join(problems)}. Install the same dynflow, "
            "and a supported distributed, on the scheduler and the workers."
        )


async def _imports(client: Client) -> dict[str, Any]:
    """Whether dynflow imports on the scheduler and on each worker (an install whose
    metadata is there but whose import fails, a missing dependency, passes the version
    check; its tasks would fail to unpickle, and dask would try them again and again)."""
    imports: dict[str, Any] = await client.run(exec, "import dynflow", on_error="return")
    try:
        await client.run_on_scheduler(exec, "import dynflow")
    except Exception as e:
        imports["scheduler"] = e
    return imports


async def install(client: Client) -> None:
    """Install the scheduler extensions once per client and scheduler (idempotent).

    Also subscribes the client to its runs' forwarded output (``log_prints``). A
    coroutine: ``client.sync(install, client)`` from synchronous code.
    """
    scheduler_id = _scheduler_id(client)
    if _installed.get(client) == scheduler_id:
        return
    versions = client.get_versions(packages=["dynflow"])
    assert not isinstance(versions, dict)  # a coroutine: this runs on the client's loop
    check_versions(await versions, await _imports(client))
    await client.register_plugin(SpliceExtension(), name=SPLICE)
    await client.register_plugin(RunTracker(), name=TRACKER)
    await client.register_plugin(ConcurrencyLimits(), name=LIMITS)
    await client.register_plugin(DashboardPage(), name=PAGE_PLUGIN)
    client.subscribe_topic(FORWARD_TOPIC, print_forwarded)
    _installed[client] = scheduler_id


def print_forwarded(event: tuple[float, dict], out: Callable[[str], Any] | None = None) -> None:
    """Client side: print one forwarded line, tagged (the ``dynflow-log-forward`` handler)."""
    _, msg = event
    text = f"[{msg['tag']}] {msg['text']}"
    if out is not None:
        out(text)
        return
    # printed in an empty context: this runs on the client's event loop, whose context
    # is the one it started in; ipykernel would send the line to the cell that started
    # the client instead of the one running now
    stream = sys.stderr if msg.get("stream") == "stderr" else sys.stdout
    contextvars.Context().run(print, text, file=stream)


def _scheduler_id(client: Client) -> str:
    """The id of the scheduler ``client`` talks to (a restarted one has a new id)."""
    return client.scheduler_info().get("id") or str(scheduler_address(client))


def scheduler_address(client: Client) -> str | None:
    """The address of the scheduler ``client`` talks to (None before it connected)."""
    return getattr(client.scheduler, "address", None)


async def page_link(client: Client) -> str | None:
    """The URL of the dynflow page on ``client``'s scheduler (a coroutine), which
    installing dynflow there adds; None where the scheduler has no dashboard."""
    sid = _scheduler_id(client)
    if sid not in _pages:
        await install(client)
        link = client.dashboard_link
        _pages[sid] = page_url(link) if link is not None else ""
    return _pages[sid] or None


async def announce(client: Client) -> str | None:
    """Say where the dynflow page is, once per scheduler and process, the first time a
    run is submitted there: in a notebook as HTML under the cell (a link to the page),
    elsewhere as a line on stderr. The scheduler's address is shown without its
    ``tcp://`` scheme, so that nothing makes it a link that leads nowhere."""
    link = await page_link(client)
    sid = _scheduler_id(client)
    if sid not in _announced:
        _announced.add(sid)
        address = scheduler_address(client)
        where = parse_address(address)[1] if address else "the scheduler"
        if link:
            text = f"dynflow: runs on {where} are shown at {link}"
            html = (
                f"dynflow: runs on <code>{escape(where)}</code> are shown at "
                f'<a href="{escape(link)}" target="_blank">{escape(link)}</a>'
            )
        else:
            text = (
                f"dynflow: the scheduler at {where} has no dashboard, so no dynflow page "
                "(its JSON and df.progress work all the same)"
            )
            html = escape(text)
        # in an empty context: ipykernel then sends it to the cell running now, not to
        # the one that started the client's event loop
        if is_kernel():
            contextvars.Context().run(_display_html, html)
        else:
            contextvars.Context().run(print, text, file=sys.stderr)
    return link


def _display_html(html: str) -> None:
    from IPython.display import HTML, display

    display(HTML(f"<div>{html}</div>"))


def dashboard_link(client: Client | None = None) -> str | None:
    """The URL of dynflow's dashboard page (runs, per-node counts, failures, the graph).

    Parameters
    ----------
    client : distributed.Client, optional
        Default: the cluster :func:`get_client` finds (which may start the embedded one).

    Returns
    -------
    str or None
        None where the scheduler's dashboard does not serve the page: it was started
        without ``--preload dynflow.scheduler``, or without a dashboard. With an
        asynchronous client, an awaitable of it.
    """
    client = get_client(client)
    return client.sync(page_link, client)


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(dashboard_link, get_client)
