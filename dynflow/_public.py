"""What ``dynflow`` exports shows, and pickles, as ``dynflow.<name>``.

The bottom layer: every module that defines an exported class or function marks it here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["public"]


def public(*objects: Any) -> dict[str, Any]:
    """Give ``objects`` (classes and functions :mod:`dynflow` exports) the module
    ``"dynflow"``, as httpx does: reprs, tracebacks and documentation show
    ``dynflow.Node``, ``dynflow.MapItemError``, and pickle stores that name
    (``dynflow`` loads each exported name on first use, so it always resolves).

    Returns them by name, to be the defining module's ``__test__``: doctest looks for a
    module's examples among the objects whose ``__module__`` is that module, and would
    skip theirs.
    """
    for obj in objects:
        obj.__module__ = "dynflow"
    return {obj.__name__: obj for obj in objects}
