"""The object graph in PostgreSQL: apply a batch of records, learn which documents changed.

:meth:`GraphStore.apply` writes the records' names and references, then recomputes, with
set-based statements (:mod:`esindexer.objects.graph_sql`), exactly what those changes can
affect: the owners of the unnamed records downstream of them, and the place in the tree
of the named records whose holders changed, with their whole subtrees (a move or rename
re-paths everything below). It returns the objects whose documents must be rewritten and
records them as *dirty* in the same transaction; the pipeline removes them once
Elasticsearch accepted the documents (:meth:`settle`), so a crash in between loses none.

A backfill writes its batches' records into the graph unresolved instead (``resolve=False``);
:meth:`GraphStore.resolve_all` resolves the whole graph at once.

Memory: nothing of the graph is kept in the process; one batch's records and the zoids
its changes reach are all it holds. A whole graph's resolution answers with a count: its
objects are read a page at a time (:mod:`esindexer.objects.dirtypages`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import psycopg2.errors
import psycopg2.extras

from esindexer.objects import dirtypages, unresolved
from esindexer.objects import graph_sql as q
from esindexer.objects.edges import ROOT_ZOID, RecordFacts
from esindexer.objects.unresolved import latest_of
from esindexer.source import graph
from esindexer.source.graph import APPLIED, DIRTY, EDGES, GRAPH_LOCK_CLASS, NODES
from esindexer.source.pg import int_array

log = logging.getLogger(__name__)

#: Deeper than this is a cycle or a broken tree, not an application: placement stops there.
MAX_DEPTH = 1_000


class Node(NamedTuple):
    """A record's row: its kind and, for a tree node, its place (a tuple: a thousand are
    read for every request's worth of object documents)."""

    zoid: int
    tid: int
    class_name: str | None
    name: str | None
    owner: int | None
    in_tree: bool
    parent: int | None
    depth: int | None
    path: str | None


