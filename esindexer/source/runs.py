"""The crash guard's table: one row per client id recording how its last run ended.

Written twice per process life (at start, and at a Python-level exit); read at start
and by ``esindexer status``. The policy that reads it is
:mod:`esindexer.pipeline.crashguard`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from esindexer.source.pg import LOCK_CLASS, NOT_PERMITTED, has_relation

TABLE = "esindexer_crash_guard"


DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    client_id      text        PRIMARY KEY,
    run_id         text        NOT NULL,
    running        boolean     NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz,
    host           text,
    pid            integer,
    start_tid      bigint      NOT NULL,
    death_tid      bigint,
    unclean_exits  integer     NOT NULL DEFAULT 0,
    guard_until    bigint
);
"""




@dataclass(frozen=True)
class GuardRow:
    run_id: str
    running: bool
    started_at: Any
    ended_at: Any
    start_tid: int
    death_tid: int | None
    unclean_exits: int
    guard_until: int | None

    COLUMNS = "run_id, running, started_at, ended_at, start_tid, death_tid, unclean_exits, guard_until"


def ensure_table(conn: Any) -> bool:
    """Create the table if missing, in a savepoint of the caller's transaction.

    Returns False (the guard is off) when the role may not create it and nobody else did
    (``IF NOT EXISTS`` still needs the right to create); any other error is raised, as
    for the dead-letter table.
    """
    with conn.cursor() as cur:
        if has_relation(cur, TABLE):  # present: no DDL, which a least-privileged role may not run
            return True
        cur.execute("SAVEPOINT esindexer_crash_guard_ddl")
        try:
            cur.execute(DDL)
        except NOT_PERMITTED:
            cur.execute("ROLLBACK TO SAVEPOINT esindexer_crash_guard_ddl")
            return has_relation(cur, TABLE)
        except Exception:
            cur.execute("ROLLBACK TO SAVEPOINT esindexer_crash_guard_ddl")
            raise
        cur.execute("RELEASE SAVEPOINT esindexer_crash_guard_ddl")
    return True


def read_row(conn: Any, client_id: str) -> GuardRow | None:
    with conn.cursor() as cur:
        if not has_relation(cur, TABLE):
            return None
        cur.execute(f"SELECT {GuardRow.COLUMNS} FROM {TABLE} WHERE client_id = %s", (client_id,))
        found = cur.fetchone()
    return GuardRow(*found) if found is not None else None



def mark_running(conn: Any, client_id: str, run_id: str, progress: int, death_tid: int | None,
                 unclean_exits: int, guard_until: int | None) -> None:
    """Record this run as running (in a savepoint of the caller's transaction; the caller
    commits). Raises one of :data:`NOT_PERMITTED` (rolled back to the savepoint) when the
    role may not write the table."""
    with conn.cursor() as cur:
        cur.execute("SAVEPOINT esindexer_crash_guard")
        try:
            cur.execute(
                f"INSERT INTO {TABLE} (client_id, run_id, running, started_at, ended_at, host, pid, start_tid, "
                "death_tid, unclean_exits, guard_until) VALUES (%s, %s, true, now(), NULL, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (client_id) DO UPDATE SET run_id = EXCLUDED.run_id, running = true, "
                "started_at = now(), ended_at = NULL, host = EXCLUDED.host, pid = EXCLUDED.pid, "
                "start_tid = EXCLUDED.start_tid, death_tid = EXCLUDED.death_tid, "
                "unclean_exits = EXCLUDED.unclean_exits, guard_until = EXCLUDED.guard_until",
                (client_id, run_id, socket.gethostname(), os.getpid(), progress, death_tid, unclean_exits,
                 guard_until))
        except NOT_PERMITTED:
            cur.execute("ROLLBACK TO SAVEPOINT esindexer_crash_guard")
            raise
        cur.execute("RELEASE SAVEPOINT esindexer_crash_guard")


def mark_clean_exit(conn: Any, client_id: str, run_id: str) -> None:
    """Record a Python-level exit of ``run_id`` (only that run's row); commits."""
    with conn.cursor() as cur:
        cur.execute(f"UPDATE {TABLE} SET running = false, ended_at = now(), unclean_exits = 0, "
                    "death_tid = NULL WHERE client_id = %s AND run_id = %s", (client_id, run_id))
    conn.commit()


def _advisory_held(conn: Any, lock_class: int, client_id: str) -> bool:
    """Whether some session holds the advisory lock ``(lock_class, hashtext(client_id))``
    in this database now (read from ``pg_locks``, without taking it)."""
    with conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND classid = %s::oid AND objid = hashtext(%s)::oid AND objsubid = 2)",
                    (lock_class, client_id))
        held = bool(cur.fetchone()[0])
    conn.rollback()
    return held


def client_running(conn: Any, client_id: str) -> bool:
    """Whether a process holds ``client_id``'s advisory lock in this database now."""
    return _advisory_held(conn, LOCK_CLASS, client_id)


#: Advisory lock namespace in which a hot standby holds a *shared* lock on its client id
#: while it waits ("es" + 3). Its own client lock it only tries, so without this nothing
#: in ``pg_locks`` would tell that a process waits to take a client id over; ``esindexer
#: reindex`` looks for it to hand the new generation over to the restarted service.
STANDBY_CLASS = 0x65730003


def announce_standby(conn: Any, client_id: str) -> None:
    """Say, for as long as ``conn``'s session lives or until :func:`withdraw_standby`,
    that this process stands by for ``client_id`` (a shared lock: several may wait)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock_shared(%s, hashtext(%s))", (STANDBY_CLASS, client_id))
    conn.commit()


def withdraw_standby(conn: Any, client_id: str) -> None:
    """Undo one :func:`announce_standby` on the same session (the standby took over)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock_shared(%s, hashtext(%s))", (STANDBY_CLASS, client_id))
    conn.commit()


def standby_waiting(conn: Any, client_id: str) -> bool:
    """Whether some process stands by for ``client_id`` in this database now."""
    return _advisory_held(conn, STANDBY_CLASS, client_id)
