"""A restart rewrites the objects a crash left dirty a page at a time (``recover``): stopped
part-way, it keeps what it wrote (those dirty rows settled, the tree's mark still set),
says how many it rewrote, and the next start writes the rest and clears the mark."""

from __future__ import annotations

import dataclasses
import threading

import psycopg2
import pytest

from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from esindexer.pipeline.objectreader import ObjectBatchReader, open_reader
from tests.indexing import make_settings, running
from tests.objects.test_model_pipeline import build, paths, truth
from tests.objects.test_tree_progress import watch_documents_to_write
from tests.support import scalar, wait_for


def reader(settings, sends: list[int], stop_after: int | None, metrics: Metrics | None = None,
           fence=None) -> ObjectBatchReader:
    indexer = Indexer(settings, metrics or Metrics(process_metrics=False))
    send = indexer.sink.send

    def counted(actions):
        sends.append(len(actions))
        return send(actions)

    indexer.sink.send = counted  # type: ignore[method-assign]
    got = open_reader(settings, indexer.jsonifier, indexer.builder, indexer.sink, indexer.metrics,
                      abandon=threading.Event(), stopping=lambda: stop_after is not None and len(sends) >= stop_after,
                      fence=fence)
    assert isinstance(got, ObjectBatchReader)
    return got


def _crashed_while_writing_the_tree(zodb, db_dsn, es_url, es_prefix, es):
    """A resolved graph and its index as a crash during the backfill's writing leaves them:
    the tree's mark set, two dirty rows (one of no object), the index empty. Returns the
    settings, the tree's objects and the dirty zoid of no object."""
    conn = build(zodb)
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")  # 25 documents a request
    alias = settings.alias_name
    with running(settings):
        wait_for(lambda: paths(es, alias) == truth(zodb), timeout=60)
    conn.close()
    objects = sorted(truth(zodb))
    gone = max(objects) + 1_000  # a dirty row of no object in the tree: its document is deleted
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("UPDATE esindexer_obj_applied SET tree_dirty_as_of = tid")
        cur.execute("INSERT INTO esindexer_obj_dirty (client_id, zoid, as_of) SELECT client_id, z, tid "
                    "FROM esindexer_obj_applied, unnest(%s::bigint[]) z", ([objects[3], objects[60], gone],))
    pg.close()
    index = next(iter(es.indices.get_alias(name=alias)))
    es.indices.delete(index=index)
    es.indices.create(index=index)
    return settings, objects, gone


def _lost_after_a_request(sends: list[int]):
    """A fence (``LeaseKeeper.check``) that refuses once a request went out: the lease lost."""
    from esindexer.source.lease import LostLease

    def fence() -> None:
        if sends:
            raise LostLease("taken over in the test", taken=True)

    return fence


def test_a_restart_stopped_part_way_keeps_what_it_wrote_and_the_next_writes_the_rest(zodb, db_dsn, es_url,
                                                                                       es_prefix, es):
    settings, objects, gone = _crashed_while_writing_the_tree(zodb, db_dsn, es_url, es_prefix, es)
    alias = settings.alias_name

    sends: list[int] = []
    first = reader(settings, sends, stop_after=1)
    try:
        written = first.recover()
    finally:
        first.close()
    assert len(sends) == 1 and written == sends[0] == 25  # one page, and it says so
    assert scalar(db_dsn, "SELECT count(*) FROM esindexer_obj_applied WHERE tree_dirty_as_of IS NOT NULL") == 1
    left = scalar(db_dsn, "SELECT array_agg(zoid ORDER BY zoid) FROM esindexer_obj_dirty")
    assert left == [objects[60], gone]  # the first page's row settled, the others kept
    assert set(paths(es, alias)) == set(objects[:25])

    sends.clear()
    second = reader(settings, sends, stop_after=None)
    try:
        written = second.recover()
    finally:
        second.close()
    assert written == len(objects) + 1 == sum(sends)  # the whole tree again, and the gone zoid's delete
    assert scalar(db_dsn, "SELECT count(*) FROM esindexer_obj_applied WHERE tree_dirty_as_of IS NOT NULL") == 0
    assert scalar(db_dsn, "SELECT count(*) FROM esindexer_obj_dirty") == 0
    assert paths(es, alias) == truth(zodb)


