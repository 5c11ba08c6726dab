"""The active process's lease and the standbys' queue: two tables beside the client lock.

The client's advisory lock (:func:`esindexer.source.pg.try_lock_client`) lives as long as
the PostgreSQL session that took it. A process that is stopped (SIGSTOP), frozen or
stuck keeps its session, so the lock alone never lets a standby replace it. Hence::

    esindexer_lease (                      -- one row per client id: who indexes
        client_id   text PRIMARY KEY,
        epoch       bigint NOT NULL,       -- +1 at every takeover: the fencing token
        backend_pid integer NOT NULL,      -- the holder's lock session (pg_backend_pid())
        holder      text NOT NULL,         -- host:pid of the holding process, for people
        taken_at    timestamptz NOT NULL,
        renewed_at  timestamptz NOT NULL   -- renewed every few seconds while it works
    )
    esindexer_standbys (                   -- who waits, in arrival order
        client_id   text, member text,     -- member: one id per process
        backend_pid integer NOT NULL, holder text NOT NULL,
        since       timestamptz NOT NULL,  -- when it started waiting (kept over reconnects)
        seen_at     timestamptz NOT NULL,  -- refreshed at every poll
        PRIMARY KEY (client_id, member)
    )

- The holder claims the lease right after taking the lock (:func:`claim`, a new epoch)
  and renews it (:func:`renew`, which fails once the epoch moved on). Saving progress
  checks the epoch in the same transaction (:func:`check`), so a replaced process can
  never write progress again, whatever it still has in flight.
- A standby that finds the lease older than the lease time while work is pending
  ends the holder's session (:func:`stale_holder`, :func:`terminate`), which frees the
  lock; only the session that holds the lock *and* is named by the lease is ever ended.
- Standbys queue (:func:`register`, :func:`first_in_line`): a process tries the lock
  only when no live standby has waited longer, so a standby that waited wins over a
  process started at the moment the lock is freed.

Times are the server's (``clock_timestamp()``), so hosts' clocks do not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from esindexer.source import follow, progress
from esindexer.source.pg import LOCK_CLASS, has_relation, run_ddl

TABLE = "esindexer_lease"
STANDBY_TABLE = "esindexer_standbys"

DDL = (f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    client_id   text        PRIMARY KEY,
    epoch       bigint      NOT NULL,
    backend_pid integer     NOT NULL,
    holder      text        NOT NULL,
    taken_at    timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL
)""", f"""
CREATE TABLE IF NOT EXISTS {STANDBY_TABLE} (
    client_id   text        NOT NULL,
    member      text        NOT NULL,
    backend_pid integer     NOT NULL,
    holder      text        NOT NULL,
    since       timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL,
    PRIMARY KEY (client_id, member)
)""")


class LostLease(RuntimeError):
    """This process no longer holds the client's lease: another one took over (``taken``),
    or it gives the lease up (not renewed in time, or its pipeline hangs). It must not
    write anything more."""

    def __init__(self, message: str, taken: bool = True) -> None:
        super().__init__(message)
        self.taken = taken


@dataclass(frozen=True)
class Holder:
    """The lease's current holder, as a standby sees it."""

    epoch: int
    backend_pid: int
    holder: str
    age: float  #: seconds since the last renewal


def ensure_tables(conn: Any) -> bool:
    """Create both tables if missing, in a savepoint of the caller's transaction; False
    when the role may not create them and they do not exist (the lease is then off)."""
    with conn.cursor() as cur:
        if has_relation(cur, TABLE) and has_relation(cur, STANDBY_TABLE):
            return True  # no DDL, which a least-privileged role may not run
        return run_ddl(cur, DDL, "esindexer_lease_ddl")


def claim(conn: Any, client_id: str, holder: str) -> tuple[int, str | None]:
    """Record the caller's session (which holds the client lock) as the holder, with the
    next epoch; returns ``(epoch, previous holder or None)``. The caller commits."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT holder FROM {TABLE} WHERE client_id = %s FOR UPDATE", (client_id,))
        row = cur.fetchone()
        cur.execute(
            f"INSERT INTO {TABLE} (client_id, epoch, backend_pid, holder, taken_at, renewed_at) "
            "VALUES (%s, 1, pg_backend_pid(), %s, clock_timestamp(), clock_timestamp()) "
            "ON CONFLICT (client_id) DO UPDATE SET epoch = {table}.epoch + 1, backend_pid = EXCLUDED.backend_pid, "
            "holder = EXCLUDED.holder, taken_at = EXCLUDED.taken_at, renewed_at = EXCLUDED.renewed_at "
            "RETURNING epoch".format(table=TABLE), (client_id, holder))
        epoch = int(cur.fetchone()[0])
    return epoch, (None if row is None else str(row[0]))


def renew(conn: Any, client_id: str, epoch: int) -> bool:
    """Renew the lease of ``epoch``; False when another process has claimed it since.
    The caller commits."""
    with conn.cursor() as cur:
        cur.execute(f"UPDATE {TABLE} SET renewed_at = clock_timestamp() WHERE client_id = %s AND epoch = %s",
                    (client_id, epoch))
        return bool(cur.rowcount == 1)


def check(conn: Any, client_id: str, epoch: int) -> None:
    """Raise :class:`LostLease` unless ``epoch`` is still the lease's, and keep it so until
    the caller's transaction ends: progress saved in this transaction is the holder's, or
    none at all. ``FOR KEY SHARE`` conflicts with a takeover's :func:`claim` (``FOR
    UPDATE``), which therefore waits for this transaction, but not with :func:`renew`
    (a non-key update), so a committer blocked here never blocks the renewal."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT epoch FROM {TABLE} WHERE client_id = %s FOR KEY SHARE", (client_id,))
        row = cur.fetchone()
    if row is None or int(row[0]) != epoch:
        raise LostLease(f"another esindexer took over client id {client_id!r} (lease epoch "
                        f"{'none' if row is None else row[0]}, this process had {epoch})")


