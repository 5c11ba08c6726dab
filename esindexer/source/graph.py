"""The object model's tables (documents=objects), in the database esindexer already writes to.

Kept per client id (a re-index generation builds its own): ``nodes`` holds one row per
record seen (its name, its owner when it is unnamed, its place when it is in the tree),
``edges`` its references with their keys, ``dirty`` the objects whose documents must be
rewritten (written in the transaction that changed the graph, removed in the progress
transaction once the search engine accepted them: a crash in between leaves them to be
rebuilt at the next start), ``applied`` the last tid the graph reflects, and whether every
object of the tree is dirty (``tree_dirty_as_of``: a backfill's resolution makes them all
dirty with one row, not one row each). A backfill
(a new client id) rebuilds all of it from the records: its batches are written into
``nodes`` and ``edges`` unresolved (no owner, no place) and resolved at its end; a
deletion meanwhile is a ``gone`` row in ``stage_nodes``, applied by the resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from esindexer.errors import SetupError
from esindexer.source.pg import has_relation, run_ddl
from esindexer.source.progress import get_progress_tid
from esindexer.source.tid import tid_to_datetime

log = logging.getLogger(__name__)

NODES = "esindexer_obj_nodes"
EDGES = "esindexer_obj_edges"
DIRTY = "esindexer_obj_dirty"
APPLIED = "esindexer_obj_applied"
STAGE_NODES = "esindexer_obj_stage_nodes"
STAGE_EDGES = "esindexer_obj_stage_edges"
TABLES = (NODES, EDGES, DIRTY, APPLIED, STAGE_NODES, STAGE_EDGES)
#: A backfill's resolution updates each row of the tree twice in one transaction (held in
#: a container's items: ``listed``; placed: parent, depth and path, a third longer). With
#: no index on those columns and room left on its page, PostgreSQL updates a row in place
#: (a HOT update: no new index entries, tests/objects/test_graph_storage.py); three
#: versions of each row fit when pages are filled to 30 % (docs/performance.md, eighth pass).
NODES_FILLFACTOR = 30
#: Parts by their owner (placement, folding); only rows that have one: most rows (every
#: named record) have none, and an entry each would cost every insert.
OWNED_INDEX = f"{NODES}_owned"

#: Advisory lock namespace ("es" + 4) of one client id's graph: the service and a command
#: (dead-letter redelivery) never change it at the same time.
GRAPH_LOCK_CLASS = 0x65730004

CREATE = f"""
CREATE TABLE IF NOT EXISTS {NODES} (
    client_id text NOT NULL, zoid bigint NOT NULL, tid bigint NOT NULL, class_name text,
    name text,                 -- NULL: unnamed; '' only for the root
    listed boolean NOT NULL DEFAULT false,  -- held by an OFS container that lists it in _objects
    owner bigint,              -- unnamed: the one named record reaching it; -1 shared; NULL none
    in_tree boolean NOT NULL DEFAULT false,
    parent bigint, depth integer, path text,
    PRIMARY KEY (client_id, zoid)) WITH (fillfactor = {NODES_FILLFACTOR});
CREATE INDEX IF NOT EXISTS {OWNED_INDEX} ON {NODES} (client_id, owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS {EDGES} (
    client_id text NOT NULL, src bigint NOT NULL, dst bigint NOT NULL, key text,
    listed boolean NOT NULL DEFAULT false);
CREATE INDEX IF NOT EXISTS {EDGES}_src ON {EDGES} (client_id, src);
CREATE INDEX IF NOT EXISTS {EDGES}_dst ON {EDGES} (client_id, dst);
CREATE TABLE IF NOT EXISTS {DIRTY} (
    client_id text NOT NULL, zoid bigint NOT NULL, as_of bigint NOT NULL, PRIMARY KEY (client_id, zoid));
CREATE TABLE IF NOT EXISTS {APPLIED} (client_id text PRIMARY KEY, tid bigint NOT NULL,
    complete boolean NOT NULL DEFAULT false,
    tree_dirty_as_of bigint);  -- set: every object of the tree is dirty as of it (a backfill resolved)
-- a backfill's deletions (gone) until it resolves the graph (and the records an older version
-- staged here); ``batch`` tells one staging transaction from another
CREATE TABLE IF NOT EXISTS {STAGE_NODES} (
    client_id text NOT NULL, zoid bigint NOT NULL, tid bigint NOT NULL, batch bigint NOT NULL,
    class_name text, name text, gone boolean NOT NULL);
CREATE TABLE IF NOT EXISTS {STAGE_EDGES} (
    client_id text NOT NULL, src bigint NOT NULL, batch bigint NOT NULL, dst bigint NOT NULL, key text,
    listed boolean NOT NULL);
