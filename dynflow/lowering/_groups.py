"""Grouping maps into expansions: which maps share an expander, and at which level."""

from __future__ import annotations

from dynflow.graph._node import (
    PARTED,
    FlattenNode,
    MapNode,
    Node,
    SubflowMapNode,
    find_nodes,
)

__all__ = ["ExpansionGroups"]


def _itemwise(node: MapNode) -> bool:
    """Whether ``node``'s single items can be read: one task per item, or ``"adaptive"``
    (kept to one task per item where a reader needs that: :attr:`ExpansionGroups.per_item`)."""
    return node.batch_size is None or node.batch_size == "adaptive"


class ExpansionGroups:
    """Which maps expand together, and at which level, without creating cycles.

    Visit the nodes in topological order (:meth:`visit`). A map joins the group of a map
    node it maps over (``"stage"``: item ``i`` reads item ``i``) or waits for
    (``"wait"``: item ``i`` waits for item ``i``), or starts a child
    group of the group of ``m`` when it maps over ``flatten(m)`` (``"nest"``). It does
    not join when that would make an expander depend, through static arguments,
    ``wait_for`` or other sources, on one of its own group's collectors (a cycle), nor
    at a nested level when another mapped argument is not per parent item (it is zipped
    with all the parents' items together); then the upstream value is read whole, raw.

    Groups are numbered in the order they are made; merged groups keep the number they
    merged into (:meth:`find`, union-find).
    """

    def __init__(self) -> None:
        self.group: dict[str, int] = {}  # map key -> group id (follow `alias`)
        self.alias: dict[int, int] = {}  # merged group id -> the id it merged into
        self.parent: dict[int, int | None] = {}  # group -> parent group (None: top)
        self.members: dict[int, list[str]] = {}  # group -> its maps' keys
        self.ext: dict[int, set[str]] = {}  # group -> map keys its expander needs
        self.upstream: dict[str, frozenset[str]] = {}  # node key -> map keys it needs
        self.how: dict[tuple[str, int], str] = {}  # (map key, slot) -> "stage" / "nest"
        self.pos: dict[str, int] = {}  # map key -> position in topological order
        # "adaptive" maps whose items are read one by one (see `visit`): one task per item
        self.per_item: set[str] = set()

    def find(self, f: int) -> int:
        while f in self.alias:
            f = self.alias[f]
        return f

    def parent_of(self, f: int) -> int | None:
        p = self.parent[self.find(f)]
        return None if p is None else self.find(p)

    def root(self, f: int) -> int:
        f = self.find(f)
        while (p := self.parent_of(f)) is not None:
            f = p
        return f

    def closure(self, root: int) -> tuple[set[str], set[str]]:
        """Members and needs of ``root`` and every group below it."""
        members: set[str] = set()
        ext: set[str] = set()
        for f in self.members:
            if self.root(f) == root:
                members.update(self.members[f])
                ext |= self.ext[f]
        return members, ext

    def visit(self, node: Node) -> None:
        up: set[str] = set()
        for d in node.dependencies:
            up |= self.upstream[d.key]
        if isinstance(node, PARTED):
            # a group of its own, at top level, whose "items" are its chunks: the maps
            # over it nest per chunk, as maps over flatten(m) nest per item of m
            self.upstream[node.key] = frozenset(up | {node.key})
            self.pos[node.key] = len(self.pos)
            fid = len(self.parent)
            self.parent[fid] = None
            self.members[fid] = [node.key]
            self.ext[fid] = set(up)
            self.group[node.key] = fid
            return
        if not isinstance(node, MapNode):
            self.upstream[node.key] = frozenset(up)
            return
        self.upstream[node.key] = frozenset(up | {node.key})
        self.pos[node.key] = len(self.pos)

        # candidates: mapped slots, then the maps in wait_for waited for item by item
        # (index len(slots) + j), which join like a mapped map but are not passed
        cands: dict[int, tuple[str, int | None]] = {}  # index -> (how, level)
        for j, w in enumerate(node.item_waits):
            if _itemwise(w):
                cands[len(node.slots) + j] = ("wait", self.parent_of(self.group[w.key]))
        for i, s in enumerate(node.slots):
            if not s.mapped:
                continue
            # a batched map's items are read from its batches (not by a sub-flow, which
            # is built on a worker that cannot know an "auto" batch size)
            if isinstance(s.value, MapNode) and (
                _itemwise(s.value) or not isinstance(node, SubflowMapNode)
            ):
                cands[i] = ("stage", self.parent_of(self.group[s.value.key]))
            elif isinstance(s.value, PARTED):  # a stream's or a collection's chunks
                cands[i] = ("nest", self.find(self.group[s.value.key]))
            elif (
                isinstance(s.value, FlattenNode)
                and isinstance(s.value.source, MapNode)
                and _itemwise(s.value.source)
            ):
                cands[i] = ("nest", self.find(self.group[s.value.source.key]))
        others = [n for i, s in enumerate(node.slots) for n in find_nodes(s) if i not in cands]
        others += node.whole_waits
        others += [w for j, w in enumerate(node.item_waits) if len(node.slots) + j not in cands]
        base: set[str] = set()
        for n in others:
            base |= self.upstream[n.key]

        mapped = {i for i, s in enumerate(node.slots) if s.mapped}
        joinable = dict(cands)
        while True:
            level = next(iter(joinable.values()))[1] if joinable else None
            joinable = {i: c for i, c in joinable.items() if c[1] == level}
            if level is not None and mapped - joinable.keys():
                # a nested expansion runs per parent item: another mapped argument (a
                # concrete list, a whole value) is as long as all parents' items together
                joinable = {i: c for i, c in cands.items() if c[1] is None}
                continue
            ext = set(base)
            for i in cands.keys() - joinable.keys():
                ext |= self.upstream[self._value(node, i).key]
            members = {node.key}
            for i in joinable:
                root = self.root(self._group_of_slot(node, i))
                m, e = self.closure(root)
                members |= m
                ext |= e
            bad = {
                i
                for i in joinable
                if self.closure(self.root(self._group_of_slot(node, i)))[0] & ext
            }
            if not bad:
                break
            for i in bad:
                del joinable[i]

        fid = len(self.parent)
        self.parent[fid] = level if joinable else None
        self.members[fid] = [node.key]
        self.ext[fid] = ext - members
        self.group[node.key] = fid
        for i, (how, _) in joinable.items():
            self.how[(node.key, i)] = how
            if how == "nest" or (how == "stage" and isinstance(node, SubflowMapNode)):
                # read one item at a time where the batch size cannot be known (a
                # nested expansion's sources, a sub-flow built on a worker)
                value = self._value(node, i)
                source = value.source if isinstance(value, FlattenNode) else value
                if isinstance(source, MapNode) and source.batch_size == "adaptive":
                    self.per_item.add(source.key)
            if how in ("stage", "wait"):
                f = self.find(self.group[self._value(node, i).key])
                if f != fid:
                    self.members[fid] = self.members.pop(f) + self.members[fid]
                    self.ext[fid] |= self.ext.pop(f)
                    self.alias[f] = fid

    @staticmethod
    def _value(node: MapNode, i: int) -> Node:
        """Candidate ``i``: a mapped slot's node, or a map ``node`` waits for per item."""
        if i < len(node.slots):
            return node.slots[i].value
        return node.item_waits[i - len(node.slots)]

    def _group_of_slot(self, node: MapNode, i: int) -> int:
        v = self._value(node, i)
        return self.group[(v.source if isinstance(v, FlattenNode) else v).key]

    def joined(self, node: MapNode) -> list[tuple[str, Node]]:
        """How map ``node`` joined its group: ``[(how, upstream node), ...]``, ``how`` one
        of ``"stage"``/``"wait"`` (``node``'s items are the map's items, index for index),
        ``"nest"`` (it maps over ``flatten(m)``, and ``m`` is given: ``node``'s items
        are the elements of ``m``'s) or ``"chunks"`` (it maps over a stream or a dask
        collection, given: its items are indexed ``(chunk, j)``); none: ``node`` is a
        top-level map whose items are numbered 0, 1, ..."""
        out: list[tuple[str, Node]] = []
        for i in range(len(node.slots) + len(node.item_waits)):
            how = self.how.get((node.key, i))
            if how is None:
                continue
            up = self._value(node, i)
            if isinstance(up, PARTED):  # nested per chunk of a stream or collection
                out.append(("chunks", up))
                continue
            if isinstance(up, FlattenNode):  # "nest"
                up = up.source
            assert isinstance(up, MapNode), "a map joins maps, or flatten(map)"
            out.append((how, up))
        return out

    def groups(self) -> list[int]:
        return list(self.members)

    def children(self, f: int) -> list[int]:
        return [g for g in self.members if self.parent_of(g) == f]

    def depth_chain(self, f: int) -> list[int]:
        """``f`` and its ancestors, innermost first."""
        chain = [self.find(f)]
        while (p := self.parent_of(chain[-1])) is not None:
            chain.append(p)
        return chain