def stale_holder(conn: Any, client_id: str, lease_seconds: float) -> Holder | None:
    """The holder whose lease is older than ``lease_seconds``, if the session it names
    still holds the client lock (a holder that just took the lock and has not claimed yet
    is not named, so it is never taken for stale)."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT e.epoch, e.backend_pid, e.holder, extract(epoch FROM clock_timestamp() - e.renewed_at) "
            f"FROM {TABLE} e JOIN pg_locks l ON l.pid = e.backend_pid AND l.locktype = 'advisory' AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = %s::oid AND l.objid = hashtext(%s)::oid AND l.objsubid = 2 "
            "WHERE e.client_id = %s AND e.renewed_at < clock_timestamp() - make_interval(secs => %s)",
            (LOCK_CLASS, client_id, client_id, lease_seconds))
        row = cur.fetchone()
    return None if row is None else Holder(int(row[0]), int(row[1]), str(row[2]), float(row[3]))


def work_pending(conn: Any, client_id: str) -> bool:
    """Whether transactions are committed after the client's saved progress."""
    return follow.latest_tid(conn) > progress.get_progress_tid(conn, client_id)


def backend_working(conn: Any, backend_pid: int) -> bool:
    """Whether a PostgreSQL session is running a statement now, and not waiting for a
    lock: PostgreSQL's own word that a long statement of the pipeline's is progressing
    (a session stuck between statements is idle; one queued behind a lock could wait for
    ever). Sessions of the same role are visible to each other in ``pg_stat_activity``."""
    with conn.cursor() as cur:
        cur.execute("SELECT state = 'active' AND wait_event_type IS DISTINCT FROM 'Lock' "
                    "FROM pg_stat_activity WHERE pid = %s", (backend_pid,))
        row = cur.fetchone()
    return bool(row and row[0])


def terminate(conn: Any, backend_pid: int) -> bool:
    """End a PostgreSQL session (its locks are freed as it exits). Needs the session's own
    role (or membership in ``pg_signal_backend``); raises InsufficientPrivilege otherwise."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
        return bool(cur.fetchone()[0])


def register(conn: Any, client_id: str, member: str, holder: str) -> None:
    """Join (or stay in) the client's queue of standbys; a reconnect keeps the place
    (``since``). The caller commits."""
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {STANDBY_TABLE} (client_id, member, backend_pid, holder, since, seen_at) "
            "VALUES (%s, %s, pg_backend_pid(), %s, clock_timestamp(), clock_timestamp()) "
            "ON CONFLICT (client_id, member) DO UPDATE SET backend_pid = EXCLUDED.backend_pid, "
            "seen_at = EXCLUDED.seen_at", (client_id, member, holder))


def first_in_line(conn: Any, client_id: str, member: str, fresh_seconds: float) -> bool:
    """Whether no live standby of the client has waited longer than ``member`` (live: its
    session exists and it polled within ``fresh_seconds``; a stopped or dead one is passed)."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT NOT EXISTS (SELECT 1 FROM {STANDBY_TABLE} s, {STANDBY_TABLE} me "
            "WHERE me.client_id = %s AND me.member = %s AND s.client_id = me.client_id AND s.member <> me.member "
            "AND (s.since, s.member) < (me.since, me.member) "
            "AND s.seen_at > clock_timestamp() - make_interval(secs => %s) "
            "AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = s.backend_pid))",
            (client_id, member, fresh_seconds))
        return bool(cur.fetchone()[0])


def unregister(conn: Any, client_id: str, member: str, forget_after: float) -> None:
    """Leave the queue, and drop the rows of standbys not seen for ``forget_after`` s
    (processes killed while waiting). The caller commits."""
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {STANDBY_TABLE} WHERE client_id = %s AND (member = %s "
                    "OR seen_at < clock_timestamp() - make_interval(secs => %s))", (client_id, member, forget_after))


def holder_of(conn: Any, client_id: str) -> tuple[int, str] | None:
    """``(epoch, holder)`` of the client's lease now, or None without one."""
    with conn.cursor() as cur:
        if not has_relation(cur, TABLE):
            return None
        cur.execute(f"SELECT epoch, holder FROM {TABLE} WHERE client_id = %s", (client_id,))
        row = cur.fetchone()
    conn.rollback()
    return None if row is None else (int(row[0]), str(row[1]))
