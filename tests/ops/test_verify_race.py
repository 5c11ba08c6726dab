"""`verify` against a service that keeps writing: a repair never overwrites a newer commit,
and differences that are only the service's lag are not reported as drift (real servers,
a live ZODB writer, the running service)."""

from __future__ import annotations

import threading
import time

import transaction

from esindexer.convert.configure import build_jsonifier
from esindexer.documents import DocumentBuilder
from esindexer.es.repair import send_writes
from esindexer.es.sink import ElasticsearchSink
from esindexer.ops.recheck import Context, confirmed
from esindexer.ops.verify import verify
from esindexer.source import pg
from tests.indexing import Page, commit_pages, docs, latest_tid, make_settings, progress, running, zoid_of
from tests.ops.test_verify import catch_up, hand_edit
from tests.support import wait_for


def _context(settings, conn, sink) -> Context:
    return Context(conn, sink.es, sink.indices, DocumentBuilder(settings), build_jsonifier(settings),
                   settings.client_id, set(), deep=True)


def _verify(settings, **options):
    conn = pg.connect(settings, "test")
    sink = ElasticsearchSink(settings)
    try:
        return verify(conn, sink, DocumentBuilder(settings), build_jsonifier(settings), settings.client_id,
                      **options)
    finally:
        conn.close()
        sink.es.close()


def _serial(obj) -> int:
    return int.from_bytes(obj._p_serial, "big")


def test_a_repair_planned_before_a_newer_commit_is_refused(zodb, db_dsn, es, es_url, es_prefix):
    """The race, made deterministic: the repairs of a hand edit (conditional on the revision
    read) and of a hand delete (external, then create over the tombstone) are planned, the
    service then indexes newer commits of both objects, and only then are they sent."""
    conn = zodb.open()
    pages = commit_pages(conn.root(), 3)
    settings = make_settings(db_dsn, es_url, es_prefix)
    catch_up(settings)
    index = DocumentBuilder(settings).indices[0]
    edited, lost = zoid_of(pages[0]), zoid_of(pages[1])
    hand_edit(es, index, edited, "edited by hand")
    es.delete(index=index, id=str(lost), refresh=True)

    pg_conn = pg.connect(settings, "test")
    sink = ElasticsearchSink(settings)
    try:
        found = confirmed(_context(settings, pg_conn, sink), [edited, lost])
        assert {z: [d.kind for d in diffs] for z, diffs in found.real.items()} == {
            edited: ["changed"], lost: ["missing"]}
        writes = [d.fix for diffs in found.real.values() for d in diffs if d.fix is not None]
        assert sorted(w.mode for w in writes) == ["conditional", "create_on_conflict"]

        pages[0].title, pages[1].title = "newer 0", "newer 1"
        transaction.commit()
        catch_up(settings)  # the service writes the newer commits (their tids beat the hand's + 1)
        outcomes = send_writes(sink.es, writes)
        assert [o.status for o in outcomes] == [409, 409] and not any(o.written for o in outcomes)
        indexed = docs(es, settings.index_prefix)
        assert indexed[edited]["state"]["title"] == "newer 0" and indexed[edited]["tid"] == _serial(pages[0])
        assert indexed[lost]["state"]["title"] == "newer 1" and indexed[lost]["tid"] == _serial(pages[1])
    finally:
        pg_conn.close()
        sink.es.close()
    conn.close()


