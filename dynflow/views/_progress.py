"""``df.progress``: a bar per node of a run, whose totals grow as its maps expand.

distributed's own progress bars follow a fixed set of keys given up front (its
``Progress`` scheduler plugin); a dynflow map's items do not exist until it expands, so
these bars read dynflow's run tracker instead (:mod:`dynflow.extension._tracker`), polled every
``dynflow.dashboard.refresh-interval``. Like distributed's, they are ipywidgets in a notebook
(shown at once; the cell does not block) and a line of text in a terminal (blocks until
the runs end).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import dask.config
from dask.utils import parse_timedelta
from distributed.utils import is_kernel

from dynflow._protocol import FINAL_STATES, RUN_STATUS_HANDLER, sum_counts
from dynflow._public import public
from dynflow.views._render import bar_svg, finished, short_repr_counts
from dynflow.views._reprs import live_run_html

if TYPE_CHECKING:
    from distributed import Client
    from tornado.ioloop import IOLoop

    from dynflow.client._run import Run

__all__ = ["RunView", "TextProgress", "WidgetProgress", "progress", "settle", "show_live"]


def refresh_interval() -> float:
    """Seconds between two refreshes of a progress bar or the dashboard page
    (``dynflow.dashboard.refresh-interval``)."""
    return parse_timedelta(dask.config.get("dynflow.dashboard.refresh-interval"), "ms")


def _runs(objs: Sequence[Any]) -> list[Run]:
    runs: dict[str, Run] = {}
    for obj in objs:
        if isinstance(obj, (list, tuple)):
            for r in _runs(obj):
                runs.setdefault(r.id, r)
            continue
        run = getattr(obj, "run", obj)  # a RunFuture knows its Run
        if not all(hasattr(run, a) for a in ("id", "graph", "client", "info")):
            raise TypeError(
                f"progress() expects the futures returned by dynflow's submit() (or their "
                f"runs), got {type(obj).__name__} {obj!r}"
            )
        runs.setdefault(run.id, run)
    return list(runs.values())


class _Progress:
    """Polls the runs' counts and hands them to :meth:`update` until every run has ended."""

    def __init__(self, runs: list[Run], interval: float | None = None) -> None:
        self.runs = runs
        self.interval = interval if interval is not None else refresh_interval()
        self.infos: dict[str, dict[str, Any]] = {}
        self.ended = False

    async def listen(self) -> None:
        """Poll until every run has finished, failed or been cancelled."""
        while not await self.poll():
            await asyncio.sleep(self.interval)

    async def poll(self) -> bool:
        """Read the runs' counts once and show them; True once every run has ended (the
        view then shows its final state, once)."""
        if self.ended:
            return True
        for run in self.runs:
            info = await getattr(run.client.scheduler, RUN_STATUS_HANDLER)(run_id=run.id)
            if info is not None:
                self.infos[run.id] = info
        self.update()
        if self.ended:  # another poll ended it meanwhile
            return True
        if all(self.infos.get(r.id, {}).get("state") in FINAL_STATES for r in self.runs):
            self.ended = True
            self.finish()
            return True
        return False

    def follow(self) -> None:
        """Register with each run, so that a result read in the notebook settles this
        view at once (:func:`settle`), from the cell that reads it."""
        for run in self.runs:
            run.views.append(self)

    def nodes(self, run: Run) -> list[tuple[str, str, dict[str, Any]]]:
        """``(key, label, counts)`` of the run's nodes that have work, in graph order."""
        info = self.infos.get(run.id)
        if info is None:
            return []
        out = []
        for node in run.graph.live(info).nodes:
            counts = info["nodes"].get(node.key)
            if counts is not None and counts.get("total") != 0:
                out.append((node.key, node.label, counts))
        return out

    def update(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self) -> None:
        pass


