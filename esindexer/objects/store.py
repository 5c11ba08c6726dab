"""The object graph in PostgreSQL: apply a batch of records, learn which documents changed.

:meth:`GraphStore.apply` writes the records' names and references, then recomputes, with
set-based statements (:mod:`esindexer.objects.graph_sql`), exactly what those changes can
affect: the owners of the unnamed records downstream of them, and the place in the tree
of the named records whose holders changed, with their whole subtrees (a move or rename
re-paths everything below). It returns the objects whose documents must be rewritten and
records them as *dirty* in the same transaction; the pipeline removes them once
Elasticsearch accepted the documents (:meth:`settle`), so a crash in between loses none.

Memory stays bounded: nothing of the graph is kept in the process; one batch's records
and the zoids its changes reach are all it holds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg2.extras

from esindexer.objects import graph_sql as q
from esindexer.objects.edges import ROOT_ZOID, Edge

log = logging.getLogger(__name__)

#: Deeper than this is a cycle or a broken tree, not an application: placement stops there.
MAX_DEPTH = 1_000


@dataclass(frozen=True, slots=True)
class RecordFacts:
    """What the graph needs of one record's current state."""

    zoid: int
    tid: int
    class_name: str | None
    name: str | None
    edges: list[Edge]


@dataclass(frozen=True, slots=True)
class Node:
    """A record's row: its kind and, for a tree node, its place."""

    zoid: int
    tid: int
    class_name: str | None
    name: str | None
    owner: int | None
    in_tree: bool
    parent: int | None
    depth: int | None
    path: str | None


