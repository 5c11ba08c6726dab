"""esindexer.source.follow over a range (end_tid): order, batching, boundaries, history modes.

Data is written by real ZODB + RelStorage; the expected rows are read back with one
independent SQL query per test.
"""

from __future__ import annotations

import contextlib
import pickle

import psycopg2
import pytest
import transaction
from psycopg2.extensions import make_dsn, parse_dsn

from esindexer.errors import ConnectionBusy, SchemaError
from esindexer.source import follow, notify
from esindexer.source.pages import Pages
from tests.source.follow_support import collect, expected_rows, flat, tids_of, with_params, writer
from tests.support import both_history_modes


def _history(db_dsn, zodb):
    """Four transactions, each of which still holds a current revision afterwards.

    t1 creates a, b, c, e; t2 changes b; t3 creates d and changes a (and the root);
    t4 changes c. Current revisions: e@t1, b@t2, root/a/d@t3, c@t4.
    """
    tids = []
    with writer(zodb) as w:
        for key in "abce":
            w.add(key, name=key)
        tids.append(w.commit())
        w.root["b"]["name"] = "b2"
        tids.append(w.commit())
        w.add("d", name="d")
        w.root["a"]["name"] = "a2"
        tids.append(w.commit())
        w.root["c"]["extra"] = 1
        tids.append(w.commit())
    return tids


@both_history_modes
def test_rows_match_the_tables_in_tid_zoid_order(db_dsn, zodb, keep_history):
    tids = _history(db_dsn, zodb)
    batches = collect(db_dsn)
    rows = flat(batches)
    assert rows == expected_rows(db_dsn, keep_history)
    assert rows == sorted(rows, key=lambda r: (r[0], r[1]))
    assert all(type(data) is bytes for _, _, data in rows)
    assert all(isinstance(tid, int) and isinstance(zoid, int) for tid, zoid, _ in rows)
    # Only current revisions, each object once.
    zoids = [zoid for _, zoid, _ in rows]
    assert len(zoids) == len(set(zoids))
    # The data is the ZODB record: class pickle first.
    by_zoid = {zoid: data for _, zoid, data in rows}
    assert pickle.loads(by_zoid[0]).__name__ == "PersistentMapping"
    assert max(tid for tid, _, _ in rows) == tids[-1] == follow.latest_tid(db_dsn)


@both_history_modes
@pytest.mark.parametrize("internal_batch_size", [1, 3, 1000])
def test_a_transaction_larger_than_the_batch_limit_is_one_batch(db_dsn, zodb, keep_history,
                                                                internal_batch_size):
    with writer(zodb) as w:
        for i in range(40):
            w.add(f"k{i}", i=i)
        big = w.commit()
        small = []
        for i in range(6):
            w.root[f"k{i}"]["i"] = -i
            small.append(w.commit())
    batches = collect(db_dsn, start_tid=-1, batch_limit=10, internal_batch_size=internal_batch_size)
    assert flat(batches) == expected_rows(db_dsn, keep_history)
    first_tids = [tids_of(batch) for batch in batches]
    # The creating transaction (root + 40 objects, minus the 6 rewritten later) is
    # bigger than batch_limit and is one batch; the small ones after it come together
    # once the batch has 10 rows or more, and every batch ends at a boundary.
    seen = [tid for batch in batches for tid in tids_of(batch)]
    assert seen == sorted(set(seen)) == [big, *small]
    assert first_tids[0] == [big]
    assert len(batches[0]) == 41 - 6
    assert [len(batch) for batch in batches[1:]] == [6]


@both_history_modes
def test_batch_limit_1_gives_one_transaction_per_batch(db_dsn, zodb, keep_history):
    tids = _history(db_dsn, zodb)
    batches = collect(db_dsn, batch_limit=1, internal_batch_size=2)
    assert [tids_of(batch) for batch in batches] == [[tid] for tid in tids_of(flat(batches))]
    assert tids_of(flat(batches)) == tids  # every transaction still has a current row here
    assert flat(batches) == expected_rows(db_dsn, keep_history)


