"""Connection plumbing shared by the follower, the trigger installer and the progress table.

Every public function of :mod:`esindexer.follow` accepts either a psycopg2 connection
or a DSN string. The rules for whose transaction is whose live here so they are the
same everywhere:

- **A DSN** means the function owns the connection: it opens it, commits its own work
  and closes it.
- **A connection** means the caller owns the transaction. A function that writes never
  commits or rolls back the caller's transaction; it may roll back to a savepoint of
  its own. A function that only reads and finds the connection *idle* (no transaction
  in progress) ends the short read transaction it started, so that a plain
  non-autocommit connection is not left "idle in transaction" by a lookup.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Union

import psycopg2
import psycopg2.extensions

ConnOrDsn = Union[str, "psycopg2.extensions.connection"]

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


class SchemaError(RuntimeError):
    """The database does not hold a RelStorage schema where the follower looks for it."""


def is_idle(conn) -> bool:
    """True if no transaction is in progress on ``conn`` (always true in autocommit)."""
    return conn.autocommit or conn.info.transaction_status == _IDLE


@contextlib.contextmanager
def connection(conn_or_dsn: ConnOrDsn, *, commit: bool) -> Iterator[object]:
    """Yield a connection; open, commit (if ``commit``) and close it when given a DSN."""
    if not isinstance(conn_or_dsn, str):
        yield conn_or_dsn
        return
    conn = psycopg2.connect(conn_or_dsn)
    try:
        yield conn
        if commit:
            conn.commit()
    finally:
        conn.close()


@contextlib.contextmanager
def reading(conn_or_dsn: ConnOrDsn) -> Iterator[object]:
    """A cursor for read-only statements that leaves the caller's transaction state alone.

    If the connection was idle on entry (and is not autocommit), the transaction the
    reads start is ours and is rolled back at the end: nothing was written, and this
    keeps a lookup from leaving the connection idle in transaction.
    """
    with connection(conn_or_dsn, commit=False) as conn:
        ours = not conn.autocommit and is_idle(conn)
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            if ours and not conn.closed:
                conn.rollback()


def has_relation(cur, name: str) -> bool:
    """Whether ``name`` resolves through the connection's ``search_path``.

    ``to_regclass`` honours the search_path, so a table of the same name in an
    unrelated schema (another RelStorage database in the same PostgreSQL database,
    say) does not count, unlike a name match on ``pg_class``.
    """
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    return bool(cur.fetchone()[0])


def keeps_history(cur) -> bool:
    """Detect the RelStorage layout once: history-preserving iff ``current_object`` exists."""
    if not has_relation(cur, "object_state"):
        raise SchemaError(
            "no RelStorage table object_state in the connection's search_path "
            "(has RelStorage created its schema in this database?)"
        )
    return has_relation(cur, "current_object")


def current_revisions(cur) -> tuple[str, str]:
    """``(FROM clause, zoid column)`` selecting one row per object, its current revision,
    as ``s.tid`` and ``s.state`` (history-preserving: joined through ``current_object``).
    Raises :class:`SchemaError` without a RelStorage schema."""
    if keeps_history(cur):
        return "current_object c JOIN object_state s ON s.zoid = c.zoid AND s.tid = c.tid", "c.zoid"
    return "object_state s", "s.zoid"
