"""Worker log lines about dynflow's own tasks, kept out of the user's output.

When a task fails, distributed's worker logs a "Compute Failed" block naming the task.
For a failed map item that block names dynflow's collector (``gather(...)``), which
raised the ``MapItemError`` the user gets anyway, with the item's own traceback. The
filter here drops the blocks of dynflow's internal tasks (collectors, expanders, the
refusal of a bad returned graph); a failing call of the user's own task is logged as
distributed always does.
"""

from __future__ import annotations

import logging
import re

__all__ = ["INTERNAL_TASKS", "install"]

#: the functions of dynflow's internal tasks, as a task's repr names them
INTERNAL_TASKS = frozenset(
    {
        "assemble",
        "concat_raw",
        "expand",
        "finish_collections",
        "gather",
        "gather_concat",
        "gather_failed",
        "gather_failed_stream",
        "gather_raw",
        "pick",
        "rebuild",
        "refuse",
        "run_map",
        "tolerate",
        "unspliced",
    }
)

_TASK = re.compile(r"<Task .* (\w+)\(")


class _InternalComputeFailed(logging.Filter):
    """Drops distributed's "Compute Failed" records of dynflow's internal tasks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        task = str(args[2]) if len(args) > 2 else ""
        match = _TASK.match(task)
        return not (match and match.group(1) in INTERNAL_TASKS)


_FILTER = _InternalComputeFailed()


def install() -> None:
    """Add the filter to distributed's worker logger (idempotent)."""
    logger = logging.getLogger("distributed.worker")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
