"""A graph that is not the one the documents were built from is refused, with the way out.

The graph is written before a batch's documents and the progress after them, so its tid is
never below the progress. When its rows are deleted, or restored apart from the progress,
following on resolved a tree from the records changed since alone: moves and additions never
reached the index, silently (found on 2026-12-07). The service now refuses to start (exit 2,
one line saying what it found and what to run), writes nothing, ``status``, ``verify`` and
``dead-letters --redeliver`` say the same, and the line's way out, ``esindexer reindex
--to``, serves the truth behind the alias.
"""

from __future__ import annotations

import random

import psycopg2
import pytest
import transaction

from tests.objects import corpus, index, truth
from tests.support import open_zodb, run_esindexer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not index.MODEL, reason="the object model (esindexer.objects, issue 22) is not here yet"),
]

GRAPH = ("esindexer_obj_nodes", "esindexer_obj_edges", "esindexer_obj_dirty", "esindexer_obj_applied")


def _lose_all(cur, client_id: str) -> None:
    for table in GRAPH:
        cur.execute(f"DELETE FROM {table} WHERE client_id = %s", (client_id,))


def _lose_records(cur, client_id: str) -> None:  # the applied row stays
    for table in GRAPH[:3]:
        cur.execute(f"DELETE FROM {table} WHERE client_id = %s", (client_id,))


def _restore_older(cur, client_id: str) -> None:  # a graph as of before the last batches
    cur.execute("UPDATE esindexer_obj_applied SET tid = tid - 1 WHERE client_id = %s", (client_id,))


@pytest.mark.parametrize("loss", [_lose_all, _lose_records, _restore_older], ids=["deleted", "emptied", "older"])
def test_a_graph_that_does_not_cover_the_progress_is_refused_and_reindex_is_the_way_out(loss, db_dsn, es, es_url,
                                                                                         es_prefix):
    from tests.pipeline.processes import service_env

    db = open_zodb(db_dsn, False)
    corpus.build_corpus(db, items=120, infra_records=200, mimetypes=10)
    alias = es_prefix.rstrip("-")
    client = f"{alias}-gen1"
    env = {k: v for k, v in service_env(db_dsn, es_url, f"{alias}-gen1-", ALIAS=alias, CLIENT_ID=client,
                                         DOCUMENTS="objects", ES_REQUEST_TIMEOUT="60").items()
           if k.startswith("ESINDEXER_")}
    done = run_esindexer("run", "--until-caught-up", env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    before = index.documents(es, es_prefix, pattern=alias)
    found = truth.objects(db_dsn, False)
    truth.assert_same(index.expected(found), index.actual(before, found), "after the backfill")

    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("SELECT tid FROM esindexer_obj_applied WHERE client_id = %s", (client,))
        applied = int(cur.fetchone()[0])
        loss(cur, client)
    pg.close()
    conn = db.open()
    root = conn.root()
    corpus.move(root, "/f1/sub", "/f2")  # a subtree moves
    corpus.attach(corpus.resolve(root, "/c1"), "item-9999", corpus.make_item(9999, random.Random(1)))
    transaction.commit()
    conn.close()

    done = run_esindexer("run", "--until-caught-up", env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    said = done.stderr
    assert f"client id {client!r} has indexed object documents up to" in said, said[-3000:]
    assert "esindexer reindex --to PREFIX" in said
    assert env["ESINDEXER_PG_DSN"] not in said
    status = run_esindexer("status", env=env, timeout=120)
    line = next(x for x in status.stdout.splitlines() if x.startswith("object graph"))
    assert f"NOT USABLE: client id {client!r} has indexed object documents" in line, status.stdout
    assert any(x.split()[:3] == ["caught", "up", "False"] for x in status.stdout.splitlines()), status.stdout
    # the commands that compare with the graph or write into it refuse too: verify --repair
    # would have deleted every document the lost graph does not hold
    for command in (("verify",), ("verify", "--repair"), ("dead-letters", "--redeliver")):
        done = run_esindexer(*command, env=env, timeout=300)
        assert done.returncode == 2 and f"client id {client!r} has indexed object documents" in done.stderr, (
            command, done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    # nothing written: the index as it was, the graph as the loss left it
    assert index.documents(es, es_prefix, pattern=alias) == before
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("SELECT tid FROM esindexer_obj_applied WHERE client_id = %s", (client,))
        row = cur.fetchone()
    pg.close()
    left = None if loss is _lose_all else applied - 1 if loss is _restore_older else applied
    assert (None if row is None else int(row[0])) == left

    done = run_esindexer("reindex", "--to", f"{alias}-gen2", env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = truth.objects(db_dsn, False)
    served = index.documents(es, es_prefix, pattern=alias)
    truth.assert_same(index.expected(found), index.actual(served, found), "what the alias serves after the reindex")
    assert "/f2/sub" in {o.path for o in found.values()}  # the move is in the truth it was compared with
    db.close()


def test_progress_set_back_to_the_start_by_hand_builds_the_graph_again(zodb, db_dsn, es_url, es_prefix, es,
                                                                       caplog):
    """docs/operations.md's *re-index everything* with a gap: the indices deleted and the
    progress set to -1. The graph, resolved and complete, would have taken every record
    read again as already applied (same tid): no document written, the new index empty.
    It is built again from the start instead, and the index equals ZODB's tree."""
    from tests.indexing import make_settings, running
    from tests.objects.test_model_pipeline import build, paths
    from tests.objects.test_model_pipeline import truth as tree
    from tests.support import wait_for

    conn = build(zodb)
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")
    alias = settings.alias_name
    with running(settings):
        wait_for(lambda: paths(es, alias) == tree(zodb), timeout=60)
    es.indices.delete(index=next(iter(es.indices.get_alias(name=alias))))
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("UPDATE esindexer_progress SET tid = -1 WHERE client_id = %s", (settings.worker_id,))
    pg.close()
    root = conn.root()
    root["site"]._tree["docs"]._tree["doc-3"].title = "changed while no index existed"
    transaction.commit()
    caplog.set_level("INFO", logger="esindexer.pipeline.objectreader")
    with running(settings):
        wait_for(lambda: paths(es, alias) == tree(zodb), timeout=60)
        assert f"the object graph of client id {settings.worker_id!r} is built again" in caplog.text
        hits = es.search(index=alias, query={"match_phrase": {"state.title": "changed while no index existed"}})
        assert [h["_source"]["path"] for h in hits["hits"]["hits"]] == ["/site/docs/doc-3"]
    conn.close()


def test_a_database_without_the_graphs_tables_has_no_graph(db_dsn):
    """``status`` asks before any objects run created the tables: an answer, not an error."""
    from esindexer.source import graph
    from esindexer.source.pg import has_relation

    conn = psycopg2.connect(db_dsn)
    try:
        with conn.cursor() as cur:
            assert not has_relation(cur, graph.APPLIED)
        conn.rollback()
        assert graph.coverage_problem(conn, "fresh", -1) is None
        assert "has no object graph" in graph.coverage_problem(conn, "fresh", 292043848741194752)
    finally:
        conn.close()
