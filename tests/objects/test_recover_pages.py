"""A restart rewrites the objects a crash left dirty a page at a time (``recover``): stopped
part-way, it keeps what it wrote (those dirty rows settled, the tree's mark still set),
says how many it rewrote, and the next start writes the rest and clears the mark."""

from __future__ import annotations

import threading

import psycopg2

from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from esindexer.pipeline.objectreader import ObjectBatchReader, open_reader
from tests.indexing import make_settings, running
from tests.objects.test_model_pipeline import build, paths, truth
from tests.support import scalar, wait_for


def reader(settings, sends: list[int], stop_after: int | None) -> ObjectBatchReader:
    indexer = Indexer(settings, Metrics(process_metrics=False))
    send = indexer.sink.send

    def counted(actions):
        sends.append(len(actions))
        return send(actions)

    indexer.sink.send = counted  # type: ignore[method-assign]
    got = open_reader(settings, indexer.jsonifier, indexer.builder, indexer.sink, indexer.metrics,
                      abandon=threading.Event(), stopping=lambda: stop_after is not None and len(sends) >= stop_after)
    assert isinstance(got, ObjectBatchReader)
    return got


def test_a_restart_stopped_part_way_keeps_what_it_wrote_and_the_next_writes_the_rest(zodb, db_dsn, es_url,
                                                                                       es_prefix, es):
    conn = build(zodb)
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")  # 25 documents a request
    alias = settings.alias_name
    with running(settings):
        wait_for(lambda: paths(es, alias) == truth(zodb), timeout=60)
    conn.close()
    objects = sorted(truth(zodb))
    gone = max(objects) + 1_000  # a dirty row of no object in the tree: its document is deleted
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:  # as a crash during the backfill's writing leaves it
        cur.execute("UPDATE esindexer_obj_applied SET tree_dirty_as_of = tid")
        cur.execute("INSERT INTO esindexer_obj_dirty (client_id, zoid, as_of) SELECT client_id, z, tid "
                    "FROM esindexer_obj_applied, unnest(%s::bigint[]) z", ([objects[3], objects[60], gone],))
    pg.close()
    index = next(iter(es.indices.get_alias(name=alias)))
    es.indices.delete(index=index)
    es.indices.create(index=index)

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
