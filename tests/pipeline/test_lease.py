"""The lease keeper's watchdog on a real PostgreSQL, without the rest of the pipeline: a
"writer" session holds the client lock and the lease, the keeper renews it, and a
transaction is committed after the saved progress (work pending)."""

from __future__ import annotations

import dataclasses
import threading
import time
from types import SimpleNamespace

import psycopg2
import pytest
import transaction

from esindexer.observe.metrics import Metrics
from esindexer.pipeline.lease import LeaseKeeper, Liveness, tick
from esindexer.pipeline.objectreader import ObjectBatchReader
from esindexer.source import lease, pg
from esindexer.source.lease import LostLease
from tests.indexing import Page, make_settings
from tests.support import wait_for

LEASE = 2.0


@pytest.fixture
def holder(zodb, db_dsn, es_url, es_prefix):
    """``(settings, writer connection holding the lock and lease epoch 1)`` with work pending."""
    conn = zodb.open()
    conn.root()["page"] = Page("one")
    transaction.commit()
    conn.close()
    settings = make_settings(db_dsn, es_url, es_prefix, lease_seconds=str(LEASE))
    writer = pg.connect(settings, "writer")
    with pg.schema_lock(writer):
        assert lease.ensure_tables(writer)
        writer.commit()
    assert pg.try_lock_client(writer, settings.worker_id)
    assert lease.claim(writer, settings.worker_id, "test:1")[0] == 1
    writer.commit()
    yield settings, writer
    writer.close()


def _keeper(settings, writer, liveness: Liveness, lost: threading.Event) -> LeaseKeeper:
    keeper = LeaseKeeper(settings, 1, writer.get_backend_pid(), liveness,
                         connect=lambda: pg.connect(settings, "lease"), on_lost=lost.set)
    keeper.start()
    keeper.watch()
    return keeper


def _alive(conn) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.rollback()
        return True
    except psycopg2.Error:
        return False


def test_the_renewal_interval_is_a_quarter_of_the_lease_and_at_most_two_seconds():
    assert tick(4.0) == 1.0 and tick(20.0) == 2.0 and tick(600.0) == 2.0


def test_a_pipeline_without_a_sign_of_life_while_work_waits_ends_its_own_lock_session(holder):
    settings, writer = holder
    lost = threading.Event()
    keeper = _keeper(settings, writer, Liveness(), lost)
    try:
        started = time.monotonic()
        assert lost.wait(LEASE + 2 * tick(LEASE) + 1)
        took = time.monotonic() - started
        assert took > LEASE  # not before the lease's time without a sign of life
        assert keeper.lost is not None and "did nothing for" in str(keeper.lost) and not keeper.lost.taken
        wait_for(lambda: not _alive(writer), timeout=5)  # its lock session was ended
        with pytest.raises(LostLease):
            keeper.check()
    finally:
        keeper.close()


def test_a_pipeline_that_beats_or_waits_for_elasticsearch_keeps_its_lease(holder):
    settings, writer = holder
    lost = threading.Event()
    liveness = Liveness()
    keeper = _keeper(settings, writer, liveness, lost)
    try:
        deadline = time.monotonic() + LEASE * 2
        while time.monotonic() < deadline:  # records read now and then
            liveness.beat()
            assert not lost.wait(0.3)
        with liveness.sending():  # a request waiting for Elasticsearch, within its timeout
            assert not lost.wait(LEASE * 2)
        keeper.check()  # renewed all along
        assert _alive(writer)
    finally:
        keeper.close()


def test_a_keeper_whose_lease_was_taken_over_says_so_and_refuses_writes(holder):
    settings, writer = holder
    lost = threading.Event()
    liveness = Liveness()
    keeper = _keeper(settings, writer, liveness, lost)
    other = pg.connect(settings, "other")
    try:
        lease.claim(other, settings.worker_id, "test:2")  # as a standby does once the lock is its own
        other.commit()
        for _ in range(20):
            liveness.beat()
            if lost.wait(0.2):
                break
        assert keeper.lost is not None and "took over" in str(keeper.lost) and keeper.lost.taken
        with pytest.raises(LostLease, match="took over"):
            keeper.check()
        assert _alive(writer)  # a takeover is the standby's doing: the keeper ends nothing
    finally:
        other.close()
        keeper.close()