make_node = Node._make  # (a row as it is read: no per-field call)


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
            cur.execute(f"SELECT tid FROM {APPLIED} WHERE client_id = %s", (self.client_id,))
            row = cur.fetchone()
        self.conn.rollback()
        return int(row[0]) if row else 0

    def nodes(self, zoids: Iterable[int]) -> dict[int, Node]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT n.zoid, n.tid, n.class_name, n.name, n.owner, n.in_tree, n.parent, n.depth, n.path "
                        f"FROM unnest(%s::bigint[]) z(zoid) JOIN {NODES} n ON n.client_id = %s AND n.zoid = z.zoid",
                        (int_array(zoids), self.client_id))
            rows = {int(r[0]): make_node(r) for r in cur.fetchall()}
        self.conn.rollback()
        return rows

    def parts(self, owners: Iterable[int]) -> dict[int, list[int]]:
        """``owner -> its parts`` (unordered)."""
        out: dict[int, list[int]] = {}
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT n.owner, n.zoid FROM unnest(%s::bigint[]) o(zoid) JOIN {NODES} n "
                        "ON n.client_id = %s AND n.owner = o.zoid", (int_array(owners), self.client_id))
            for owner, zoid in cur.fetchall():
                out.setdefault(int(owner), []).append(int(zoid))
        self.conn.rollback()
        return out

    def edges_from(self, zoids: Iterable[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT e.src, e.dst FROM unnest(%s::bigint[]) z(zoid) JOIN {EDGES} e "
                        "ON e.client_id = %s AND e.src = z.zoid", (int_array(zoids), self.client_id))
            for src, dst in cur.fetchall():
                out.setdefault(int(src), []).append(int(dst))
        self.conn.rollback()
        return out

    def dirty(self) -> list[int]:
        """Objects whose documents a crash left unwritten (rebuilt at start): the dirty rows,
        and every object of the tree while a backfill's resolution is not settled. Whole:
        for checks; the service reads them a page at a time (:mod:`.dirtypages`)."""
        return [z for page in dirtypages.dirty_pages(self, 10_000) for z in page]

    def tree_objects(self) -> list[int]:
        """Every object of the tree, in zoid order (whole: for checks and benchmarks)."""
        return [z for page in dirtypages.tree_pages(self, 10_000) for z in page]

    # -- writing ---------------------------------------------------------------------------

    def settle(self, cur: Any, zoids: list[int], as_of: int, whole_tree: bool = False) -> None:
        """Forget dirty rows the index now reflects (in the caller's progress transaction);
        a row dirtied again by a later batch (a greater ``as_of``) stays. ``whole_tree``:
        every object of the tree was written at ``as_of`` (a resolution's, or a restart's
        rewrite of it), so the tree is no longer dirty as of then."""
        if whole_tree:
            cur.execute(f"UPDATE {APPLIED} SET tree_dirty_as_of = NULL WHERE client_id = %s "
                        "AND tree_dirty_as_of <= %s", (self.client_id, as_of))
        if zoids:
            cur.execute(f"DELETE FROM {DIRTY} d USING unnest(%s::bigint[]) z(zoid) "
                        "WHERE d.client_id = %s AND d.zoid = z.zoid AND d.as_of <= %s", (int_array(zoids), self.client_id, as_of))

    def complete(self) -> bool:
        """Whether the graph is resolved (False while a backfill writes it unresolved)."""
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT complete FROM {APPLIED} WHERE client_id = %s", (self.client_id,))
            row = cur.fetchone()
        self.conn.rollback()
        return bool(row and row[0])

    def apply(self, records: list[RecordFacts], deleted: list[int], tid: int,
              resolve: bool = True) -> tuple[list[int], int]:
        """Apply one batch; returns the objects whose documents changed and the version
        their documents take (the graph's applied tid: it never goes down). With
        ``resolve=False`` (a backfill) only the records are written: :meth:`resolve_all` follows."""
        with self.lock:
            try:
                with self.conn.cursor() as cur:
                    self._serialise(cur)
                    dirty = (self._apply(cur, records, deleted) if resolve
                             else unresolved.write(cur, self.client_id, records, deleted, tid))
                    version = self._finish(cur, tid, dirty, complete=resolve)
                self.conn.commit()
            except BaseException:
                self.conn.rollback()
                raise
        return dirty, version

    def forget(self) -> None:
        """Delete this client id's whole graph (to build it again from the start), as its writer:
        :func:`graph.forget` in the transaction that took the graph's lock (held until its commit)."""
        with self.lock:
            try:
                with self.conn.cursor() as cur:
                    self._serialise(cur)
                graph.forget(self.conn, self.client_id)
            except BaseException:
                self.conn.rollback()
                raise

    def _serialise(self, cur: Any) -> None:
        """One writer of this graph at a time (until the transaction ends): the service and a
        command redelivering dead letters read what the other committed."""
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (GRAPH_LOCK_CLASS, self.client_id))
        # The recursive statements' row estimates are far too high, which makes PostgreSQL
        # compile them (JIT): over a second per statement, for statements that take milliseconds.
        cur.execute("SET LOCAL jit = off")

    def _finish(self, cur: Any, tid: int, dirty: list[int], complete: bool) -> int:
        cur.execute(f"INSERT INTO {APPLIED} (client_id, tid, complete) VALUES (%s, %s, %s) ON CONFLICT (client_id) "
                    f"DO UPDATE SET tid = greatest({APPLIED}.tid, excluded.tid), complete = excluded.complete "
                    "RETURNING tid", (self.client_id, tid, complete))
        version = int(cur.fetchone()[0])
        if dirty:
            psycopg2.extras.execute_values(
                cur, f"INSERT INTO {DIRTY} (client_id, zoid, as_of) VALUES %s ON CONFLICT "
                f"(client_id, zoid) DO UPDATE SET as_of = greatest({DIRTY}.as_of, excluded.as_of)",
                [(self.client_id, z, version) for z in dirty], page_size=1000)
        return version

    def _write(self, cur: Any, records: list[RecordFacts], deleted: list[int]) -> tuple[list[int], Any]:
        """Write the batch's records (names, edges); returns ``([], what changed)``."""
        c = self.client_id
        latest = latest_of(records)
        gone = set(deleted) - set(latest)
        cur.execute(f"SELECT zoid, tid, name, owner, in_tree, class_name FROM {NODES} "
                    "WHERE client_id = %s AND zoid = ANY(%s)", (c, list(latest) + list(gone)))
        old = {int(r[0]): r for r in cur.fetchall()}
        changed = [f for f in latest.values() if f.zoid not in old or old[f.zoid][1] < f.tid]
        gone = {z for z in gone if z in old}
        touched = [f.zoid for f in changed] + sorted(gone)
        if not touched:
            return [], None
        cur.execute(f"SELECT src, dst, key, listed FROM {EDGES} WHERE client_id = %s AND src = ANY(%s)", (c, touched))
        old_edges = {(int(s), int(d), k, bool(listed)) for s, d, k, listed in cur.fetchall()}
        new_edges = {(f.zoid, d, k, listed) for f in changed for d, k, listed in f.edges}
        psycopg2.extras.execute_values(
            cur, f"INSERT INTO {NODES} (client_id, zoid, tid, class_name, name) VALUES %s ON CONFLICT "
            "(client_id, zoid) DO UPDATE SET tid = excluded.tid, class_name = excluded.class_name, "
            "name = excluded.name", [(c, f.zoid, f.tid, f.class_name, f.name) for f in changed], page_size=1000)
        if gone:
            cur.execute(f"DELETE FROM {NODES} WHERE client_id = %s AND zoid = ANY(%s)", (c, sorted(gone)))
        if old_edges != new_edges:
            cur.execute(f"DELETE FROM {EDGES} WHERE client_id = %s AND src = ANY(%s)", (c, touched))
            psycopg2.extras.execute_values(cur, f"INSERT INTO {EDGES} (client_id, src, dst, key, listed) VALUES %s",
                                           [(c, s, d, k, listed) for s, d, k, listed in new_edges], page_size=2000)
        return [], (old, changed, gone, touched, old_edges, new_edges)

    def _apply(self, cur: Any, records: list[RecordFacts], deleted: list[int]) -> list[int]:
        c = self.client_id
        _, written = self._write(cur, records, deleted)
        if not written:
            return []
        old, changed, gone, touched, old_edges, new_edges = written
        # held in an OFS container's _objects, or in a container's items BTree: named by its
        # container, recomputed where it may change
        roots = sorted({d for _s, d, k, _l in old_edges | new_edges if k in q.ITEM_ATTRIBUTES})
        below = roots
        for _level in range(2):
            cur.execute(f"SELECT DISTINCT dst FROM {EDGES} WHERE client_id = %s AND src = ANY(%s) AND key IS NULL",
                        (c, below))
            below = [int(r[0]) for r in cur.fetchall()]
            roots += below
        cur.execute(q.ITEMS, {"c": c, "btrees": sorted(set(roots) | {f.zoid for f in changed})})
        maybe = sorted({d for _s, d, _k, listed in old_edges | new_edges if listed} | {f.zoid for f in changed}
                       | {int(r[0]) for r in cur.fetchall()})
        cur.execute(f"UPDATE {NODES} n SET listed = NOT n.listed WHERE n.client_id = %s AND n.zoid = ANY(%s) "
                    f"AND n.listed <> EXISTS (SELECT 1 FROM {EDGES} e WHERE e.client_id = %s AND e.dst = n.zoid "
                    "AND e.listed) RETURNING n.zoid", (c, maybe, c))
        relisted = [int(r[0]) for r in cur.fetchall()]
        renamed = [f.zoid for f in changed if f.zoid not in old or old[f.zoid][2] != f.name] + relisted
        unnamed_changed = [f.zoid for f in changed if f.name is None]
        diff = {(s, d, k) for s, d, k, listed in old_edges ^ new_edges}
        seeds = sorted({d for _s, d, _k, _l in old_edges | new_edges} | set(renamed) | set(unnamed_changed))

        # 1. owners of the unnamed records downstream of the change
        cur.execute(q.DOWNSTREAM, {"c": c, "seeds": seeds})
        cur.execute(q.OWNERS, {"c": c})
        cur.execute(q.OWNERS_SET, {"c": c})
        cur.execute("SELECT old, new FROM obj_owners WHERE old IS DISTINCT FROM new")
        owner_moves = cur.fetchall()
        cur.execute(q.OWNER_CHANGED_CHILDREN, {"c": c})
        held_by_moved_parts = [int(r[0]) for r in cur.fetchall()]

        # 2. the tree: records whose holders changed, renamed, new or gone, and their subtrees
        diff_dsts = sorted({d for _s, d, k in diff if k is not None})
        cur.execute(f"SELECT zoid FROM {NODES} WHERE client_id = %s AND zoid = ANY(%s) AND (name = ANY(%s) OR listed)",
                    (c, diff_dsts, sorted({k for _s, _d, k in diff if k is not None})))
        held = [int(r[0]) for r in cur.fetchall()]
        replace = sorted(set(held) | set(held_by_moved_parts) | set(renamed) | gone)
        root_placed = self._place_root(cur)
        cur.execute(q.SUBTREE, {"c": c, "changed": replace})
        placed_outside = self._place(cur, root_placed)
        cur.execute(q.MOVED, {"c": c})
        moved = {int(r[0]) for r in cur.fetchall()}

        # 3. the documents that change
        candidates = moved | placed_outside | set(root_placed) | {f.zoid for f in changed}
        for z in touched:
            if z in old and old[z][3] is not None and old[z][3] >= 0:
                candidates.add(int(old[z][3]))
        for before, after in owner_moves:
            candidates.update(o for o in (before, after) if o is not None and o >= 0)
        cur.execute(f"SELECT zoid, owner FROM {NODES} WHERE client_id = %s AND zoid = ANY(%s)",
                    (c, [f.zoid for f in changed if f.name is None]))
        candidates.update(int(o) for _z, o in cur.fetchall() if o is not None and o >= 0)
        was_in_tree = {z for z, row in old.items() if row[4]}
        cur.execute(f"SELECT zoid, class_name, in_tree FROM {NODES} WHERE client_id = %s AND zoid = ANY(%s)",
                    (c, sorted(candidates)))
        out = [int(z) for z, cls, in_tree in cur.fetchall()
               if (in_tree or z in was_in_tree or z in moved) and self.is_object_class(cls)]
        out += [z for z in gone if z in was_in_tree and self.is_object_class(old[z][5])]
        return sorted(set(out))

    def _place_root(self, cur: Any) -> list[int]:
        cur.execute(f"UPDATE {NODES} SET in_tree = true, parent = NULL, depth = 0, path = '/' "
                    "WHERE client_id = %s AND zoid = %s AND NOT in_tree RETURNING zoid", (self.client_id, ROOT_ZOID))
        return [int(r[0]) for r in cur.fetchall()]

    def _place(self, cur: Any, root_placed: list[int]) -> set[int]:
        """Place the records reset in ``obj_replace`` (and any record their placing attaches)
        level by level; returns those placed that were not in the reset set."""
        c = self.client_id
        cur.execute(q.DEEPEST_CANDIDATE, {"c": c})
        deepest = cur.fetchone()[0]
        deepest = -1 if deepest is None else int(deepest)
        cur.execute(q.PLACED)
        if root_placed:
            cur.execute("INSERT INTO obj_placed VALUES (0)")
        depth, placed = 1, bool(root_placed)
        while depth <= MAX_DEPTH and (placed or depth - 1 <= deepest):
            cur.execute(q.PLACE_LEVEL, {"c": c, "above": depth - 1, "depth": depth})
            cur.execute("SELECT EXISTS (SELECT 1 FROM obj_placed)")
            placed = bool(cur.fetchone()[0])
            depth += 1
        cur.execute("SELECT n.zoid FROM obj_newly n WHERE NOT EXISTS (SELECT 1 FROM obj_replace r WHERE r.zoid = n.zoid)")
        return {int(r[0]) for r in cur.fetchall()}

    def resolve_all(self, tid: int, quiet: bool = False,
                    beat: Callable[[], None] | None = None) -> tuple[int, int]:
        """Resolve a graph written unresolved (a backfill): its staged deletions applied,
        every owner, the whole tree from the root; every object in the tree becomes dirty
        (``tree_dirty_as_of``: settle with ``whole_tree``). Marks the graph complete.
        Returns how many objects the tree has, and their version (read them with
        :func:`.dirtypages.tree_pages`).
        ``beat`` is called between its statements (the pipeline's sign of life)."""
        beat = beat if beat is not None else _nothing
        c = self.client_id
        with self.lock:
            try:
                with self.conn.cursor() as cur:
                    self._serialise(cur)
                    # its sorts and hashes span the whole graph: in memory, not spilled to disk
                    cur.execute("SET LOCAL work_mem = '64MB'")
                    unresolved.materialize(cur, self.client_id)
                    beat()
                    cur.execute(f"ANALYZE {NODES}; ANALYZE {EDGES}")  # written in bulk: plans need their statistics
                    cur.execute(q.ITEMS_ALL, {"c": c})
                    cur.execute(f"UPDATE {NODES} n SET listed = true WHERE n.client_id = %(c)s AND NOT n.listed AND "
                                f"EXISTS (SELECT 1 FROM {EDGES} e WHERE e.client_id = %(c)s AND e.dst = n.zoid AND e.listed); "
                                f"UPDATE {NODES} n SET listed = false WHERE n.client_id = %(c)s AND n.listed AND NOT "
                                f"EXISTS (SELECT 1 FROM {EDGES} e WHERE e.client_id = %(c)s AND e.dst = n.zoid AND e.listed)",
                                {"c": c})
                    cur.execute(q.ALL_OWNERS, {"c": c})
                    beat()
                    self._place_root(cur)
                    cur.execute(q.PLACED)
                    cur.execute("INSERT INTO obj_placed VALUES (0)")
                    depth = 1
                    while depth <= MAX_DEPTH:
                        cur.execute(q.PLACE_LEVEL_ALL, {"c": c, "above": depth - 1, "depth": depth})
                        beat()
                        cur.execute("SELECT EXISTS (SELECT 1 FROM obj_placed)")
                        if not cur.fetchone()[0]:
                            break
                        depth += 1
                    # placed: the statistics of the start say no record is in the tree, and with
                    # them the tree's pages are read by a whole scan each (dirtypages)
                    cur.execute(f"ANALYZE {NODES}")
                    version = self._finish(cur, tid, [], complete=True)
                    # every object of the tree is dirty: one mark, not a row each (82,200 rows
                    # written, then deleted, took 0.5 s of a 10^5-object backfill)
                    cur.execute(f"UPDATE {APPLIED} SET tree_dirty_as_of = %s WHERE client_id = %s", (version, c))
                    cur.execute(f"SELECT class_name, count(*) FROM {NODES} WHERE client_id = %s AND in_tree "
                                "GROUP BY class_name", (c,))
                    count = sum(int(n) for cls, n in cur.fetchall() if self.is_object_class(cls))
                self.conn.commit()
            except BaseException:
                self.conn.rollback()
                raise
        if not quiet:
            log.info("object graph resolved: %d objects in the tree", count, extra={"count": count})
        return count, version


def _nothing() -> None:
    """No sign of life to give (a caller without a pipeline)."""
