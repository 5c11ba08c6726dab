"""`esindexer verify`: drift between index and database is found and repaired (real servers)."""

from __future__ import annotations

import json

import orjson
import transaction

from esindexer.documents import DocumentBuilder
from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from tests.indexing import commit_pages, docs, make_settings, zoid_of
from tests.support import run_esindexer


def _verify(settings, *args: str) -> tuple[int, dict]:
    done = run_esindexer("verify", "--json", *args, env={
        "ESINDEXER_PG_DSN": settings.pg_dsn, "ESINDEXER_ES_URL": settings.es_url[0],
        "ESINDEXER_INDEX_PREFIX": settings.index_prefix})
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_verify_finds_and_repairs_drift(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    root = conn.root()
    pages = commit_pages(root, 20)
    settings = make_settings(db_dsn, es_url, es_prefix)
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    code, report = _verify(settings)
    assert code == 0 and report["clean"] and report["objects"] == 21, report
    assert report["objects"] == 21 and report["documents"] == 21

    index = DocumentBuilder(settings).indices[0]
    lost, stale = zoid_of(pages[0]), zoid_of(pages[1])
    # A document lost from the index (say, a snapshot restored from before it was written).
    # A plain delete leaves a tombstone whose version would refuse the repair for
    # index.gc_deletes; a restored index has none, so let the test's tombstone expire.
    es.indices.put_settings(index=index, settings={"index.gc_deletes": "0s"})
    es.delete(index=index, id=str(lost), refresh=True)
    es.indices.refresh(index=index)
    # A change the service has not indexed (it is not running).
    pages[1].title = "changed while nobody indexed"
    transaction.commit()
    ghost = 10_000_000  # a document whose object never existed here
    old_tid = docs(es, settings.index_prefix)[stale]["tid"]
    es.index(index=index, id=str(ghost), version=old_tid, version_type="external", refresh=True,
             document=orjson.loads(DocumentBuilder(settings).index_action(old_tid, ghost, "x.Y", "{}").source))

    code, report = _verify(settings)
    assert code == 1 and not report["clean"]
    assert report["differences"] == {"missing": 1, "stale": 1, "ahead": 0, "orphan": 1}
    assert report["examples"]["missing"] == [lost] and report["examples"]["stale"] == [stale]
    assert report["objects"] == 21
    assert report["examples"]["orphan"] == [ghost]

    code, report = _verify(settings, "--repair")
    assert code == 0 and report["repaired"] == 3
    code, report = _verify(settings)
    assert code == 0 and report["clean"], report
    indexed = docs(es, settings.index_prefix)
    assert lost in indexed and ghost not in indexed
    assert indexed[stale]["state"]["title"] == "changed while nobody indexed"
    assert indexed[stale]["tid"] == indexed[stale]["_version"] > old_tid
    conn.close()
