"""Pack deletions the service knows of but has not applied yet (documents=objects).

A captured deletion is applied only once every transaction older than its own has
ended (the cursor's rule, docs/architecture.md, "Guarantees about deletions" 1), so a
writing transaction left open anywhere on the server holds a committed pack's deletions
back. That is what a loaded CI machine did: ``run --until-caught-up`` said it was caught
up with the pack's deletions unapplied, and ``verify --deep`` counted the packed records
the graph still held as ``graph`` differences. Here the open transaction is made on
purpose, so the window is as long as the test wants.
"""

from __future__ import annotations

import json
import threading

import psycopg2
import pytest
import transaction

from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from esindexer.source import deletions
from esindexer.source.graph import NODES
from tests.indexing import make_settings, zoid_of
from tests.objects.test_model_pipeline import build
from tests.support import both_history_modes, run_esindexer, scalar


def _env(settings) -> dict[str, str]:
    return {"ESINDEXER_PG_DSN": settings.pg_dsn, "ESINDEXER_ES_URL": ",".join(settings.es_url),
            "ESINDEXER_INDEX_PREFIX": settings.index_prefix, "ESINDEXER_DOCUMENTS": "objects",
            "ESINDEXER_SEARCH_ENGINE": settings.search_engine}


def _verify_deep(settings) -> tuple[int, dict]:
    done = run_esindexer("verify", "--deep", "--json", env=_env(settings), timeout=300)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def _run(settings, outcome: dict) -> Indexer:
    indexer = Indexer(settings, Metrics(process_metrics=False))
    outcome["indexer"] = indexer
    outcome["code"] = indexer.run(until_caught_up=True)
    return indexer


def _indexed_then_packed_behind_an_open_transaction(zodb, db_dsn, settings):
    """Index a site with five removed items (garbage: in the graph and the database), then
    pack while a writing transaction stays open; returns that transaction's connection
    (the caller rolls it back) and the packed zoids."""
    conn = build(zodb)
    news = conn.root()["site"]._tree["news"]
    removed = [news._tree.pop(f"item-{n}") for n in range(5)]
    transaction.commit()
    gone = {zoid_of(item) for item in removed} | {zoid_of(item.body["holder"]) for item in removed}
    conn.close()
    first: dict = {}
    _run(settings, first)
    assert first["code"] == ExitCode.OK and first["indexer"].caught_up
    assert _verify_deep(settings)[0] == 0
    blocker = psycopg2.connect(db_dsn)  # a writing transaction that stays open (another application's)
    with blocker.cursor() as cur:
        cur.execute("SELECT pg_current_xact_id()")
    zodb.pack()
    with psycopg2.connect(db_dsn) as pg:
        assert deletions.count_unapplied(pg, settings.worker_id) >= len(gone)
        assert deletions.pending(pg, settings.worker_id) == []  # held back by the open transaction
    pg.close()
    return blocker, gone


def _graph_holds(db_dsn, settings, zoids) -> int:
    return scalar(db_dsn, f"SELECT count(*) FROM {NODES} WHERE client_id = %s AND zoid = ANY(%s)",
                  (settings.worker_id, sorted(zoids)))


@both_history_modes
def test_verify_deep_counts_records_of_pending_pack_deletions_as_lagging(zodb, db_dsn, es_url, es_prefix):
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")
    blocker, gone = _indexed_then_packed_behind_an_open_transaction(zodb, db_dsn, settings)
    try:
        assert _graph_holds(db_dsn, settings, gone) == len(gone)  # the service has not applied them
        code, report = _verify_deep(settings)
        assert code == 0, report
        assert report["differences"]["graph"] == 0, report
        assert report["pending_deletions"] >= len(gone) and report["lagging"] >= len(gone), report
        text = run_esindexer("verify", "--deep", env=_env(settings), timeout=300)
        assert text.returncode == 0 and "pending pack deletions" in text.stdout, text.stdout
    finally:
        blocker.rollback()
        blocker.close()


@both_history_modes
def test_run_until_caught_up_waits_for_pack_deletions_held_back_and_the_graph_forgets_them(zodb, db_dsn, es_url,
                                                                                          es_prefix):
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")
    blocker, gone = _indexed_then_packed_behind_an_open_transaction(zodb, db_dsn, settings)
    outcome: dict = {}
    thread = threading.Thread(target=_run, args=(settings, outcome), daemon=True)
    try:
        thread.start()
        thread.join(4.0)
        assert thread.is_alive(), (f"said caught up (exit {outcome.get('code')}) with "
                                   f"{deletions.count_unapplied(blocker, settings.worker_id)} pack deletion(s) "
                                   "unapplied")
    finally:
        blocker.rollback()
        blocker.close()
    thread.join(60)
    assert not thread.is_alive()
    assert outcome["code"] == ExitCode.OK and outcome["indexer"].caught_up
    with psycopg2.connect(db_dsn) as pg:
        assert deletions.count_unapplied(pg, settings.worker_id) == 0
    pg.close()
    # applied to the graph too (a bounded run that read nothing applied them to the index only)
    assert _graph_holds(db_dsn, settings, gone) == 0
    code, report = _verify_deep(settings)
    assert code == 0 and report["pending_deletions"] == 0 and report["lagging"] == 0, report


@pytest.mark.parametrize("keep_history", [False], ids=["history-free"])
def test_a_bounded_run_with_nothing_to_read_applies_pack_deletions_to_the_graph(zodb, db_dsn, es_url, es_prefix):
    """No transaction holds them back: the bounded run after a pack (which commits no tid)
    applies the deletions to the index and the graph alike."""
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")
    blocker, gone = _indexed_then_packed_behind_an_open_transaction(zodb, db_dsn, settings)
    blocker.rollback()
    blocker.close()
    outcome: dict = {}
    _run(settings, outcome)
    assert outcome["code"] == ExitCode.OK and outcome["indexer"].caught_up
    assert _graph_holds(db_dsn, settings, gone) == 0
    assert _verify_deep(settings)[0] == 0
