"""Deletions that commit out of order are never skipped (real PostgreSQL, ZODB, Elasticsearch).

Sequence values of the deletion log are taken at insert time but become visible at
commit time, so a cursor on the id alone skipped the row of a transaction that was
still open when a later one committed. These tests hold deleting transactions open
the way a history-free pack does, and check the index ends exact and ``status`` never
says "caught up" while a committed deletion is unapplied.
"""

from __future__ import annotations

import json
import threading
import time

import psycopg2
import transaction
from persistent.mapping import PersistentMapping

from esindexer.es.scan import indexed_zoids
from esindexer.source import deletions
from tests.indexing import Page, latest_tid, make_settings, progress, running, zoid_of
from tests.support import both_history_modes, run_esindexer, scalar, wait_for


def indexed(es, alias: str) -> set[int]:
    """Every zoid that has a document (paged: any number of documents)."""
    es.indices.refresh(index=alias)
    return {zoid for page in indexed_zoids(es, (alias,)) for _, zoid, _ in page}


def live_zoids(db_dsn: str) -> set[int]:
    """Ground truth: the objects the database holds now."""
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("SELECT to_regclass('current_object') IS NOT NULL")
        table = "current_object" if cur.fetchone()[0] else "object_state"
        cur.execute(f"SELECT zoid FROM {table}")
        zoids = {row[0] for row in cur.fetchall()}
    pg.close()
    return zoids


def status(db_dsn: str, es_url: str, es_prefix: str) -> dict:
    env = {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": es_prefix.rstrip("-")}
    out = run_esindexer("status", "--json", env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def log_rows(db_dsn: str) -> int:
    return int(scalar(db_dsn, "SELECT count(*) FROM esindexer_deletions"))


@both_history_modes
def test_a_deletion_committed_after_a_later_one_is_applied(zodb, db_dsn, es, es_url, es_prefix, keep_history):
    """T1 deletes A and stays open, T2 deletes B and commits, then T1 commits: both go."""
    conn = zodb.open()
    root = conn.root()
    pages = [Page(f"page {n}") for n in range(6)]
    for n, page in enumerate(pages):
        root[n] = page
    transaction.commit()
    a, b = zoid_of(pages[0]), zoid_of(pages[1])
    table = "current_object" if keep_history else "object_state"
    settings = make_settings(db_dsn, es_url, es_prefix)
    alias = settings.index_prefix
    with running(settings):
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn) and a in indexed(es, alias), message="indexed")
        t1 = psycopg2.connect(db_dsn)
        t2 = psycopg2.connect(db_dsn)
        try:
            with t1.cursor() as cur:  # takes its log id (and xid) first, commits last
                cur.execute(f"DELETE FROM {table} WHERE zoid = %s", (a,))
            with t2.cursor() as cur:
                cur.execute(f"DELETE FROM {table} WHERE zoid = %s", (b,))
            t2.commit()
            # The service polls the log several times while T1 is open (idle ticks
            # every 0.3 s); B's committed deletion must be reported, never "caught up".
            time.sleep(1.5)
            report = status(db_dsn, es_url, es_prefix)
            assert report["pending_pack_deletions"] >= 1 and report["caught_up"] is False, report
            t1.commit()
        finally:
            t1.close()
            t2.close()
        wait_for(lambda: not {a, b} & indexed(es, alias), message="both deletions applied")
        assert indexed(es, alias) == live_zoids(db_dsn)
        wait_for(lambda: status(db_dsn, es_url, es_prefix)["caught_up"], message="caught up")
        assert status(db_dsn, es_url, es_prefix)["pending_pack_deletions"] == 0
        wait_for(lambda: log_rows(db_dsn) == 0, message="applied deletions pruned")
    conn.close()


def test_deletion_of_an_object_still_in_flight_waits_for_its_write(zodb, db_dsn, es, es_url, es_prefix):
    """An object written and packed away at once, while nothing else commits: the delete
    is sent only after the write is settled, and is applied although progress never
    reaches the deleted state's tid (no later commit exists)."""
    conn = zodb.open()
    root = conn.root()
    root["keep"] = Page("keep")
    transaction.commit()
    settings = make_settings(db_dsn, es_url, es_prefix)
    alias = settings.index_prefix
    with running(settings):
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), message="indexed")
        doomed = Page("doomed")
        root["doomed"] = doomed
        transaction.commit()
        zoid = zoid_of(doomed)
        with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:  # the state and its log row at once
            cur.execute("DELETE FROM object_state WHERE zoid = %s", (zoid,))
        pg.close()
        wait_for(lambda: zoid not in indexed(es, alias) and status(db_dsn, es_url, es_prefix)["caught_up"],
                 message="deletion applied while the database stays quiet")
        assert indexed(es, alias) == live_zoids(db_dsn)
    conn.close()


