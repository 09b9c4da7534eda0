"""Submitted runs: :class:`Run` (one ``submit``) and :class:`RunFuture` (one output of it).

``df.submit`` registers each run with dynflow's run tracker on the scheduler
(:mod:`dynflow.extension._tracker`) before its graph is sent, with the flow-level graph, so that the
run's live state (per node: pending, running, done and failed counts, and a map's item
count once it expanded) can be asked for from anywhere: :meth:`Run.info`, the notebook
display of a future, :func:`dynflow.progress` and the dashboard page.
"""

from __future__ import annotations

import io
import pickle
import re
import socket
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import dask.config
from distributed import Future
from distributed.client import FutureCancelledError

from dynflow._config import DYNFLOW_FRAMES
from dynflow._protocol import RUN_FORGET_HANDLER, RUN_START_HANDLER, RUN_STATUS_HANDLER
from dynflow._public import public
from dynflow.exceptions import (
    DynflowError,
    ExtensionError,
    MapItemError,
    RemoteError,
    SchedulerLostError,
)
from dynflow.graph._flowgraph import FlowGraph
from dynflow.graph._node import Node
from dynflow.views._progress import progress, settle, show_live
from dynflow.views._render import FlowSVG, to_svg
from dynflow.views._reprs import live_run_html
from dynflow.worker._failure import Failure, pickle_without_init

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["Outputs", "Run", "RunFuture", "remember", "user_traceback"]


class Run:
    """One submitted graph: its id, name and flow-level graph, and its live state.

    Parameters
    ----------
    name : str
        Shown in progress bars and the dashboard (a flow's name, or the outputs' names).
    graph : FlowGraph
        The flow-level graph of the outputs.
    client : distributed.Client
        The client it was submitted with.
    """

    def __init__(self, name: str, graph: FlowGraph, client: Client) -> None:
        self.id = uuid.uuid4().hex
        self.name = name
        self.graph = graph
        self.client = client
        self.link: str | None = None  # the dynflow page showing it (set at submit)
        # the Dask span of its tasks (``distributed.span``, set at submit; each map's
        # items are in a span inside it, named after the map's task)
        self.span_id: str | None = None
        self.views: list[Any] = []  # its live notebook views (settled when read)
        self.outputs: tuple[Node, ...] = ()  # its output nodes (to recreate an error)

    @classmethod
    def of(cls, nodes: Sequence[Node], client: Client, name: str | None = None) -> Run:
        """A new run of ``nodes``, named ``name``, else after their flows or tasks."""
        graph = FlowGraph.from_outputs(nodes)
        names = dict.fromkeys(n.flow_name or n.name for n in nodes)
        run = cls(name or ", ".join(names), graph, client)
        run.outputs = tuple(nodes)
        return run

    async def register(self) -> None:
        """Tell the scheduler's run tracker about the run.

        Raises
        ------
        ExtensionError
            The tracker refused the registration (its message says why).
        """
        reply = await getattr(self.client.scheduler, RUN_START_HANDLER)(
            run_id=self.id,
            name=self.name,
            graph=self.graph.to_dict(),
            outputs=list(self.graph.outputs),
            client=self.client.id,
            host=socket.gethostname(),
        )
        if isinstance(reply, dict) and reply.get("status") == "error":
            raise ExtensionError(f"run {self.name!r}: {reply.get('message')}")

    async def forget(self) -> None:
        """Tell the run tracker that this run's graph was never sent."""
        await getattr(self.client.scheduler, RUN_FORGET_HANDLER)(run_id=self.id)

    def info(self) -> dict[str, Any] | None:
        """The run's live state, from the scheduler (awaitable with an asynchronous client).

        ``{"state", "name", "elapsed", "nodes": {node key: counts}, "failures": ...}``;
        counts are ``total`` (None while a map has not expanded), ``pending``,
        ``running``, ``done`` and ``failed``. None when the scheduler no longer knows the
        run (older than ``dynflow.dashboard.history`` finished runs). Once dynamic tasks
        added boxes (``"fib (dynamic)"``, the calls of ``fib`` they made), ``"graph"``
        holds the run's graph with them (see :meth:`FlowGraph.live`).
        """
        handler = getattr(self.client.scheduler, RUN_STATUS_HANDLER)
        return self.client.sync(handler, run_id=self.id)

    def progress(self, **kwargs: Any) -> Any:
        """:func:`dynflow.progress` of this run."""
        return progress(self, **kwargs)

    def visualize(self) -> Any:
        """The flow-level graph, coloured by the run's current counts."""
        info = self.info()
        return FlowSVG(to_svg(self.graph.live(info), info["nodes"] if info else None))

    def _repr_html_(self) -> str:
        info = self.info()
        if info is None:
            info = {"name": self.name, "state": "unknown", "nodes": {}, "elapsed": 0.0}
        return live_run_html(self, info)

    def _ipython_display_(self) -> None:
        """In a notebook: the HTML view, kept up to date until the run ends."""
        from IPython.display import HTML, display

        if not show_live(self):
            display(HTML(self._repr_html_()))

    def __repr__(self) -> str:
        link = f", dashboard: {self.link}" if self.link else ""
        return f"<Run {self.name!r} id={self.id[:8]}{link}>"


