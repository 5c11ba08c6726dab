"""Redelivering dead letters (``esindexer dead-letters [--redeliver]``) on real servers.

The dead letters are made the way they happen in production: a mapping conflict that
Elasticsearch refuses and a record the converter cannot read, written by the service
itself. Then the causes are fixed and ``esindexer dead-letters --redeliver`` runs as
an operator would run it.
"""

from __future__ import annotations

import json
import pickle

import psycopg2
import transaction

from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from tests.indexing import Folderish, Page, dead_letters, docs, make_settings, zoid_of
from tests.support import run_esindexer, search_engine

#: A well-formed record the converter refuses (60 levels of shared pairs would expand to
#: 2**60 values: over its work budget) while ZODB's own reference scan at pack time
#: reads it without a complaint.
_UNCONVERTIBLE = pickle.dumps((Page, None), 3) + b"\x80\x03]" + b"2\x86" * 60 + b"."


def _cli_env(settings, es_url: str) -> dict[str, str]:
    return {"ESINDEXER_PG_DSN": settings.pg_dsn, "ESINDEXER_ES_URL": es_url,
            "ESINDEXER_INDEX_PREFIX": settings.index_prefix, "ESINDEXER_INDEX_REPLICAS": "0",
            "ESINDEXER_STATE_MAPPING": "dynamic", "ESINDEXER_LOG_LEVEL": "WARNING"}


def test_dead_letters_are_summarised_then_redelivered_once_the_cause_is_fixed(zodb, db_dsn, es, es_url,
                                                                              es_prefix):
    conn = zodb.open()
    root = conn.root()
    opensearch = search_engine() == "opensearch"
    # Page first: "title" maps as text in the shared index. OpenSearch keeps a document with
    # an object where text was mapped (its ignore_malformed drops it) and refuses the other
    # way round, so there a folder whose "title.text" is an object comes first.
    root["page"] = Folderish({"deeper": "an object"}) if opensearch else Page("a page")
    transaction.commit()
    root["folder"] = folder = Folderish("a folder")  # "title" is an object (or title.text a string): refused
    root["doomed"] = doomed = Folderish("deleted before redelivery")
    root["broken"] = broken = Page("to be made unconvertible")
    transaction.commit()
    folder_zoid, doomed_zoid, broken_zoid = zoid_of(folder), zoid_of(doomed), zoid_of(broken)
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("UPDATE object_state SET state = %s WHERE zoid = %s", (psycopg2.Binary(_UNCONVERTIBLE), broken_zoid))
    pg.close()
    settings = make_settings(db_dsn, es_url, es_prefix, state_mapping="dynamic", class_routes="")
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    assert {row[0] for row in dead_letters(db_dsn)} == {folder_zoid, doomed_zoid, broken_zoid}
    env = _cli_env(settings, es_url)

    listed = run_esindexer("dead-letters", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    groups = {(g["kind"], g["class_name"]): g for g in json.loads(listed.stdout)}
    assert groups[("rejected", "tests.indexing.Folderish")]["letters"] == 2
    assert groups[("rejected", "tests.indexing.Folderish")]["cause"] == (
        "mapper_parsing_exception" if opensearch else "document_parsing_exception")
    assert groups[("unconvertible", "tests.indexing.Page")]["letters"] == 1

    # Fix two of the three causes: route Folderish to an index of its own, and remove one
    # of the refused objects altogether. The unconvertible record stays.
    del root["doomed"]
    transaction.commit()
    zodb.pack()  # garbage collection removes the unreachable object's row
    env["ESINDEXER_CLASS_ROUTES"] = "tests.indexing.Folderish=folders"
    first = run_esindexer("dead-letters", "--redeliver", "--json", env=env)
    assert first.returncode == 1, first.stderr  # one object still fails
    report = json.loads(first.stdout)
    assert (report["indexed"], report["gone"], report["still_failing"]) == (1, 1, 1)
    assert list(report["failures"]) == [str(broken_zoid)]
    assert "unconvertible" in report["failures"][str(broken_zoid)]
    indexed = docs(es, settings.index_prefix)
    assert indexed[folder_zoid]["class"] == "tests.indexing.Folderish"
    assert indexed[folder_zoid]["state"]["title"] == {"text": "a folder"}
    assert {row[0] for row in dead_letters(db_dsn)} == {broken_zoid}

    # Mend the last one by committing a good state: redelivery indexes the current revision.
    # (a title of the mapped shape: on OpenSearch, the object the first folder mapped)
    mended = {"text": {"deeper": "mended"}} if opensearch else "mended"
    broken.title = mended
    transaction.commit()
    second = run_esindexer("dead-letters", "--redeliver", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "still failing 0" in second.stdout
    assert dead_letters(db_dsn) == []
    assert docs(es, settings.index_prefix)[broken_zoid]["state"]["title"] == mended
    assert run_esindexer("dead-letters", env=env).stdout.startswith("no dead letters")
    conn.close()
