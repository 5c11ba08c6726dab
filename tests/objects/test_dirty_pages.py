"""The objects to write, read a page at a time (:mod:`esindexer.objects.dirtypages`): every
object of the tree while a resolution's mark is set, merged with the dirty rows, each zoid
once, in zoid order, whatever the page size and however the two interleave."""

from __future__ import annotations

import random
from typing import Any

import pytest

from esindexer.objects import dirtypages
from esindexer.objects.edges import RecordFacts
from esindexer.objects.store import GraphStore
from esindexer.source import graph


def is_object(class_name: str | None) -> bool:
    return class_name == "app.Item"


def resolved_tree(conn: Any, seed: int) -> tuple[GraphStore, list[int], int]:
    """A root holding items (zoids spread at random) and parts and other records between
    them; resolved as a backfill does (the tree's mark set). Returns the store, the tree's
    objects and the zoids that are not objects."""
    rng = random.Random(seed)
    graph.forget(conn, "pages")
    conn.commit()
    zoids = rng.sample(range(1, 5_000), 400)
    items, others = sorted(zoids[:250]), sorted(zoids[250:])
    facts = [RecordFacts(0, 5, "persistent.mapping.PersistentMapping", "",
                         [(z, f"i{z}", False) for z in items] + [(z, f"o{z}", False) for z in others[:50]])]
    facts += [RecordFacts(z, 5, "app.Item", f"i{z}", []) for z in items]
    facts += [RecordFacts(z, 5, "app.Other", f"o{z}", []) for z in others[:50]]  # in the tree, not objects
    facts += [RecordFacts(z, 5, "app.Part", None, []) for z in others[50:]]  # unreachable
    store = GraphStore(conn, "pages", is_object)
    store.apply(facts, [], 5, resolve=False)
    count, _version = store.resolve_all(5, quiet=True)
    assert count == len(items)
    return store, items, 5_000


def dirty_rows(conn: Any, zoids: list[int]) -> None:
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {graph.DIRTY} (client_id, zoid, as_of) VALUES ('pages', %s, 5)",
                        [(z,) for z in zoids])
    conn.commit()


def read(pages: Any, size: int) -> list[int]:
    out: list[int] = []
    for page in pages:
        assert page and len(page) <= 2 * size
        assert page == sorted(set(page)) and (not out or page[0] > out[-1])  # each zoid once, in order
        out += page
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_tree_and_the_dirty_rows_are_read_whole_a_page_at_a_time(conn, seed):
    store, items, beyond = resolved_tree(conn, seed)
    rng = random.Random(seed * 7)
    # dirty rows: some the tree's objects too, some not (removed objects), some past its end
    rows = sorted(set(rng.sample(items, 20) + rng.sample(range(1, 5_000), 60) + [beyond + 1, beyond + 9]))
    dirty_rows(conn, rows)
    for size in (1, 2, 3, 7, 16, 249, 250, 251, 1_000):
        assert read(dirtypages.tree_pages(store, size), size) == items
        assert read(dirtypages.dirty_pages(store, size), size) == sorted(set(items) | set(rows)), size
    assert store.dirty() == sorted(set(items) | set(rows))
    assert store.tree_objects() == items

    with conn.cursor() as cur:  # the tree written and settled: only the rows remain
        store.settle(cur, [], 5, whole_tree=True)
    conn.commit()
    for size in (1, 3, 64):
        assert read(dirtypages.dirty_pages(store, size), size) == rows


def test_nothing_dirty_reads_no_page(conn):
    store, _items, _beyond = resolved_tree(conn, 4)
    with conn.cursor() as cur:
        store.settle(cur, [], 5, whole_tree=True)
    conn.commit()
    assert list(dirtypages.dirty_pages(store, 10)) == []