@both_history_modes
def test_start_is_exclusive_and_end_inclusive(db_dsn, zodb, keep_history):
    t1, t2, t3, t4 = _history(db_dsn, zodb)
    assert tids_of(flat(collect(db_dsn, start_tid=t1, end_tid=t3))) == [t2, t3]
    assert flat(collect(db_dsn, start_tid=t1, end_tid=t3)) == expected_rows(db_dsn, keep_history, t1, t3)
    assert collect(db_dsn, start_tid=t2, end_tid=t2) == []
    assert collect(db_dsn, start_tid=t4, end_tid=t4 + 10**9) == []
    # An end past the data ends at the data; a start before everything starts at the start.
    assert flat(collect(db_dsn, start_tid=0, end_tid=t4 + 10**9)) == expected_rows(db_dsn, keep_history)
    assert tids_of(flat(collect(db_dsn, start_tid=t3 - 1, end_tid=t4))) == [t3, t4]


@both_history_modes
def test_rows_that_move_while_paging_are_seen_once_at_their_new_tid(db_dsn, zodb, keep_history):
    with writer(zodb) as w:
        for i in range(10):
            w.add(f"k{i}", i=i)
        first = w.commit()
        early, late = w.oid("k0"), w.oid("k9")
        assert early < late
        updates = follow.updates(db_dsn, start_tid=-1, batch_limit=10**6, internal_batch_size=2,
                                 listen=False, poll_interval=0.01)
        iterator = iter(updates)
        batch = next(iterator)
        got = [next(batch) for _ in range(4)]  # root and a few objects of `first`
        assert all(tid == first for tid, _, _ in got)
        w.root["k0"]["i"] = "changed after it was read"
        w.root["k9"]["i"] = "changed before it was read"
        second = w.commit()
        got.extend(batch)  # the batch goes on until caught up, so it reaches `second`
        updates.stop()
        assert list(iterator) == []
        updates.close()
    positions = [(tid, zoid) for tid, zoid, _ in got]
    assert positions == sorted(positions)
    assert (first, early) in positions and (second, early) in positions  # seen again
    assert (first, late) not in positions and (second, late) in positions  # seen once, newest
    assert got[-2:] == [row for row in expected_rows(db_dsn, keep_history) if row[0] == second]


@both_history_modes
def test_an_abandoned_batch_is_skipped_to_its_end(db_dsn, zodb, keep_history):
    tids = _history(db_dsn, zodb)
    with follow.updates(db_dsn, end_tid=tids[-1], batch_limit=1, internal_batch_size=1) as updates:
        seen = []
        for batch in updates:
            seen.append(next(batch)[0])  # read one row of each transaction only
            assert batch.first_tid == seen[-1]
    assert seen == tids


@pytest.mark.parametrize("keep_history", [True], ids=["history-preserving"])
def test_undo_of_a_creation_gives_a_null_state(db_dsn, zodb, keep_history):
    with writer(zodb) as w:
        w.add("doomed", text="undo me")
        created = w.commit()
        doomed = w.oid("doomed")
    zodb.undo(zodb.undoLog(0, 1)[0]["id"])
    transaction.commit()
    rows = flat(collect(db_dsn, start_tid=created))
    assert (doomed, None) in [(zoid, data) for _, zoid, data in rows]
    assert rows == expected_rows(db_dsn, keep_history, created)


def test_empty_database_gives_no_batches(db_dsn):
    # RelStorage's schema without any object (ZODB.DB would commit a root object).
    from relstorage.adapters.postgresql import PostgreSQLAdapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage

    options = Options(keep_history=False, cache_local_mb=0)
    storage = RelStorage(PostgreSQLAdapter(dsn=make_dsn(**parse_dsn(db_dsn)), options=options),
                         options=options)
    storage.close()
    assert follow.latest_tid(db_dsn) == -1
    assert collect(db_dsn, end_tid=10**18) == []
    assert collect(db_dsn, end_tid=-1) == []


def test_a_database_without_relstorage_is_a_clear_error(db_dsn):
    with pytest.raises(SchemaError, match="object_state"):
        follow.latest_tid(db_dsn)
    with pytest.raises(SchemaError):
        collect(db_dsn, end_tid=10)
    with pytest.raises(SchemaError):
        list(follow.updates(db_dsn))
    with pytest.raises(SchemaError):
        notify.install_trigger(db_dsn)