def test_a_create_that_brought_back_a_deleted_object_is_deleted_by_the_read_back(
        zodb, db_dsn, es, es_url, es_prefix):
    """The one race a precondition cannot see: the object is deleted (its document with it)
    between the read and the create. The read back finds the object gone and deletes again."""
    conn = zodb.open()
    pages = commit_pages(conn.root(), 2)
    settings = make_settings(db_dsn, es_url, es_prefix)
    catch_up(settings)
    index = DocumentBuilder(settings).indices[0]
    lost = zoid_of(pages[0])
    es.delete(index=index, id=str(lost), refresh=True)
    pg_conn = pg.connect(settings, "test")
    sink = ElasticsearchSink(settings)
    try:
        ctx = _context(settings, pg_conn, sink)
        writes = [d.fix for d in confirmed(ctx, [lost]).real[lost] if d.fix is not None]
        kept = zoid_of(pages[1])  # (and another one, whose document is still there)
        with pg_conn.cursor() as cur:  # a garbage collection removes the objects meanwhile,
            cur.execute("DELETE FROM object_state WHERE zoid = ANY(%s)", ([lost, kept],))
        pg_conn.commit()
        lag = confirmed(ctx, [lost, kept])
        assert lag.real == {} and [d.kind for d in lag.lagging[kept]] == ["orphan"]  # not applied yet: lag
        catch_up(settings)  # and the service applies the deletions (tombstones at their tid + 1)
        assert confirmed(ctx, [lost, kept]).lagging == {}
        outcomes = send_writes(sink.es, writes)
        assert [(o.written, o.created, o.at_tid) for o in outcomes] == [(True, True, False)]  # over the tombstone
        again = confirmed(ctx, [lost])
        assert [d.kind for d in again.real[lost]] == ["orphan"]
        assert all(o.written for o in send_writes(sink.es, [d.fix for d in again.real[lost] if d.fix]))
        assert lost not in docs(es, settings.index_prefix)
    finally:
        pg_conn.close()
        sink.es.close()
    conn.close()


def test_verify_under_a_live_writer_reports_no_transient_drift_and_repairs_race_the_service(
        zodb, db_dsn, es, es_url, es_prefix):
    """The service runs and an application keeps committing (changes and new objects) while
    verify walks the index in small pages: no difference is reported as drift. Hand changes
    to objects the application keeps changing are repaired during all this, and at the end
    every document is the database's latest state: no repair overwrote a newer commit."""
    conn = zodb.open()
    root = conn.root()
    root["pages"] = {}
    transaction.commit()
    pages = commit_pages(root, 60)
    settings = make_settings(db_dsn, es_url, es_prefix)
    stop = threading.Event()
    commits: list[int] = []

    def application() -> None:
        db_conn = zodb.open()
        mine = [db_conn.get(page._p_oid) for page in pages]
        n = 0
        while not stop.is_set():
            for page in mine[n % 3:30:3]:  # the first 30 change every third commit
                page.title = f"edit {n}"
            if n % 20 == 0:  # the others now and then, racing the repairs of hand changes to them
                mine[30 + (n // 20) % 30].title = f"now and then {n}"
            db_conn.root()[1000 + n] = Page(f"new {n}")
            transaction.commit()
            commits.append(n)
            n += 1
            time.sleep(0.01)
        db_conn.close()

    writer = threading.Thread(target=application, daemon=True)
    with running(settings):
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), timeout=60, message="caught up")
        writer.start()
        wait_for(lambda: len(commits) > 5, timeout=30, message="writing")
        runs = [_verify(settings, page=7) for _ in range(3)]
        for report in runs:
            assert report.clean and not report.remaining, report.as_dict()
        lagging = sum(sum(report.lagging.values()) for report in runs)

        index = DocumentBuilder(settings).indices[0]
        touched = [zoid_of(page) for page in pages[:30:5] + pages[30::2]]
        for zoid in touched:
            hand_edit(es, index, zoid, "edited by hand")
        for zoid in touched[:3]:
            es.delete(index=index, id=str(zoid), refresh=True)
        repairs = [_verify(settings, page=7, repair=True, deep=True) for _ in range(2)]
        time.sleep(0.5)
        stop.set()
        writer.join(30)
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), timeout=60, message="caught up")
    final = _verify(settings, deep=True)
    assert final.clean and not any(final.lagging.values()), final.as_dict()
    transaction.abort()  # see the application's commits
    held = es.mget(index=index, ids=[str(zoid_of(page)) for page in pages])["docs"]
    for page, doc in zip(pages, held):
        page._p_activate()
        assert doc["_source"]["tid"] == _serial(page) and doc["_source"]["state"]["title"] == page.title
    assert sum(report.repaired for report in repairs) >= 5, [r.as_dict() for r in repairs]
    print(f"\n[verify live] {len(commits)} commits meanwhile; lag reported apart {lagging} times in 3 runs; "
          f"repairs: {[r.repaired for r in repairs]} repaired, {[r.remaining for r in repairs]} still different, "
          f"{[sum(r.lagging.values()) for r in repairs]} lagging")
