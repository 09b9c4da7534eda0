"""The errors dynflow raises.

::

    DynflowError
     ├── LazyValueError(DynflowError, TypeError)      a lazy node used as a concrete value
     ├── MapInputError(DynflowError, TypeError)       a mapped value that cannot be mapped over
     ├── MapLengthError(DynflowError, ValueError)     zipped mapped arguments of unequal lengths
     ├── SerializationError(DynflowError, TypeError)  a task or argument that cannot be pickled
     └── ExtensionError(DynflowError, RuntimeError)   the scheduler extension is missing or refused

Errors raised by user code inside a task are never wrapped: they reach the caller with their
original type, message and remote traceback.
"""

from __future__ import annotations

__all__ = [
    "DynflowError",
    "ExtensionError",
    "LazyValueError",
    "MapInputError",
    "MapLengthError",
    "SerializationError",
]


class DynflowError(Exception):
    """Root of every error dynflow itself raises."""


class LazyValueError(DynflowError, TypeError):
    """A lazy node was used where a concrete value is needed (``if node:``, ``len(node)``)."""


class MapInputError(DynflowError, TypeError):
    """A mapped argument is not something a map can iterate over."""


class MapLengthError(DynflowError, ValueError):
    """Mapped (zipped) arguments have different lengths."""


class SerializationError(DynflowError, TypeError):
    """A task's function or one of its arguments cannot be pickled."""


class ExtensionError(DynflowError, RuntimeError):
    """dynflow's scheduler extension is not installed or could not be installed."""
