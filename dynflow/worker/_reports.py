"""What a running call tells the run tracker and its run's client, with distributed's
events (``Worker.log_event``):

- a failed map item (a :class:`~dynflow.worker._failure.Failure` record, which dask sees as a
  finished task) on topic ``dynflow-item``, so progress counts it as failed; an item's
  label (``dynflow-label``) and a value read from the result storage (``dynflow-cached``);
- with ``log_prints``, every line the call prints to stdout/stderr (instead of the
  worker's own output) and every log record it emits, on topic ``dynflow-log``; the
  tracker forwards them to the client that submitted the run, which prints them tagged
  with the label (``[fetch-acct1] ...``).

Outside a worker (local schedulers) nothing is reported and prints go to the terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from dynflow._context import BATCH_INDEX
from dynflow._protocol import CACHED_TOPIC, ITEM_TOPIC, LABEL_TOPIC, LOG_TOPIC, RETRY_TOPIC
from dynflow.exceptions import index_text, short_text
from dynflow.worker._call_context import current_key, item_index, label, tag, this_worker

if TYPE_CHECKING:
    from dynflow.worker._calls import CallPolicy
    from dynflow.worker._failure import Failure

__all__ = [
    "forwarding",
    "report_cached",
    "report_failure",
    "report_label",
    "report_retry",
    "tell_client",
]

#: a retry is logged here (a call's own log records are forwarded with log_prints)
logger = logging.getLogger("dynflow.retries")


# (worker key, tag, buffers) of the call whose output is forwarded, per thread/context
_FORWARD: ContextVar[_Sink | None] = ContextVar("dynflow_forward", default=None)
_install_lock = threading.Lock()


def report_failure(failure: Failure, upstream: bool) -> None:
    """Tell the run tracker that the running item holds a failure record."""
    worker, key = this_worker(), current_key()
    if worker is None or key is None:
        return
    index = item_index()
    batch = BATCH_INDEX.get()  # in a batch, the item's index (item_index() is it too)
    error = failure.exception
    worker.log_event(
        ITEM_TOPIC,
        {
            "key": _plain(key if batch is None else (key[0], *batch)),
            "index": list(index) if index is not None else None,
            "label": failure.label,
            "error": f"{type(error).__name__}: {error}"[:500],
            "upstream": upstream,
        },
    )


def report_label(policy: CallPolicy, args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Tell the run tracker the running map item's label (tasks with a
    ``task_run_name`` only), so that the dashboard can list and search items by it."""
    if policy.run_name is None:
        return
    index = item_index()
    worker, key = this_worker(), current_key()
    if index is None or worker is None or key is None:
        return
    unit = key if BATCH_INDEX.get() is None else (key[0], *index)
    worker.log_event(LABEL_TOPIC, {"key": _plain(unit), "label": label(policy, args, kwargs)})


def tell_client(tag: str, text: str) -> None:
    """Send a line to the client that submitted the running task's run (to its stderr,
    tagged): warnings of the worker side that the user must see."""
    worker, key = this_worker(), current_key()
    if worker is None or key is None:
        return
    msg = {"key": _plain(key), "tag": tag, "stream": "stderr", "text": text}
    worker.log_event(LOG_TOPIC, msg)


def report_retry(
    policy: CallPolicy,
    attempt: int,
    error: BaseException,
    delay: float,
    args: tuple,
    kwargs: Mapping[str, Any],
) -> None:
    """A call's attempt ``attempt`` failed with ``error`` and it runs again in ``delay``
    seconds: logged on the worker, as Prefect logs a retry (``fetch item 3 (acme):
    attempt 1 of 4 failed with ConnectionError('...'); retrying in 2.0 s``), which
    ``log_prints`` forwards to the client as every log record of the call; and told to
    the run tracker, which counts retries per node."""
    index = item_index()
    text = label(policy, args, kwargs)
    who = policy.task_name
    if index is not None:
        who += f" item {index_text(index)}"
    if text is not None:
        who += f" ({text})"
    logger.warning(
        "%s: attempt %d of %d failed with %s; retrying in %.1f s",
        who,
        attempt,
        policy.retries + 1,
        short_text(repr(error), 200),
        delay,
    )
    worker, key = this_worker(), current_key()
    if worker is None or key is None:
        return
    unit = key if BATCH_INDEX.get() is None or index is None else (key[0], *index)
    worker.log_event(RETRY_TOPIC, {"key": _plain(unit)})


def report_cached() -> None:
    """Tell the run tracker that the running task (or batch item) read its value from
    the result storage instead of running."""
    worker, key = this_worker(), current_key()
    if worker is None or key is None:
        return
    index = item_index()
    unit = key if BATCH_INDEX.get() is None or index is None else (key[0], *index)
    worker.log_event(CACHED_TOPIC, {"key": _plain(unit)})


def _plain(key: Any) -> Any:
    return list(key) if type(key) is tuple else key


# ------------------------------------------------------------------ forwarding
class _Sink:
    """Where one call's printed lines go: buffered to whole lines, sent as events."""

    __slots__ = ("buffers", "key", "tag", "worker")

    def __init__(self, worker: Any, key: Any, tag: str) -> None:
        self.worker, self.key, self.tag = worker, key, tag
        self.buffers: dict[str, str] = {}

    def write(self, stream: str, text: str) -> None:
        buf = self.buffers.get(stream, "") + text
        *lines, rest = buf.split("\n")
        self.buffers[stream] = rest
        for line in lines:
            self.send(stream, line)

    def send(self, stream: str, text: str) -> None:
        self.worker.log_event(
            LOG_TOPIC, {"key": _plain(self.key), "tag": self.tag, "stream": stream, "text": text}
        )

    def flush(self) -> None:
        for stream, rest in self.buffers.items():
            if rest:
                self.send(stream, rest)
        self.buffers.clear()


class _Tee(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` on a worker: a forwarding call's output goes to its
    sink (and so to the client) instead of the worker's own stream, where it would show
    a second time wherever the worker's output is collected (a notebook's kernel)."""

    def __init__(self, stream: Any, name: str) -> None:
        self.stream, self.name = stream, name

    def write(self, text: str) -> int:
        sink = _FORWARD.get()
        if sink is not None:
            sink.write(self.name, text)
            return len(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.stream, attr)


class _LogHandler(logging.Handler):
    """Root logging handler on a worker: the current call's records go to its sink."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = _FORWARD.get()
        if sink is not None and not record.name.startswith("distributed"):
            sink.send("log", f"{record.levelname} {record.name}: {record.getMessage()}")


def _install_tees() -> None:
    with _install_lock:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if not isinstance(stream, _Tee):
                setattr(sys, name, _Tee(stream, name))
        root = logging.getLogger()
        if not any(isinstance(h, _LogHandler) for h in root.handlers):
            root.addHandler(_LogHandler())


@contextlib.contextmanager
def forwarding(policy: CallPolicy, args: tuple, kwargs: Mapping[str, Any]) -> Iterator[None]:
    """Forward what the call prints or logs to the client (``log_prints``), on a worker."""
    if not policy.log_prints:
        yield
        return
    worker, key = this_worker(), current_key()
    if worker is None or key is None:
        yield
        return
    _install_tees()
    sink = _Sink(worker, key, tag(policy, args, kwargs))
    token = _FORWARD.set(sink)
    try:
        yield
    finally:
        _FORWARD.reset(token)
        sink.flush()