class _Graph:
    """A graph store whose whole resolution is one statement on a real session."""

    def __init__(self, conn, statement: str, args: tuple = ()):
        self.conn, self.statement, self.args = conn, statement, args

    def resolve_all(self, tid, beat=None):
        with self.conn.cursor() as cur:
            cur.execute(self.statement, self.args)
        self.conn.rollback()
        return 0, tid


@pytest.fixture
def short_waits(holder):
    """The holder with Elasticsearch's allowance (request timeout, back-off) cut to 1 s
    each: a wait counted as a request's would be given up after 4 s of quiet."""
    settings, writer = holder
    return dataclasses.replace(settings, es_request_timeout=1.0, retry_max_seconds=1.0), writer


def test_an_object_graph_resolution_longer_than_any_allowance_keeps_the_lease(short_waits):
    """A backfill's graph resolution is PostgreSQL's work alone, one statement of it for
    as long as the graph takes (20 s at 10^6 objects, minutes at 10^7, with no sign of life
    between): the watchdog asks PostgreSQL whether that session still works, and leaves
    the pipeline alone while it does. It ended the pipeline at 10^6 once (no allowance),
    and would have at 10^7 with a request's allowance (lease + timeout + back-off,
    140 s by default): here a statement of 4 leases outlasts that allowance."""
    settings, writer = short_waits
    lost = threading.Event()
    liveness = Liveness()
    keeper = _keeper(settings, writer, liveness, lost)
    graph = pg.connect(settings, "graph")
    reader = SimpleNamespace(_graph_write=None, _liveness=liveness, building=True, metrics=Metrics(),
                             store=_Graph(graph, "SELECT pg_sleep(%s)", (LEASE * 4,)))
    try:
        assert ObjectBatchReader._resolve(reader, 7) == 7
        assert not lost.is_set() and not reader.building
        keeper.check()
        assert _alive(writer)
    finally:
        graph.close()
        keeper.close()


def test_a_resolution_whose_session_postgresql_cannot_show_keeps_a_requests_allowance(holder):
    """Where PostgreSQL cannot say whether the resolving session works (not found in
    ``pg_stat_activity``: a pooler's pid, a view restricted by a provider), the resolution
    still has a bulk request's allowance, as before the question was asked."""
    settings, writer = holder
    lost = threading.Event()
    liveness = Liveness()
    keeper = _keeper(settings, writer, liveness, lost)

    class Unseen:  # one long statement, on a session PostgreSQL does not show
        conn = SimpleNamespace(get_backend_pid=lambda: 0)

        def resolve_all(self, tid, beat=None):
            time.sleep(LEASE * 2.5)
            return 0, tid

    reader = SimpleNamespace(_graph_write=None, _liveness=liveness, building=True, metrics=Metrics(), store=Unseen())
    try:
        assert ObjectBatchReader._resolve(reader, 7) == 7
        assert not lost.is_set()
        keeper.check()
    finally:
        keeper.close()


def test_a_resolution_queued_behind_a_lock_is_not_taken_for_work(short_waits):
    """Only a statement PostgreSQL runs counts: one waiting for a lock another session
    holds could wait for ever, so the watchdog ends the lock session after the lease and
    the request allowance, as for any pipeline without a sign of life."""
    settings, writer = short_waits
    lost = threading.Event()
    liveness = Liveness()
    keeper = _keeper(settings, writer, liveness, lost)
    blocker, graph = pg.connect(settings, "blocker"), pg.connect(settings, "graph")
    with blocker.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(4242)")
    reader = SimpleNamespace(_graph_write=None, _liveness=liveness, building=True, metrics=Metrics(),
                             store=_Graph(graph, "SELECT pg_advisory_xact_lock(4242)"))
    waiting = threading.Thread(target=lambda: ObjectBatchReader._resolve(reader, 7), daemon=True)
    try:
        waiting.start()
        assert lost.wait(LEASE + 2 + 2 * tick(LEASE) + 3)
        assert "did nothing for" in str(keeper.lost)
        wait_for(lambda: not _alive(writer), timeout=5)
    finally:
        blocker.close()  # frees the lock: the waiting statement ends
        waiting.join(10)
        graph.close()
        keeper.close()
