"""The check for a database behind its index, beside a running service (real servers).

- No false finding: under a live writer that changes, adds and drops pages and packs
  (history-free and history-preserving), the check run over and over while the service
  indexes never finds anything, and the service never says so.
- Found while running: a document made newer than its object while the service runs is
  found by the service's periodic check, marked, reported and written over as the
  database says, and the mark removed.
"""

from __future__ import annotations

import logging
import threading
import time

import orjson
import psycopg2

from esindexer.documents import DocumentBuilder
from esindexer.errors import ExitCode
from esindexer.es.sink import ElasticsearchSink
from esindexer.observe.metrics import Metrics
from esindexer.ops.restored import service_repair
from esindexer.pipeline.indexer import Indexer
from esindexer.pipeline.rewind import find
from esindexer.source import follow
from tests.indexing import commit_pages, docs, make_settings, zoid_of
from tests.pipeline.processes import LiveWriter, caught_up
from tests.support import both_history_modes, wait_for


def _run(indexer: Indexer) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("code", indexer.run()), daemon=True)
    thread.start()
    return thread, outcome


@both_history_modes
def test_the_check_finds_nothing_under_a_live_writer_and_packs(zodb, db_dsn, es, es_url, es_prefix, caplog):
    settings = make_settings(db_dsn, es_url, es_prefix)
    indexer = Indexer(settings, Metrics(process_metrics=False))
    writer = LiveWriter(zodb, rate=25, remove_every=2).start()
    thread, outcome = _run(indexer)
    sink = ElasticsearchSink(settings)
    conn = psycopg2.connect(db_dsn)
    checks = 0
    try:
        wait_for(lambda: len(docs(es, settings.index_prefix)) > 100, timeout=60, interval=0.2)
        deadline = time.monotonic() + 12
        last_pack = time.monotonic()
        while time.monotonic() < deadline:
            assert find(conn, sink) is None
            checks += 1
            if time.monotonic() - last_pack > 2:
                writer.pack()
                last_pack = time.monotonic()
    finally:
        writer.stop(check=False)
        conn.close()
        sink.es.close()
    writer.stop()
    wait_for(lambda: caught_up(db_dsn, ["esindexer"]), timeout=60, interval=0.3)
    indexer.stop()
    thread.join(60)
    assert outcome.get("code") == ExitCode.OK
    assert writer.packs >= 2 and checks > 20, (writer.packs, checks)
    assert "behind the index" not in caplog.text
    assert indexer.metrics.database_behind() is False


def test_a_document_made_newer_than_its_object_is_found_while_running_and_written_over(
        zodb, db_dsn, es, es_url, es_prefix, caplog):
    caplog.set_level(logging.INFO, logger="esindexer")
    conn = zodb.open()
    pages = commit_pages(conn.root(), 5)
    settings = make_settings(db_dsn, es_url, es_prefix)
    metrics = Metrics(process_metrics=False)
    indexer = Indexer(settings, metrics, repair=lambda: service_repair(settings))
    indexer.resync.interval = indexer.resync.check_every = 0.5
    thread, outcome = _run(indexer)
    try:
        wait_for(lambda: caught_up(db_dsn, ["esindexer"]), timeout=60, interval=0.2)
        wait_for(lambda: len(docs(es, settings.index_prefix)) == 6, timeout=30)
        target = zoid_of(pages[2])
        tid = int.from_bytes(pages[2]._p_serial, "big")
        newer = tid + 10_000  # as a transaction the database lost would have left it
        builder = DocumentBuilder(settings)
        es.index(index=builder.indices[0], id=str(target), version=newer, version_type="external", refresh=True,
                 document=orjson.loads(builder.index_action(newer, target, "tests.indexing.Page", "{}").source))
        wait_for(metrics.database_behind, timeout=30, interval=0.1)
        wait_for(lambda: not metrics.database_behind(), timeout=60, interval=0.2)
    finally:
        indexer.stop()
        thread.join(60)
    assert outcome.get("code") == ExitCode.OK
    assert "the database is behind the index" in caplog.text and "1 of the newest documents" in caplog.text
    assert "the database is no longer behind the index" in caplog.text
    held = docs(es, settings.index_prefix)[target]
    assert held["tid"] == tid and held["state"]["title"] == "page 2" and held["_version"] == newer + 1
    assert ElasticsearchSink(settings, es=es).behind_mark() is None
    conn.close()


def test_a_mark_left_by_an_earlier_run_is_reported_and_walked_at_the_next_start(
        zodb, db_dsn, es, es_url, es_prefix, caplog):
    """A run that died before its walk ended (or after repairing part of the documents, so
    the check finds nothing any more) leaves the mark: the next start reports it and walks."""
    caplog.set_level(logging.INFO, logger="esindexer")
    conn = zodb.open()
    commit_pages(conn.root(), 3)
    settings = make_settings(db_dsn, es_url, es_prefix)
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    sink = ElasticsearchSink(settings, es=es)
    with psycopg2.connect(db_dsn) as pg:
        latest = follow.latest_tid(pg)
    pg.close()
    sink.set_behind_mark({"detected_at": "2026-12-06T07:00:00Z", "client_id": "esindexer", "database_tid": latest,
                          "index_tid": latest + 1, "ahead": 1, "ghosts": 0, "examples": [1]})
    assert sink.behind_mark() is not None
    metrics = Metrics(process_metrics=False)
    indexer = Indexer(settings, metrics, repair=lambda: service_repair(settings))
    indexer.resync.interval = 0.5
    thread, outcome = _run(indexer)
    try:
        wait_for(lambda: "found on 2026-12-06T07:00:00Z and not yet repaired" in caplog.text, timeout=30)
        assert metrics.database_behind()
        wait_for(lambda: not metrics.database_behind(), timeout=60, interval=0.2)
    finally:
        indexer.stop()
        thread.join(60)
    assert outcome.get("code") == ExitCode.OK
    assert sink.behind_mark() is None
    assert "repair walk after the database went back in time: 4 objects" in caplog.text
    conn.close()
