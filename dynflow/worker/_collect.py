"""Collectors: a map's list from its items' results and failure records.

``mode`` says what a list does with failed items: ``"strict"`` raises a
:class:`~dynflow.MapItemError` naming the map and the failed indices (the original
exception as ``__cause__``) unless ``min_success_ratio`` is met (then failed items are
``None``); ``"tolerant"`` hands exception objects on (``allow_failure``); ``"record"``
is strict, but returns the error as a failure record (inside a sub-flow run per item);
``"raw"`` keeps the records (a map chained on it passes them on).

When a map's mapped source itself failed (a failure record where the list should be:
an upstream that ``allow_failure`` tolerates, a value that cannot be mapped over), the
map has no items: :func:`gather_failed` hands the source's failure on whole.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from dynflow._sequences import concatenate
from dynflow.exceptions import ItemIndex, MapItemError
from dynflow.worker._failure import Failure, summary

__all__ = [
    "concat_raw",
    "gather",
    "gather_concat",
    "gather_failed",
    "gather_failed_stream",
    "gather_raw",
    "ratio_met",
    "tolerate",
]


def ratio_met(succeeded: int, total: int, ratio: float) -> bool:
    """Whether ``succeeded`` of ``total`` items meet ``min_success_ratio=ratio`` (< 1).

    Compared exactly, with the ratio as written (its shortest decimal form): 55 of 100
    meet 0.55, although ``0.55 * 100`` is ``55.00000000000001`` in floating point.

    >>> ratio_met(55, 100, 0.55), ratio_met(54, 100, 0.55), ratio_met(1, 3, 1 / 3)
    (True, False, True)
    """
    if ratio >= 1:
        return False
    r = Fraction(repr(float(ratio)))
    return succeeded * r.denominator >= r.numerator * total


def _check(task_name: str, mode: str, ratio: float, items: list) -> Any:
    failed = [i for i, x in enumerate(items) if type(x) is Failure]
    if not failed or mode == "raw":
        return items
    if mode == "tolerant":
        return [x.exception if type(x) is Failure else x for x in items]
    if mode in ("strict", "record") and ratio_met(len(items) - len(failed), len(items), ratio):
        return [None if type(x) is Failure else x for x in items]
    first = items[failed[0]]
    labels: dict[ItemIndex, str] = {i: items[i].label for i in failed if items[i].label is not None}
    # the first exception whole (it is the cause), bounded copies of the others: ten
    # 10 MB messages never make a 100 MB error (the records keep the originals)
    errors: dict[ItemIndex, BaseException] = {failed[0]: first.exception}
    errors.update((i, summary(items[i].exception)) for i in failed[1 : MapItemError.MAX_ERRORS])
    error = MapItemError(
        task_name, failed, len(items), first.task_name, first.exception, labels, errors
    )
    error.__cause__ = first.exception
    if mode == "record":
        return Failure(error, task_name)
    raise error


def gather(task_name: str, mode: str, ratio: float, *items: Any) -> Any:
    """A map's list from its items, applying its failure ``mode``.

    ``mode``: ``"strict"`` raise :class:`MapItemError` (unless ``min_success_ratio``
    ``ratio`` is met: failed items become ``None``); ``"tolerant"`` exception objects in
    place of failed items (``allow_failure``); ``"record"`` as strict, but a
    :class:`Failure` of the error instead of raising it (inside a sub-flow run per item);
    ``"raw"`` the records as they are (a nested map's per-parent list).
    """
    return _check(task_name, mode, ratio, list(items))


def gather_failed(task_name: str, mode: str, ratio: float, failure: Failure) -> Any:
    """A map's list when its mapped source failed (it has no items), by ``mode``.

    ``"strict"``: the source's exception is raised (with its remote traceback);
    ``"tolerant"``: the exception object itself, in place of the list; ``"record"`` and
    ``"raw"``: the failure record, whole (a map chained on it fails whole too).
    """
    if mode == "tolerant":
        return failure.exception
    if mode == "strict":
        raise failure.exception
    return failure


def gather_failed_stream(
    lists: list, task_name: str, mode: str, ratio: float, failure: Failure
) -> Any:
    """A list over a stream whose source failed: :func:`gather_failed` of the source's
    ``failure``, once ``lists`` (the lists of the chunks it handed on before: their
    items ran) are made; they are not read."""
    return gather_failed(task_name, mode, ratio, failure)


def concat_raw(task_name: str, items: list | Failure) -> list | Failure:
    """A flatten's raw list, from its map's raw list: each item's elements, in order.

    A failed item (a record) stands for its unknown elements, as on a cluster, where
    each item of ``task_name``'s map is expanded on its own; a failed map (a record in
    place of the list) fails the flatten whole.
    """
    if isinstance(items, Failure):
        return items
    return concatenate(f"flatten({task_name}.map())", items, keep=(Failure,))


def gather_concat(task_name: str, mode: str, ratio: float, *lists: Any) -> Any:
    """A flattened map's list: the per-parent lists concatenated, then :func:`gather`."""
    # a per-parent list, or the failure record of a parent item (its children unknown)
    return _check(task_name, mode, ratio, concatenate(task_name, lists, keep=(Failure,)))


def gather_raw(task_name: str, mode: str, ratio: float, raw: list | Failure) -> Any:
    """A map's list from its raw list (a local run's; a failure record in its place: the
    source failed, :func:`gather_failed`)."""
    if isinstance(raw, Failure):
        return gather_failed(task_name, mode, ratio, raw)
    return _check(task_name, mode, ratio, list(raw))


def tolerate(value: Any) -> Any:
    """``allow_failure`` of a plain node: its value, or its exception if it failed."""
    return value.exception if type(value) is Failure else value
