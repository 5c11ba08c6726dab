"""esindexer.source.follow without end_tid: waiting for commits, notifications, polling, stopping.

Latency (commit returned -> batch yielded) is measured and reported, never asserted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import statistics
import threading
import time

import psycopg2

from esindexer.source import follow, notify
from tests.source.follow_support import (
    Follower,
    expected_rows,
    select_only_role,
    tids_of,
    with_params,
    writer,
)
from tests.support import both_history_modes, wait_for

log = logging.getLogger(__name__)


def _precreate(zodb, n):
    """Objects k0..k{n-1}, so that later transaction i can touch only k{i}."""
    with writer(zodb) as w:
        for i in range(n):
            w.add(f"k{i}", i=i)
        return w.commit()


def _report_latency(label, spans):
    """Report (not assert) commit -> batch latency.

    ``spans`` holds (commit started, commit returned, batch yielded) per commit. The
    database COMMIT happens somewhere inside ZODB's two-phase commit, so the latency
    is bracketed: from the start of ``transaction.commit()`` (an upper bound that
    includes the commit's own work) and from its return (a lower bound; negative when
    the follower had the batch before ZODB finished its after-commit work).
    """

    def stats(values):
        ms = sorted(1000 * v for v in values)
        return (f"median {statistics.median(ms):.1f} ms, p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, "
                f"max {ms[-1]:.1f} ms")

    summary = (f"{label}: commit -> batch over {len(spans)} commits; from commit start: "
               f"{stats([seen - s for s, _, seen in spans])}; from commit return: "
               f"{stats([seen - r for _, r, seen in spans])}")
    print(summary)
    log.warning(summary)


@both_history_modes
def test_a_concurrent_writer_is_followed_in_order_exactly_once(db_dsn, zodb, keep_history):
    n = 25
    start = _precreate(zodb, n)
    follower = Follower(db_dsn, start_tid=start, batch_limit=1, internal_batch_size=3)
    follower.start()
    committed: dict[int, tuple[float, float]] = {}
    with writer(zodb) as w:
        # The first commits race with the follower's start (LISTEN, catch-up).
        for i in range(n):
            w.root[f"k{i}"]["i"] = -i
            tid = w.commit()
            committed[tid] = (w.commit_started, w.commit_returned)
            time.sleep(random.uniform(0.01, 0.05))
    try:
        wait_for(lambda: len(follower.rows()) >= n, message="all commits followed")
    finally:
        follower.updates.stop()
        follower.join(30)
    assert not follower.is_alive() and follower.error is None
    rows = follower.rows()
    assert [tid for tid, _, _ in rows] == list(committed)  # in order, each exactly once
    assert rows == expected_rows(db_dsn, keep_history, start)
    assert follower.updates.notifying is True
    assert notify.trigger_installed(db_dsn)
    spans = []
    for seen_at, batch_rows in follower.batches:
        for tid in tids_of(batch_rows):
            spans.append((*committed[tid], seen_at))
    _report_latency(f"{'HP' if keep_history else 'HF'} writer thread", spans[3:])


def test_idle_follower_wakes_on_each_commit(db_dsn, zodb):
    """Latency from an idle wait: one commit at a time, the follower caught up before each."""
    n = 15
    start = _precreate(zodb, n)
    follower = Follower(db_dsn, start_tid=start, poll_timeout=300)
    follower.start()
    latencies = []
    try:
        wait_for(lambda: follower.updates.notifying is not None, message="follower listening")
        with writer(zodb) as w:
            for i in range(n):
                time.sleep(0.05)  # let the follower go back to waiting
                w.root[f"k{i}"]["i"] = -i
                tid = w.commit()
                wait_for(lambda: any(r[0] == tid for r in follower.rows()), interval=0.001,
                         message=f"commit {i}")
                with follower.changed:
                    seen_at = next(t for t, rows in follower.batches if rows[0][0] == tid)
                latencies.append((w.commit_started, w.commit_returned, seen_at))
    finally:
        follower.updates.stop()
        follower.join(30)
    assert follower.error is None and not follower.is_alive()
    assert len(follower.rows()) == n
    _report_latency("idle follower (poll_timeout=300)", latencies)


def test_stop_from_another_thread_while_waiting(db_dsn, zodb):
    follower = Follower(db_dsn, poll_timeout=None)  # would block forever without stop()
    follower.start()
    wait_for(lambda: len(follower.rows()) >= 1, message="catch-up")  # the root object
    time.sleep(0.2)  # now blocked in select()
    assert follower.is_alive()
    follower.updates.stop()
    follower.join(30)
    assert not follower.is_alive() and follower.error is None
    follower.updates.stop()  # idempotent, also after the end


def test_stop_before_iterating_yields_nothing(db_dsn, zodb):
    updates = follow.updates(db_dsn)
    updates.stop()
    assert list(updates) == []


def test_stop_from_a_signal_handler(db_dsn, zodb):
    updates = follow.updates(db_dsn, poll_timeout=None)
    stopped_by = []

    def handler(signum, frame):
        stopped_by.append(signum)
        updates.stop()

    previous = signal.signal(signal.SIGUSR1, handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    watchdog = threading.Timer(30, updates.stop)  # the test must not hang if this breaks
    try:
        timer.start()
        watchdog.start()
        batches = [list(batch) for batch in updates]
    finally:
        timer.cancel()
        watchdog.cancel()
        signal.signal(signal.SIGUSR1, previous)
        updates.close()
    assert stopped_by == [signal.SIGUSR1]
    assert [row[1] for batch in batches for row in batch] == [0]


@both_history_modes
def test_a_role_without_trigger_rights_follows_by_polling(pg_dsn, db_dsn, zodb, keep_history, caplog):
    start = _precreate(zodb, 4)
    with select_only_role(pg_dsn, db_dsn) as ro_dsn:
        assert notify.install_trigger(ro_dsn) is False
        assert not notify.trigger_installed(db_dsn)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="esindexer"):
            follower = Follower(ro_dsn, start_tid=start, poll_interval=0.2, poll_timeout=300)
            follower.start()
            try:
                with writer(zodb) as w:
                    for i in range(3):
                        w.root[f"k{i}"]["i"] = -i
                        w.commit()
                wait_for(lambda: len(follower.rows()) >= 3, message="rows found by polling")
                assert follower.updates.notifying is False
                warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
                assert len(warnings) == 1  # one warning: no trigger, polling every 0.2 s
                assert "polling every 0.2 s" in warnings[0].getMessage()
                # An administrator installs the trigger: the follower notices at its next poll.
                assert notify.install_trigger(db_dsn) is True
                wait_for(lambda: follower.updates.notifying, message="switch to notifications")
                with writer(zodb) as w:
                    w.root["k3"]["i"] = "after install"
                    w.commit()
                wait_for(lambda: len(follower.rows()) >= 4, message="row after install")
            finally:
                follower.updates.stop()
                follower.join(30)
        assert follower.error is None
        assert follower.rows() == expected_rows(db_dsn, keep_history, start)


def test_a_read_only_session_follows_by_polling(db_dsn, zodb):
    """Like a replica: DDL is refused with SQLSTATE 25006, following still works."""
    start = _precreate(zodb, 1)
    ro_dsn = with_params(db_dsn, options="-c default_transaction_read_only=on")
    assert notify.install_trigger(ro_dsn) is False
    follower = Follower(ro_dsn, start_tid=start, poll_interval=0.1)
    follower.start()
    try:
        with writer(zodb) as w:
            w.root["k0"]["i"] = "read-only follower"
            w.commit()
        wait_for(lambda: len(follower.rows()) >= 1, message="polled row")
    finally:
        follower.updates.stop()
        follower.join(30)
    assert follower.error is None and follower.updates.notifying is False


def test_polling_only_when_asked(db_dsn, zodb):
    start = _precreate(zodb, 2)
    follower = Follower(db_dsn, start_tid=start, listen=False, poll_interval=0.1)
    follower.start()
    try:
        with writer(zodb) as w:
            w.root["k1"]["i"] = "polled"
            w.commit()
        wait_for(lambda: len(follower.rows()) >= 1, message="polled row")
    finally:
        follower.updates.stop()
        follower.join(30)
    assert follower.error is None
    assert not notify.trigger_installed(db_dsn)  # listen=False installs nothing


def test_trigger_install_is_idempotent_and_notifies_once_per_commit(db_dsn, zodb):
    start = _precreate(zodb, 5)
    assert notify.install_trigger(db_dsn) is True
    assert notify.install_trigger(db_dsn) is True
    assert notify.trigger_installed(db_dsn)
    with contextlib.closing(psycopg2.connect(db_dsn)) as listener:
        listener.autocommit = True
        with listener.cursor() as cur:
            cur.execute(f"LISTEN {notify.CHANNEL}")
        with writer(zodb) as w:
            for i in range(5):  # several rows per commit
                w.root[f"k{i}"]["i"] = -i
            big = w.commit()
            w.root["k0"]["i"] = 0
            small = w.commit()

        def received():
            listener.poll()
            return len(listener.notifies) >= 2 and listener.notifies

        wait_for(received, message="notifications")
        time.sleep(0.2)
        listener.poll()
        assert [n.payload for n in listener.notifies] == [str(big), str(small)]
    assert start < big
    notify.uninstall_trigger(db_dsn)
    assert not notify.trigger_installed(db_dsn)
    notify.uninstall_trigger(db_dsn)  # idempotent too
    assert notify.install_trigger(db_dsn) is True


def test_trigger_install_on_a_caller_connection_waits_for_its_commit(db_dsn, zodb, pg_conn):
    with pg_conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE pending (x int); INSERT INTO pending VALUES (1)")
    assert notify.install_trigger(pg_conn) is True
    assert not notify.trigger_installed(db_dsn)  # not committed yet
    pg_conn.commit()
    assert notify.trigger_installed(db_dsn)


def test_a_refused_install_keeps_the_callers_pending_work(pg_dsn, db_dsn, zodb):
    with select_only_role(pg_dsn, db_dsn) as ro_dsn, contextlib.closing(psycopg2.connect(ro_dsn)) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE pending (x int); INSERT INTO pending VALUES (1)")
        assert notify.install_trigger(conn) is False
        with conn.cursor() as cur:
            cur.execute("SELECT x FROM pending")
            assert cur.fetchall() == [(1,)]
        conn.rollback()


def test_notifications_do_not_accumulate_on_the_connection(db_dsn, zodb):
    """The caller's (autocommit) connection is also used for LISTEN; its notifies stay short."""
    n = 40
    start = _precreate(zodb, n)
    conn = psycopg2.connect(db_dsn)
    conn.autocommit = True
    longest = 0
    seen = 0
    updates = follow.updates(conn, start_tid=start, batch_limit=1)

    def write():
        with writer(zodb) as w:
            for i in range(n):
                w.root[f"k{i}"]["i"] = -i
                w.commit()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for batch in updates:
            seen += len(list(batch))
            longest = max(longest, len(conn.notifies))
            if seen >= n:
                updates.stop()
    finally:
        thread.join(30)
        updates.close()
    assert seen == n
    assert longest <= 2
    assert conn.notifies == []
    assert not conn.closed  # the caller's connection stays open...
    with conn.cursor() as cur:  # ...and no longer listens
        cur.execute("SELECT pg_listening_channels()")
        assert cur.fetchall() == []
    conn.close()


