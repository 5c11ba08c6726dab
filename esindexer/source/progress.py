"""Saved progress: the last transaction id a client has completely processed.

Table (created on first :func:`set_progress_tid`, in the first schema of the
connection's ``search_path``)::

    esindexer_progress (
        client_id  text PRIMARY KEY,
        tid        bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )

Commit semantics (see also :mod:`esindexer.source.pg`):

- :func:`get_progress_tid` only reads, and returns ``-1`` when there is no row or no
  table (it never creates the table, so a lookup has no side effect). On an idle
  non-autocommit connection it ends the read transaction it started.
- :func:`set_progress_tid` given a **connection never commits**: the new value is part
  of the caller's transaction, so an indexer can commit its own writes and its
  progress atomically, or roll both back. Creating the table on first use happens in a
  savepoint of that transaction, so a failure (say, no CREATE right) rolls back only
  the savepoint and not the caller's pending work, and the ``CREATE TABLE`` itself
  commits or rolls back with the caller's transaction. On an autocommit connection each
  statement commits at once.
- Given a **DSN**, :func:`set_progress_tid` opens a connection, commits and closes it.

Two processes writing the same ``client_id`` would overwrite each other's progress;
keeping one writer per client id is the caller's job (e.g. a session advisory lock).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg2.errors
import psycopg2.extensions

from esindexer.source.pg import ConnOrDsn, connection, has_relation, reading

log = logging.getLogger(__name__)

__all__ = ["PROGRESS_TABLE", "get_progress_row", "get_progress_tid", "set_progress_tid"]

#: The progress table's name.
PROGRESS_TABLE = "esindexer_progress"

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (
    client_id  text PRIMARY KEY,
    tid        bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""

_UPSERT = f"""
INSERT INTO {PROGRESS_TABLE} (client_id, tid, updated_at)
VALUES (%s, %s, clock_timestamp())
ON CONFLICT (client_id) DO UPDATE SET tid = EXCLUDED.tid, updated_at = EXCLUDED.updated_at
"""



def get_progress_tid(conn: ConnOrDsn, client_id: str) -> int:
    """The tid saved for ``client_id``, or ``-1`` if none was saved."""
    with reading(conn) as cur:
        if not has_relation(cur, PROGRESS_TABLE):
            return -1
        cur.execute(f"SELECT tid FROM {PROGRESS_TABLE} WHERE client_id = %s", (client_id,))
        row = cur.fetchone()
    return -1 if row is None else int(row[0])


def get_progress_row(conn: ConnOrDsn, client_id: str) -> tuple[int, float] | None:
    """``(tid, saved at as Unix time)`` of ``client_id``, or None if none was saved (a
    standby mirrors the active process's progress with it)."""
    with reading(conn) as cur:
        if not has_relation(cur, PROGRESS_TABLE):
            return None
        cur.execute(f"SELECT tid, extract(epoch FROM updated_at) FROM {PROGRESS_TABLE} WHERE client_id = %s",
                    (client_id,))
        row = cur.fetchone()
    return None if row is None else (int(row[0]), float(row[1]))


def ensure_table(conn: Any) -> None:
    """Create the progress table if missing (``esindexer setup``); the caller commits."""
    with conn.cursor() as cur:
        if not has_relation(cur, PROGRESS_TABLE):
            cur.execute(_CREATE)


def _in_savepoint(cur: psycopg2.extensions.cursor, statement: str, args: tuple[object, ...] | None = None) -> None:
    cur.execute("SAVEPOINT esindexer_progress")
    try:
        cur.execute(statement, args)
    except BaseException:
        cur.execute("ROLLBACK TO SAVEPOINT esindexer_progress")
        cur.execute("RELEASE SAVEPOINT esindexer_progress")
        raise
    cur.execute("RELEASE SAVEPOINT esindexer_progress")


#: What a ``CREATE TABLE IF NOT EXISTS`` raises when another session creates the same table
#: at the same moment (each found it missing): on ``pg_type``'s unique index while the other
#: is uncommitted, or as the duplicate type or table once it has committed. All three were
#: seen with two partitions saving their first progress together.
_LOST_THE_RACE = (psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateObject, psycopg2.errors.DuplicateTable)


def set_progress_tid(conn: ConnOrDsn, client_id: str, tid: int) -> None:
    """Save ``tid`` as the progress of ``client_id`` (an upsert).

    Does not commit a connection it was given; commits when given a DSN.
    """
    with connection(conn, commit=True) as pg:
        run = (lambda cur, sql, args=None: cur.execute(sql, args)) if pg.autocommit else _in_savepoint
        with pg.cursor() as cur:
            try:
                run(cur, _UPSERT, (client_id, tid))
                return
            except psycopg2.errors.UndefinedTable:
                pass  # first use: create the table, then retry once
            try:
                run(cur, _CREATE)
            except _LOST_THE_RACE:
                pass  # a concurrent CREATE TABLE IF NOT EXISTS won the race: it exists now
            else:
                log.info("created the progress table", extra={"table": PROGRESS_TABLE})
            run(cur, _UPSERT, (client_id, tid))