class TextProgress(_Progress):
    """Progress in a terminal: a bar per node, redrawn in place within the terminal's
    width (``rich``'s live display); where the output is not a terminal (a log, a
    pipe), a line each time the counts change.

    ``line()`` is the current state of every run on one line; ``last`` the last one
    written.
    """

    def __init__(
        self, runs: list[Run], interval: float | None = None, file: IO[str] | None = None
    ) -> None:
        super().__init__(runs, interval)
        self.file = file if file is not None else sys.stdout
        self.last = ""
        self._last_state = ""
        self._live: Any = None
        self._tasks: dict[tuple[str, str], Any] = {}
        isatty = getattr(self.file, "isatty", None)
        if isatty is not None and isatty():
            from rich.console import Console
            from rich.progress import Progress, TextColumn, TimeElapsedColumn

            self._bar = _CountsBar()
            self._live = Progress(
                TextColumn("{task.description}", justify="left", table_column=_name_column()),
                self._bar,
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                console=Console(file=self.file),
                auto_refresh=False,
                transient=False,
            )
            self._live.start()

    def line(self, elapsed: bool = True) -> str:
        """The current state of every run, on one line (``elapsed``: with each run's
        time so far)."""
        parts = []
        for run in self.runs:
            info = self.infos.get(run.id, {})
            nodes = self.nodes(run)
            counts = sum_counts(c for _, _, c in nodes)
            done = finished(counts) + counts["failed"]
            total, known = counts["total"], counts["known"]
            frac = done / total if total and known else 0.0
            bar = "#" * int(frac * 20)
            of = f"{total}" if known else f"{total}+"
            each = " | ".join(f"{label} {short_repr_counts(c)}" for _, label, c in nodes)
            parts.append(
                f"[{bar:<20}] {run.name} {info.get('state', 'pending')} {done}/{of} | {each}"
                + (f" | {info.get('elapsed', 0.0):.1f}s" if elapsed else "")
            )
        return "  ".join(parts)

    def update(self) -> None:
        line, state = self.line(), self.line(elapsed=False)
        if self._live is not None:
            self._draw()
        elif state != self._last_state:  # not a line per refresh: per change of counts
            self.file.write(line + "\n")
            self.file.flush()
        self.last, self._last_state = line, state

    def _draw(self) -> None:
        # the bar gets what the name and the counts leave of the terminal's width, so
        # that nothing of it (its failed and running parts are at the end) is cut off
        rows = [
            (f"{run.name}: {label}", short_repr_counts(c))
            for run in self.runs
            for _, label, c in self.nodes(run)
        ]
        if rows:
            name = min(max(len(r[0]) for r in rows), 32)
            counts = max(len(r[1]) for r in rows) + 12  # the state, in brackets
            room = self._live.console.width - name - counts - 12  # the time, the gaps
            self._bar.width = max(0, min(30, room))
        for run in self.runs:
            info = self.infos.get(run.id, {})
            for key, label, c in self.nodes(run):
                task = self._tasks.get((run.id, key))
                if task is None:
                    task = self._live.add_task(f"{run.name}: {label}", counts="", c={})
                    self._tasks[run.id, key] = task
                total = c.get("total")
                self._live.update(
                    task,
                    total=total,
                    completed=finished(c) + (c.get("failed") or 0),
                    counts=f"{short_repr_counts(c)} [{info.get('state', 'pending')}]",
                    c=c,
                )
        self._live.refresh()

    def finish(self) -> None:
        if self._live is not None:
            self._draw()
            self._live.stop()
            return
        if not self.last:
            self.file.write("\n")
        self.file.flush()


def _counts_bar(c: dict[str, Any], width: int) -> list[tuple[str, str]]:
    """(characters, colour) segments of a bar ``width`` wide: done, cached, failed and
    running in proportion, the rest pending."""
    parts = (("done", "green"), ("cached", "bright_green"), ("failed", "red"), ("running", "blue"))
    total = c.get("total") or 0
    whole = max(total, sum(c.get(k) or 0 for k, _ in parts))
    widths = {}
    for k, _ in parts:
        n = c.get(k) or 0
        if n and whole:  # a nonzero part is never invisible
            widths[k] = max(1, int(width * n / whole))
    while sum(widths.values()) > width:
        widths[max(widths, key=widths.__getitem__)] -= 1
    complete = whole and total and sum(c.get(k) or 0 for k, _ in parts) >= total
    if complete and widths and sum(widths.values()) < width:  # rounding: fill it
        widths[max(widths, key=widths.__getitem__)] += width - sum(widths.values())
    out = [("━" * widths[k], colour) for k, colour in parts if widths.get(k)]
    used = sum(widths.values())
    if used < width:
        out.append(("━" * (width - used), "grey37"))
    return out


