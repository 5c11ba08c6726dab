"""Dead letters: records that could not be indexed, kept in PostgreSQL for people to act on.

Three kinds end up here, each with the zoid, tid, class and a reason:

- ``unconvertible``: the Jsonifier could not turn the record into JSON (corrupt
  pickle, unsupported construct); the raw record is kept in ``record``;
- ``rejected``: Elasticsearch refused the document for good (mapping conflict,
  too large, ...); the JSON document is kept in ``document``;
- ``crashed``: converting the record killed the process (a native crash, an OOM
  kill), isolated by the crash guard (:mod:`esindexer.crashguard`); the raw record is
  kept in ``record`` and the reason names the signal or exit code.

Dead letters are written in the same transaction as the progress tid that
passes them, so a crash can neither lose them nor write them twice for one
progress step. The table lives next to RelStorage's tables in the source
database, so the people who own the data can query it with SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2.extras

from esindexer.source.pg import has_relation

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
    kind: str  # "unconvertible" | "rejected" | "crashed"
    reason: str
    class_name: str | None = None
    index_name: str | None = None
    document: bytes | None = None
    record: bytes | None = None


def ensure_table(conn: Any) -> None:
    """Create the table if missing, inside a savepoint so a caller's work survives a failure.

    When it exists nothing is attempted: a role granted only its rows (``esindexer setup
    --grant-to``) has no right to run even ``CREATE TABLE IF NOT EXISTS``."""
    with conn.cursor() as cur:
        if has_relation(cur, TABLE):
            return
        cur.execute("SAVEPOINT esindexer_dead_letters_ddl")
        try:
            cur.execute(DDL)
        except Exception:
            cur.execute("ROLLBACK TO SAVEPOINT esindexer_dead_letters_ddl")
            raise
        cur.execute("RELEASE SAVEPOINT esindexer_dead_letters_ddl")


#: A record or document larger than this is not copied into the letter: psycopg2 and
#: libpq hold it several times over while it is sent (a 150 MB record took the process
#: past 1.5 GB, issue 21). The reason says so; the record stays in ``object_state`` at its
#: (zoid, tid) until a pack, and redelivery reads it from there anyway.
KEEP_MAX_BYTES = 16 << 20


def _kept(d: DeadLetter) -> tuple[str, str | None, Any]:
    """The letter's reason, document and record as stored (large ones left out)."""
    reason, document, record = d.reason[:10_000], d.document, d.record
    if document is not None and len(document) > KEEP_MAX_BYTES:
        reason += f" (the {len(document):,}-byte document is not kept here)"
        document = None
    if record is not None and len(record) > KEEP_MAX_BYTES:
        reason += f" (the {len(record):,}-byte record is not kept here: it is in object_state until a pack)"
        record = None
    return (reason, document.decode("utf-8", "replace") if document is not None else None,
            psycopg2.Binary(record) if record is not None else None)


def add(conn: Any, client_id: str, letters: Iterable[DeadLetter]) -> int:
    """Insert dead letters (the caller commits, together with progress). Returns how many."""
    rows = [(client_id, d.zoid, d.tid, d.class_name, d.index_name, d.kind, *_kept(d)) for d in letters]
    if rows:
        with conn.cursor() as cur:
            psycopg2.extras.execute_values(
                cur,
                f"INSERT INTO {TABLE} (client_id, zoid, tid, class_name, index_name, kind, reason, "
                "document, record) VALUES %s",
                rows,
            )
    return len(rows)


def table_exists(conn: Any) -> bool:
    """Whether esindexer has created its dead-letter table in this database (it has run here)."""
    with conn.cursor() as cur:
        return has_relation(cur, TABLE)


def count(conn: Any, client_id: str) -> int:
    """Dead letters kept for ``client_id`` (0 when the table does not exist yet)."""
    with conn.cursor() as cur:
        if not has_relation(cur, TABLE):
            return 0
        cur.execute(f"SELECT count(*) FROM {TABLE} WHERE client_id = %s", (client_id,))
        return int(cur.fetchone()[0])


def count_by_kind(conn: Any, client_id: str) -> dict[str, int]:
    """Dead letters kept for ``client_id`` per kind (empty when the table does not exist yet)."""
    with conn.cursor() as cur:
        if not has_relation(cur, TABLE):
            return {}
        cur.execute(f"SELECT kind, count(*) FROM {TABLE} WHERE client_id = %s GROUP BY kind ORDER BY kind",
                    (client_id,))
        return {kind: int(n) for kind, n in cur.fetchall()}


def summary(conn: Any, client_id: str) -> list[dict[str, Any]]:
    """Dead letters grouped by kind, class and cause (the reason up to its first colon,
    e.g. ``document_parsing_exception``), most first, each with one full example reason.
    Whole reasons name document ids and values, so they would not group."""
    with conn.cursor() as cur:
        if not has_relation(cur, TABLE):
            conn.rollback()
            return []
        cur.execute(
            f"SELECT kind, class_name, split_part(reason, ':', 1), count(*), count(DISTINCT zoid), "
            f"min(created_at), max(created_at), left(min(reason), 300) FROM {TABLE} "
            "WHERE client_id = %s GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3", (client_id,))
        rows = cur.fetchall()
    conn.rollback()
    return [{"kind": k, "class_name": c, "cause": cause, "letters": n, "objects": z,
             "first": first.isoformat(), "last": last.isoformat(), "example": example}
            for k, c, cause, n, z, first, last, example in rows]


def lettered_zoids(conn: Any, client_id: str, page: int) -> Iterator[list[int]]:
    """Distinct zoids with letters, in order, a short read transaction per page."""
    after = -1
    while True:
        with conn.cursor() as cur:
            cur.execute(f"SELECT DISTINCT zoid FROM {TABLE} WHERE client_id = %s AND zoid > %s "
                        "ORDER BY zoid LIMIT %s", (client_id, after, page))
            zoids = [row[0] for row in cur.fetchall()]
        conn.rollback()
        if not zoids:
            return
        yield zoids
        after = zoids[-1]


def clear(conn: Any, client_id: str, settled: dict[int, int | None]) -> int:
    """Delete the letters of settled zoids up to the tid that settled them (all if None)."""
    if not settled:
        return 0
    zoids = list(settled)
    tids = [tid if tid is not None else 2**63 - 1 for tid in settled.values()]
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {TABLE} d USING unnest(%s::bigint[], %s::bigint[]) AS s(zoid, tid) "
                    "WHERE d.client_id = %s AND d.zoid = s.zoid AND d.tid <= s.tid", (zoids, tids, client_id))
        cleared: int = cur.rowcount
    conn.commit()
    return cleared



def lettered_records(conn: Any, client_id: str) -> set[tuple[int, int]]:
    with conn.cursor() as cur:
        if not has_relation(cur, TABLE):
            conn.rollback()
            return set()
        cur.execute(f"SELECT zoid, tid FROM {TABLE} WHERE client_id = %s", (client_id,))
        rows = {(z, t) for z, t in cur.fetchall()}
    conn.rollback()
    return rows


def crashed_zoids(conn: Any, client_id: str, zoids: list[int]) -> set[int]:
    """Which of ``zoids`` have a ``crashed`` letter."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT DISTINCT zoid FROM {TABLE} WHERE client_id = %s AND zoid = ANY(%s) "
                    "AND kind = 'crashed'", (client_id, zoids))
        found = {row[0] for row in cur.fetchall()}
    conn.rollback()
    return found
