"""SourcePoller against real PostgreSQL databases written through ZODB + RelStorage."""

from __future__ import annotations

import logging
import time

import psycopg2
import pytest
import transaction
from ZODB.utils import u64

from esindexer.observe.http import HealthServer
from esindexer.observe.metrics import Metrics
from esindexer.observe.poller import SourcePoller
from tests.observe.support import reference_tid_to_epoch
from tests.support import both_history_modes, fresh_database, open_zodb, scalar, wait_for


def commit(db, key: str, value: object) -> int:
    """Write ``root[key] = value`` in its own transaction; return the committed tid."""
    conn = db.open()
    try:
        root = conn.root()
        root[key] = value
        transaction.commit()
        return u64(root._p_serial)  # the modified root carries the new tid
    finally:
        conn.close()


def max_tid(dsn: str) -> int:
    return int(scalar(dsn, "SELECT max(tid) FROM object_state"))


@pytest.fixture
def pollers():
    started: list[SourcePoller] = []

    def make(dsn_or_fn, metrics: Metrics, **kwargs) -> SourcePoller:
        connect = dsn_or_fn if callable(dsn_or_fn) else (
            lambda: psycopg2.connect(dsn_or_fn, connect_timeout=5))
        poller = SourcePoller(connect, metrics, **kwargs)
        started.append(poller)
        return poller

    yield make
    for poller in started:
        poller.stop()


@both_history_modes
def test_source_latest_tid_follows_commits(zodb, db_dsn, pollers):
    m = Metrics(process_metrics=False)
    first = commit(zodb, "a", 1)
    poller = pollers(db_dsn, m, interval=0.05)
    assert poller.poll_once()
    assert m.source_status() == (True, None)
    assert m._snapshot().source_tid == first == max_tid(db_dsn)

    poller.start()
    second = commit(zodb, "b", 2)
    assert second > first
    wait_for(lambda: m._snapshot().source_tid == second, timeout=20, message="poller sees commit")
    assert m._snapshot().source_epoch == pytest.approx(reference_tid_to_epoch(second))


def test_empty_object_state_is_reachable_and_not_lagging(db_dsn, pollers):
    """A database whose schema exists but has no rows yet: reachable, tid -1, lag 0."""
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        # Only the shape of RelStorage's table matters to the poller's query.
        cur.execute("CREATE TABLE object_state (zoid bigint PRIMARY KEY, tid bigint NOT NULL)")
    conn.close()
    m = Metrics(process_metrics=False)
    assert pollers(db_dsn, m).poll_once()
    assert m._snapshot().source_tid == -1
    assert m.lag_seconds() == 0.0


def test_lag_grows_while_last_indexed_stays(zodb, db_dsn, pollers):
    m = Metrics(process_metrics=False)
    indexed = commit(zodb, "a", 1)
    m.record_progress(indexed)
    poller = pollers(db_dsn, m, interval=0.05)
    poller.start()
    wait_for(lambda: m._snapshot().source_tid == indexed, timeout=20, message="first poll")
    assert m.lag_seconds() == 0.0

    lags = []
    for i in range(3):
        time.sleep(0.02)  # distinct commit times, so each lag is strictly larger
        newest = commit(zodb, f"k{i}", i)
        wait_for(lambda: m._snapshot().source_tid == newest, timeout=20, message="poll")
        lags.append(m.lag_seconds())
        assert lags[-1] == pytest.approx(
            reference_tid_to_epoch(newest) - reference_tid_to_epoch(indexed), abs=1e-5)
    assert 0 < lags[0] < lags[1] < lags[2]

    m.record_progress(newest)
    assert m.lag_seconds() == 0.0


def test_readiness_flips_when_postgresql_goes_away_and_back(pg_dsn, zodb, db_dsn, pollers,
                                                             caplog):
    """Drop the polled database: not ready, one warning; point it back: ready again."""
    caplog.set_level(logging.DEBUG, logger="esindexer.observe.poller")
    m = Metrics(process_metrics=False)
    health = HealthServer(m, stall_after=3600)
    target: dict[str, str] = {}

    def connect():
        return psycopg2.connect(target["dsn"], connect_timeout=5)

    with fresh_database(pg_dsn, prefix="esit_gone") as doomed_dsn:
        doomed = open_zodb(doomed_dsn, keep_history=False)
        tid = commit(doomed, "a", 1)
        doomed.close()
        target["dsn"] = doomed_dsn
        m.record_progress(tid)
        poller = pollers(connect, m, interval=0.05, max_backoff=0.2)
        poller.start()
        wait_for(lambda: m.source_status()[0], timeout=20, message="first successful poll")
        assert health.readiness() == (True, [])
    # Leaving the block ran DROP DATABASE ... WITH (FORCE), killing the poller's session.

    wait_for(lambda: not health.readiness()[0], timeout=20, message="not ready")
    ready, reasons = health.readiness()
    # killed mid-session: unreachable; reconnecting then finds the database gone, which the
    # poller names as the refusal it is (the service itself exits 2 on that)
    assert reasons[0].startswith(("PostgreSQL unreachable: ", "PostgreSQL refused the connection: ")), reasons
    wait_for(lambda: poller._failures >= 3, timeout=20, message="several failed attempts")
    warnings = [r for r in caplog.records if r.name == "esindexer.observe.poller" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # one per outage, not one per attempt

    # The database "comes back" (at another name: the dropped one is gone for good).
    target["dsn"] = db_dsn
    newest = commit(zodb, "b", 2)
    wait_for(lambda: m.source_status() == (True, None), timeout=20, message="recovery")
    assert m._snapshot().source_tid == newest
    m.record_progress(newest)
    assert health.readiness() == (True, [])
    assert any(r.message == "source poll recovered" for r in caplog.records)


def test_stop_is_prompt_and_closes_the_connection(zodb, db_dsn, pollers):
    m = Metrics(process_metrics=False)
    opened = []

    def connect():
        conn = psycopg2.connect(db_dsn)
        opened.append(conn)
        return conn

    poller = pollers(connect, m, interval=3600)  # would sleep an hour between polls
    poller.start()
    wait_for(lambda: m.source_status()[0], timeout=20, message="first poll")
    thread = poller._thread
    poller.stop()
    assert thread is not None and not thread.is_alive()
    assert len(opened) == 1 and opened[0].closed


def test_a_database_without_relstorage_tables_is_named_as_such(db_dsn, pollers):
    m = Metrics(process_metrics=False)
    poller = pollers(db_dsn, m)
    assert poller.poll_once() is False
    reachable, reason = m.source_status()
    assert reachable is False
    assert "no RelStorage table object_state" in reason and "ESINDEXER_PG_DSN" in reason


def test_a_missing_grant_is_not_called_unreachable(zodb, db_dsn, caplog):
    """Issue 26.7: a role without SELECT on object_state was reported as "PostgreSQL unreachable:
    InsufficientPrivilege"; the server answered, it refused."""
    from tests.source.follow_support import select_only_role

    zodb.open().close()
    with select_only_role(db_dsn, db_dsn) as role_dsn:
        with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
            cur.execute(f"REVOKE SELECT ON object_state FROM {psycopg2.extensions.parse_dsn(role_dsn)['user']}")
        conn.close()
        metrics = Metrics(process_metrics=False)
        poller = SourcePoller(lambda: psycopg2.connect(role_dsn), metrics)
        assert not poller.poll_once()
        poller.stop()
    reachable, error = metrics.source_status()
    assert reachable is False and error is not None
    assert "unreachable" not in error and error.startswith("PostgreSQL refused: ERROR: permission denied"), error
    assert "esindexer setup --grant-to" in error
