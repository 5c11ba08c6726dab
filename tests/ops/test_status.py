"""``esindexer status`` on real servers: running or not, rows behind, documents, every client id."""

from __future__ import annotations

import json

import psycopg2
import transaction

from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from esindexer.source.backlog import rows_after
from tests.indexing import Page, latest_tid, make_settings, progress, running
from tests.support import both_history_modes, run_esindexer, wait_for

_BROKEN = b"junk"  # a record the converter cannot read: one unconvertible dead letter


def _env(settings, **more: str) -> dict[str, str]:
    return {"ESINDEXER_PG_DSN": settings.pg_dsn, "ESINDEXER_ES_URL": ",".join(settings.es_url),
            "ESINDEXER_INDEX_PREFIX": settings.index_prefix, "ESINDEXER_CLIENT_ID": settings.client_id, **more}


def _status(settings, *args: str, **more: str) -> dict:
    done = run_esindexer("status", "--json", *args, env=_env(settings, **more))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _pages(zodb, count: int) -> list[Page]:
    conn = zodb.open()
    root = conn.root()
    pages = [Page(f"page {n}") for n in range(count)]
    for n, page in enumerate(pages):
        root[f"p{n}"] = page
    transaction.commit()
    return pages


def _break(db_dsn: str, page: Page) -> None:
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("UPDATE object_state SET state = %s WHERE zoid = %s",
                    (psycopg2.Binary(_BROKEN), int.from_bytes(page._p_oid, "big")))
    pg.close()


@both_history_modes
def test_status_says_running_rows_behind_documents_and_dead_letters(zodb, db_dsn, es, es_url, es_prefix,
                                                                    keep_history):
    pages = _pages(zodb, 20)
    _break(db_dsn, pages[0])
    settings = make_settings(db_dsn, es_url, es_prefix)
    with running(settings):
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), message="indexed")
        live = _status(settings)
        assert live["running"] is True
    report = _status(settings)
    assert report["running"] is False
    tid = latest_tid(db_dsn)
    assert report["progress_tid"] == report["latest_tid"] == tid
    assert report["progress_committed_at"] and report["progress_saved_at"]
    assert (report["rows_behind"], report["rows_behind_exact"], report["lag_seconds"]) == (0, True, 0)
    assert report["caught_up"] is True
    assert report["dead_letters_by_kind"] == {"unconvertible": 1}
    es.indices.refresh(index=f"{es_prefix}*")
    index = f"{settings.index_prefix}-objects"
    assert report["indices"] == {index: es.count(index=index)["count"]}
    assert report["documents"] == 20  # 19 pages and the root mapping; the broken page is not indexed
    assert report["alias"] == {"name": settings.index_prefix, "indices": [index]}
    assert report["pending_pack_deletions"] == 0

    # Three objects change in one transaction: three rows behind, at that transaction's lag.
    for page in pages[1:4]:
        page.title += " (edited)"
    transaction.commit()
    behind = _status(settings)
    assert (behind["rows_behind"], behind["rows_behind_exact"], behind["caught_up"]) == (3, True, False)
    assert behind["latest_tid"] > behind["progress_tid"] == tid and behind["lag_seconds"] > 0
    with psycopg2.connect(db_dsn) as pg:  # the cap: counted up to it, then "more than"
        capped = rows_after(pg, tid, cap=2)
    pg.close()
    assert (capped.rows, capped.exact) == (2, False) and capped.estimate >= 1

    text = run_esindexer("status", env=_env(settings))
    assert text.returncode == 0, text.stderr
    assert "rows behind" in text.stdout and f"{index} (20 docs)" in text.stdout
    lines = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in text.stdout.splitlines()}
    assert lines["running"] == "False" and lines["rows behind"] == "3"


def test_status_of_every_client_id_and_of_an_unknown_one(zodb, db_dsn, es, es_url, es_prefix):
    _pages(zodb, 3)
    first = make_settings(db_dsn, es_url, es_prefix + "a", client_id="first")
    second = make_settings(db_dsn, es_url, es_prefix + "b", client_id="second")
    for settings in (first, second):
        assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    reports = _status(first, "--all")
    assert [r["client_id"] for r in reports] == ["first", "second"]
    mine, other = reports
    assert mine["documents"] == 4 and mine["rows_behind"] == 0 and mine["running"] is False
    # the other client's indices are named by its own settings, which this process lacks
    assert other["documents"] is None and "ESINDEXER_INDEX_PREFIX" in other["documents_error"]
    assert other["progress_tid"] == latest_tid(db_dsn) and other["rows_behind"] == 0

    unknown = run_esindexer("status", env=_env(first, ESINDEXER_CLIENT_ID="typo"))
    assert unknown.returncode == ExitCode.SETUP and unknown.stdout == ""
    assert "'typo'" in unknown.stderr and "'first', 'second'" in unknown.stderr, unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_status_of_a_fresh_database_names_no_client_and_exits_2(db_dsn, zodb, es, es_url, es_prefix):
    conn = zodb.open()  # RelStorage's tables, and no object but the root
    settings = make_settings(db_dsn, es_url, es_prefix)
    done = run_esindexer("status", env=_env(settings))
    assert done.returncode == ExitCode.SETUP
    assert "no indexer has run against it yet" in done.stderr
    conn.close()


def test_a_client_that_ran_without_saving_progress_is_reported_not_refused(zodb, db_dsn, es, es_url, es_prefix):
    zodb.open().close()
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("DELETE FROM object_state")  # nothing to index: no batch, so no progress row
    pg.close()
    settings = make_settings(db_dsn, es_url, es_prefix)
    def started() -> bool:  # before it takes its lock, the client id is unknown (exit 2)
        done = run_esindexer("status", "--json", env=_env(settings))
        return done.returncode == 0 and json.loads(done.stdout)["running"]

    with running(settings):
        wait_for(started, message="running")
    report = _status(settings)
    assert (report["running"], report["progress_tid"], report["progress_saved_at"]) == (False, None, None)
    assert report["crash_guard"]["last_run"] == "exited cleanly" and report["documents"] == 0


def test_status_without_elasticsearch_still_reports_postgresql(zodb, db_dsn, es, es_url, es_prefix):
    _pages(zodb, 2)
    settings = make_settings(db_dsn, es_url, es_prefix)
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    env = _env(settings, ESINDEXER_ES_URL="http://127.0.0.1:9")
    done = run_esindexer("status", "--json", env=env)
    # Issue 26.2: it exited 0 and the text said "(missing)", read as a deleted index.
    assert done.returncode == ExitCode.UNREACHABLE, done.stderr
    assert "cannot reach Elasticsearch at http://127.0.0.1:9" in done.stderr
    report = json.loads(done.stdout)
    assert report["documents"] is None and report["indices"] is None and report["documents_error"]
    assert report["caught_up"] is True and report["rows_behind"] == 0
    text = run_esindexer("status", env=env)
    assert text.returncode == ExitCode.UNREACHABLE
    assert "missing" not in text.stdout
    assert "indices" in text.stdout and "unknown (Elasticsearch did not answer" in text.stdout
