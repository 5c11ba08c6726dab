"""The lease and the standbys' queue, statement by statement, on a real PostgreSQL: who is
first in line, which holder is stale, and the fencing check's lock against a takeover."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest
import transaction

from esindexer.source import lease, pg
from esindexer.source.lease import LostLease
from esindexer.source.progress import set_progress_tid
from tests.indexing import Page
from tests.support import scalar, wait_for


def _connect(db_dsn: str):
    conn = psycopg2.connect(db_dsn)
    with pg.schema_lock(conn):
        assert lease.ensure_tables(conn)
        conn.commit()
    return conn


def test_claim_counts_epochs_and_a_renewal_of_an_old_epoch_fails(db_dsn):
    first, second = _connect(db_dsn), _connect(db_dsn)
    try:
        assert lease.claim(first, "c", "host:1") == (1, None)
        first.commit()
        assert lease.renew(first, "c", 1)
        first.commit()
        assert lease.claim(second, "c", "host:2") == (2, "host:1")
        second.commit()
        assert not lease.renew(first, "c", 1)  # the old holder learns it lost
        first.rollback()
        with pytest.raises(LostLease, match="epoch 2, this process had 1"):
            lease.check(first, "c", 1)
        first.rollback()
        lease.check(second, "c", 2)
        second.rollback()
        assert lease.holder_of(first, "c") == (2, "host:2")
    finally:
        first.close()
        second.close()


def test_the_fencing_check_holds_off_a_takeover_but_not_a_renewal(db_dsn):
    holder, renewer, taker = _connect(db_dsn), _connect(db_dsn), _connect(db_dsn)
    try:
        lease.claim(holder, "c", "host:1")
        holder.commit()
        lease.check(holder, "c", 1)  # a progress save's transaction, still open
        assert lease.renew(renewer, "c", 1)  # not blocked by it
        renewer.commit()
        claimed: list[int] = []
        thread = threading.Thread(target=lambda: (claimed.append(lease.claim(taker, "c", "host:2")[0]),
                                                  taker.commit()))
        thread.start()
        time.sleep(0.5)
        assert claimed == []  # the takeover waits for the save to commit or fail
        holder.commit()
        thread.join(10)
        assert claimed == [2]
    finally:
        for conn in (holder, renewer, taker):
            conn.close()


def test_the_queue_is_in_arrival_order_and_passes_standbys_that_are_gone_or_silent(db_dsn):
    a, b, c = _connect(db_dsn), _connect(db_dsn), _connect(db_dsn)
    try:
        for conn, member in ((a, "a"), (b, "b"), (c, "c")):
            lease.register(conn, "x", member, f"host:{member}")
            conn.commit()
            time.sleep(0.01)
        assert [lease.first_in_line(conn, "x", m, 5.0) for conn, m in ((a, "a"), (b, "b"), (c, "c"))] == \
            [True, False, False]
        for conn in (a, b, c):
            conn.rollback()
        lease.register(b, "x", "b", "host:b")  # polling keeps the place
        b.commit()
        assert not lease.first_in_line(b, "x", "b", 5.0)
        b.rollback()
        a_pid = a.info.backend_pid
        a.close()  # its session is gone: passed as soon as the server has ended it
        wait_for(lambda: not scalar(db_dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (a_pid,)),
                 timeout=10, interval=0.02, message="the closed session's backend to end")
        assert lease.first_in_line(b, "x", "b", 5.0) and not lease.first_in_line(c, "x", "c", 5.0)
        b.rollback()
        c.rollback()
        time.sleep(0.3)  # b stops polling (SIGSTOP): passed once not seen for the freshness limit
        lease.register(c, "x", "c", "host:c")
        c.commit()
        assert lease.first_in_line(c, "x", "c", 0.2)
        c.rollback()
        lease.unregister(c, "x", "c", forget_after=0.1)  # leaves, and forgets rows not seen for 0.1 s
        c.commit()
        with c.cursor() as cur:
            cur.execute(f"SELECT member FROM {lease.STANDBY_TABLE}")
            assert cur.fetchall() == []
        c.rollback()
    finally:
        for conn in (a, b, c):
            conn.close()


def test_a_stale_holder_is_the_session_that_holds_the_lock_and_is_named_by_an_old_lease(zodb, db_dsn):
    conn = zodb.open()
    conn.root()["page"] = Page("one")
    transaction.commit()
    conn.close()
    active, standby = _connect(db_dsn), _connect(db_dsn)
    try:
        assert pg.try_lock_client(active, "esindexer")
        lease.claim(active, "esindexer", "host:1")
        active.commit()
        assert lease.stale_holder(standby, "esindexer", 0.5) is None  # renewed just now
        time.sleep(0.7)
        stale = lease.stale_holder(standby, "esindexer", 0.5)
        assert stale is not None and stale.backend_pid == active.get_backend_pid() and stale.holder == "host:1"
        assert stale.age >= 0.5
        assert lease.work_pending(standby, "esindexer")  # nothing saved yet, one commit
        set_progress_tid(db_dsn, "esindexer", 2 ** 62)
        assert not lease.work_pending(standby, "esindexer")
        assert lease.terminate(standby, stale.backend_pid)
        standby.commit()
        deadline = time.monotonic() + 5
        while not pg.try_lock_client(standby, "esindexer"):  # freed as the session exits
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The lease still names the ended session, which no longer holds the lock: not stale.
        assert lease.stale_holder(standby, "esindexer", 0.5) is None
    finally:
        active.close()
        standby.close()