def test_pack_concurrent_with_delete_object_under_a_live_writer(zodb, db_dsn, es, es_url, es_prefix):
    """A real history-free pack (its delete transactions stay open while it works) while
    ``deleteObject`` transactions commit and an application keeps writing: exact index."""
    from ZODB.Connection import TransactionMetaData

    conn = zodb.open()
    root = conn.root()
    root["live"] = PersistentMapping({n: Page(f"live {n}") for n in range(50)})
    root["garbage"] = PersistentMapping({n: Page(f"garbage {n}") for n in range(20000)})
    root["gc"] = PersistentMapping({n: Page(f"gc {n}") for n in range(300)})
    transaction.commit()
    gc_pages = list(root["gc"].values())
    for page in gc_pages:
        page._p_activate()  # a ghost's _p_serial is zero
    gc_zoids = [(zoid_of(p), p._p_serial) for p in gc_pages]
    settings = make_settings(db_dsn, es_url, es_prefix, batch_limit=2000, fetch_size=1000,
                             bulk_max_docs=500)
    alias = settings.index_prefix
    stop = threading.Event()
    errors: list[BaseException] = []
    deleted: list[int] = []

    def writer() -> None:  # the application keeps committing
        try:
            wconn = zodb.open()
            live = wconn.root()["live"]
            n = 0
            while not stop.is_set():
                live[n % 50].title = f"live {n}"
                transaction.commit()
                n += 1
                time.sleep(0.01)
            wconn.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def delete_objects() -> None:  # zc.zodbdgc-style garbage collection, one object a transaction
        try:
            storage = zodb.storage.new_instance()
            for oid_int, serial in gc_zoids:
                if stop.is_set():
                    break
                txn = TransactionMetaData()
                storage.tpc_begin(txn)
                storage.deleteObject(oid_int.to_bytes(8, "big"), serial, txn)
                storage.tpc_vote(txn)
                storage.tpc_finish(txn)
                deleted.append(oid_int)
            storage.release()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with running(settings):
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), timeout=120, message="backfilled")
        root["garbage"] = PersistentMapping()  # 20,000 objects become garbage
        transaction.commit()
        threads = [threading.Thread(target=writer), threading.Thread(target=delete_objects)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        zodb.pack(time.time() + 1)  # concurrent with the deleteObject commits
        for thread in threads[1:]:
            thread.join(120)
        stop.set()
        threads[0].join(30)
        assert not errors, errors
        expected = live_zoids(db_dsn)
        left = {z for z, _ in gc_zoids} & expected
        assert not left, (len(left), len(gc_zoids), deleted)  # they really are gone from the database
        wait_for(lambda: status(db_dsn, es_url, es_prefix)["caught_up"], timeout=120, message="caught up")
        assert indexed(es, alias) == expected
        wait_for(lambda: log_rows(db_dsn) == 0, message="applied deletions pruned")
    conn.close()


def test_a_pack_deletion_is_sent_only_after_every_earlier_write_of_the_object_settled(
        zodb, db_dsn, es, es_url, es_prefix):
    """The ordering that keeps a deleted object from coming back after an Elasticsearch
    crash (tombstones do not survive one): the bulk holding the object's last write is
    held back in flight while its pack deletion is committed; the delete must go out only
    after that bulk settled. The sender is wrapped to record when each request starts and
    ends (the requests themselves go to the real node)."""
    conn = zodb.open()
    root = conn.root()
    root["keep"] = Page("keep")
    transaction.commit()
    # One bulk in flight at a time: while the doomed object's bulk is held, the reader
    # waits for a slot in the middle of its batch, so the committer has nothing to settle.
    settings = make_settings(db_dsn, es_url, es_prefix, bulk_concurrency=1)
    alias = settings.index_prefix
    timeline: list[tuple[str, str, int, float]] = []  # (event, op, zoid, time)
    doomed_zoid: list[int] = []
    held = threading.Event()
    with running(settings) as indexer:
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), message="indexed")
        real_send = indexer.sink.send

        def send(actions):
            ops = [(a.op, a.zoid) for a in actions]
            for op, zoid in ops:
                timeline.append(("start", op, zoid, time.monotonic()))
            if doomed_zoid and ("index", doomed_zoid[0]) in ops:
                held.set()
                time.sleep(2.0)  # the write is in flight (unsettled) for 2 s
            result = real_send(actions)
            for op, zoid in ops:
                timeline.append(("end", op, zoid, time.monotonic()))
            return result

        indexer.sink.send = send  # type: ignore[method-assign]
        # The doomed object shares its transaction with 200 others, so the reader is still
        # working on that batch (more bulks) while the doomed one's bulk is held: the
        # committer has nothing to settle and polls the deletion log meanwhile.
        doomed = Page("doomed")
        root["doomed"] = doomed
        transaction.savepoint(True)  # the doomed object takes the transaction's first zoid
        doomed_zoid.append(zoid_of(doomed))
        for n in range(200):
            root[f"other {n}"] = Page(f"other {n}")
        transaction.commit()
        assert held.wait(10), "the doomed object's write was never sent"
        with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:  # packed while its write is in flight
            cur.execute("DELETE FROM object_state WHERE zoid = %s", (doomed_zoid[0],))
        pg.close()
        wait_for(lambda: status(db_dsn, es_url, es_prefix)["caught_up"]
                 and doomed_zoid[0] not in indexed(es, alias), message="deletion applied")
        assert indexed(es, alias) == live_zoids(db_dsn)
    zoid = doomed_zoid[0]
    write_end = max(t for event, op, z, t in timeline if (event, op, z) == ("end", "index", zoid))
    delete_start = min(t for event, op, z, t in timeline if (event, op, z) == ("start", "delete", zoid))
    assert delete_start >= write_end, f"delete sent {write_end - delete_start:.2f}s before the write settled"
    conn.close()