try:
    from rich.progress import ProgressColumn as _ProgressColumn
except ImportError:  # pragma: no cover - rich is a dependency
    _ProgressColumn = object  # type: ignore[assignment,misc]


def _name_column() -> Any:
    """The names' column: at most 32 characters, cut with an ellipsis."""
    from rich.table import Column

    return Column(max_width=32, no_wrap=True, overflow="ellipsis")


class _CountsBar(_ProgressColumn):
    """A bar of a node's counts, in proportion (rich's own bar has one colour),
    ``width`` characters (0: none, in a terminal too narrow for one)."""

    width = 30

    def render(self, task: Any) -> Any:
        from rich.text import Text

        text = Text()
        for chars, colour in _counts_bar(task.fields.get("c") or {}, self.width):
            text.append(chars, style=colour)
        return text


class Static:
    """What a notebook keeps of a live view once its run ended: HTML, with a text
    fallback (a notebook saved without widget state shows this, not "model not
    found")."""

    def __init__(self, html: str, text: str) -> None:
        self.html, self.text = html, text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


class _Swapped:
    """A live ipywidget displayed under a display id, replaced in place by a
    :class:`Static` copy when the run ends (``update_display_data``)."""

    def __init__(self) -> None:
        self.handle: Any = None

    def show(self, widget: Any) -> None:
        from IPython.display import display

        self.handle = display(widget, display_id=True)

    def swap(self, static: Static) -> None:
        if self.handle is not None:
            # in an empty context: ipykernel then sends it as part of the cell running
            # now (the loop thread's context holds the header of the cell that started
            # the client), which every frontend, nbclient too, applies
            contextvars.Context().run(self.handle.update, static)


def _summary(run: Run, info: dict[str, Any]) -> str:
    """One line of text for a run: name, state (and why), counts."""
    counts = sum_counts(info.get("nodes", {}).values())
    reason = f" ({info['reason']})" if info.get("reason") else ""
    return (
        f"{run.name}: {info.get('state', 'unknown')}{reason}, "
        f"{short_repr_counts(counts)}, {info.get('elapsed', 0.0):.1f} s"
    )


class WidgetProgress(_Progress):
    """ipywidgets: per run a title, per node a bar whose maximum grows as maps expand.
    When the runs end, the widgets are replaced in place by a static copy of each run's
    view (:class:`Static`), which a saved notebook keeps."""

    def __init__(self, runs: list[Run], interval: float | None = None) -> None:
        import ipywidgets

        super().__init__(runs, interval)
        self._w = ipywidgets
        self.title: dict[str, Any] = {}
        self.bars: dict[tuple[str, str], Any] = {}  # (run id, node key) -> HTML bar
        self.texts: dict[tuple[str, str], Any] = {}
        self.box = ipywidgets.VBox([])
        self._rows: list[Any] = []
        self._shown = False
        self.display = _Swapped()

    def finish(self) -> None:
        parts, lines = [], []
        for run in self.runs:
            info = self.infos.get(run.id)
            if info is not None:
                parts.append(live_run_html(run, info))
                lines.append(_summary(run, info))
        self.display.swap(Static("".join(parts), "\n".join(lines)))

    def _row(self, run: Run, key: str, label: str) -> None:
        w = self._w
        # an HTML bar, not an IntProgress: its parts in proportion (1 failed item in
        # 135 is a sliver of red, not a red bar)
        bar = w.HTML(bar_svg({}), layout=w.Layout(width="40%"))
        text = w.HTML("")
        self.bars[run.id, key], self.texts[run.id, key] = bar, text
        self._rows.append(w.HBox([w.Label(label, layout=w.Layout(width="25%")), bar, text]))

    def update(self) -> None:
        changed = False
        for run in self.runs:
            info = self.infos.get(run.id, {})
            if run.id not in self.title:
                self.title[run.id] = self._w.HTML()
                self._rows.append(self.title[run.id])
                changed = True
            state, elapsed = info.get("state", "pending"), info.get("elapsed", 0.0)
            self.title[run.id].value = f"<b>{run.name}</b>: {state}, {elapsed:.1f} s"
            for key, label, c in self.nodes(run):
                if (run.id, key) not in self.bars:
                    self._row(run, key, label)
                    changed = True
                total = c["total"]
                self.bars[run.id, key].value = bar_svg(c)
                items = "? items" if total is None else f"{total:,}"
                self.texts[run.id, key].value = f"{short_repr_counts(c)} ({items})"
        if changed:
            self.box.children = tuple(self._rows)

    def _ipython_display_(self) -> None:
        # shown once: progress() displays it, and a cell ending in `df.progress(fut)`
        # would display the returned bar again (`display(bar.box)` shows it anew)
        if not self._shown:
            self._shown = True
            self.display.show(self.box)