def test_history_mode_is_detected_in_the_search_path_only(db_dsn, zodb):
    """A current_object table in another schema does not make a history-free DB "HP"."""
    _history(db_dsn, zodb)
    with contextlib.closing(psycopg2.connect(db_dsn)) as conn, conn.cursor() as cur:
        cur.execute("CREATE SCHEMA other; CREATE TABLE other.current_object (zoid bigint, tid bigint)")
        conn.commit()
    updates = follow.updates(db_dsn, end_tid=follow.latest_tid(db_dsn))
    assert flat(list(batch) for batch in updates) == expected_rows(db_dsn, False)
    assert updates.keep_history is False


@both_history_modes
def test_a_caller_connection_is_read_with_short_transactions(db_dsn, zodb, keep_history, pg_conn):
    _history(db_dsn, zodb)
    assert not pg_conn.autocommit
    end = follow.latest_tid(pg_conn)  # a lookup leaves the connection idle...
    assert pg_conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    batches = collect(pg_conn, end_tid=end, internal_batch_size=2)  # ...so the follower may use it
    assert flat(batches) == expected_rows(db_dsn, keep_history)
    assert pg_conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert not pg_conn.closed  # the caller's connection is not closed

    # The follower refuses to end, or read inside, a transaction it did not start.
    with pg_conn.cursor() as cur:
        cur.execute("SELECT 1")
    with pytest.raises(ConnectionBusy):
        collect(pg_conn, end_tid=end)
    pg_conn.rollback()


@both_history_modes
def test_no_transaction_stays_open_while_the_consumer_works(db_dsn, zodb, keep_history, pg_conn):
    with writer(zodb) as w:
        for i in range(30):
            w.add(f"k{i}", i=i)
        w.commit()
    name = "esit_follow_snapshot"
    dsn = with_params(db_dsn, application_name=name)
    with follow.updates(dsn, end_tid=follow.latest_tid(db_dsn), internal_batch_size=5) as updates:
        for batch in updates:
            for n, _ in enumerate(batch):
                if n % 5 == 3:  # in the middle of a chunk, with rows still to read
                    with pg_conn.cursor() as cur:
                        cur.execute("SELECT state, backend_xmin, backend_xid FROM pg_stat_activity "
                                    "WHERE application_name = %s", (name,))
                        assert cur.fetchall() == [("idle", None, None)]
                    pg_conn.rollback()


@both_history_modes
def test_memory_per_read_is_bounded_by_rows_and_bytes(db_dsn, zodb, keep_history, monkeypatch):
    with writer(zodb) as w:
        for i in range(12):
            w.add(f"k{i}", blob="x" * 50_000)
        w.commit()
    reads = []
    original = Pages.read

    def spy(self):
        rows = original(self)
        reads.append((len(rows), sum(len(d) for _, _, d in rows if d)))
        return rows

    monkeypatch.setattr(Pages, "read", spy)
    batches = collect(db_dsn, internal_batch_size=5, chunk_bytes=120_000)
    assert flat(batches) == expected_rows(db_dsn, keep_history)
    assert len(batches) == 1  # still one transaction, one batch
    assert all(n <= 5 for n, _ in reads)
    # A read stops once it holds ~chunk_bytes: at most one row beyond the budget.
    assert all(size < 120_000 + 51_000 for _, size in reads)
    assert max(n for n, _ in reads) < 5


def test_an_updates_object_is_iterated_once(db_dsn, zodb):
    updates = follow.updates(db_dsn, end_tid=follow.latest_tid(db_dsn))
    list(updates)
    with pytest.raises(RuntimeError, match="once"):
        iter(updates)


@pytest.mark.parametrize("bad", [dict(internal_batch_size=0), dict(poll_timeout=0),
                                 dict(poll_interval=0), dict(chunk_bytes=0)])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        follow.updates("dbname=unused", **bad)


def test_tids_returned_are_zodb_tids(db_dsn, zodb):
    import time

    from esindexer.source.tid import tid_to_epoch

    with writer(zodb) as w:
        w.add("x", i=1)
        before = time.time()
        tid = w.commit()
    assert tid == follow.latest_tid(db_dsn)
    # RelStorage derives the tid from the server clock (same machine here).
    assert abs(tid_to_epoch(tid) - before) < 60