ALTER TABLE {NODES} ADD COLUMN IF NOT EXISTS listed boolean NOT NULL DEFAULT false;
ALTER TABLE {EDGES} ADD COLUMN IF NOT EXISTS listed boolean NOT NULL DEFAULT false;
ALTER TABLE {APPLIED} ADD COLUMN IF NOT EXISTS complete boolean NOT NULL DEFAULT false;
ALTER TABLE {APPLIED} ADD COLUMN IF NOT EXISTS tree_dirty_as_of bigint;
"""

#: The nodes' layout of this version, for an installation made by an earlier one (every
#: row's owner indexed, NULL or not; the parent indexed; full pages). Optional: the
#: statements work either way, placing is slower (docs/performance.md, eighth pass).
LAYOUT = f"""
ALTER TABLE {NODES} SET (fillfactor = {NODES_FILLFACTOR});
CREATE INDEX IF NOT EXISTS {OWNED_INDEX} ON {NODES} (client_id, owner) WHERE owner IS NOT NULL;
DROP INDEX IF EXISTS {NODES}_owner;
DROP INDEX IF EXISTS {NODES}_parent;
"""


def _has_column(cur: Any, table: str, column: str) -> bool:
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
                "AND NOT attisdropped)", (table, column))
    return bool(cur.fetchone()[0])


def ensure_tables(conn: Any) -> bool:
    """Create the tables if missing, in a savepoint of the caller's transaction (the caller
    commits), and the columns later versions added; False when some are missing and this
    role may not create them. An earlier version's layout of the nodes' table is changed
    when this role may (it owns the table), else left with a warning."""
    with conn.cursor() as cur:
        complete = all(has_relation(cur, table) for table in TABLES) and _has_column(cur, EDGES, "listed") \
            and _has_column(cur, APPLIED, "tree_dirty_as_of")
        if not complete and not run_ddl(cur, CREATE, "esindexer_graph_ddl"):
            return False
        if not _has_layout(cur) and not run_ddl(cur, LAYOUT, "esindexer_graph_ddl"):
            log.warning("the object graph's table %s has an earlier version's layout, with which placing "
                        "records in the tree is slower; run `esindexer setup` as its owner to change it", NODES)
    return True


def _has_layout(cur: Any) -> bool:
    """Whether the nodes' table has this version's layout (:data:`LAYOUT`); looked at
    first: no DDL otherwise, which a least-privileged role may not run."""
    cur.execute("SELECT coalesce(%s = ANY(reloptions), false) FROM pg_class WHERE oid = to_regclass(%s)",
                (f"fillfactor={NODES_FILLFACTOR}", NODES))
    return bool(cur.fetchone()[0]) and has_relation(cur, OWNED_INDEX) \
        and not has_relation(cur, f"{NODES}_owner") and not has_relation(cur, f"{NODES}_parent")


def forget(conn: Any, client_id: str) -> None:
    """Drop one client id's graph (a generation deleted, or rebuilt from scratch)."""
    with conn.cursor() as cur:
        for table in TABLES:
            if has_relation(cur, table):  # (an installation from before the staging tables)
                cur.execute(f"DELETE FROM {table} WHERE client_id = %s", (client_id,))
    conn.commit()


def coverage_problem(conn: Any, client_id: str, progress_tid: int) -> str | None:
    """Why ``client_id``'s graph is not the one its documents were built from, or None.

    The graph is written before the documents of a batch and the progress after them, so
    the graph's tid is never below the progress. When it is, or the graph has no row at
    all, its rows were deleted or restored apart from the progress: following on would
    resolve a tree from the records changed since alone, place almost none of them, and
    leave moves and additions out of the index."""
    if progress_tid < 0:
        return None  # nothing indexed yet: a backfill builds the graph from the start
    row, has_nodes = None, False
    with conn.cursor() as cur:
        if has_relation(cur, APPLIED) and has_relation(cur, NODES):  # (none before the first objects run)
            cur.execute(f"SELECT tid FROM {APPLIED} WHERE client_id = %s", (client_id,))
            row = cur.fetchone()
            cur.execute(f"SELECT EXISTS (SELECT 1 FROM {NODES} WHERE client_id = %s)", (client_id,))
            has_nodes = bool(cur.fetchone()[0])
    conn.rollback()
    indexed = tid_to_datetime(progress_tid).isoformat(timespec="seconds")
    if row is None or not has_nodes:
        found = "has no object graph" if row is None else "has an object graph without records"
    elif int(row[0]) < progress_tid:
        found = f"has an object graph that reaches only {tid_to_datetime(int(row[0])).isoformat(timespec='seconds')}"
    else:
        return None
    return (f"client id {client_id!r} has indexed object documents up to {indexed} but {found} "
            f"(its rows in {NODES} and {APPLIED} were deleted, or restored apart from its progress): "
            "its documents cannot be kept exact from here. Build a new generation from the start with "
            "`esindexer reindex --to PREFIX` (the alias keeps serving this one meanwhile)")


