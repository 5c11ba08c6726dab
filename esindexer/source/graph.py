"""The object model's tables (documents=objects), in the database esindexer already writes to.

Kept per client id (a re-index generation builds its own): ``nodes`` holds one row per
record seen (its name, its owner when it is unnamed, its place when it is in the tree),
``edges`` its references with their keys, ``dirty`` the objects whose documents must be
rewritten (written in the transaction that changed the graph, removed in the progress
transaction once the search engine accepted them: a crash in between leaves them to be
rebuilt at the next start), ``applied`` the last tid the graph reflects. A backfill
(a new client id) rebuilds all of it from the records.
"""

from __future__ import annotations

from typing import Any

from esindexer.source.pg import has_relation

NODES = "esindexer_obj_nodes"
EDGES = "esindexer_obj_edges"
DIRTY = "esindexer_obj_dirty"
APPLIED = "esindexer_obj_applied"
TABLES = (NODES, EDGES, DIRTY, APPLIED)

CREATE = f"""
CREATE TABLE IF NOT EXISTS {NODES} (
    client_id text NOT NULL, zoid bigint NOT NULL, tid bigint NOT NULL, class_name text,
    name text,                 -- NULL: unnamed; '' only for the root
    owner bigint,              -- unnamed: the one named record reaching it; -1 shared; NULL none
    in_tree boolean NOT NULL DEFAULT false,
    parent bigint, depth integer, path text,
    PRIMARY KEY (client_id, zoid));
CREATE INDEX IF NOT EXISTS {NODES}_owner ON {NODES} (client_id, owner) WHERE owner >= 0;
CREATE INDEX IF NOT EXISTS {NODES}_parent ON {NODES} (client_id, parent) WHERE parent IS NOT NULL;
CREATE TABLE IF NOT EXISTS {EDGES} (
    client_id text NOT NULL, src bigint NOT NULL, dst bigint NOT NULL, key text);
CREATE INDEX IF NOT EXISTS {EDGES}_src ON {EDGES} (client_id, src);
CREATE INDEX IF NOT EXISTS {EDGES}_dst ON {EDGES} (client_id, dst);
CREATE TABLE IF NOT EXISTS {DIRTY} (
    client_id text NOT NULL, zoid bigint NOT NULL, as_of bigint NOT NULL, PRIMARY KEY (client_id, zoid));
CREATE TABLE IF NOT EXISTS {APPLIED} (client_id text PRIMARY KEY, tid bigint NOT NULL);
"""


def ensure_tables(conn: Any) -> bool:
    """Create the tables unless all are there (the service never attempts DDL then); False
    when they are missing and this role may not create them. Commits."""
    with conn.cursor() as cur:
        present = all(has_relation(cur, table) for table in TABLES)
    conn.rollback()
    if present:
        return True
    try:
        with conn.cursor() as cur:
            cur.execute(CREATE)
        conn.commit()
    except Exception:
        conn.rollback()
        return False
    return True


def forget(conn: Any, client_id: str) -> None:
    """Drop one client id's graph (a generation deleted, or rebuilt from scratch)."""
    with conn.cursor() as cur:
        for table in TABLES:
            cur.execute(f"DELETE FROM {table} WHERE client_id = %s", (client_id,))
    conn.commit()
