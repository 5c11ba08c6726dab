"""An object as its document shows it: its state with its parts folded in, and its place.

For each object whose document must be rewritten, :func:`assemble` reads the current
states of the object and of its parts from RelStorage (nearest parts first, within a
budget), converts them with the same converter as every record, folds the parts in
(:mod:`esindexer.objects.fold`) and adds its place from the graph. An object no longer in
the tree (removed, moved under something that is not a container) comes back as
:class:`Gone`: its document is deleted.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from typing import Any, NamedTuple, Protocol

import orjson

from esindexer.convert.jsonifier import Decoded, Jsonifier, Kind
from esindexer.objects.fold import NotFoldable, Parts, fold
from esindexer.objects.store import GraphStore, Node

log = logging.getLogger(__name__)

#: Most parts folded into one document, and most bytes of their pickles: a folder with
#: thousands of buckets or a tool holding a registry stays one bounded document.
MAX_PARTS = 256
MAX_PART_BYTES = 4 * 1024 * 1024


@dataclass
class ObjectView:
    """One object document's content before it is shaped."""

    zoid: int
    tid: int  #: the tid of the object's own record (never above its current tid)
    class_name: str
    state: Any
    name: str | None
    path: str
    parent: int | None
    depth: int
    parts: list[int] = field(default_factory=list)
    parts_omitted: int = 0
    #: the newest tid among its folded parts (0: none): a part's change is the object's change
    parts_tid: int = 0
    #: ``state`` is unpickled states (:class:`Decoded`: the object's, its parts folded in),
    #: not JSON values; ``json_state`` gives it as JSON values (None: not convertible)
    decoded: bool = False
    json_state: Callable[[], Any] | None = None

    @property
    def ancestors(self) -> list[str]:
        """The paths of every container above: ``/a/b/c`` -> ``["/", "/a", "/a/b"]``."""
        if self.path == "/":
            return []
        names = self.path.strip("/").split("/")
        return ["/"] + ["/" + "/".join(names[:i]) for i in range(1, len(names))]


@dataclass(frozen=True)
class Gone:
    """An object whose document must go: no longer in the tree (or its record is gone)."""

    zoid: int


def _nearest_parts(root: int, parts: set[int], edges: dict[int, list[int]],
                   sizes: dict[int, int]) -> tuple[list[int], int]:
    """Parts in breadth-first order from the object, within the budget; and how many are left."""
    chosen: list[int] = []
    seen = {root}
    frontier = deque([root])
    total = 0
    while frontier:
        src = frontier.popleft()
        for dst in edges.get(src, ()):
            if dst in parts and dst not in seen:
                seen.add(dst)
                size = sizes.get(dst, 0)
                if len(chosen) >= MAX_PARTS or total + size > MAX_PART_BYTES:
                    continue
                chosen.append(dst)
                total += size
                frontier.append(dst)
    return chosen, len(parts) - len(chosen)


def _convert(jsonifier: Jsonifier, zoid: int, data: bytes | None) -> tuple[str, Any] | None:
    if data is None:
        return None
    conversion = jsonifier.convert(zoid, data)
    if conversion.kind is not Kind.OK or conversion.json_text is None or conversion.class_name is None:
        return None
    return conversion.class_name, orjson.loads(conversion.json_text)


class States(Protocol):
    """Where current states come from (:class:`esindexer.source.pg.CurrentStates`)."""

    def states(self, zoids: list[int]) -> dict[int, tuple[int, bytes | None]]: ...

    def bounded(self, zoids: list[int], limit: int) -> dict[int, tuple[int, int, bytes | None]]: ...


#: Bytes of pickles held at once while assembling (at least one object at a time).
READ_BYTES = 64 * 1024 * 1024


@dataclass
class Group:
    """Objects read together (:func:`read_groups`): their place, chosen parts and current
    states; built into views by :func:`build` (no database access)."""

    live: list[int]
    nodes: dict[int, Node]
    parts_of: dict[int, list[int]]
    chosen_of: dict[int, list[int]]
    #: ``zoid -> (tid, pickle)`` of the objects and their chosen parts
    states: dict[int, tuple[int, bytes | None]] = field(default_factory=dict)
    #: objects whose documents go (no longer in the tree), before any state is read
    gone: list[int] = field(default_factory=list)


