"""What a map reads from a mapped value: item ``i`` is what iterating the value yields at ``i``.

One place decides, for every path that reads items (a concrete argument on the client, an
upstream value measured by the expander on a worker, a flatten's parent items, the local
schedulers, batches and sub-flow inputs):

- :func:`unmappable` says why a value cannot be mapped over (``None`` when it can);
- :func:`positional` says whether ``value[i]`` is item ``i`` (lists, tuples, ranges, NumPy
  arrays, registered ``Sequence`` types); any other iterable (a set, a pandas ``Series``,
  whose ``[i]`` reads by label) is turned into a list by iteration, once, by the expander;
- :func:`concatenate` joins a flatten's per-item sequences.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from dynflow.exceptions import MapInputError

__all__ = ["Product", "concatenate", "positional", "unmappable"]

_FAST = (list, tuple, range)


def _is_dataframe(value: Any) -> bool:
    pd = sys.modules.get("pandas")  # a value can only be a DataFrame if pandas is imported
    return pd is not None and isinstance(value, pd.DataFrame)


def unmappable(value: Any) -> str | None:
    """Why ``value`` cannot be mapped over, or ``None`` when it can.

    The reason is a phrase that follows "is a <type>, ": ``"not iterable"``.

    Strings and bytes are single values; a mapping or a pandas ``DataFrame`` is ambiguous
    (iterating gives keys or column names, not rows); a one-shot iterator could not be
    stored, shipped between workers or read again after a lost worker.
    """
    if type(value) in _FAST:
        return None
    if isinstance(value, (str, bytes, bytearray)):
        return "one value, not a list of items"
    if _is_dataframe(value):
        return (
            "ambiguous to map over (iterating a DataFrame gives its column names); map "
            "over frame.to_dict('records'), list(frame.itertuples()) or "
            "[row for _, row in frame.iterrows()] for rows, or frame[column] for a column"
        )
    if isinstance(value, Mapping):
        return (
            "ambiguous to map over; map over list(value.items()), list(value) or "
            "list(value.values())"
        )
    if isinstance(value, Iterator):
        return (
            "a one-shot iterator; return a list instead, so the value can be stored, "
            "shipped between workers and recomputed"
        )
    try:
        iter(value)  # also a 0-d NumPy array, which claims to be iterable
    except TypeError:
        return "not iterable"
    return None


def positional(value: Any) -> bool:
    """Whether ``value[i]`` is item ``i`` and ``len(value)`` the item count.

    True for lists, tuples, ranges, NumPy arrays and types registered as
    ``collections.abc.Sequence``; anything else is turned into a list by iteration
    before its items are read.
    """
    if type(value) in _FAST or isinstance(value, Sequence):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray) and value.ndim > 0


def concatenate(what: str, parts: Iterable[Any], keep: tuple[type, ...] = ()) -> list:
    """The items of every sequence in ``parts``, in order (``flatten``).

    Every part is read by iteration (lists, tuples, arrays, ranges, Series alike):
    never added element-wise. A part whose type is in ``keep`` stands for its unknown
    items and is kept as one item (a failed parent's record).

    Raises
    ------
    MapInputError
        A part that cannot be mapped over (a number, a string, a dict, a DataFrame),
        naming ``what`` and the part's index.
    """
    out: list = []
    for i, part in enumerate(parts):
        t = type(part)
        if t is list:
            out.extend(part)
        elif t in keep:
            out.append(part)
        elif (why := unmappable(part)) is not None:
            raise MapInputError(
                f"{what}: item {i} is a {t.__name__}, not a list to flatten ({why})"
            )
        else:
            out.extend(part)
    return out


class Product(Sequence):
    """The cross product of sequences, in row-major order, without making it.

    ``Product([1, 2], "ab")[i]`` is the ``i``-th tuple of
    ``itertools.product([1, 2], "ab")``: item ``i`` is computed when read, and pickling
    ships only the factors.

    >>> p = Product([1, 2], ["a", "b", "c"])
    >>> len(p), p[0], p[4], list(p) == [(1, "a"), (1, "b"), (1, "c"), (2, "a"), (2, "b"), (2, "c")]
    (6, (1, 'a'), (2, 'b'), True)
    """

    __slots__ = ("factors",)

    def __init__(self, *factors: Sequence) -> None:
        self.factors = factors

    def __len__(self) -> int:
        n = 1
        for f in self.factors:
            n *= len(f)
        return n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"product index {i} out of range for {n} items")
        out = []
        for f in reversed(self.factors):
            i, j = divmod(i, len(f))
            out.append(f[j])
        return tuple(reversed(out))

    def __repr__(self) -> str:
        return f"Product({', '.join(map(repr, self.factors))})"
