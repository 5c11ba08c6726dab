"""Saved progress: round trip, upsert, and whose transaction commits what."""

from __future__ import annotations

import contextlib

import psycopg2
import psycopg2.errors
import pytest

from esindexer.source import follow, progress
from esindexer.source.progress import PROGRESS_TABLE
from tests.source.follow_support import select_only_role

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


def _table_exists(dsn) -> bool:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (PROGRESS_TABLE,))
        return cur.fetchone()[0]


def test_round_trip_with_a_dsn(db_dsn):
    assert progress.get_progress_tid(db_dsn, "a.client") == -1
    assert not _table_exists(db_dsn)  # a lookup creates nothing
    progress.set_progress_tid(db_dsn, "a.client", 1234)  # commits: it opened the connection
    assert progress.get_progress_tid(db_dsn, "a.client") == 1234
    progress.set_progress_tid(db_dsn, "a.client", 5678)  # upsert
    progress.set_progress_tid(db_dsn, "b.client", 42)
    assert progress.get_progress_tid(db_dsn, "a.client") == 5678
    assert progress.get_progress_tid(db_dsn, "b.client") == 42
    assert progress.get_progress_tid(db_dsn, "c.client") == -1
    with contextlib.closing(psycopg2.connect(db_dsn)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT client_id, tid, updated_at IS NOT NULL FROM {PROGRESS_TABLE} ORDER BY 1")
        assert cur.fetchall() == [("a.client", 5678, True), ("b.client", 42, True)]


def test_set_on_a_connection_is_committed_by_the_caller(db_dsn, pg_conn):
    with pg_conn.cursor() as cur:  # the caller's own pending work
        cur.execute("CREATE TABLE caller_work (x int); INSERT INTO caller_work VALUES (1)")
    progress.set_progress_tid(pg_conn, "c", 7)  # creates the table inside a savepoint
    assert pg_conn.info.transaction_status != IDLE  # not committed by set_progress_tid
    assert progress.get_progress_tid(pg_conn, "c") == 7  # visible in the caller's transaction
    assert progress.get_progress_tid(db_dsn, "c") == -1  # not outside it
    assert not _table_exists(db_dsn)  # the DDL is part of the caller's transaction
    pg_conn.commit()
    assert progress.get_progress_tid(db_dsn, "c") == 7
    with pg_conn.cursor() as cur:
        cur.execute("SELECT x FROM caller_work")
        assert cur.fetchall() == [(1,)]  # the caller's work was not rolled back
    pg_conn.rollback()

    # Rolled back with the caller's transaction, too.
    progress.set_progress_tid(pg_conn, "c", 8)
    pg_conn.rollback()
    assert progress.get_progress_tid(db_dsn, "c") == 7


def test_get_on_an_idle_connection_leaves_it_idle(db_dsn, pg_conn):
    progress.set_progress_tid(db_dsn, "d", 9)
    assert progress.get_progress_tid(pg_conn, "d") == 9
    assert pg_conn.info.transaction_status == IDLE


def test_autocommit_connections_commit_each_statement(db_dsn, pg_conn):
    pg_conn.autocommit = True
    progress.set_progress_tid(pg_conn, "e", 10)
    assert progress.get_progress_tid(db_dsn, "e") == 10


def test_a_failed_table_creation_keeps_the_callers_pending_work(pg_dsn, db_dsn, zodb):
    with select_only_role(pg_dsn, db_dsn) as ro_dsn, contextlib.closing(psycopg2.connect(ro_dsn)) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE pending (x int); INSERT INTO pending VALUES (1)")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            progress.set_progress_tid(conn, "ro", 1)
        with conn.cursor() as cur:  # the transaction is still alive, with its work
            cur.execute("SELECT x FROM pending")
            assert cur.fetchall() == [(1,)]
        assert progress.get_progress_tid(conn, "ro") == -1
        conn.rollback()


def test_progress_feeds_start_tid(db_dsn, zodb):
    """The documented loop: follow to the end, save the last tid, resume after it."""
    from tests.source.follow_support import writer

    first = [list(b) for b in follow.updates(db_dsn, end_tid=follow.latest_tid(db_dsn))]
    progress.set_progress_tid(db_dsn, "loop", first[-1][-1][0])
    with writer(zodb) as w:
        w.add("new", x=1)
        tid = w.commit()
    start = progress.get_progress_tid(db_dsn, "loop")
    resumed = [list(b) for b in follow.updates(db_dsn, start_tid=start, end_tid=follow.latest_tid(db_dsn))]
    assert {row[0] for batch in resumed for row in batch} == {tid}


def test_sessions_saving_their_first_progress_at_once_all_succeed(db_dsn):
    """The table is created by the first save; sessions that race to create it (the
    partitions of one client starting together) must not fail. Before the fix this lost
    the race 4 times in 30 rounds of 6 sessions, as a duplicate type or table."""
    import threading

    failures: list[str] = []
    for round_ in range(40):
        conns = [psycopg2.connect(db_dsn) for _ in range(6)]
        barrier = threading.Barrier(len(conns))

        def save(i: int, conn) -> None:
            barrier.wait()
            try:
                progress.set_progress_tid(conn, f"client-{i}", round_ * 10 + i)
                conn.commit()
            except psycopg2.Error as exc:
                failures.append(f"round {round_}: {type(exc).__name__}: {exc}".strip())

        threads = [threading.Thread(target=save, args=(i, conn)) for i, conn in enumerate(conns)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for conn in conns:
            conn.close()
        assert not failures, failures
        assert [progress.get_progress_tid(db_dsn, f"client-{i}") for i in range(6)] == \
            [round_ * 10 + i for i in range(6)]
        with contextlib.closing(psycopg2.connect(db_dsn)) as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE {PROGRESS_TABLE}")
            conn.commit()
