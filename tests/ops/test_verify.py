"""`esindexer verify`: drift between index and database is found, repaired and read back (real servers).

Changes by hand are made as an operator makes them: an unversioned ``DELETE`` (its
tombstone, version + 1, refused the repair for ``index.gc_deletes``, and the refused write
was counted as repaired) and an unversioned ``PUT`` of an edited body (version + 1, same
``tid`` field: invisible without ``--deep``).
"""

from __future__ import annotations

import json

import orjson
import psycopg2
import transaction

from esindexer.documents import DocumentBuilder
from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from tests.indexing import commit_pages, docs, make_settings, progress, zoid_of
from tests.support import both_history_modes, run_esindexer


def verify_cli(settings, *args: str) -> tuple[int, dict]:
    done = run_esindexer("verify", "--json", *args, env={
        "ESINDEXER_PG_DSN": settings.pg_dsn, "ESINDEXER_ES_URL": settings.es_url[0],
        "ESINDEXER_INDEX_PREFIX": settings.index_prefix})
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def catch_up(settings) -> None:
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK


def hand_edit(es, index: str, zoid: int, title: str) -> None:
    """An unversioned PUT of an edited body, keeping the tid field (version becomes tid + 1)."""
    body = es.get(index=index, id=str(zoid))["_source"]
    body["state"]["title"] = title
    es.index(index=index, id=str(zoid), document=body, refresh=True)