class RunView(_Progress):
    """A run's HTML view (counts, failures, graph) in an ipywidget, updated until it ends.

    What a ``RunFuture`` displays in a notebook; :func:`dynflow.views._reprs.run_html` renders it.
    """

    def __init__(self, run: Run, interval: float | None = None) -> None:
        import ipywidgets

        super().__init__([run], interval)
        self.widget = ipywidgets.HTML()  # filled by the first poll, which is at once
        self.display = _Swapped()

    def update(self) -> None:
        (run,) = self.runs
        info = self.infos.get(run.id)
        if info is not None:
            self.widget.value = live_run_html(run, info)

    def finish(self) -> None:
        (run,) = self.runs
        info = self.infos.get(run.id)
        if info is not None:
            self.display.swap(Static(self.widget.value, _summary(run, info)))


def settle(run: Run) -> None:
    """Show the final state of ``run``'s live notebook views now (called where its
    result is read: in a notebook, the cell that reads it then carries the update)."""
    for view in list(run.views):
        if not view.ended and not run.client.asynchronous:
            try:
                run.client.sync(view.poll)
            except Exception:  # noqa: BLE001 - a view never fails the result
                pass
    run.views[:] = [v for v in run.views if not v.ended]


def show_live(run: Run) -> bool:
    """Display ``run``'s live view in a notebook; False where widgets are unavailable."""
    try:
        import ipywidgets  # noqa: F401
        from IPython.display import display  # noqa: F401 - available?
    except ImportError:
        return False
    if not is_kernel():
        return False
    view = RunView(run)
    view.display.show(view.widget)
    view.follow()
    _loop(run.client).add_callback(view.listen)
    return True


def progress(*futures: Any, notebook: bool | None = None, interval: float | None = None) -> Any:
    """Show the progress of submitted runs: a bar per node, growing as maps expand.

    Parameters
    ----------
    *futures : RunFuture or Run
        Futures returned by ``df.submit``/``flow.submit`` (or their ``.run``).
    notebook : bool, optional
        ipywidgets (default in a Jupyter kernel; shown at once, the cell does not
        block) or a line of text (default elsewhere; blocks until the runs end).
    interval : float, optional
        Seconds between updates; default ``dynflow.dashboard.refresh-interval``.

    Returns
    -------
    WidgetProgress or TextProgress
        The progress display; its ``infos`` hold the last counts of each run. With an
        asynchronous client, an awaitable of it (text) that ends with the runs.

    Raises
    ------
    TypeError
        Something other than a future of dynflow's ``submit`` (or its run) was given.
    """
    runs = _runs(futures)
    if not runs:
        raise TypeError("progress() needs at least one future from dynflow's submit()")
    client = runs[0].client
    if notebook is None:
        notebook = is_kernel()
    if notebook:
        bar = WidgetProgress(runs, interval)
        from IPython.display import display

        display(bar)
        bar.follow()
        _loop(client).add_callback(bar.listen)
        return bar
    text = TextProgress(runs, interval)
    if client.asynchronous:
        return _listened(text)
    client.sync(text.listen)
    return text


def _loop(client: Client) -> IOLoop:
    """The event loop of ``client`` (one that submitted runs has one)."""
    loop = client.loop
    assert loop is not None, "the client has no event loop"
    return loop


async def _listened(bar: _Progress) -> _Progress:
    await bar.listen()
    return bar


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(progress)