def read_groups(zoids: list[int], store: GraphStore, source: States,
                lock: AbstractContextManager[Any] | None = None) -> Iterator[Group]:
    """What :func:`build` needs for ``zoids``, in groups of about :data:`READ_BYTES` of
    pickles (a thousand objects with large parts are not all held at once). ``lock`` is
    held around each read (the graph's connection is shared), not between groups."""
    guard = lock if lock is not None else nullcontext()
    with guard:
        nodes = store.nodes(zoids)
    live = [z for z in zoids if z in nodes and nodes[z].in_tree]
    gone = [z for z in zoids if z not in nodes or not nodes[z].in_tree]
    if gone:
        yield Group([], {}, {}, {}, gone=gone)
    if not live:
        return
    with guard:
        parts_of = store.parts(live)
        wanted = live + sorted({p for ps in parts_of.values() for p in ps})
        # One read for every size and every small state (most records): at most half of
        # READ_BYTES held however many there are; larger states are read per group below.
        inline = source.bounded(wanted, max(1, READ_BYTES // (2 * len(wanted))))
        sizes = {z: n for z, (_t, n, _d) in inline.items()}
        chosen_of: dict[int, list[int]] = {}
        over = []  # objects whose parts exceed the budget: the nearest are chosen, which needs the edges
        for zoid in live:
            candidates = parts_of.get(zoid, [])
            if candidates and (len(candidates) > MAX_PARTS or sum(map(sizes.get, candidates, repeat(0))) > MAX_PART_BYTES):
                over.append(zoid)
            else:
                chosen_of[zoid] = candidates
        if over:
            edges = store.edges_from(over + [p for zoid in over for p in parts_of[zoid]])
            for zoid in over:
                chosen_of[zoid] = _nearest_parts(zoid, set(parts_of[zoid]), edges, sizes)[0]
    group: list[int] = []
    held = 0
    for zoid in live:
        group.append(zoid)
        chosen = chosen_of[zoid]
        held += sizes.get(zoid, 0) + (sum(map(sizes.get, chosen, repeat(0))) if chosen else 0)
        if held >= READ_BYTES or zoid == live[-1]:
            parts = sorted({p for z in group for p in chosen_of[z]})
            states, large, large_parts = _inline_states(inline, group, parts)
            if large or large_parts:
                with guard:
                    states.update(source.states(large))
                    states.update((z, (t, d)) for z, (t, _n, d) in source.bounded(large_parts, MAX_PART_BYTES).items())
            yield Group(group, nodes, parts_of, chosen_of, states)
            group, held = [], 0


def _inline_states(inline: dict[int, tuple[int, int, bytes | None]], objects: list[int],
                   parts: list[int]) -> tuple[dict[int, tuple[int, bytes | None]], list[int], list[int]]:
    """``zoid -> (tid, pickle)`` of ``objects`` and ``parts`` read inline, and the objects and
    parts whose states were too large to be (a record missing from ``inline`` is gone: none)."""
    states: dict[int, tuple[int, bytes | None]] = {}
    large: tuple[list[int], list[int]] = ([], [])
    for which, zoids in enumerate((objects, parts)):
        for zoid in zoids:
            got = inline.get(zoid)
            if got is None:
                continue
            tid, size, data = got
            if data is None and size > 0:  # not read inline: its size is over the inline bound
                large[which].append(zoid)
            else:
                states[zoid] = (tid, data)
    return states, large[0], large[1]


def assemble(zoids: list[int], store: GraphStore, source: States, jsonifier: Jsonifier) -> list[ObjectView | Gone]:
    """The current content of each of ``zoids`` (objects whose documents changed)."""
    return [view for group in read_groups(zoids, store, source) for view in build(group, jsonifier)]


def build(group: Group, jsonifier: Jsonifier) -> Iterator[ObjectView | Gone]:
    """The views of one group read by :func:`read_groups`, one at a time.

    The object and its parts are only decoded (:meth:`Jsonifier.decode`) and folded as
    unpickled states: the builder shapes the result straight into the document, as it
    does a record document's. Where a record does not decode that way, or the builder is
    not sure of the result (:attr:`ObjectView.json_state`), they are converted to JSON
    values and folded again: the same document either way.

    One at a time, so that each view's unpickled states are freed once its document is
    shaped: a group's thousand views held at once kept tens of thousands of containers
    alive, and the collector walked them again and again (1.0-1.35 s of a 10^5-object
    backfill's 8 s of writing, docs/performance.md, ninth pass).
    """
    for zoid in group.gone:
        yield Gone(zoid)
    states, nodes = group.states, group.nodes
    for zoid in group.live:
        node = nodes[zoid]
        tid_data = states.get(zoid)
        if tid_data is None:
            yield Gone(zoid)  # the record itself is gone (a deletion not yet applied)
            continue
        tid, data = tid_data
        path = node.path or "/"
        name = node.name or path.rsplit("/", 1)[-1]
        chosen = group.chosen_of[zoid]
        candidates = len(group.parts_of.get(zoid, []))

        json_state = partial(_assembled, partial(_convert, jsonifier), data, chosen, states, zoid)

        try:
            done = _assembled(partial(_decoded, jsonifier), data, chosen, states, zoid, decoded=True)
        except _NotDecoded:
            done = None
        if done is not None:
            yield ObjectView(class_name=done.class_name, state=done.state, decoded=True,
                             json_state=partial(_state_of, json_state),
                             parts=done.folded, parts_tid=done.newest, parts_omitted=candidates - len(done.folded),
                             zoid=zoid, tid=tid, name=name, path=path, parent=node.parent, depth=node.depth or 0)
            continue
        done = json_state()
        if done is None:
            continue  # not convertible: the reader dead-letters the record; its document stays
        yield ObjectView(class_name=done.class_name, state=done.state, parts=done.folded,
                         parts_tid=done.newest, parts_omitted=candidates - len(done.folded),
                         zoid=zoid, tid=tid, name=name, path=path, parent=node.parent, depth=node.depth or 0)


class _NotDecoded(Exception):
    """A record that :meth:`Jsonifier.decode` gives as a conversion: fold JSON values."""


class _Assembled(NamedTuple):
    class_name: str
    state: Any
    folded: list[int]
    newest: int


def _decoded(jsonifier: Jsonifier, zoid: int, data: bytes | None) -> tuple[str, Any] | None:
    if data is None:
        return None
    decoded = jsonifier.decode(zoid, data)
    if type(decoded) is not Decoded:
        raise _NotDecoded
    return decoded.class_name, decoded.state


def _assembled(read: Callable[[int, bytes | None], tuple[str, Any] | None], data: bytes | None, chosen: list[int],
               states: dict[int, tuple[int, bytes | None]], zoid: int, decoded: bool = False) -> _Assembled | None:
    """The object's state with its chosen parts folded in, each record read by ``read``."""
    own = read(zoid, data)
    if own is None:
        return None
    parts: Parts = {}
    newest = 0
    for part in chosen:
        got = states.get(part)
        got_part = read(part, got[1]) if got else None
        if got is None or got_part is None:
            continue  # gone meanwhile, larger than the budget, or not convertible: left a reference
        parts[part] = got_part
        newest = max(newest, got[0])
    if not parts:
        return _Assembled(own[0], own[1], [], newest)
    try:
        folded = fold(own[1], parts, decoded=decoded)
    except NotFoldable:
        raise _NotDecoded from None
    return _Assembled(own[0], folded.state, sorted(folded.folded), newest)


def _state_of(assemble_json: Callable[[], _Assembled | None]) -> Any:
    """The JSON values of an object assembled from its records' conversions (None: not convertible)."""
    assembled = assemble_json()
    return assembled.state if assembled is not None else None