def client_error(error: BaseException, client: Client, what: str) -> BaseException:
    """The error a user gets for ``error``, raised by distributed while getting a result.

    - the connection to the scheduler was lost: :class:`~dynflow.SchedulerLostError`
      (a cancellation on purpose, by ``df.cancel`` or another client, stays as it is);
    - an exception that this process could not unpickle (its class, or something in it,
      cannot be imported here), which distributed hands over as ``Exception(<pickle
      bytes>)``: rebuilt with a :class:`~dynflow.RemoteError` standing in for each
      missing class, so a ``MapItemError`` still arrives as one.
    """
    if isinstance(error, FutureCancelledError):
        if "connection-lost" in str(error) or client.status != "running":
            address = getattr(client.scheduler, "address", None)
            lost = SchedulerLostError(
                f"lost the connection to the scheduler at {address} while computing "
                f"{what}; the run is lost"
            )
            lost.__cause__ = error
            return lost
        return error
    if type(error) is Exception and len(error.args) == 1:
        data = error.args[0]
        if isinstance(data, (bytes, bytearray)):
            try:
                rebuilt = _LenientUnpickler(io.BytesIO(data)).load()
            except Exception:  # noqa: BLE001 - then the bytes are all there is
                return error
            if isinstance(rebuilt, BaseException):
                return rebuilt.with_traceback(error.__traceback__)
    # it pickles again from here (a user may send it on), the items' exceptions too
    pickle_without_init(error)
    if isinstance(error, MapItemError):
        for item_error in error.errors.values():
            pickle_without_init(item_error)
    return error


class user_traceback:  # noqa: N801 - a context manager, named like dask's
    """Leave library frames out of an error's traceback and out of its causes' (remote)
    tracebacks: those of the modules in dask's ``admin.traceback.shorten`` (dask's and
    distributed's) and dynflow's own (``dynflow.shorten-tracebacks: false`` keeps all), as
    ``dask.utils.shorten_traceback`` does, but also at the ends; a traceback made of
    library frames only keeps its last. A failed map then reads as the user's call, the
    one-line ``MapItemError`` and the failed item's own frames."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if error is None or not dask.config.get("dynflow.shorten-tracebacks", default=True):
            return
        paths = [*(dask.config.get("admin.traceback.shorten", default=None) or ()), DYNFLOW_FRAMES]
        library = re.compile(".*(" + "|".join(paths) + ")")
        seen: set[int] = set()
        while error is not None and id(error) not in seen and len(seen) < 20:
            seen.add(id(error))
            # dynflow's own errors say what happened: where dynflow raised them is noise
            keep_last = not isinstance(error, DynflowError)
            error.__traceback__ = _without(error.__traceback__, library, keep_last)
            error = error.__cause__ or error.__context__


def _without(
    tb: TracebackType | None, library: re.Pattern, keep_last: bool
) -> TracebackType | None:
    """``tb`` without the frames whose file ``library`` matches (the last one stays if
    nothing else would, and ``keep_last``)."""
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    kept = [t for t in entries if not library.match(t.tb_frame.f_code.co_filename)]
    if not kept and keep_last:
        kept = entries[-1:]
    for a, b in zip(kept, [*kept[1:], None], strict=False):
        a.tb_next = b
    return kept[0] if kept else None


def output_value(value: Any) -> Any:
    """An output's value; an output whose failure an ``allow_failure`` consumer of the
    same run tolerates holds a failure record: its exception is raised."""
    if type(value) is Failure:
        raise value.exception
    return value


def stop_iteration(error: BaseException) -> BaseException:
    """A task's ``StopIteration``, which no coroutine can raise (Python turns it into
    ``RuntimeError("coroutine raised StopIteration")``, PEP 479), for synchronous callers
    to raise again; any other error as it is."""
    if type(error) is RuntimeError and isinstance(
        error.__cause__, (StopIteration, StopAsyncIteration)
    ):
        return error.__cause__
    return error


class _LenientUnpickler(pickle.Unpickler):
    """Unpickles with a :class:`~dynflow.RemoteError` subclass for each class that cannot
    be imported here."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _stand_in(module, name)


