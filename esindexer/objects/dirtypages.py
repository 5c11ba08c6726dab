"""The objects whose documents are to be written, read a page at a time.

A backfill's resolution makes every object of the tree dirty, with one mark; a crash can
leave as many dirty rows (a folder renamed above a million objects). Holding their zoids
at once grew the process with the tree (167 MiB of peak RSS at 10^6 objects, where
record documents need 66). These functions read them by keyset instead: each page is the
next zoids after the last one handed out, in its own short transaction, so memory stays
one page whatever the tree's size.

The two sources, the tree (while its mark is set) and the dirty rows, are read as two
keyset streams and merged: a page holds the zoids of both up to the smaller of the two
pages' last zoid, so none is skipped and none is handed out twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

from esindexer.source import graph
from esindexer.source.graph import APPLIED, DIRTY, NODES


class Graph(Protocol):
    """What is read here of :class:`esindexer.objects.store.GraphStore` (which uses this module)."""

    conn: Any
    client_id: str
    is_object_class: Callable[[str | None], bool]

    @property
    def lock(self) -> AbstractContextManager[Any]: ...

_TREE_PAGE = (f"SELECT zoid FROM {NODES} WHERE client_id = %s AND zoid > %s AND in_tree "
              "AND class_name = ANY(%s) ORDER BY zoid LIMIT %s")
_DIRTY_PAGE = f"SELECT zoid FROM {DIRTY} WHERE client_id = %s AND zoid > %s ORDER BY zoid LIMIT %s"


def tree_classes(store: Graph) -> list[str]:
    """The classes of the tree's records that get documents (:func:`graph.tree_classes`)."""
    with store.lock, store.conn.cursor() as cur:
        classes = graph.tree_classes(cur, store.client_id, store.is_object_class)
        store.conn.rollback()
    return classes


def tree_pages(store: Graph, size: int) -> Iterator[list[int]]:
    """Every object of the tree, in zoid order, ``size`` at a time."""
    classes = tree_classes(store)
    after = -1
    while True:
        page = _page(store, _TREE_PAGE, (store.client_id, after, classes, size))
        if page:
            yield page
        if len(page) < size:
            return
        after = page[-1]


def _marked_tree_classes(store: Graph) -> list[str] | None:
    """The tree's classes with documents while a resolution's mark is set, else None."""
    with store.lock, store.conn.cursor() as cur:
        cur.execute(f"SELECT tree_dirty_as_of IS NOT NULL FROM {APPLIED} WHERE client_id = %s", (store.client_id,))
        row = cur.fetchone()
        store.conn.rollback()
    return tree_classes(store) if row is not None and row[0] else None


def to_rewrite(store: Graph, size: int) -> tuple[int, Iterator[list[int]]]:
    """What a restart rewrites: how many zoids, and :func:`dirty_pages` of them (the tree's
    mark and classes read once for both)."""
    classes = _marked_tree_classes(store)
    with store.lock, store.conn.cursor() as cur:
        count = graph.documents_to_write(cur, store.client_id, classes)
        store.conn.rollback()
    return count, _dirty_pages(store, size, classes)


def dirty_pages(store: Graph, size: int) -> Iterator[list[int]]:
    """The objects a crash left unwritten, in zoid order, at most ``2 * size`` at a time:
    the dirty rows, and every object of the tree while a resolution's mark is set."""
    return _dirty_pages(store, size, _marked_tree_classes(store))


def _dirty_pages(store: Graph, size: int, classes: list[str] | None) -> Iterator[list[int]]:
    after = -1
    while True:
        tree = [] if classes is None else _page(store, _TREE_PAGE, (store.client_id, after, classes, size))
        rows = _page(store, _DIRTY_PAGE, (store.client_id, after, size))
        # a full page ends where its stream is known: beyond its last zoid, only the other's are
        bound = min(page[-1] if len(page) == size else float("inf") for page in (tree, rows))
        merged = sorted({z for z in tree + rows if z <= bound})
        if merged:
            yield merged
        if bound == float("inf"):
            return
        after = int(bound)


def _page(store: Graph, sql: str, args: tuple[object, ...]) -> list[int]:
    with store.lock, store.conn.cursor() as cur:
        cur.execute(sql, args)
        page = [int(z) for (z,) in cur.fetchall()]
        store.conn.rollback()
    return page
