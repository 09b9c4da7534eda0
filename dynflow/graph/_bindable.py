""":class:`Bindable`, what tasks and flows share: binding a call's arguments to the
function's signature, and being defined in a class body, as a method (bound through an
instance, and pickled with it: :func:`bind_instance`)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from dynflow.graph._node import unmapped

__all__ = ["Bindable", "bind_instance"]


class Bindable:
    """What tasks and flows share: binding a call's arguments to the function's signature,
    and being defined in a class body, as a method.

    Accessed through an instance (``model.predict``), it is bound to it, as a function
    is: calls, maps (the instance goes to every item) and pickling carry the instance
    as the first argument. Prefect's tasks and flows behave the same.
    """

    __slots__ = ("_bound",)
    _bound: tuple[Any, Any] | None  # (the unbound task or flow, the instance)
    _signature: inspect.Signature

    if TYPE_CHECKING:

        @property
        def name(self) -> str: ...

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None or self._bound is not None:
            return self
        bound = object.__new__(type(self))
        for cls in type(self).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if slot not in ("__dict__", "_bound") and hasattr(self, slot):
                    object.__setattr__(bound, slot, getattr(self, slot))
        bound.__dict__.update(self.__dict__)
        bound._bound = (self, instance)
        return bound

    def _with_instance(self, args: tuple, mapped: bool = False) -> tuple:
        """``args`` with the bound instance first (unmapped in a map)."""
        if self._bound is None:
            return args
        instance = self._bound[1]
        return (unmapped(instance) if mapped else instance, *args)

    def _rebound(self, other: Any) -> Any:
        """``other`` (a changed copy of this one) bound to the same instance."""
        return other if self._bound is None else other.__get__(self._bound[1])

    def _bind(self, how: str, args: tuple, kwargs: dict) -> inspect.BoundArguments:
        """``args`` and ``kwargs`` bound to the function's signature, or a ``TypeError``
        naming the call (``"inc()"``, ``"inc.map()"``) and the signature."""
        try:
            return self._signature.bind(*args, **kwargs)
        except TypeError as e:
            kind = type(self).__name__.lower()
            raise TypeError(
                f"{self.name}{how}: {e}; the {kind}'s signature is {self.name}{self._signature}"
            ) from None


def bind_instance(unbound: Any, instance: Any) -> Any:
    """How a bound task or flow unpickles: ``unbound`` bound to ``instance`` again."""
    return unbound.__get__(instance)