def require_coverage(conn: Any, client_id: str) -> None:
    """:func:`coverage_problem` against the client id's saved progress, as a
    :class:`SetupError`: for the commands that compare documents with the graph or write
    into it (``verify --repair`` would delete every document a lost graph does not hold)."""
    problem = coverage_problem(conn, client_id, get_progress_tid(conn, client_id))
    conn.rollback()
    if problem is not None:
        raise SetupError(problem)


def tree_classes(cur: Any, client_id: str, is_object_class: Callable[[str | None], bool] | None) -> list[str]:
    """The classes of the records in the tree that get documents (``is_object_class``,
    ESINDEXER_OBJECT_CLASSES; None: every class): filtered once, then matched in SQL."""
    cur.execute(f"SELECT DISTINCT class_name FROM {NODES} WHERE client_id = %s AND in_tree", (client_id,))
    return [c for (c,) in cur.fetchall() if is_object_class is None or is_object_class(c)]


def documents_to_write(cur: Any, client_id: str, classes: list[str] | None) -> int:
    """How many objects' documents wait to be written: the dirty rows, and (``classes``
    given: the resolution's mark is set) every object of the tree of those classes."""
    if classes is None:
        cur.execute(f"SELECT count(*) FROM {DIRTY} WHERE client_id = %s", (client_id,))
    else:
        cur.execute(f"SELECT count(*) FROM (SELECT zoid FROM {DIRTY} WHERE client_id = %(c)s UNION SELECT zoid "
                    f"FROM {NODES} WHERE client_id = %(c)s AND in_tree AND class_name = ANY(%(classes)s)) d",
                    {"c": client_id, "classes": classes})
    return int(cur.fetchone()[0])


def rewrite_pending(conn: Any, client_id: str) -> bool:
    """Whether the next start of the pipeline rewrites object documents first (a crash left
    some dirty, or a backfill's whole tree): cheap, for deciding to report progress."""
    with conn.cursor() as cur:
        if not has_relation(cur, APPLIED) or not _has_column(cur, APPLIED, "tree_dirty_as_of"):
            conn.rollback()
            return False
        cur.execute(f"SELECT EXISTS (SELECT 1 FROM {APPLIED} WHERE client_id = %(c)s AND tree_dirty_as_of IS NOT "
                    f"NULL) OR EXISTS (SELECT 1 FROM {DIRTY} WHERE client_id = %(c)s)", {"c": client_id})
        pending = bool(cur.fetchone()[0])
    conn.rollback()
    return pending


def summary(conn: Any, client_id: str, is_object_class: Callable[[str | None], bool] | None = None,
            ) -> dict[str, Any] | None:
    """What ``status`` says of one client id's graph (None: it has none). ``is_object_class``:
    the classes with documents (ESINDEXER_OBJECT_CLASSES), for the documents to write
    while every object of the tree is (default: every class)."""
    with conn.cursor() as cur:
        if not has_relation(cur, APPLIED):
            return None
        tree_dirty = "tree_dirty_as_of" if _has_column(cur, APPLIED, "tree_dirty_as_of") else "NULL"
        cur.execute(f"SELECT tid, complete, {tree_dirty} FROM {APPLIED} WHERE client_id = %s", (client_id,))
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute(f"SELECT count(*) FROM {NODES} WHERE client_id = %s AND in_tree", (client_id,))
        in_tree = int(cur.fetchone()[0])
        # every object of the tree too while the resolution's mark is set
        dirty = documents_to_write(cur, client_id, None if row[2] is None else
                                   tree_classes(cur, client_id, is_object_class))
        staged = 0
        if not row[1]:  # a backfill writing the graph unresolved: the records read into it so far
            # records, not rows: what an older version staged (a backfill it began) counts once
            legacy = (f"UNION SELECT zoid FROM {STAGE_NODES} WHERE client_id = %(c)s AND NOT gone"
                      if has_relation(cur, STAGE_NODES) else "")
            cur.execute(f"SELECT count(*) FROM (SELECT zoid FROM {NODES} WHERE client_id = %(c)s {legacy}) r",
                        {"c": client_id})
            staged = int(cur.fetchone()[0])
    conn.rollback()
    return {"tid": int(row[0]), "complete": bool(row[1]), "in_tree": in_tree, "documents_to_write": dirty,
            "staged_records": staged}