def test_following_an_empty_database_waits_for_the_first_commit(db_dsn):
    import ZODB
    from psycopg2.extensions import make_dsn, parse_dsn
    from relstorage.adapters.postgresql import PostgreSQLAdapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage

    options = Options(keep_history=False, cache_local_mb=0)
    adapter = PostgreSQLAdapter(dsn=make_dsn(**parse_dsn(db_dsn)), options=options)
    RelStorage(adapter, options=options).close()  # schema only, no rows
    follower = Follower(db_dsn)
    follower.start()
    try:
        time.sleep(0.3)
        assert follower.rows() == [] and follower.is_alive()
        db = ZODB.DB(RelStorage(PostgreSQLAdapter(dsn=make_dsn(**parse_dsn(db_dsn)), options=options),
                                options=options))  # commits the root object
        db.close()
        wait_for(lambda: follower.rows(), message="root object")
    finally:
        follower.updates.stop()
        follower.join(30)
    assert [zoid for _, zoid, _ in follower.rows()] == [0]


def test_live_on_a_non_autocommit_caller_connection(db_dsn, zodb, pg_conn):
    """LISTEN and reads on the caller's connection, left idle and unlistened afterwards."""
    start = _precreate(zodb, 2)
    follower = Follower(pg_conn, start_tid=start)
    follower.start()
    try:
        wait_for(lambda: follower.updates.notifying, message="listening with the trigger")
        with writer(zodb) as w:
            w.root["k1"]["i"] = "noticed"
            tid = w.commit()
        wait_for(lambda: follower.rows(), message="notified row")
    finally:
        follower.updates.stop()
        follower.join(30)
    assert follower.error is None
    assert [row[0] for row in follower.rows()] == [tid]
    assert pg_conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    with pg_conn.cursor() as cur:
        cur.execute("SELECT pg_listening_channels()")
        assert cur.fetchall() == []
    pg_conn.rollback()
