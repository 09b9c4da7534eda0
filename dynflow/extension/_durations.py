"""Measured compute time per map item, per task name: what ``batch_size="adaptive"``
groups by (:func:`dynflow.lowering._stage.batch_size`).

distributed keeps an average duration per task prefix, but it cannot serve here: a
map's item keys carry the map's token (each map is a prefix of its own, unknown the
first time), and a batch's duration is that of many items. The splice tells this
table which tasks it made (:meth:`ItemDurations.planned`: a stage's key, its task name
and items per task at a prefix); each finished task of those (:meth:`finished`, from
the splice extension's ``transition``) adds its compute seconds per item to the task
name's moving average, which later splices read (:meth:`seconds`). Nothing here
touches scheduler state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ItemDurations"]

#: weight of the newest task in a task name's moving average
ALPHA = 0.2
#: (stage, prefix) entries kept (the oldest are forgotten first: nested maps make one
#: per parent item)
MAX_PLANS = 10_000


class ItemDurations:
    """Seconds of compute per item, a moving average per task name."""

    def __init__(self) -> None:
        self.average: dict[str, float] = {}
        # (stage key, prefix) -> (task name, n, items per task or None)
        self.plans: OrderedDict[tuple, tuple[str, int, int | None]] = OrderedDict()

    def planned(self, stage: str, prefix: tuple, task_name: str, n: int, size: int | None) -> None:
        """A splice made ``stage``'s ``n`` items at ``prefix``, ``size`` to a task."""
        self.plans[(stage, prefix)] = (task_name, n, size)
        self.plans.move_to_end((stage, prefix))
        if len(self.plans) > MAX_PLANS:
            self.plans.popitem(last=False)

    def decided(self, stage: str, prefix: tuple, n: int) -> tuple[bool, int | None]:
        """``(True, size)`` when a splice already made ``stage``'s ``n`` items at
        ``prefix`` (``size`` to a task, None: one task per item), else ``(False, None)``:
        a splice made again (its expander ran again, its first value lost with a worker)
        must group as the first did, since the tasks it made keep their keys."""
        plan = self.plans.get((stage, prefix))
        if plan is None or plan[1] != n:
            return False, None
        return True, plan[2]

    def finished(self, key: Any, startstops: Sequence[Mapping[str, Any]] | None) -> None:
        """Task ``key`` finished, computing for the ``"compute"`` spans of
        ``startstops``; counted if it is one of the planned tasks."""
        if type(key) is not tuple or len(key) < 2 or not startstops:
            return
        plan = self.plans.get((key[0], key[1:-1]))
        if plan is None:
            return
        task_name, n, size = plan
        units = 1 if size is None else min(size, n - key[-1] * size)
        if units <= 0:
            return
        seconds = sum(s["stop"] - s["start"] for s in startstops if s.get("action") == "compute")
        per_item = seconds / units
        old = self.average.get(task_name)
        self.average[task_name] = per_item if old is None else old + ALPHA * (per_item - old)

    def seconds(self, task_name: str) -> float | None:
        """``task_name``'s compute seconds per item (None: never measured here)."""
        return self.average.get(task_name)
