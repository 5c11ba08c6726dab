"""Dead letters: records that could not be indexed, kept in PostgreSQL for people to act on.

Two kinds end up here, each with the zoid, tid, class and a reason:

- ``unconvertible``: the Jsonifier could not turn the record into JSON (corrupt
  pickle, unsupported construct); the raw record is kept in ``record``;
- ``rejected``: Elasticsearch refused the document for good (mapping conflict,
  too large, ...); the JSON document is kept in ``document``.

Dead letters are written in the same transaction as the progress tid that
passes them, so a crash can neither lose them nor write them twice for one
progress step. The table lives next to RelStorage's tables in the source
database, so the people who own the data can query it with SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import psycopg2.extras

from esindexer._follow_pg import has_relation

TABLE = "esindexer_dead_letters"

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id          bigserial PRIMARY KEY,
    client_id   text        NOT NULL,
    zoid        bigint      NOT NULL,
    tid         bigint      NOT NULL,
    class_name  text,
    index_name  text,
    kind        text        NOT NULL,
    reason      text        NOT NULL,
    document    text,
    record      bytea,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {TABLE}_client_zoid ON {TABLE} (client_id, zoid);
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    zoid: int
    tid: int
    kind: str  # "unconvertible" | "rejected"
    reason: str
    class_name: str | None = None
    index_name: str | None = None
    document: bytes | None = None
    record: bytes | None = None


def ensure_table(conn: Any) -> None:
    """Create the table if missing, inside a savepoint so a caller's work survives a failure."""
    with conn.cursor() as cur:
        cur.execute("SAVEPOINT esindexer_dead_letters_ddl")
        try:
            cur.execute(DDL)
        except Exception:
            cur.execute("ROLLBACK TO SAVEPOINT esindexer_dead_letters_ddl")
            raise
        cur.execute("RELEASE SAVEPOINT esindexer_dead_letters_ddl")


def add(conn: Any, client_id: str, letters: Iterable[DeadLetter]) -> int:
    """Insert dead letters (the caller commits, together with progress). Returns how many."""
    rows = [
        (client_id, d.zoid, d.tid, d.class_name, d.index_name, d.kind, d.reason[:10_000],
         d.document.decode("utf-8", "replace") if d.document is not None else None,
         psycopg2.Binary(d.record) if d.record is not None else None)
        for d in letters
    ]
    if rows:
        with conn.cursor() as cur:
            psycopg2.extras.execute_values(
                cur,
                f"INSERT INTO {TABLE} (client_id, zoid, tid, class_name, index_name, kind, reason, "
                "document, record) VALUES %s",
                rows,
            )
    return len(rows)


def count(conn: Any, client_id: str) -> int:
    """Dead letters kept for ``client_id`` (0 when the table does not exist yet)."""
    with conn.cursor() as cur:
        if not has_relation(cur, TABLE):
            return 0
        cur.execute(f"SELECT count(*) FROM {TABLE} WHERE client_id = %s", (client_id,))
        return int(cur.fetchone()[0])
