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
2. **Sweep** (:mod:`esindexer.pipeline.sweep`). When the trigger was missing (a pack ran before esindexer was
   installed, or the role may not create triggers), the start-up sweep walks the
   index in zoid order and deletes documents whose zoid is no longer in the
   database.
"""

from __future__ import annotations

import logging
from typing import Any

from esindexer.source.pg import NOT_PERMITTED, has_relation, keeps_history

log = logging.getLogger(__name__)

LOG_TABLE = "esindexer_deletions"
CURSOR_TABLE = "esindexer_deletion_cursor"
CAPTURE_FUNCTION = "esindexer_capture_deletion"
CAPTURE_TRIGGER = "esindexer_capture_deletion_trigger"

_TABLES = f"""
CREATE TABLE IF NOT EXISTS {LOG_TABLE} (
    id          bigserial   PRIMARY KEY,
    zoid        bigint      NOT NULL,
    tid         bigint      NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now(),
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id()
);
CREATE TABLE IF NOT EXISTS {CURSOR_TABLE} (
    client_id   text   PRIMARY KEY,
    last_id     bigint NOT NULL,
    last_xid    xid8   NOT NULL DEFAULT '0'
);
"""

# Tables created before the transaction-ordered cursor: every existing row gets this
# transaction's id, and every cursor (last_xid, last_id) = (that id, its old last_id),
# which selects exactly the rows the old id-only cursor had not passed yet.
_MIGRATE = f"""
ALTER TABLE {LOG_TABLE} ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE {CURSOR_TABLE} ADD COLUMN last_xid xid8 NOT NULL DEFAULT '0';
UPDATE {CURSOR_TABLE} SET last_xid = pg_current_xact_id();
"""

_INDEX = f"CREATE INDEX IF NOT EXISTS {LOG_TABLE}_order ON {LOG_TABLE} (xid, id)"

_BODY = f"""
BEGIN
    INSERT INTO {LOG_TABLE} (zoid, tid) VALUES (OLD.zoid, OLD.tid);
    RETURN OLD;
END
"""

# SECURITY DEFINER: the row is written with the rights of the function's owner (who
# created the log), not of whoever deletes from object_state. RelStorage's role packs;
# when an administrator set esindexer up (``esindexer setup``) that role has no right on
# the log, and the pack must not fail for it. The search_path is pinned, as a definer
# function must, to the schema the log was created in.
_FUNCTION = (f"CREATE OR REPLACE FUNCTION {CAPTURE_FUNCTION}() RETURNS trigger LANGUAGE plpgsql "
             f"SECURITY DEFINER SET search_path = %s, pg_temp AS $esindexer${_BODY}$esindexer$")


def history_preserving(conn: Any) -> bool:
    with conn.cursor() as cur:
        return keeps_history(cur)


def capture_installed(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_trigger WHERE tgname = %s AND NOT tgisinternal", (CAPTURE_TRIGGER,))
        count: int = cur.fetchone()[0]
        return count > 0


def _tables_current(cur: Any) -> bool:
    return has_relation(cur, CURSOR_TABLE) and _usable(cur)


def _capture_current(cur: Any, table: str) -> bool:
    """Whether the capture function (this body, definer rights) and its trigger are installed."""
    cur.execute("SELECT p.prosrc = %s AND p.prosecdef FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                "WHERE t.tgrelid = to_regclass(%s) AND t.tgname = %s", (_BODY, table, CAPTURE_TRIGGER))
    row = cur.fetchone()
    return bool(row and row[0])


def _create_tables(cur: Any) -> None:
    """Create (or bring up to date) the log and cursor tables in the caller's transaction."""
    if _tables_current(cur):  # no DDL at all when present: a least-privileged role may run none
        return
    cur.execute(_TABLES)
    if not _usable(cur):
        cur.execute(_MIGRATE)
        log.info("deletion log upgraded to the transaction-ordered cursor")
    cur.execute(_INDEX)