@both_history_modes
def test_verify_finds_repairs_and_reads_back_drift(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    root = conn.root()
    pages = commit_pages(root, 20)
    settings = make_settings(db_dsn, es_url, es_prefix)
    catch_up(settings)
    code, report = verify_cli(settings)
    assert code == 0 and report["clean"] and report["objects"] == 21 and report["documents"] == 21, report
    assert report["progress_tid"] == progress(db_dsn) > 0

    builder = DocumentBuilder(settings)
    index = builder.indices[0]
    lost, edited, behind = zoid_of(pages[0]), zoid_of(pages[1]), zoid_of(pages[2])
    es.delete(index=index, id=str(lost), refresh=True)  # leaves a tombstone at tid + 1
    hand_edit(es, index, edited, "edited by hand")
    ghost = 10_000_000  # a document whose object never existed here
    old_tid = docs(es, settings.index_prefix)[behind]["tid"]
    es.index(index=index, id=str(ghost), version=old_tid, version_type="external", refresh=True,
             document=orjson.loads(builder.index_action(old_tid, ghost, "x.Y", "{}").source))
    pages[2].title = "changed while the service is stopped"  # the service's lag, not drift
    transaction.commit()

    code, report = verify_cli(settings)
    assert code == 1 and not report["clean"]
    assert report["differences"] == {"missing": 1, "stale": 0, "ahead": 0, "orphan": 1, "changed": 0}
    assert report["examples"]["missing"] == [lost] and report["examples"]["orphan"] == [ghost]
    assert report["lagging"]["stale"] == 1 and report["lagging_examples"]["stale"] == [behind]
    assert report["still_different"]["missing"] == 1

    code, report = verify_cli(settings, "--deep")
    assert code == 1 and report["deep"]
    assert report["differences"] == {"missing": 1, "stale": 0, "ahead": 0, "orphan": 1, "changed": 1}
    assert report["examples"]["changed"] == [edited]

    code, report = verify_cli(settings, "--deep", "--repair")
    assert code == 0, report
    assert report["repaired"] == 3 and not any(report["still_different"].values()), report
    code, report = verify_cli(settings, "--deep")
    assert code == 0 and report["clean"], report
    assert report["lagging"]["stale"] == 1  # left to the service
    indexed = docs(es, settings.index_prefix)
    assert ghost not in indexed
    assert indexed[lost]["state"]["title"] == "page 0" and indexed[lost]["tid"] == int.from_bytes(pages[0]._p_serial, "big")
    assert indexed[edited]["state"]["title"] == "page 1"

    # A later commit still wins over what the repair wrote (its version is the hand's + 1).
    pages[0].title, pages[1].title = "later 0", "later 1"
    transaction.commit()
    catch_up(settings)
    indexed = docs(es, settings.index_prefix)
    assert indexed[lost]["state"]["title"] == "later 0" and indexed[edited]["state"]["title"] == "later 1"
    assert indexed[behind]["state"]["title"] == "changed while the service is stopped"
    code, report = verify_cli(settings, "--deep")
    assert code == 0 and report["clean"] and not any(report["lagging"].values()), report
    conn.close()


def test_differences_left_after_a_repair_are_reported_and_fail(zodb, db_dsn, es, es_url, es_prefix):
    """A record that does not convert (and is not dead-lettered yet) cannot be repaired: the
    text says so apart from what was repaired, and the exit code is 1. A document newer
    than the database (restored to an earlier point) is repaired, on the revision read."""
    conn = zodb.open()
    pages = commit_pages(conn.root(), 3)
    settings = make_settings(db_dsn, es_url, es_prefix)
    catch_up(settings)
    builder = DocumentBuilder(settings)
    index = builder.indices[0]
    ahead, lost, broken = zoid_of(pages[0]), zoid_of(pages[1]), zoid_of(pages[2])
    newer = docs(es, settings.index_prefix)[ahead]["tid"] + 1000
    es.index(index=index, id=str(ahead), version=newer, version_type="external", refresh=True,
             document=orjson.loads(builder.index_action(newer, ahead, "tests.indexing.Page", "{}").source))
    es.delete(index=index, id=str(lost), refresh=True)
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:  # a record no converter reads
        cur.execute("UPDATE object_state SET state = %s WHERE zoid = %s", (b"not a pickle", broken))
    pg.close()

    done = run_esindexer("verify", "--repair", env={
        "ESINDEXER_PG_DSN": settings.pg_dsn, "ESINDEXER_ES_URL": settings.es_url[0],
        "ESINDEXER_INDEX_PREFIX": settings.index_prefix})
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert "repaired 2 (read back: now as the database says)" in lines, done.stdout + done.stderr[-3000:]
    assert "still different 1:" in lines and f"  missing  1  (zoids {broken})" in lines, done.stdout
    assert "verify finished: 4 rows in" in done.stderr  # the progress summary: the root and 3 pages walked
    code, report = verify_cli(settings)
    assert code == 1 and report["differences"]["ahead"] == 0 and report["differences"]["missing"] == 1
    indexed = docs(es, settings.index_prefix)[ahead]
    assert indexed["tid"] == int.from_bytes(pages[0]._p_serial, "big") and indexed["_version"] == newer + 1
    conn.close()


def test_deep_is_refused_with_an_ingest_pipeline(db_dsn, es_url, es_prefix):
    done = run_esindexer("verify", "--deep", env={
        "ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": es_prefix.rstrip("-"),
        "ESINDEXER_INGEST_PIPELINE": "enrich"})
    assert done.returncode == 2 and "run verify without --deep" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def upper_titles(class_name: str, json_text: str) -> str | None:
    """A transform given after the documents were written (see the test below)."""
    if not class_name.endswith(".Page"):
        return None
    state = json.loads(json_text)
    state["title"] = state["title"].upper()
    return json.dumps(state)


def test_deep_finds_and_repairs_documents_a_changed_transform_would_write_otherwise(
        zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    pages = commit_pages(conn.root(), 5)
    settings = make_settings(db_dsn, es_url, es_prefix)
    catch_up(settings)
    env = {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": settings.index_prefix,
           "ESINDEXER_TRANSFORM": f"{__name__}.upper_titles"}  # given after the documents were written
    done = run_esindexer("verify", "--json", env=env)
    assert done.returncode == 0 and json.loads(done.stdout)["clean"]  # bodies are not read without --deep
    found = run_esindexer("verify", "--json", "--deep", env=env)
    report = json.loads(found.stdout)
    assert found.returncode == 1 and report["differences"]["changed"] == 5, report
    assert sorted(report["examples"]["changed"]) == sorted(zoid_of(page) for page in pages)
    repaired = run_esindexer("verify", "--json", "--deep", "--repair", env=env)
    assert repaired.returncode == 0 and json.loads(repaired.stdout)["repaired"] == 5, repaired.stdout
    again = run_esindexer("verify", "--json", "--deep", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["clean"]
    assert {doc["state"]["title"] for zoid, doc in docs(es, settings.index_prefix).items() if zoid} == {
        f"PAGE {n}" for n in range(5)}
    conn.close()


def test_verify_says_which_objects_have_no_document_by_design(zodb, db_dsn, es, es_url, es_prefix):
    """Issue 26.7: "objects 5257, documents 5003" did not say the 254 were never-indexed classes."""
    from tests.indexing import commit_tree

    conn = zodb.open()
    commit_tree(conn.root(), 300, per_transaction=100)  # an OOBTree: its buckets are not indexed
    conn.close()
    settings = make_settings(db_dsn, es_url, es_prefix)
    catch_up(settings)
    code, report = verify_cli(settings)
    assert code == 0 and report["clean"], report
    assert report["objects_not_indexed"] > 0 and report["objects_unconvertible"] == 0
    assert report["objects"] == report["documents"] + report["objects_not_indexed"], report
    text = run_esindexer("verify", env={"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url,
                                        "ESINDEXER_INDEX_PREFIX": settings.index_prefix})
    assert f"({report['objects_not_indexed']} never indexed (classes skipped or excluded))" in text.stdout