def _stand_in(module: str, name: str) -> type:
    """A :class:`~dynflow.RemoteError` class named like the missing ``module.name``."""
    type_name = f"{module}.{name}"

    def __str__(self: RemoteError) -> str:  # noqa: N807
        message = ", ".join(map(str, self.args))
        return f"{name}: {message} (a {type_name} that cannot be imported here)"

    namespace = {
        "__module__": module,
        "__str__": __str__,
        "__init__": BaseException.__init__,
        "__reduce__": BaseException.__reduce__,
        "type_name": type_name,
        "remote_traceback": "",
    }
    return type(name, (RemoteError,), namespace)


#: a run's output type
R = TypeVar("R")


class RunFuture(Future, Generic[R]):  # Future is generic from distributed 2025.2
    """A ``distributed.Future`` of one output of a submitted run, knowing its :class:`Run`.

    It is a plain Future for distributed's tools (``wait``, ``as_completed``,
    ``client.gather``; pickled, it becomes a plain Future); in a notebook it displays the
    run's per-node state, updated live until the run ends (an ipywidget; static HTML in
    other front ends), and :func:`dynflow.progress` accepts it.
    """

    def __init__(self, key: Any, client: Client, run: Run) -> None:
        super().__init__(key, client)
        self.run = run

    def result(self, timeout: float | None = None) -> R:
        """The run's output (distributed's ``Future.result``), with the errors of
        :func:`dynflow.compute`."""
        with user_traceback():
            try:
                return super().result(timeout)
            except RuntimeError as e:
                error = stop_iteration(e)
                if error is e:
                    raise
                raise error from None
            finally:
                if self.run.views:
                    settle(self.run)  # notebook views show the end from this cell

    async def _result(self, raiseit: bool = True) -> Any:
        # distributed's result(): the same errors as dynflow.compute() (client_error)
        try:
            return output_value(await super()._result(raiseit))
        except BaseException as e:
            error = client_error(e, self.client, self.run.name)
            remember(error, self.run.outputs, self.client, self.run)
            if error is e:
                raise
            raise error from None if error.__cause__ is None else error.__cause__

    def _repr_html_(self) -> str:
        return self.run._repr_html_()

    def _ipython_display_(self) -> None:
        self.run._ipython_display_()

    def __repr__(self) -> str:
        link = f", dashboard: {self.run.link}" if self.run.link else ""
        return f"<RunFuture {self.run.name!r}: {self.status}, key: {self.key}{link}>"


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(Run, RunFuture)


class Outputs:
    """The nodes (and client) a computation's error came from, held by the error on
    the client (``error._dynflow_outputs``); pickled, it holds nothing."""

    __slots__ = ("client", "nodes", "run")

    def __init__(
        self, nodes: Sequence[Node] = (), client: Client | None = None, run: Run | None = None
    ) -> None:
        self.nodes = tuple(nodes)
        self.client = client
        self.run = run

    def __reduce__(self) -> tuple:
        return (Outputs, ())


def remember(
    error: BaseException, nodes: Sequence[Node], client: Client | None, run: Run | None
) -> None:
    """Let ``error`` (raised by computing ``nodes``, as ``run``) be recreated locally
    (:func:`dynflow.recreate_error_locally`)."""
    try:
        error.__dict__.setdefault("_dynflow_outputs", Outputs(nodes, client, run))
    except (AttributeError, TypeError):  # pragma: no cover - an exception without __dict__
        pass