def install(conn: Any) -> bool:
    """Create the log, the cursor table and the capture trigger; commit. Idempotent.

    An existing trigger is left alone: dropping one takes an ACCESS EXCLUSIVE lock that
    waits behind every open RelStorage read transaction. Creating one waits at most 10 s
    for its lock (``lock_timeout``) so a busy application is never blocked behind us.
    Returns False (after rolling back only its own work) when the role lacks the rights
    or the lock could not be had.
    """
    table = "current_object" if history_preserving(conn) else "object_state"
    with conn.cursor() as cur:
        present = _tables_current(cur) and _capture_current(cur, table)
    conn.commit()
    if present:
        return True
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '10s'")
            _create_tables(cur)
            cur.execute("SELECT current_schema()")
            cur.execute(_FUNCTION, (cur.fetchone()[0],))
            cur.execute("SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
                        (table, CAPTURE_TRIGGER))
            if cur.fetchone() is None:
                cur.execute(f"CREATE TRIGGER {CAPTURE_TRIGGER} AFTER DELETE ON {table} "
                            f"FOR EACH ROW EXECUTE FUNCTION {CAPTURE_FUNCTION}()")
                log.info("installed the pack-deletion capture trigger on %s", table)
        conn.commit()
        return True
    except NOT_PERMITTED as exc:
        conn.rollback()
        log.warning("cannot install the pack-deletion trigger (%s); packed objects are removed by the "
                    "start-up sweep instead", str(exc).strip())
        return False


def ensure_tables(conn: Any) -> bool:
    """Create the log tables if possible (no trigger). False when not permitted."""
    with conn.cursor() as cur:
        present = _tables_current(cur)
    conn.commit()
    if present:
        return True
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '10s'")
            _create_tables(cur)
        conn.commit()
        return True
    except NOT_PERMITTED:
        conn.rollback()
        return False


def _usable(cur: Any) -> bool:
    """Whether the log exists in its current form (an old one not yet upgraded is not).

    One catalog lookup, resolved through the search_path like :func:`has_relation`: the
    committer asks before every drain, so after every batch."""
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attname = 'xid' AND NOT attisdropped)", (LOG_TABLE,))
    return bool(cur.fetchone()[0])


# The cursor is a position in (xid, id) order, and only rows of transactions older than
# the snapshot's xmin are read: every such transaction has ended, so each of its rows is
# visible now or never will be, and any row that becomes visible later belongs to a
# transaction that is running now or has not started, whose xid is >= that xmin and so
# sorts after the cursor. A row can therefore never appear behind the cursor, whatever
# order concurrent deleting transactions commit in (ids are taken at insert time, which
# is why an id-only cursor lost deletions).
_CURSOR = (
    f"(SELECT COALESCE((SELECT last_xid FROM {CURSOR_TABLE} WHERE client_id = %(client)s), '0'::xid8) AS xid, "
    f"COALESCE((SELECT last_id FROM {CURSOR_TABLE} WHERE client_id = %(client)s), 0) AS id) AS cur"
)


def pending(conn: Any, client_id: str, limit: int = 5000) -> list[tuple[int, int, int, int]]:
    """Up to ``limit`` captured deletions ``(xid, id, zoid, tid)`` this client may apply now,
    in cursor order: those of transactions that have all ended (see the comment above)."""
    with conn.cursor() as cur:
        if not _usable(cur):
            return []
        cur.execute(
            f"SELECT d.xid::text::bigint, d.id, d.zoid, d.tid FROM {LOG_TABLE} d, {_CURSOR} "
            "WHERE (d.xid, d.id) > (cur.xid, cur.id) AND d.xid < pg_snapshot_xmin(pg_current_snapshot()) "
            "ORDER BY d.xid, d.id LIMIT %(limit)s",
            {"client": client_id, "limit": limit},
        )
        return [tuple(row) for row in cur.fetchall()]


def count_unapplied(conn: Any, client_id: str) -> int:
    """Every visible deletion this client has not applied, including those of transactions
    committed so recently that :func:`pending` does not hand them out yet."""
    with conn.cursor() as cur:
        if not has_relation(cur, LOG_TABLE):
            return 0
        if not _usable(cur):  # not upgraded yet: count the old way
            cur.execute(f"SELECT count(*) FROM {LOG_TABLE} WHERE id > COALESCE((SELECT last_id FROM "
                        f"{CURSOR_TABLE} WHERE client_id = %s), 0)", (client_id,))
            return int(cur.fetchone()[0])
        cur.execute(f"SELECT count(*) FROM {LOG_TABLE} d, {_CURSOR} WHERE (d.xid, d.id) > (cur.xid, cur.id)",
                    {"client": client_id})
        return int(cur.fetchone()[0])


