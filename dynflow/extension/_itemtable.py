"""What the run tracker keeps per map item, in a few bytes an item.

The dashboard's items table lists every item of a map with its state and compute time,
and the tracker keeps finished runs (``dynflow.dashboard.history`` of them): at a million
items, a dict entry per item (a key tuple, a float, a set entry: ~160 bytes) would cost
the scheduler 160 MB a run. :class:`ItemTable` keeps, per item prefix (``()`` for a flat
map, ``(i,)`` under parent ``i`` of a nested one), one byte of flags and four bytes of
compute seconds (``array('f')``), allocated when a prefix's length is known. A unit that
is not an item of a known prefix (a plain task, a failed parent) is kept in a small dict.
Labels and errors exist for a few items only (``task_run_name``, failures) and stay in
the tracker's dicts.
"""

from __future__ import annotations

from array import array
from typing import Any

__all__ = ["CACHED", "EARLY", "FAILED", "ItemTable"]

#: flags of one unit: finished holding a failure record; reported failed while its task
#: still runs (counted once the task has finished); its value came from the result storage
FAILED, EARLY, CACHED = 1, 2, 4


class _Part:
    """The items of one prefix: flags and seconds, ``n`` of each."""

    __slots__ = ("flags", "seconds")

    def __init__(self, n: int) -> None:
        self.flags = bytearray(n)
        self.seconds: array | None = None  # allocated at the first time reported


class ItemTable:
    """Flags and compute seconds of a map's units (see the module docstring).

    ``items``: the item name (an item's key is ``(items, *prefix, i)``). ``count(flag)``
    is the number of units with ``flag``, kept as flags change.
    """

    __slots__ = ("_counts", "_other", "_parts", "items")

    def __init__(self, items: str | None) -> None:
        self.items = items
        self._parts: dict[tuple, _Part] = {}
        self._other: dict[Any, int] = {}  # units that are no item of a known prefix
        self._counts = {FAILED: 0, EARLY: 0, CACHED: 0}

    def sized(self, prefix: tuple, n: int) -> None:
        """Prefix ``prefix`` has ``n`` items (said again after a lost worker: kept)."""
        part = self._parts.get(prefix)
        if part is None or len(part.flags) != n:
            self._parts[prefix] = _Part(n)
            if part is not None:  # a length that changed: what was known is dropped
                for flag in self._counts:
                    self._counts[flag] -= sum(1 for f in part.flags if f & flag)

    def _locate(self, unit: Any) -> tuple[_Part, int] | None:
        if type(unit) is not tuple or len(unit) < 2 or unit[0] != self.items:
            return None
        part = self._parts.get(unit[1:-1])
        i = unit[-1]
        if part is None or type(i) is not int or not 0 <= i < len(part.flags):
            return None
        return part, i

    def flags(self, unit: Any) -> int:
        at = self._locate(unit)
        if at is None:
            return self._other.get(unit, 0)
        part, i = at
        return part.flags[i]

    def set(self, unit: Any, flag: int) -> bool:
        """Give ``unit`` ``flag``; whether it did not have it."""
        at = self._locate(unit)
        old = self._other.get(unit, 0) if at is None else at[0].flags[at[1]]
        if old & flag:
            return False
        if at is None:
            self._other[unit] = old | flag
        else:
            at[0].flags[at[1]] = old | flag
        self._counts[flag] += 1
        return True

    def clear(self, unit: Any, flag: int) -> bool:
        """Take ``flag`` from ``unit``; whether it had it."""
        at = self._locate(unit)
        old = self._other.get(unit, 0) if at is None else at[0].flags[at[1]]
        if not old & flag:
            return False
        if at is None:
            if old & ~flag:
                self._other[unit] = old & ~flag
            else:
                del self._other[unit]
        else:
            at[0].flags[at[1]] = old & ~flag
        self._counts[flag] -= 1
        return True

    def count(self, flag: int) -> int:
        return self._counts[flag]

    def time(self, units: list, seconds: float) -> None:
        """Each of ``units`` (a task's items) computed for ``seconds``."""
        for unit in units:
            at = self._locate(unit)
            if at is None:
                continue
            part, i = at
            if part.seconds is None:
                part.seconds = array("f", bytes(4 * len(part.flags)))
            part.seconds[i] = seconds if seconds > 0 else 1e-9  # 0.0 means "not known"

    def seconds(self, unit: Any) -> float | None:
        """``unit``'s compute seconds, None while unknown."""
        at = self._locate(unit)
        if at is None or at[0].seconds is None:
            return None
        value = at[0].seconds[at[1]]
        return float(value) if value else None

    def sample_seconds(self, limit: int) -> list[float]:
        """Known compute seconds of up to about ``limit`` items, every ``k``-th item of
        each prefix (``k`` from the total), in O(``limit``)."""
        total = sum(len(p.flags) for p in self._parts.values())
        step = max(1, total // max(1, limit))
        out: list[float] = []
        for part in self._parts.values():
            if part.seconds is not None:
                out.extend(float(v) for v in part.seconds[::step] if v)
        return out

    def nbytes(self) -> int:
        """Bytes the per-item arrays hold (for tests and benchmarks)."""
        total = 0
        for part in self._parts.values():
            total += len(part.flags) + (0 if part.seconds is None else 4 * len(part.seconds))
        return total
