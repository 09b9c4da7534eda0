"""The lazy graph: :class:`Node`, :class:`MapNode` and the markers used in ``task.map``.

A node is a tiny immutable handle on one call of a task. It holds its arguments, in which
other nodes may appear (also inside lists, tuples, sets and dicts); those are its
dependencies. A node never copies its upstream graph: :func:`topological` walks the nodes
when a graph is lowered (:mod:`dynflow.lowering`).
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Self, TypeVar

from dask.base import tokenize
from dask.utils import key_split

from dynflow._containers import find, substitute
from dynflow._context import BUILDING, CREATED, RUNNING_TASK
from dynflow._public import public
from dynflow.exceptions import LazyValueError

if TYPE_CHECKING:
    from distributed import Client

    from dynflow.client._run import RunFuture
    from dynflow.graph._flow import Flow
    from dynflow.graph._task import Task

__all__ = [
    "PARTED",
    "AllowFailureNode",
    "CollectionNode",
    "FlattenNode",
    "KeyNode",
    "MapNode",
    "Node",
    "Slot",
    "StreamNode",
    "SubflowMapNode",
    "find_nodes",
    "replace_nodes",
    "quote",
    "set_flow_name",
    "topological",
    "unmapped",
]


#: a node's value type
R = TypeVar("R", covariant=True)
T = TypeVar("T")


class Node(Generic[R]):
    """A lazy call of a task: nothing runs until it is computed.

    Created by calling a :func:`~dynflow.task` (``node = inc(1)``), never directly.
    ``Node[R]`` is a node whose value is an ``R``: what ``flow.build(...)`` returns for a
    flow whose function returns ``R``. (Type checkers see a task's call inside a flow as
    its value, ``R`` itself: see the README's "Types".)

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def inc(x):
    ...     return x + 1
    >>> inc(inc(1)).compute(scheduler="sync")
    3
    """

    __slots__ = ("_args", "_flow_name", "_key", "_kwargs", "_made_in", "_task", "_wait_for")

    _key: str
    _task: Task
    _args: tuple
    _kwargs: dict[str, Any]
    _wait_for: tuple[Node, ...]

    def __init__(
        self,
        task: Task,
        args: tuple,
        kwargs: dict[str, Any],
        wait_for: tuple[Node, ...] = (),
    ) -> None:
        object.__setattr__(self, "_task", task)
        object.__setattr__(self, "_args", args)
        object.__setattr__(self, "_kwargs", kwargs)
        object.__setattr__(self, "_wait_for", wait_for)
        object.__setattr__(self, "_made_in", RUNNING_TASK.get())
        if (created := CREATED.get()) is not None:
            created.append(self)
        if task.options["pure"]:
            token = tokenize(
                type(self).__name__,
                task.fn,
                task.options,
                args,
                kwargs,
                wait_for,
                self._token_options(),
            )
        else:
            token = uuid.uuid4().hex
        self._set_key(task.name, token)

    def _set_key(self, name: str, token: str) -> None:
        object.__setattr__(self, "_key", f"{name}-{token}")

    def fresh(self) -> Self:
        """The same call under a new key (pure or not): a run of its own whose keys no
        other run shares (``df.as_completed`` streams one run's items)."""
        new = object.__new__(type(self))
        for cls in type(self).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if hasattr(self, slot):
                    object.__setattr__(new, slot, getattr(self, slot))
        new._set_key(self._task.name, uuid.uuid4().hex)
        return new

    def _token_options(self) -> tuple:
        """What else, beyond the call, changes this node's value (part of a pure key)."""
        return ()

    # ------------------------------------------------------------------ identity
    @property
    def key(self) -> str:
        """The scheduler key of this node's result, ``"<task name>-<token>"``."""
        return self._key

    @property
    def task(self) -> Task:
        """The task this node calls."""
        return self._task

    @property
    def name(self) -> str:
        """The task's name."""
        return self._task.name

    @property
    def args(self) -> tuple[Any, ...]:
        """The call's positional arguments, bound to the function's signature (a bound
        method's instance first); nodes in them, also inside containers, are
        dependencies. A map node's are :class:`Slot` objects."""
        return self._args

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """The call's keyword arguments, bound to the function's signature (not to be
        changed: a node is immutable). A map node's are :class:`Slot` objects."""
        return self._kwargs

    @property
    def wait_for(self) -> tuple[Node, ...]:
        """The nodes this call runs after without receiving their values: the task's
        ``wait_for`` option, then the call's."""
        return self._wait_for

    @property
    def flow_name(self) -> str | None:
        """The flow whose output this node is, if it was built by ``flow.build``."""
        return getattr(self, "_flow_name", None)

    @property
    def dependencies(self) -> tuple[Node, ...]:
        """Upstream nodes: those in the arguments, then those in ``wait_for``."""
        seen: dict[str, Node] = {}
        for n in (*find_nodes((self._args, self._kwargs)), *self._wait_for):
            seen.setdefault(n.key, n)
        return tuple(seen.values())

    def __dask_tokenize__(self) -> str:
        return self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._key == self._key

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} objects are immutable")

    def __reduce__(self) -> Any:
        raise LazyValueError(
            f"{self._lazy_what()} cannot be pickled: it is a lazy handle that exists only "
            "while a graph is built. Pass it as an argument to a task instead."
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._key}>"

    # ---------------------------------------------------------------- display
    def _repr_html_(self) -> str:
        from dynflow.views._reprs import node_html  # facade: views

        return node_html(self)

    def visualize(self, filename: str | None = None, engine: str = "auto") -> Any:
        """The flow-level graph that ends at this node: one box per node, a map one box.

        Graphviz where installed (``engine="auto"``), else an inline SVG; see
        :func:`dynflow.visualize`.
        """
        from dynflow.views._render import visualize  # facade: views

        return visualize(self, filename=filename, engine=engine)

    # -------------------------------------------------------- no concrete value
    def _lazy_what(self) -> str:
        return f"{type(self).__name__} {self._key!r} (a lazy result of task {self.name!r})"

    def _lazy_error(self, what: str, hint: str) -> LazyValueError:
        """``what`` cannot be done with this node: why, and what to do instead."""
        made_in = getattr(self, "_made_in", None)
        if made_in is not None:
            hint = (
                f"It was made inside task {made_in!r}, where calling task {self.name!r} "
                f"builds a lazy node: call `{self.name}.fn(...)` for the plain function, "
                "or `node.compute()` to run it on the cluster the task runs on."
            )
        return LazyValueError(f"{self._lazy_what()} {what}. {hint}")

    def _no_value(self, operation: str) -> LazyValueError:
        return self._lazy_error(
            f"has no value to use in `{operation}`: its value is known only when the graph runs",
            "Do the operation in a @task that receives the value as an argument "
            "(`@df.task def add(a, b): return a + b`), or compute the node first.",
        )

    def __getitem__(self, index: Any) -> Any:
        raise self._lazy_error(
            f"cannot be indexed (`node[{index!r}]`): its value is known only when the graph runs",
            "Index inside a @task that receives the value, or map over the node "
            "(`some_task.map(node)`) to run a task per item.",
        )

    def __contains__(self, item: Any) -> bool:
        raise self._no_value("x in node")

    def result(self, *args: Any, **kwargs: Any) -> Any:
        """Not a future: raises :class:`~dynflow.LazyValueError` saying what to call."""
        raise self._lazy_error(
            "is a lazy node, not a future: it has no result() until it runs",
            "Call `node.compute()` for its value, or `node.submit()` for a future whose "
            "`.result()` waits for it.",
        )

    wait = result

    def __bool__(self) -> bool:
        flow = BUILDING.get()
        where = f"the body of flow {flow!r}" if flow else "code that builds a graph"
        raise LazyValueError(
            f"{self._lazy_what()} has no truth value: its value is known only when the "
            f"graph runs, so {where} cannot branch on it (`if node:`, `while node:`, "
            "`and`/`or`). Move the decision into a @task that receives the value as an "
            "argument, or compute the node first and branch on the result."
        )

    def __iter__(self) -> Iterator[Any]:
        raise self._lazy_error(
            "cannot be iterated while the graph is built: its length is known only when it runs",
            "Use `some_task.map(node)` to run a task per item.",
        )

    def __len__(self) -> int:
        raise self._lazy_error(
            "has no length while the graph is built",
            "Use `some_task.map(node)` to run a task per item, or a @task that calls len().",
        )

    # -------------------------------------------------------------- execution
    def compute(self, client: Client | None = None, scheduler: str | None = None) -> R:
        """Run the graph that ends at this node and return its value.

        Parameters
        ----------
        client : distributed.Client, optional
            The cluster to use; by default the one :func:`dynflow.get_client` finds.
            With an asynchronous client, the result is awaitable.
        scheduler : str, optional
            ``"sync"`` runs the graph in this process, in order (for ``pdb``);
            ``"threads"`` in a local thread pool. No cluster is used.

        Returns
        -------
        object
            The node's value (a map node's: the list of its items' results).

        Raises
        ------
        MapItemError
            Items of a map whose list is needed failed (see ``allow_failure`` and
            ``min_success_ratio``).
        SchedulerLostError
            The connection to the scheduler was lost during the run.
        Exception
            A plain task's own exception, with its remote traceback.
        """
        from dynflow.client._submit import compute, user_traceback  # facade: client

        with user_traceback():
            out = compute(self, client=client, scheduler=scheduler)
        if inspect.isawaitable(out):
            return _first(out)  # an asynchronous client's: awaitable
        return out[0]

    def submit(self, client: Client | None = None) -> RunFuture[R]:
        """Start the graph that ends at this node, as a run.

        Parameters
        ----------
        client : distributed.Client, optional
            The cluster to use; by default the one :func:`dynflow.get_client` finds.

        Returns
        -------
        RunFuture
            A ``distributed.Future`` of the node's value that knows its run.
        """
        from dynflow.client._submit import submit  # facade: client

        (future,) = submit(self, client=client)
        return future


def _refuse(symbol: str) -> Callable[..., Any]:
    def operator(self: Node, *args: Any) -> Any:
        raise self._no_value(symbol)

    return operator


# `node + 1` and friends: a lazy node has no value to compute with (__eq__ and __hash__
# are the node's identity; `and`, `or`, `not` go through __bool__)
for _name, _symbol in {
    "add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%",
    "pow": "**", "matmul": "@", "and": "&", "or": "|", "xor": "^", "lshift": "<<",
    "rshift": ">>", "radd": "+", "rsub": "-", "rmul": "*", "rtruediv": "/",
    "rfloordiv": "//", "rmod": "%", "rpow": "**", "rmatmul": "@", "rand": "&", "ror": "|",
    "rxor": "^", "rlshift": "<<", "rrshift": ">>", "lt": "<", "le": "<=", "gt": ">",
    "ge": ">=", "neg": "-node", "pos": "+node", "abs": "abs(node)", "invert": "~node",
    "int": "int(node)", "float": "float(node)", "index": "an index", "complex": "complex(node)",
    "round": "round(node)",
}.items():  # fmt: skip
    setattr(Node, f"__{_name}__", _refuse(_symbol))


async def _first(awaitable: Any) -> Any:
    return (await awaitable)[0]


class Slot(NamedTuple):
    """One argument of a map call: mapped over (one value per item) or static."""

    label: str  # the argument's name, as written in error messages: "items", "args[1]"
    mapped: bool
    value: Any  # mapped: a Node, a MapNode, or a tuple of concrete values; else the value


class StreamNode(Node[list[Any]]):
    """A lazy call of a *stream* task: a generator function, an async generator
    function, or a function annotated to return an iterator (``-> Iterator[T]``).

    Mapped over (``g.map(stream)``), on a cluster, item ``i`` of ``g`` starts as soon as
    the source has yielded it: the source's task ``(source_key)`` hands its items to the
    scheduler in chunks ``(item_name, c)`` held where it runs, a bounded window ahead of
    its consumers (``dynflow.stream``). Used whole, its value is the list of what it
    yielded. See the README's "Streaming sources".
    """

    __slots__ = ("_item_name", "_source_key")

    _item_name: str
    _source_key: str

    def _set_key(self, name: str, token: str) -> None:
        # its list "name", its running source "name.stream", its chunks "name.chunk"
        object.__setattr__(self, "_key", f"{name}-{token}")
        object.__setattr__(self, "_source_key", f"{name}.stream-{token}")
        object.__setattr__(self, "_item_name", f"{name}.chunk-{token}")

    @property
    def item_name(self) -> str:
        """The name of the chunks the source yields: chunk ``c`` is ``(item_name, c)``,
        a list of consecutive items."""
        return self._item_name

    @property
    def source_key(self) -> str:
        """The key of the task that runs the source (processing while it streams)."""
        return self._source_key


class CollectionNode(Node[list[Any]]):
    """A dask collection mapped over: a ``dask.bag.Bag`` (its elements), or a dask array
    along its first axis (its rows), made by ``task.map(collection)``.

    Its graph runs in the same run; a map over it expands once per partition (per block
    of rows) as soon as that partition is done, where it lives: chunk ``i`` is
    ``(item_name, i)``, the partition's items as a list (an array's rows as an array).
    Used whole, its value is the list of every item.
    """

    __slots__ = ("_collection", "_item_name", "_kind")

    _collection: Any
    _item_name: str
    _kind: str

    def __init__(self, task: Task, collection: Any, kind: str) -> None:
        object.__setattr__(self, "_collection", collection)
        object.__setattr__(self, "_kind", kind)
        super().__init__(task, (), {})

    def _token_options(self) -> tuple:
        return (self._collection.name,)  # a dask name is the token of its graph

    def _set_key(self, name: str, token: str) -> None:
        name = self.name
        object.__setattr__(self, "_key", f"{name}-{token}")
        object.__setattr__(self, "_item_name", f"{name}.partition-{token}")

    @property
    def name(self) -> str:
        """The collection's name (``from_sequence``, ``array``, ...)."""
        return key_split(self._collection.name)

    @property
    def collection(self) -> Any:
        return self._collection

    @property
    def kind(self) -> str:
        """``"bag"`` or ``"array"``."""
        return self._kind

    @property
    def item_name(self) -> str:
        """Chunk ``i`` (the items of partition ``i``, as a list) is ``(item_name, i)``."""
        return self._item_name

    def partition_keys(self) -> list[Any]:
        """The collection's key of each partition (an array's block of rows), in order."""
        out = []
        for k in self._collection.__dask_keys__():
            while isinstance(k, list):  # an array's row block: one chunk across
                k = k[0]
            out.append(k)
        return out


#: nodes whose maps expand once per chunk (a stream's, a collection's partitions)
PARTED = (StreamNode, CollectionNode)


class MapNode(Node[list[Any]]):
    """A lazy per-item call of a task over mapped arguments; its value is the list of results.

    Created by ``task.map(...)``. Its length is known only when it runs; on a
    distributed cluster the per-item tasks ``(node.item_name, i)`` (task group
    ``process``) are added to the live scheduler once the mapped upstream values exist,
    and the list is ``node.key`` (task group ``process.map``).
    """

    __slots__ = ("_batch", "_concurrency", "_item_name", "_ratio")

    _args: tuple[Slot, ...]
    _kwargs: dict[str, Slot]
    _ratio: float
    _batch: int | str | None
    _concurrency: int | None
    _item_name: str

    def __init__(
        self,
        task: Task,
        args: tuple[Slot, ...],
        kwargs: dict[str, Slot],
        wait_for: tuple[Node, ...] = (),
        *,
        min_success_ratio: float = 1.0,
        batch_size: int | str | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        # set first: they are part of a pure node's key
        object.__setattr__(self, "_ratio", float(min_success_ratio))
        object.__setattr__(self, "_batch", batch_size)
        object.__setattr__(self, "_concurrency", max_concurrency)
        super().__init__(task, args, kwargs, wait_for)

    def _token_options(self) -> tuple:
        return (self._ratio, self._batch, self._concurrency)

    def _set_key(self, name: str, token: str) -> None:
        # the list and the items are two task groups: "process.map" and "process"
        object.__setattr__(self, "_key", f"{name}.map-{token}")
        object.__setattr__(self, "_item_name", f"{name}-{token}")

    @property
    def item_name(self) -> str:
        """The name of the per-item tasks: item ``i`` is ``(item_name, i)``.

        Nested under a flatten or a sub-flow per item, items are ``(item_name, i, j)``.
        The map's own key (:attr:`key`) is the key of its list.
        """
        return self._item_name

    @property
    def min_success_ratio(self) -> float:
        """Fraction of items that must succeed for the list to be returned (default 1)."""
        return self._ratio

    @property
    def max_concurrency(self) -> int | None:
        """At most this many items of the map run at once, cluster-wide (None: no limit)."""
        return self._concurrency

    @property
    def batch_size(self) -> int | str | None:
        """Items per scheduler task (None: one task per item; ``"auto"``)."""
        return self._batch

    @property
    def args(self) -> tuple[Slot, ...]:
        """The positional arguments, each mapped over or static."""
        return self._args

    @property
    def kwargs(self) -> Mapping[str, Slot]:
        """The keyword arguments, each mapped over or static (not to be changed)."""
        return self._kwargs

    @property
    def slots(self) -> tuple[Slot, ...]:
        """Every argument, positional then keyword."""
        return (*self._args, *self._kwargs.values())

    @property
    def item_waits(self) -> tuple[MapNode, ...]:
        """The maps in ``wait_for`` that this map's items wait for item by item: item
        ``i`` waits for their item ``i`` only (not for a sub-flow run per item)."""
        if isinstance(self, SubflowMapNode):
            return ()
        return tuple(n for n in self._wait_for if isinstance(n, MapNode))

    @property
    def whole_waits(self) -> tuple[Node, ...]:
        """The nodes in ``wait_for`` that every item waits for as a whole."""
        per_item = self.item_waits
        return tuple(n for n in self._wait_for if n not in per_item)

    def __repr__(self) -> str:
        return f"<MapNode {self._key}: {self.name}.map()>"


class FlattenNode(Node[list[Any]]):
    """``flatten(x)``: the elements of ``x``'s items, in order; made by :func:`dynflow.flatten`.

    Used whole, its value is the concatenated list. Mapped over (``g.map(flatten(m))``
    with ``m`` a map node), ``g`` expands once per item of ``m`` as soon as that item is
    done, on the cluster: the per-parent lists are never concatenated first.
    """

    __slots__ = ()

    @property
    def source(self) -> Node:
        """The node whose items are flattened."""
        return self._args[0]


class KeyNode(Node[Any]):
    """A node standing for a key that already exists on the cluster (no task of its own).

    Used when a sub-flow is built on a worker, per item, to refer to the values around
    it: the item itself and the flow's unmapped arguments.
    """

    __slots__ = ()

    def __init__(self, task: Task, key: Any) -> None:
        object.__setattr__(self, "_task", task)
        object.__setattr__(self, "_args", ())
        object.__setattr__(self, "_kwargs", {})
        object.__setattr__(self, "_wait_for", ())
        object.__setattr__(self, "_key", key)


class SubflowMapNode(MapNode):
    """``flow.map(...)``: a whole sub-flow per item; its value is the list of their outputs."""

    __slots__ = ("_flow",)

    _flow: Flow[..., Any]

    def __init__(
        self,
        flow: Flow[..., Any],
        task: Task,
        args: tuple[Slot, ...],
        kwargs: dict[str, Slot],
        wait_for: tuple[Node, ...] = (),
        *,
        min_success_ratio: float = 1.0,
    ) -> None:
        object.__setattr__(self, "_flow", flow)
        super().__init__(task, args, kwargs, wait_for, min_success_ratio=min_success_ratio)

    @property
    def flow(self) -> Flow[..., Any]:
        """The flow run per item."""
        return self._flow

    def __repr__(self) -> str:
        return f"<MapNode {self._key}: {self.name}.map() (flow)>"


class AllowFailureNode(Node[Any]):
    """``allow_failure(x)``: ``x``'s value, or exception objects where it failed (a map's
    list: in place of each failed item)."""

    __slots__ = ()

    @property
    def source(self) -> Node:
        """The node whose failures are allowed."""
        return self._args[0]


class unmapped(Generic[T]):  # noqa: N801 - lower case like Prefect's, it reads as a marker in calls
    """Mark an argument of ``task.map`` as static: every item receives the same value.

    Parameters
    ----------
    value : object
        Passed whole to every item; a node (or a structure holding nodes) is computed
        once, and its value is passed.

    Examples
    --------
    >>> import dynflow as df
    >>> @df.task
    ... def scale(x, factor):
    ...     return x * factor
    >>> scale.map([1, 2, 3], factor=df.unmapped([10])).compute(scheduler="sync")
    [[10], [10, 10], [10, 10, 10]]
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"unmapped({self.value!r})"


class quote(Generic[T]):  # noqa: N801 - lower case like Prefect's ``quote``, a marker in a return
    """Mark a task's return value as a value: the dask collections inside it are
    returned as objects, not computed in the task's place.

    A task whose function returns a dask collection (``dask.delayed``, a dask array or
    data frame...), or a container holding some, has that graph run in its place: its
    value is the graph's value (a *dynamic task*). ``return df.quote(obj)`` returns
    ``obj`` itself instead (the name, and the idea, are Prefect's
    ``prefect.utilities.annotations.quote``). Dynflow nodes cannot be quoted: they are
    descriptions of work to run, not values, and do not travel between processes.

    Parameters
    ----------
    value : object
        Returned unchanged, as the task's value; it must pickle.

    Raises
    ------
    TypeError
        ``value`` is or holds a dynflow node.

    Examples
    --------
    >>> import dask, dynflow as df
    >>> @df.task
    ... def build(n):
    ...     return df.quote(dask.delayed(sum)(range(n)))
    >>> build(4).compute(scheduler="sync").compute()
    6
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        if find_nodes(value):
            raise TypeError(
                "quote() is for dask collections: a dynflow node is run where a task "
                "returns it, and cannot be returned as an object"
            )
        self.value = value

    def __repr__(self) -> str:
        return f"quote({self.value!r})"


def set_flow_name(node: Node, name: str) -> None:
    """Mark ``node`` as the output of flow ``name`` (:attr:`Node.flow_name`): runs of it
    are named after the flow. The one change made to a node after it was built, by
    ``flow.build``."""
    object.__setattr__(node, "_flow_name", name)


# ------------------------------------------------------------------ traversal
def _is_node(obj: Any) -> bool:
    return isinstance(obj, (Node, unmapped))


def replace_nodes(obj: Any, fn: Callable[[Node], Any], spec: bool = False) -> Any:
    """``obj`` with every node in it replaced by ``fn(node)``; containers keep their type.

    ``spec=True``: ``fn`` gives task-spec references, and the containers holding them
    become task-spec containers (see :func:`dynflow._containers.substitute`).
    """

    def leaf(o: Any) -> Any:
        if isinstance(o, unmapped):
            return unmapped(replace_nodes(o.value, fn))
        return fn(o)

    return substitute(obj, _is_node, leaf, spec)


def find_nodes(obj: Any) -> list[Node]:
    """Every node in ``obj``, in order of appearance (containers are searched)."""
    found: list[Node] = []
    for leaf in find(obj, _is_node):
        if isinstance(leaf, unmapped):
            found += find_nodes(leaf.value)
        else:
            found.append(leaf)
    return found


def topological(outputs: Sequence[Node]) -> list[Node]:
    """All nodes the outputs need, each after its dependencies."""
    order: list[Node] = []
    done: set[str] = set()
    stack: list[tuple[Node, bool]] = [(n, False) for n in reversed(outputs)]
    while stack:
        node, expanded = stack.pop()
        if node.key in done:
            continue
        if expanded:
            done.add(node.key)
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((d, False) for d in reversed(node.dependencies) if d.key not in done)
    return order


# shown and pickled as dynflow.<name>; their examples are tested here
__test__ = public(FlattenNode, MapNode, Node, quote, unmapped)