def test_a_restarts_rewrite_is_counted_down_and_its_documents_counted(zodb, db_dsn, es_url, es_prefix, es):
    """The rewrite of a whole tree after a crash takes minutes at 10^6 objects: the progress
    report counts its documents down from all of them (the rows' ETA said 0:01 meanwhile,
    with 0 documents indexed, as this rewrite counted none)."""
    settings, objects, gone = _crashed_while_writing_the_tree(zodb, db_dsn, es_url, es_prefix, es)
    metrics = Metrics(process_metrics=False)
    seen = watch_documents_to_write(metrics)
    sends: list[int] = []
    restart = reader(settings, sends, stop_after=None, metrics=metrics)
    try:
        written = restart.recover()
    finally:
        restart.close()
    assert written == len(objects) + 1 == seen[0]  # the tree and the dirty zoid of no object
    assert seen[-1] == 0 and seen == sorted(seen, reverse=True) and len(seen) > len(objects) // 25
    indexed = metrics.registry.get_sample_value("esindexer_documents_total", {"action": "index", "outcome": "ok"})
    deleted = metrics.registry.get_sample_value("esindexer_documents_total", {"action": "delete", "outcome": "ok"})
    assert indexed == len(objects) and deleted >= 1
    assert paths(es, settings.alias_name) == truth(zodb)


def test_a_tree_write_stops_building_once_its_lease_is_lost(zodb, db_dsn, es_url, es_prefix, es):
    """The tree's write is one batch of hundreds of requests (823 at 10^6 objects), which
    the committer sees only when it ends: once this process may not write any more, the
    reader stops building at the next group, not after the whole tree (55 s at 10^6)."""
    from esindexer.pipeline.committer import BatchInFlight
    from esindexer.source.lease import LostLease

    settings, objects, _gone = _crashed_while_writing_the_tree(zodb, db_dsn, es_url, es_prefix, es)
    sends: list[int] = []
    writer = reader(settings, sends, stop_after=None, fence=_lost_after_a_request(sends))
    built: list[int] = []
    assembled = writer.builder.assembled_actions

    def counted(views, version):
        actions = assembled(views, version)
        built.append(len(actions))
        return actions

    writer.builder.assembled_actions = counted  # type: ignore[method-assign]
    try:
        writer._tree_count = len(objects)
        with pytest.raises(LostLease):
            writer._write(BatchInFlight(last_tid=1), [], writer.store.applied_tid(), lambda: None, whole_tree=True)
    finally:
        writer.close()
    assert len(objects) > 100 and sum(built) <= 75  # a group or two past the first request, not the tree


def test_a_services_restart_with_a_tree_to_rewrite_reports_its_progress(zodb, db_dsn, es_url, es_prefix, es):
    """A service (not a bounded run) reports progress only for a backlog of a batch or more;
    a restart after a crash in a backfill's tree write has fewer rows than that after it
    (here none) but minutes of documents to rewrite at 10^6 objects: it is reported too,
    and a start with nothing to rewrite is not."""
    from esindexer.observe.progress import backlog_reporter

    settings, _objects, _gone = _crashed_while_writing_the_tree(zodb, db_dsn, es_url, es_prefix, es)
    settings = dataclasses.replace(settings, progress_interval=5.0)
    reporter = backlog_reporter(settings, Metrics(process_metrics=False), until_caught_up=False)
    assert reporter is not None
    reporter.close(summary=False)
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:  # rewritten: nothing left
        cur.execute("UPDATE esindexer_obj_applied SET tree_dirty_as_of = NULL")
        cur.execute("DELETE FROM esindexer_obj_dirty")
    pg.close()
    assert backlog_reporter(settings, Metrics(process_metrics=False), until_caught_up=False) is None


def test_a_restarts_rewrite_writes_nothing_once_its_lease_is_lost(zodb, db_dsn, es_url, es_prefix, es):
    """A restart's rewrite is fenced as every other write: once the lease is lost (a
    standby took over), no more of its requests go out, and the rest stays dirty for the
    holder. (It sent each page without asking before.)"""
    from esindexer.source.lease import LostLease

    settings, objects, _gone = _crashed_while_writing_the_tree(zodb, db_dsn, es_url, es_prefix, es)
    sends: list[int] = []
    restart = reader(settings, sends, stop_after=None, fence=_lost_after_a_request(sends))
    try:
        with pytest.raises(LostLease):
            restart.recover()
    finally:
        restart.close()
    assert sends == [25]
    assert scalar(db_dsn, "SELECT count(*) FROM esindexer_obj_applied WHERE tree_dirty_as_of IS NOT NULL") == 1