def _log_row(pg, zoid: int, tid: int = 5) -> None:
    with pg.cursor() as cur:  # what the capture trigger writes
        cur.execute("INSERT INTO esindexer_deletions (zoid, tid) VALUES (%s, %s)", (zoid, tid))


def test_a_log_from_before_the_transaction_ordered_cursor_is_upgraded_in_place(zodb, db_dsn):
    """Tables of an earlier release (cursor on the id alone): after the upgrade, exactly
    the rows the old cursor had not passed are pending, and new rows follow them."""
    pg = psycopg2.connect(db_dsn)
    with pg.cursor() as cur:
        cur.execute("CREATE TABLE esindexer_deletions (id bigserial PRIMARY KEY, zoid bigint NOT NULL, "
                    "tid bigint NOT NULL, deleted_at timestamptz NOT NULL DEFAULT now())")
        cur.execute("CREATE TABLE esindexer_deletion_cursor (client_id text PRIMARY KEY, last_id bigint NOT NULL)")
        cur.execute("INSERT INTO esindexer_deletions (zoid, tid) SELECT z, 7 FROM generate_series(1, 5) z")
        cur.execute("INSERT INTO esindexer_deletion_cursor VALUES ('a', 3), ('b', 0)")
    pg.commit()
    assert deletions.count_unapplied(pg, "a") == 2  # read the old way before the upgrade
    pg.rollback()
    assert deletions.ensure_tables(pg)
    _log_row(pg, 6)
    pg.commit()

    def pending(client: str) -> list[int]:
        try:
            return [row[2] for row in deletions.pending(pg, client)]
        finally:
            pg.rollback()

    # Rows become readable once every transaction older than them has ended, in the whole
    # PostgreSQL cluster (the snapshot's xmin): other work on the server may delay that.
    wait_for(lambda: pending("a") == [4, 5, 6], message="the upgraded rows readable")
    assert pending("b") == [1, 2, 3, 4, 5, 6]
    assert deletions.count_unapplied(pg, "a") == 3
    pg.rollback()
    pg.close()


def test_two_clients_advancing_at_once_leave_no_applied_rows_behind(zodb, db_dsn):
    first, second = psycopg2.connect(db_dsn), psycopg2.connect(db_dsn)
    assert deletions.ensure_tables(first)
    for client in ("a", "b"):
        deletions.start_cursor_at_end(first, client)
    for zoid in range(1, 101):
        _log_row(first, zoid)
    first.commit()

    def read() -> dict[str, list]:
        found = {client: deletions.pending(conn, client) for client, conn in (("a", first), ("b", second))}
        first.rollback(), second.rollback()
        return found

    # (readable once older transactions anywhere on the server have ended: the xmin)
    rows = wait_for(lambda: (found := read()) and len(found["a"]) == len(found["b"]) == 100 and found,
                    message="the 100 rows readable by both clients")
    # Both move their cursors in overlapping transactions, then each prunes.
    deletions.advance(first, "a", rows["a"][-1][0], rows["a"][-1][1])
    deletions.advance(second, "b", rows["b"][-1][0], rows["b"][-1][1])
    first.commit()
    deletions.prune(first)
    second.commit()
    deletions.prune(second)
    assert log_rows(db_dsn) == 0
    first.close(), second.close()


def test_a_repair_written_for_an_object_packed_meanwhile_is_deleted_after_it_settles(
        zodb, db_dsn, es, es_url, es_prefix):
    """``verify --repair`` and ``--redeliver`` write states they read earlier; the object
    may have been packed since. After the write settles they check the database again."""
    from esindexer.documents import DocumentBuilder
    from esindexer.es.sink import ElasticsearchSink
    from esindexer.ops.recheck import delete_if_gone

    conn = zodb.open()
    root = conn.root()
    root["a"], root["b"] = Page("a"), Page("b")
    transaction.commit()
    settings = make_settings(db_dsn, es_url, es_prefix)
    sink = ElasticsearchSink(settings)
    sink.ensure_indices()
    builder = DocumentBuilder(settings)
    written = [builder.index_action(root[key]._p_serial and int.from_bytes(root[key]._p_serial, "big"),
                                    zoid_of(root[key]), "tests.indexing.Page", '{"title": "x"}')
               for key in ("a", "b")]
    gone = zoid_of(root["b"])
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:  # b is packed between read and write
        cur.execute("DELETE FROM object_state WHERE zoid = %s", (gone,))
    assert sink.send(written).done_total == 2
    pg = psycopg2.connect(db_dsn)
    assert delete_if_gone(pg, builder, sink, written) == 1
    pg.close()
    assert indexed(es, settings.index_prefix) == {zoid_of(root["a"])}
    conn.close()