def ensure_tables(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute(q.CREATE)
    conn.commit()


class GraphStore:
    """One client id's graph, used from the reader and the committer (a lock serialises them)."""

    def __init__(self, conn: Any, client_id: str, is_object_class: Callable[[str | None], bool]):
        self.conn = conn
        self.client_id = client_id
        self.is_object_class = is_object_class
        self.lock = threading.RLock()

    # -- reading ---------------------------------------------------------------------------

    def applied_tid(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT tid FROM {q.APPLIED} WHERE client_id = %s", (self.client_id,))
            row = cur.fetchone()
        self.conn.rollback()
        return int(row[0]) if row else 0

    def nodes(self, zoids: Iterable[int]) -> dict[int, Node]:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT zoid, tid, class_name, name, owner, in_tree, parent, depth, path FROM {q.NODES} "
                        "WHERE client_id = %s AND zoid = ANY(%s)", (self.client_id, list(zoids)))
            rows = {int(r[0]): Node(*r) for r in cur.fetchall()}
        self.conn.rollback()
        return rows

    def parts(self, owners: Iterable[int]) -> dict[int, list[int]]:
        """``owner -> its parts`` (unordered)."""
        out: dict[int, list[int]] = {}
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT owner, zoid FROM {q.NODES} WHERE client_id = %s AND owner = ANY(%s)",
                        (self.client_id, list(owners)))
            for owner, zoid in cur.fetchall():
                out.setdefault(int(owner), []).append(int(zoid))
        self.conn.rollback()
        return out

    def edges_from(self, zoids: Iterable[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT src, dst FROM {q.EDGES} WHERE client_id = %s AND src = ANY(%s)",
                        (self.client_id, list(zoids)))
            for src, dst in cur.fetchall():
                out.setdefault(int(src), []).append(int(dst))
        self.conn.rollback()
        return out

    def dirty(self) -> list[int]:
        """Objects whose documents a crash left unwritten (rebuilt at start)."""
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT zoid FROM {q.DIRTY} WHERE client_id = %s ORDER BY zoid", (self.client_id,))
            rows = [int(r[0]) for r in cur.fetchall()]
        self.conn.rollback()
        return rows

    # -- writing ---------------------------------------------------------------------------

    def settle(self, cur: Any, zoids: list[int], as_of: int) -> None:
        """Forget dirty rows the index now reflects (in the caller's progress transaction);
        a row dirtied again by a later batch (a greater ``as_of``) stays."""
        if zoids:
            cur.execute(f"DELETE FROM {q.DIRTY} WHERE client_id = %s AND zoid = ANY(%s) AND as_of <= %s",
                        (self.client_id, zoids, as_of))

    def apply(self, records: list[RecordFacts], deleted: list[int], tid: int) -> tuple[list[int], int]:
        """Apply one batch; returns the objects whose documents changed and the version
        their documents take (the graph's applied tid: it never goes down)."""
        with self.lock:
            try:
                with self.conn.cursor() as cur:
                    dirty = self._apply(cur, records, deleted)
                    cur.execute(f"INSERT INTO {q.APPLIED} (client_id, tid) VALUES (%s, %s) ON CONFLICT (client_id) "
                                f"DO UPDATE SET tid = greatest({q.APPLIED}.tid, excluded.tid) RETURNING tid",
                                (self.client_id, tid))
                    version = int(cur.fetchone()[0])
                    if dirty:
                        psycopg2.extras.execute_values(
                            cur, f"INSERT INTO {q.DIRTY} (client_id, zoid, as_of) VALUES %s ON CONFLICT "
                            f"(client_id, zoid) DO UPDATE SET as_of = greatest({q.DIRTY}.as_of, excluded.as_of)",
                            [(self.client_id, z, version) for z in dirty], page_size=1000)
                self.conn.commit()
            except BaseException:
                self.conn.rollback()
                raise
        return dirty, version

    def _apply(self, cur: Any, records: list[RecordFacts], deleted: list[int]) -> list[int]:
        c = self.client_id
        latest: dict[int, RecordFacts] = {}
        for facts in records:  # the newest state of each record in the batch
            if facts.zoid not in latest or latest[facts.zoid].tid <= facts.tid:
                latest[facts.zoid] = facts
        gone = set(deleted) - set(latest)
        cur.execute(f"SELECT zoid, tid, name, owner, in_tree, class_name FROM {q.NODES} "
                    "WHERE client_id = %s AND zoid = ANY(%s)", (c, list(latest) + list(gone)))
        old = {int(r[0]): r for r in cur.fetchall()}
        changed = [f for f in latest.values() if f.zoid not in old or old[f.zoid][1] < f.tid]
        gone = {z for z in gone if z in old}
        touched = [f.zoid for f in changed] + sorted(gone)
        if not touched:
            return []
        cur.execute(f"SELECT src, dst, key FROM {q.EDGES} WHERE client_id = %s AND src = ANY(%s)", (c, touched))
        old_edges = {(int(s), int(d), k) for s, d, k in cur.fetchall()}
        new_edges = {(f.zoid, d, k) for f in changed for d, k in f.edges}
        psycopg2.extras.execute_values(
            cur, f"INSERT INTO {q.NODES} (client_id, zoid, tid, class_name, name) VALUES %s ON CONFLICT "
            "(client_id, zoid) DO UPDATE SET tid = excluded.tid, class_name = excluded.class_name, "
            "name = excluded.name", [(c, f.zoid, f.tid, f.class_name, f.name) for f in changed], page_size=1000)
        if gone:
            cur.execute(f"DELETE FROM {q.NODES} WHERE client_id = %s AND zoid = ANY(%s)", (c, sorted(gone)))
        if old_edges != new_edges:
            cur.execute(f"DELETE FROM {q.EDGES} WHERE client_id = %s AND src = ANY(%s)", (c, touched))
            psycopg2.extras.execute_values(cur, f"INSERT INTO {q.EDGES} (client_id, src, dst, key) VALUES %s",
                                           [(c, s, d, k) for s, d, k in new_edges], page_size=2000)
        renamed = [f.zoid for f in changed if f.zoid not in old or old[f.zoid][2] != f.name]
        unnamed_changed = [f.zoid for f in changed if f.name is None]
        diff = old_edges ^ new_edges
        seeds = sorted({d for _s, d, _k in old_edges | new_edges} | set(renamed) | set(unnamed_changed))

        # 1. owners of the unnamed records downstream of the change
        cur.execute(q.DOWNSTREAM, {"c": c, "seeds": seeds})
        cur.execute(q.OWNERS, {"c": c})
        cur.execute("SELECT old, new FROM obj_owners WHERE old IS DISTINCT FROM new")
        owner_moves = cur.fetchall()
        cur.execute(q.OWNER_CHANGED_CHILDREN, {"c": c})
        held_by_moved_parts = [int(r[0]) for r in cur.fetchall()]

        # 2. the tree: records whose holders changed, renamed, new or gone, and their subtrees
        diff_dsts = sorted({d for _s, d, k in diff if k is not None})
        cur.execute(f"SELECT zoid FROM {q.NODES} WHERE client_id = %s AND zoid = ANY(%s) AND name = ANY(%s)",
                    (c, diff_dsts, sorted({k for _s, _d, k in diff if k is not None})))
        held = [int(r[0]) for r in cur.fetchall()]
        replace = sorted(set(held) | set(held_by_moved_parts) | set(renamed) | gone)
        root_placed = self._place_root(cur)
        cur.execute(q.SUBTREE, {"c": c, "changed": replace})
        placed_outside = self._place(cur, root_placed)
        cur.execute(q.MOVED, {"c": c})
        moved = {int(r[0]) for r in cur.fetchall()}

        # 3. the documents that change
        candidates = moved | placed_outside | set(root_placed)
        for f in changed:
            if f.name is not None:
                candidates.add(f.zoid)
        for z in touched:
            if z in old and old[z][3] is not None and old[z][3] >= 0:
                candidates.add(int(old[z][3]))
        for before, after in owner_moves:
            candidates.update(o for o in (before, after) if o is not None and o >= 0)
        cur.execute(f"SELECT zoid, owner FROM {q.NODES} WHERE client_id = %s AND zoid = ANY(%s)",
                    (c, [f.zoid for f in changed if f.name is None]))
        candidates.update(int(o) for _z, o in cur.fetchall() if o is not None and o >= 0)
        was_in_tree = {z for z, row in old.items() if row[4]}
        cur.execute(f"SELECT zoid, class_name, in_tree FROM {q.NODES} WHERE client_id = %s AND zoid = ANY(%s)",
                    (c, sorted(candidates)))
        out = [int(z) for z, cls, in_tree in cur.fetchall()
               if (in_tree or z in was_in_tree or z in moved) and self.is_object_class(cls)]
        out += [z for z in gone if z in was_in_tree and self.is_object_class(old[z][5])]
        return sorted(set(out))

    def _place_root(self, cur: Any) -> list[int]:
        cur.execute(f"UPDATE {q.NODES} SET in_tree = true, parent = NULL, depth = 0, path = '/' "
                    "WHERE client_id = %s AND zoid = %s AND NOT in_tree RETURNING zoid", (self.client_id, ROOT_ZOID))
        return [int(r[0]) for r in cur.fetchall()]

    def _place(self, cur: Any, placed: list[int]) -> set[int]:
        """Place the records reset by SUBTREE (and any record their placing attaches) level
        by level; returns those placed that were not in the reset set."""
        cur.execute(q.DEEPEST_CANDIDATE, {"c": self.client_id})
        deepest = cur.fetchone()[0]
        deepest = -1 if deepest is None else int(deepest)
        cur.execute("SELECT zoid FROM obj_replace")
        reset = {int(r[0]) for r in cur.fetchall()}
        outside: set[int] = set()
        depth = 1
        while depth <= MAX_DEPTH and (placed or depth - 1 <= deepest):
            cur.execute(q.PLACE_LEVEL, {"c": self.client_id, "above": depth - 1, "depth": depth, "placed": placed})
            placed = [int(r[0]) for r in cur.fetchall()]
            outside.update(z for z in placed if z not in reset)
            depth += 1
        return outside