def holding_back(conn: Any) -> str | None:
    """The open transaction that keeps the oldest xmin of the server, in words (what holds
    captured deletions back: :func:`pending`); None when none is visible (ended, or this
    role may not see other sessions)."""
    with conn.cursor() as cur:
        cur.execute("SELECT 'prepared transaction ' || quote_literal(gid) || ' since ' || prepared::text "
                    "FROM pg_prepared_xacts ORDER BY age(transaction) DESC LIMIT 1")
        row = cur.fetchone()
        if row is None:
            cur.execute("SELECT 'pid ' || pid || coalesce(' (' || nullif(application_name, '') || ')', '') || ', '"
                        " || coalesce(state, '?') || ' since ' || coalesce(xact_start::text, '?') FROM pg_stat_activity "
                        "WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() "
                        "ORDER BY age(backend_xid) DESC LIMIT 1")
            row = cur.fetchone()
    return str(row[0]) if row else None


def advance(conn: Any, client_id: str, xid: int, last_id: int) -> None:
    """Move this client's cursor to ``(xid, last_id)`` (the caller commits, then calls
    :func:`prune` in a transaction of its own)."""
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {CURSOR_TABLE} AS c (client_id, last_xid, last_id) "
            "VALUES (%s, %s::text::xid8, %s) ON CONFLICT (client_id) DO UPDATE SET "
            "last_xid = EXCLUDED.last_xid, last_id = EXCLUDED.last_id "
            "WHERE (EXCLUDED.last_xid, EXCLUDED.last_id) > (c.last_xid, c.last_id)",
            (client_id, str(xid), last_id),
        )


def prune(conn: Any) -> int:
    """Drop log rows every client has applied; commit. Returns how many.

    Run after the cursor's own commit: of two clients advancing at once, the one that
    prunes last then sees both cursors (an in-transaction prune saw only its own, and
    rows stayed behind). A role that may not delete from the log (an administrator
    created it) merely keeps it.
    """
    try:
        with conn.cursor() as cur:
            if not _usable(cur):
                conn.rollback()
                return 0
            cur.execute(
                f"DELETE FROM {LOG_TABLE} d WHERE (d.xid, d.id) <= (SELECT c.last_xid, c.last_id FROM "
                f"{CURSOR_TABLE} c ORDER BY c.last_xid, c.last_id LIMIT 1)")
            removed: int = cur.rowcount
        conn.commit()
        return max(removed, 0)
    except NOT_PERMITTED:
        conn.rollback()
        return 0


def start_cursor_at_end(conn: Any, client_id: str) -> None:
    """A new client starts after the deletions of every ended transaction: its first sweep
    (or its backfill, which never sees those objects) covers what came before. Deletions of
    transactions still running are after this cursor and are applied."""
    with conn.cursor() as cur:
        if not _usable(cur):
            return
        cur.execute(
            f"INSERT INTO {CURSOR_TABLE} (client_id, last_xid, last_id) "
            "VALUES (%s, pg_snapshot_xmin(pg_current_snapshot()), 0) ON CONFLICT (client_id) DO NOTHING",
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




def logged_zoids(conn: Any, zoids: list[int]) -> set[int]:
    """Which of ``zoids`` have a captured deletion still in the log, applied or not (a row
    is pruned only after every client applied it, that is, deleted its documents)."""
    if not zoids:
        return set()
    with conn.cursor() as cur:
        if not has_relation(cur, LOG_TABLE):
            conn.rollback()
            return set()
        cur.execute(f"SELECT DISTINCT zoid FROM {LOG_TABLE} WHERE zoid = ANY(%s)", (zoids,))
        found = {int(row[0]) for row in cur.fetchall()}
    conn.rollback()
    return found


def unapplied_zoids(conn: Any, client_id: str, zoids: list[int] | None) -> set[int]:
    """Which of ``zoids`` (None: of all objects) have a captured deletion this client has
    not applied yet (a document of theirs still in the index, a record still in its object
    graph, is the service's lag, not drift: ``verify``)."""
    if zoids is not None and not zoids:
        return set()
    with conn.cursor() as cur:
        if not has_relation(cur, LOG_TABLE) or not _usable(cur):
            conn.rollback()
            return set()
        cur.execute(f"SELECT DISTINCT d.zoid FROM {LOG_TABLE} d, {_CURSOR} "
                    "WHERE (d.xid, d.id) > (cur.xid, cur.id) AND (%(all)s OR d.zoid = ANY(%(zoids)s))",
                    {"client": client_id, "zoids": zoids or [], "all": zoids is None})
        found = {int(row[0]) for row in cur.fetchall()}
    conn.rollback()
    return found
