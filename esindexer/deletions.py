"""Deletions that no transaction announces: packing, garbage collection, ``deleteObject``.

Packing removes rows without writing a new tid, so following ``tid > last`` never
sees them (newt-spec §5). Two mechanisms catch them:

1. **Capture.** A trigger on ``DELETE`` — from ``object_state`` in a history-free
   database, from ``current_object`` in a history-preserving one (deleting old
   revisions there is not an object deletion) — appends ``(zoid, tid)`` to
   ``esindexer_deletions``. The service drains that log between batches, after
   every earlier bulk has been acknowledged, deleting each document with version
   ``tid + 1``: higher than any state of that object ever written, so no older
   write still in flight can bring it back (oids are never reused). Each client id
   keeps its own cursor into the log, so several indexers can share a database.
2. **Sweep.** When the trigger was missing (a pack ran before esindexer was
   installed, or the role may not create triggers), the start-up sweep walks the
   index in zoid order and deletes documents whose zoid is no longer in the
   database.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from esindexer._follow_pg import has_relation

log = logging.getLogger(__name__)

LOG_TABLE = "esindexer_deletions"
CURSOR_TABLE = "esindexer_deletion_cursor"
FUNCTION = "esindexer_capture_deletion"
TRIGGER = "esindexer_capture_deletion_trigger"

_TABLES = f"""
CREATE TABLE IF NOT EXISTS {LOG_TABLE} (
    id          bigserial   PRIMARY KEY,
    zoid        bigint      NOT NULL,
    tid         bigint      NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {CURSOR_TABLE} (
    client_id   text   PRIMARY KEY,
    last_id     bigint NOT NULL
);
"""

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {LOG_TABLE} (zoid, tid) VALUES (OLD.zoid, OLD.tid);
    RETURN OLD;
END
$$;
"""


def history_preserving(conn: Any) -> bool:
    with conn.cursor() as cur:
        return has_relation(cur, "current_object")


def trigger_installed(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_trigger WHERE tgname = %s AND NOT tgisinternal", (TRIGGER,))
        return cur.fetchone()[0] > 0


def install(conn: Any) -> bool:
    """Create the log, the cursor table and the capture trigger; commit. Idempotent.

    An existing trigger is left alone: dropping one takes an ACCESS EXCLUSIVE lock that
    waits behind every open RelStorage read transaction. Creating one waits at most 10 s
    for its lock (``lock_timeout``) so a busy application is never blocked behind us.
    Returns False (after rolling back only its own work) when the role lacks the rights
    or the lock could not be had.
    """
    import psycopg2

    table = "current_object" if history_preserving(conn) else "object_state"
    conn.commit()
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '10s'")
            cur.execute(_TABLES)
            cur.execute(_FUNCTION)
            cur.execute("SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
                        (table, TRIGGER))
            if cur.fetchone() is None:
                cur.execute(f"CREATE TRIGGER {TRIGGER} AFTER DELETE ON {table} "
                            f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()")
                log.info("installed the pack-deletion capture trigger on %s", table)
        conn.commit()
        return True
    except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.LockNotAvailable,
            psycopg2.errors.ReadOnlySqlTransaction) as exc:
        conn.rollback()
        log.warning("cannot install the pack-deletion trigger (%s); packed objects are removed by the "
                    "start-up sweep instead", str(exc).strip())
        return False


def ensure_tables(conn: Any) -> bool:
    """Create the log tables if possible (no trigger). False when not permitted."""
    import psycopg2

    conn.commit()
    try:
        with conn.cursor() as cur:
            cur.execute(_TABLES)
        conn.commit()
        return True
    except psycopg2.errors.InsufficientPrivilege:
        conn.rollback()
        return False


def pending(conn: Any, client_id: str, limit: int = 5000) -> list[tuple[int, int, int]]:
    """Up to ``limit`` captured deletions ``(id, zoid, tid)`` this client has not applied."""
    with conn.cursor() as cur:
        if not has_relation(cur, LOG_TABLE):
            return []
        cur.execute(
            f"SELECT d.id, d.zoid, d.tid FROM {LOG_TABLE} d "
            f"WHERE d.id > COALESCE((SELECT last_id FROM {CURSOR_TABLE} WHERE client_id = %s), 0) "
            "ORDER BY d.id LIMIT %s",
            (client_id, limit),
        )
        return [tuple(row) for row in cur.fetchall()]


def advance(conn: Any, client_id: str, last_id: int) -> None:
    """Move this client's cursor and drop log rows every client has applied (the caller commits).

    Pruning runs in a savepoint: a role that may not delete from the log (an
    administrator created it) still advances, and the log is merely kept.
    """
    import psycopg2

    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {CURSOR_TABLE} (client_id, last_id) VALUES (%s, %s) "
            "ON CONFLICT (client_id) DO UPDATE SET last_id = GREATEST(EXCLUDED.last_id, "
            f"{CURSOR_TABLE}.last_id)",
            (client_id, last_id),
        )
        cur.execute("SAVEPOINT esindexer_prune")
        try:
            cur.execute(f"DELETE FROM {LOG_TABLE} WHERE id <= (SELECT min(last_id) FROM {CURSOR_TABLE})")
            cur.execute("RELEASE SAVEPOINT esindexer_prune")
        except psycopg2.errors.InsufficientPrivilege:
            cur.execute("ROLLBACK TO SAVEPOINT esindexer_prune")


def start_cursor_at_end(conn: Any, client_id: str) -> None:
    """A new client starts after the existing log: its first sweep covers what came before."""
    with conn.cursor() as cur:
        if not has_relation(cur, LOG_TABLE):
            return
        cur.execute(
            f"INSERT INTO {CURSOR_TABLE} (client_id, last_id) "
            f"SELECT %s, COALESCE(max(id), 0) FROM {LOG_TABLE} ON CONFLICT (client_id) DO NOTHING",
            (client_id,),
        )


def missing_zoids(conn: Any, zoids: list[int]) -> list[int]:
    """Which of ``zoids`` no longer exist as live objects in the database."""
    if not zoids:
        return []
    table = "current_object" if history_preserving(conn) else "object_state"
    with conn.cursor() as cur:
        cur.execute(f"SELECT zoid FROM {table} WHERE zoid = ANY(%s)", (zoids,))
        present = {row[0] for row in cur.fetchall()}
    conn.rollback()  # end the read transaction at once
    return [z for z in zoids if z not in present]


def indexed_zoids(es: Any, indices: tuple[str, ...], page: int = 5000, low: int | None = None,
                  high: int | None = None) -> Iterator[list[tuple[str, int, int]]]:
    """Pages of ``(index, zoid, tid)`` of the documents (with ``low <= zoid <= high`` when
    given), in zoid order, read with search_after so no scroll context stays open.

    The sort ends with ``_index`` so that copies of one zoid in two indices (a class
    re-routed) are both returned even when a page boundary falls between them."""
    bounds = {k: v for k, v in (("gte", low), ("lte", high)) if v is not None}
    after: list[Any] | None = None
    while True:
        kwargs: dict[str, Any] = dict(
            index=",".join(indices), size=page,
            sort=[{"zoid": "asc"}, {"tid": "asc"}, {"_index": "asc"}],
            source=False, docvalue_fields=["zoid", "tid"], ignore_unavailable=True,
            track_total_hits=False, query={"range": {"zoid": bounds}} if bounds else {"match_all": {}},
        )
        if after is not None:
            kwargs["search_after"] = after
        hits = es.search(**kwargs)["hits"]["hits"]
        if not hits:
            return
        yield [(h["_index"], int(h["fields"]["zoid"][0]), int(h["fields"]["tid"][0])) for h in hits]
        after = hits[-1]["sort"]
