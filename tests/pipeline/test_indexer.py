"""The indexing service end to end: real ZODB + RelStorage writing, real Elasticsearch reading.

Each test commits through ZODB the way applications do and checks what a user of
the index would see (documents, their versions, the dead-letter table, progress).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import psycopg2
import transaction
from persistent.mapping import PersistentMapping

from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from esindexer.source.progress import set_progress_tid
from tests.indexing import (
    Folderish,
    Page,
    commit_pages,
    dead_letters,
    docs,
    latest_tid,
    make_settings,
    progress,
    running,
    zoid_of,
)
from tests.support import (
    TcpProxy,
    both_history_modes,
    esindexer_env,
    run_esindexer,
    search_client,
    search_engine,
    wait_for,
)


@both_history_modes
def test_objects_appear_change_and_disappear(zodb, db_dsn, es, es_url, es_prefix, keep_history):
    settings = make_settings(db_dsn, es_url, es_prefix)
    alias = settings.index_prefix
    conn = zodb.open()
    root = conn.root()
    root["pages"] = PersistentMapping()
    transaction.commit()
    with running(settings):
        pages = [Page(f"page {n}", body="lorem ipsum", tags=["a", "b"]) for n in range(5)]
        for n, page in enumerate(pages):
            root["pages"][n] = page
        transaction.commit()
        zoids = [zoid_of(p) for p in pages]
        found = wait_for(lambda: (d := docs(es, alias)) and all(z in d for z in zoids) and d,
                         message="pages indexed")
        doc = found[zoids[0]]
        assert doc["class"] == "tests.indexing.Page"
        assert doc["state"]["title"] == "page 0"
        assert doc["_version"] == doc["tid"]
        assert doc["committed_at"].endswith("Z")

        pages[0].title = "changed title"
        transaction.commit()
        wait_for(lambda: docs(es, alias)[zoids[0]]["state"]["title"] == "changed title", message="update")

        # Remove from the container and pack with GC: no transaction announces the
        # deletion; the capture trigger does.
        del root["pages"][1]
        transaction.commit()
        zodb.pack(time.time() + 1)
        wait_for(lambda: zoids[1] not in docs(es, alias), message="packed object removed")
        assert zoids[0] in docs(es, alias)
    conn.close()
    assert progress(db_dsn) == latest_tid(db_dsn)


def test_undo_of_creation_deletes_the_document(db_dsn, es, es_url, es_prefix):
    from tests.support import open_zodb

    db = open_zodb(db_dsn, keep_history=True)
    try:
        conn = db.open()
        conn.root()["p"] = page = Page("to be undone")
        transaction.commit()
        zoid = zoid_of(page)
        settings = make_settings(db_dsn, es_url, es_prefix)
        with running(settings):
            wait_for(lambda: zoid in docs(es, settings.index_prefix), message="indexed")
            undo_id = db.undoLog(0, 1)[0]["id"]
            db.undo(undo_id)
            transaction.commit()
            wait_for(lambda: zoid not in docs(es, settings.index_prefix), message="undone object removed")
        conn.close()
    finally:
        db.close()


@both_history_modes
def test_backfill_restart_and_replay(zodb, db_dsn, es, es_url, es_prefix, keep_history):
    conn = zodb.open()
    root = conn.root()
    for n in range(120):
        root[f"p{n}"] = Page(f"page {n}")
        if n % 40 == 39:
            transaction.commit()
    settings = make_settings(db_dsn, es_url, es_prefix, metrics_port=0)
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    first = docs(es, settings.index_prefix)
    assert len(first) == 121  # root + 120 pages
    assert progress(db_dsn) == latest_tid(db_dsn)

    # more commits while stopped; a restart resumes from progress
    for n in range(120, 150):
        root[f"p{n}"] = Page(f"page {n}")
    transaction.commit()
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    second = docs(es, settings.index_prefix)
    assert len(second) == 151
    assert all(second[z]["_version"] == second[z]["tid"] for z in second)

    # replaying everything from the start changes nothing
    with psycopg2.connect(db_dsn) as pg:
        set_progress_tid(pg, settings.client_id, -1)
    pg.close()
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    assert docs(es, settings.index_prefix) == second
    conn.close()


def test_rejected_and_unconvertible_records_are_dead_lettered(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    root = conn.root()
    # Elasticsearch refuses an object where a text field was mapped; OpenSearch keeps that
    # document (its ignore_malformed drops the object) but refuses a string where an object
    # was mapped: the first class's shape is mapped, the second's conflicts.
    first, conflicting = (Folderish, Page) if search_engine() == "opensearch" else (Page, Folderish)
    root["a"] = good = first("good")
    transaction.commit()  # the first class's title is mapped (text, or an object)
    root["b"] = conflicting("conflicting shape")  # dynamic mapping: title has the other shape here
    root["c"] = broken = first("will be corrupted")
    root["d"] = after = first("after")
    transaction.commit()
    good_zoid, broken_zoid, after_zoid = zoid_of(good), zoid_of(broken), zoid_of(after)
    folder_zoid = zoid_of(root["b"])
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("UPDATE object_state SET state = %s WHERE zoid = %s",
                    (psycopg2.Binary(b"\x80\x03corrupt pickle"), broken_zoid))
    pg.close()
    settings = make_settings(db_dsn, es_url, es_prefix, state_mapping="dynamic", class_routes="")
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    indexed = docs(es, settings.index_prefix)
    assert good_zoid in indexed and after_zoid in indexed
    assert broken_zoid not in indexed
    letters = {row[0]: row for row in dead_letters(db_dsn)}
    assert letters[broken_zoid][3] == "unconvertible" and letters[broken_zoid][6]  # raw record kept
    assert folder_zoid not in indexed
    assert letters[folder_zoid][3] == "rejected" and letters[folder_zoid][5]  # document kept
    assert letters[folder_zoid][2] == f"tests.indexing.{conflicting.__name__}"
    assert progress(db_dsn) == latest_tid(db_dsn)  # progress advanced past the bad records
    conn.close()


def test_error_budget_stops_the_service(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    for n in range(5):
        conn.root()[n] = Page(f"p{n}")
    transaction.commit()
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("UPDATE object_state SET state = %s WHERE zoid > 0", (psycopg2.Binary(b"junk"),))
    pg.close()
    metrics = Metrics(process_metrics=False)
    settings = make_settings(db_dsn, es_url, es_prefix, dead_letter_budget=2)
    assert Indexer(settings, metrics).run(until_caught_up=True) == ExitCode.ERROR_BUDGET
    assert metrics.error_budget_exhausted()
    assert len(dead_letters(db_dsn)) == 5  # recorded, never silently dropped
    conn.close()


def test_elasticsearch_outage_freezes_progress_then_catches_up(zodb, db_dsn, es, es_url, es_prefix):
    target = urlsplit(es_url)
    proxy = TcpProxy(target.hostname, target.port)
    try:
        settings = make_settings(db_dsn, proxy.url, es_prefix, es_request_timeout=3)
        metrics = Metrics(process_metrics=False)
        conn = zodb.open()
        root = conn.root()
        with running(settings, metrics):
            root["first"] = Page("before the outage")
            transaction.commit()
            wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), message="first commit indexed")
            proxy.pause()
            before = progress(db_dsn)
            pages = [Page(f"during outage {n}") for n in range(10)]
            for n, page in enumerate(pages):
                root[f"o{n}"] = page
                transaction.commit()
            wait_for(lambda: metrics.seconds_since_progress() is not None and
                     sum(1 for line in _metric_lines(metrics, "esindexer_retries_total") if not line.endswith(" 0.0")),
                     message="retries counted")
            time.sleep(1)
            assert progress(db_dsn) == before  # frozen while Elasticsearch is away
            proxy.resume()
            wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), timeout=60, message="caught up")
            indexed = docs(es, settings.index_prefix)
            assert all(zoid_of(p) in indexed for p in pages)
        conn.close()
    finally:
        proxy.close()


def _metric_lines(metrics: Metrics, name: str) -> list[str]:
    from prometheus_client import generate_latest

    return [line for line in generate_latest(metrics.registry).decode().splitlines() if line.startswith(name)]


def test_lost_postgresql_connection_resumes(zodb, db_dsn, es, es_url, es_prefix, pg_dsn):
    settings = make_settings(db_dsn, es_url, es_prefix)
    conn = zodb.open()
    root = conn.root()
    with running(settings):
        root["a"] = Page("a")
        transaction.commit()
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), message="indexed")
        dbname = urlsplit(db_dsn).path.lstrip("/")
        with psycopg2.connect(pg_dsn) as admin, admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND application_name LIKE 'esindexer%%'", (dbname,))
        admin.close()
        root["b"] = page = Page("after the connection loss")
        transaction.commit()
        wait_for(lambda: zoid_of(page) in docs(es, settings.index_prefix), timeout=60, message="resumed")
    conn.close()


def test_one_indexer_per_client_id(zodb, db_dsn, es, es_url, es_prefix):
    # With standby off (by default a second one waits: tests/pipeline/test_standby.py).
    settings = make_settings(db_dsn, es_url, es_prefix, standby="false")
    with running(settings):
        wait_for(lambda: progress(db_dsn) > 0, message="first indexer running")
        assert Indexer(settings, Metrics(process_metrics=False)).run() == ExitCode.LOCKED
        # The lock is checked before anything is created: a refused instance with another
        # index prefix (a mistyped one, say) leaves Elasticsearch as it was.
        other = make_settings(db_dsn, es_url, es_prefix + "other-", standby="false")
        assert Indexer(other, Metrics(process_metrics=False)).run() == ExitCode.LOCKED
        assert not es.indices.get(index=f"{es_prefix}other*", allow_no_indices=True, expand_wildcards="all")
        templates = es.indices.get_index_template()["index_templates"]
        assert not [t["name"] for t in templates if t["name"].startswith(f"{es_prefix}other")]


def test_sigterm_stops_gracefully(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    conn.root()["x"] = Page("x")
    transaction.commit()
    env = esindexer_env(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url,
                        ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"), ESINDEXER_INDEX_REPLICAS="0",
                        ESINDEXER_METRICS_PORT="0", ESINDEXER_LOG_FORMAT="json")
    proc = subprocess.Popen([sys.executable, "-m", "esindexer", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), message="indexed by the subprocess")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert '"message": "esindexer stopped"' in err
    conn.close()


def test_status_command(zodb, db_dsn, es, es_url, es_prefix):
    import json

    conn = zodb.open()
    conn.root()["x"] = Page("x")
    transaction.commit()
    settings = make_settings(db_dsn, es_url, es_prefix)
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    done = run_esindexer("status", "--json", env={"ESINDEXER_PG_DSN": db_dsn})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["progress_tid"] == report["latest_tid"] == latest_tid(db_dsn)
    assert report["lag_seconds"] == 0 and report["caught_up"] is True
    assert report["dead_letters"] == 0
    conn.close()


def test_shutdown_during_outage_keeps_progress_and_exits(zodb, db_dsn, es, es_url, es_prefix):
    """SIGTERM while Elasticsearch is away: no hang, progress not moved past unacknowledged work."""
    target = urlsplit(es_url)
    proxy = TcpProxy(target.hostname, target.port)
    try:
        settings = make_settings(db_dsn, proxy.url, es_prefix, es_request_timeout=2, shutdown_timeout=2)
        conn = zodb.open()
        conn.root()["a"] = Page("a")
        transaction.commit()
        indexer = Indexer(settings, Metrics(process_metrics=False))
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.setdefault("code", indexer.run()), daemon=True)
        thread.start()
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), message="indexed")
        done_tid = progress(db_dsn)
        proxy.pause()
        conn.root()["b"] = Page("b")
        transaction.commit()
        time.sleep(1.5)  # the bulk for "b" is now retrying
        indexer.stop()
        thread.join(30)
        assert not thread.is_alive(), "indexer hung on shutdown during an outage"
        assert outcome["code"] == ExitCode.OK
        assert progress(db_dsn) == done_tid
        conn.close()
    finally:
        proxy.close()


@both_history_modes
def test_startup_sweep_removes_objects_packed_without_the_trigger(zodb, db_dsn, es, es_url, es_prefix,
                                                                   keep_history):
    conn = zodb.open()
    root = conn.root()
    zoids = [zoid_of(p) for p in commit_pages(root, 30)]
    plain = make_settings(db_dsn, es_url, es_prefix, install_triggers="false", sweep_on_start="never")
    assert Indexer(plain, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    assert set(zoids) <= set(docs(es, plain.index_prefix))

    for n in range(0, 30, 3):  # a third of them become garbage and are packed away
        del root[n]
    transaction.commit()
    zodb.pack(time.time() + 1)
    gone = set(zoids[0::3])

    swept = make_settings(db_dsn, es_url, es_prefix)  # installs the trigger; it was missing: sweep
    assert Indexer(swept, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    remaining = set(docs(es, swept.index_prefix))
    assert not (gone & remaining)
    assert set(zoids) - gone <= remaining
    conn.close()


def test_a_role_without_ddl_rights_indexes_by_polling_and_sweeping(zodb, db_dsn, pg_dsn, es, es_url, es_prefix):
    """The indexer's role may read RelStorage's tables and create its own, nothing more.

    It follows by polling, cannot install the triggers (so it sweeps at every start),
    and `esindexer install-trigger` run by the owner switches it to notifications.
    """
    from tests.source.follow_support import select_only_role

    conn = zodb.open()
    conn.root()["a"] = page = Page("a")
    transaction.commit()
    with select_only_role(pg_dsn, db_dsn) as ro_dsn:
        with psycopg2.connect(db_dsn) as owner, owner.cursor() as cur:
            user = psycopg2.extensions.parse_dsn(ro_dsn)["user"]
            cur.execute(f"GRANT CREATE ON SCHEMA public TO {user}")
        owner.close()
        settings = make_settings(ro_dsn, es_url, es_prefix, poll_interval="0.3")
        with running(settings):
            wait_for(lambda: zoid_of(page) in docs(es, settings.index_prefix), message="initial backfill")
            conn.root()["b"] = later = Page("b")
            transaction.commit()
            wait_for(lambda: zoid_of(later) in docs(es, settings.index_prefix), message="found by polling")
        with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
            cur.execute("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'esindexer%'")
            assert cur.fetchall() == []  # nothing installed behind the owner's back
        pg.close()
        refused = _run_cli("install-trigger", dsn=ro_dsn)
        assert refused.returncode == 1 and "NOT installed" in refused.stdout
    installed = _run_cli("install-trigger", dsn=db_dsn)
    assert installed.returncode == 0, installed.stderr
    assert "change notification trigger: installed" in installed.stdout
    assert "pack deletion trigger:       installed" in installed.stdout
    conn.close()


def _run_cli(*args: str, dsn: str) -> subprocess.CompletedProcess:
    return run_esindexer(*args, env={"ESINDEXER_PG_DSN": dsn})


def test_memory_stays_flat_on_one_huge_transaction(zodb, db_dsn, es, es_url, es_prefix):
    """A transaction is never split, so one huge commit is one huge batch: the pipeline
    must still hold only a chunk of rows and the bulks in flight, not the batch."""
    import tracemalloc

    from BTrees.OOBTree import OOBTree

    conn = zodb.open()
    root = conn.root()
    root["pages"] = tree = OOBTree()  # buckets hold the references, so no record is huge
    body = "lorem ipsum dolor sit amet " * 40  # ~1 KB of state per object
    count = 24_000
    for n in range(count):
        tree[n] = Page(f"page {n}", body=body)
    transaction.commit()
    conn.cacheMinimize()
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("SELECT count(DISTINCT tid), sum(state_size) FROM object_state WHERE zoid > 0")
        tids, state_bytes = cur.fetchone()
        state_bytes = int(state_bytes)
    pg.close()
    assert tids == 1 and state_bytes > 24_000_000

    settings = make_settings(db_dsn, es_url, es_prefix, batch_limit=1000, fetch_size=500,
                             bulk_max_docs=200)
    tracemalloc.start()
    try:
        assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\npeak traced memory {peak / 1e6:.1f} MB while indexing {state_bytes / 1e6:.1f} MB of state "
          f"in one transaction of {count} objects")
    assert peak < state_bytes / 4, f"peak {peak} bytes for {state_bytes} bytes of state: memory grows with the batch"
    es.indices.refresh(index=settings.index_prefix)
    assert es.count(index=settings.index_prefix)["count"] == count + 1  # the pages and the root
    conn.close()


def test_the_deletion_log_is_pruned_once_applied(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    root = conn.root()
    commit_pages(root, 10)
    settings = make_settings(db_dsn, es_url, es_prefix)
    with running(settings):
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), message="indexed")
        for n in range(5):
            del root[n]
        transaction.commit()
        zodb.pack(time.time() + 1)

        def log_rows() -> int:
            with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
                cur.execute("SELECT count(*) FROM esindexer_deletions")
                count = cur.fetchone()[0]
            pg.close()
            return count

        wait_for(lambda: len(docs(es, settings.index_prefix)) == 6, message="packed objects removed")
        wait_for(lambda: log_rows() == 0, message="applied deletions pruned from the log")
    conn.close()


def test_killed_mid_backfill_loses_nothing(zodb, db_dsn, es, es_url, es_prefix):
    """SIGKILL in the middle of a backfill, then a restart: the index ends up exactly right."""
    from BTrees.OOBTree import OOBTree

    conn = zodb.open()
    root = conn.root()
    root["pages"] = tree = OOBTree()
    for n in range(6000):
        tree[n] = Page(f"page {n}", body="text " * 50)
        if n % 500 == 499:
            transaction.commit()
    transaction.commit()
    env = esindexer_env(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url,
                        ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"), ESINDEXER_INDEX_REPLICAS="0",
                        ESINDEXER_METRICS_PORT="0", ESINDEXER_BATCH_LIMIT="200", ESINDEXER_BULK_MAX_DOCS="50")
    proc = subprocess.Popen([sys.executable, "-m", "esindexer", "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: progress(db_dsn) > 0, message="some progress")
        proc.kill()  # no shutdown handler runs: whatever was in flight is simply lost
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = progress(db_dsn)
    assert killed_at > 0  # (it may or may not have finished: the restart must be right either way)
    done = run_esindexer("run", "--until-caught-up", env={**env, "ESINDEXER_METRICS_PORT": "0"})
    assert done.returncode == 0, done.stderr
    assert progress(db_dsn) == latest_tid(db_dsn)
    check = run_esindexer("verify", "--json", env=env)
    report = json.loads(check.stdout)
    assert check.returncode == 0 and report["clean"], report
    es.indices.refresh(index=es_prefix.rstrip("-"))
    assert es.count(index=es_prefix.rstrip("-"))["count"] == 6001  # the pages and the root
    conn.close()


def test_reindex_without_downtime(zodb, db_dsn, es, es_url, es_prefix):
    """A second generation is built beside the first, then the alias switches in one request."""
    conn = zodb.open()
    root = conn.root()
    commit_pages(root, 30)
    alias = es_prefix.rstrip("-")
    old = make_settings(db_dsn, es_url, es_prefix, index_prefix=f"{alias}-gen1", alias=alias)
    assert Indexer(old, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    assert len(docs(es, alias)) == 31

    # The new generation (say, with the dynamic mapping), under its own client id, detached.
    new = make_settings(db_dsn, es_url, es_prefix, index_prefix=f"{alias}-gen2", alias=alias,
                        attach_alias="false", client_id="esindexer-gen2", state_mapping="dynamic")
    assert Indexer(new, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    es.indices.refresh(index=f"{alias}-gen2-objects")
    assert es.count(index=f"{alias}-gen2-objects")["count"] == 31
    assert sorted(es.indices.get_alias(name=alias)) == [f"{alias}-gen1-objects"]  # searches see gen1 only
    assert len(docs(es, alias)) == 31

    # the switch runs with the new generation's settings (its mapping too: a model other than
    # the indices' is refused, since the template would be rewritten with it)
    done = run_esindexer("alias", env={"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url,
                                       "ESINDEXER_INDEX_PREFIX": f"{alias}-gen2", "ESINDEXER_ALIAS": alias,
                                       "ESINDEXER_CLIENT_ID": "esindexer-gen2", "ESINDEXER_STATE_MAPPING": "dynamic"})
    assert done.returncode == 0, done.stderr
    assert f"removed from {alias}-gen1-objects" in done.stdout
    assert sorted(es.indices.get_alias(name=alias)) == [f"{alias}-gen2-objects"]
    mapping = es.indices.get_mapping(index=alias)[f"{alias}-gen2-objects"]["mappings"]
    assert mapping["_meta"]["state_mapping"] == "dynamic"
    assert len(docs(es, alias)) == 31

    # The new generation now runs as the service (attached) and keeps the alias current.
    live = make_settings(db_dsn, es_url, es_prefix, index_prefix=f"{alias}-gen2", alias=alias,
                         client_id="esindexer-gen2", state_mapping="dynamic")
    root["late"] = late = Page("after the switch")
    transaction.commit()
    assert Indexer(live, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    assert zoid_of(late) in docs(es, alias)
    conn.close()


def test_elasticsearch_down_at_start_is_waited_for(zodb, db_dsn, es, es_url, es_prefix):
    target = urlsplit(es_url)
    proxy = TcpProxy(target.hostname, target.port)
    proxy.pause()
    try:
        conn = zodb.open()
        conn.root()["a"] = page = Page("written before Elasticsearch came up")
        transaction.commit()
        metrics = Metrics(process_metrics=False)
        settings = make_settings(db_dsn, proxy.url, es_prefix, es_request_timeout=2)
        with running(settings, metrics):
            wait_for(lambda: any(not line.endswith(" 0.0") for line in _metric_lines(metrics, "esindexer_retries_total")),
                     message="start-up retries counted")
            proxy.resume()
            wait_for(lambda: zoid_of(page) in docs(es, settings.index_prefix), timeout=60, message="indexed")
        conn.close()
    finally:
        proxy.close()


def test_a_small_elasticsearch_node_gets_split_requests_and_back_pressure(
        zodb, db_dsn, es_constrained, es_constrained_url):
    """Against a real node that refuses bodies over 64 KiB (413) and has one write thread
    with a queue of one (429 per item and per request): everything that fits is indexed,
    the one document too large on its own is dead-lettered, and progress reaches the end."""
    from tests.es_nodes import MAX_CONTENT_BYTES

    conn = zodb.open()
    root = conn.root()
    root["pages"] = pages = PersistentMapping()
    for n in range(300):
        pages[n] = Page(f"page {n}", body="lorem ipsum " * 30)
    root["huge"] = huge = Page("too big for one request", body="z" * MAX_CONTENT_BYTES)
    transaction.commit()
    metrics = Metrics(process_metrics=False)
    settings = make_settings(db_dsn, es_constrained_url, "small-", bulk_max_docs=1000,
                             bulk_concurrency=2, index_shards=8, batch_limit=2000, fetch_size=500,
                             retry_max_seconds=0.1)
    indexer = Indexer(settings, metrics)
    assert indexer.run(until_caught_up=True) == ExitCode.OK
    assert indexer.sink.sender.learned_max_bytes is not None  # the 413s taught it the node's limit

    indexed = docs(es_constrained, settings.index_prefix)
    page_zoids = {zoid_of(p) for p in pages.values()}
    assert page_zoids <= set(indexed)
    assert zoid_of(huge) not in indexed
    [letter] = dead_letters(db_dsn)
    assert letter[0] == zoid_of(huge) and letter[3] == "rejected" and letter[5]
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("SELECT reason FROM esindexer_dead_letters")
        assert "413" in cur.fetchone()[0]
    pg.close()
    assert progress(db_dsn) == latest_tid(db_dsn)
    retries = "\n".join(_metric_lines(metrics, "esindexer_retries_total"))
    print("retries seen on the small node:\n" + retries)
    conn.close()


def test_ingest_pipeline_is_checked_at_start_and_applied_to_every_index(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    commit_pages(conn.root(), 5)
    plain = make_settings(db_dsn, es_url, es_prefix)
    assert Indexer(plain, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK  # index exists
    pipeline = f"{es_prefix}enrich"
    with_pipeline = make_settings(db_dsn, es_url, es_prefix, ingest_pipeline=pipeline)

    # A pipeline that does not exist is a setup error, said at once: no retry can fix it.
    assert Indexer(with_pipeline, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.SETUP
    missing = run_esindexer("run", "--until-caught-up", env={
        "ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": plain.index_prefix,
        "ESINDEXER_INGEST_PIPELINE": pipeline, "ESINDEXER_METRICS_PORT": "0"})
    assert missing.returncode == 2 and f"ingest pipeline '{pipeline}'" in missing.stderr

    # (The test node has no ingest processors; an empty pipeline still runs for every document.)
    es.ingest.put_pipeline(id=pipeline, processors=[], description="esindexer test")
    try:
        commit_pages(conn.root(), 8)  # rewrites pages 0-4, adds 5-7
        assert Indexer(with_pipeline, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
        index = with_pipeline.index_for_route(with_pipeline.default_route)
        assert es.indices.get_settings(index=index)[index]["settings"]["index"]["default_pipeline"] == pipeline
        stats = es.nodes.stats(metric="ingest")["nodes"]
        ingested = sum(node["ingest"]["pipelines"].get(pipeline, {}).get("ingested_as_first_pipeline_in_bytes", 0)
                       for node in stats.values())
        # OpenSearch skips a pipeline without processors (its count stays 0) and its
        # integ-test build has none to add: there the index setting above is the proof.
        assert ingested > 0 or search_engine() == "opensearch"  # the documents went through it
        assert len(docs(es, with_pipeline.index_prefix)) >= 9  # the root and eight pages
    finally:  # (a pipeline cannot be deleted while it is an index's default)
        es.options(ignore_status=404).indices.delete(index=f"{es_prefix}*")
        es.ingest.delete_pipeline(id=pipeline)
    conn.close()


def test_a_database_without_relstorage_tables_yet_is_waited_for(db_dsn, es, es_url, es_prefix):
    """Started before the application created RelStorage's tables (a compose stack coming
    up): the service says so and waits, then indexes what the application writes."""
    from tests.support import open_zodb

    metrics = Metrics(process_metrics=False)
    with running(make_settings(db_dsn, es_url, es_prefix), metrics):
        wait_for(lambda: any('reason="source_schema_missing"' in line
                             for line in _metric_lines(metrics, "esindexer_retries_total")),
                 timeout=30, message="a retry while the tables are missing")
        db = open_zodb(db_dsn, keep_history=False)  # the application's first start creates them
        try:
            conn = db.open()
            pages = commit_pages(conn.root(), 3)
            wait_for(lambda: {zoid_of(p) for p in pages} <= set(docs(es, es_prefix.rstrip("-"))),
                     timeout=60, message="pages indexed once the tables exist")
            conn.close()
        finally:
            db.close()


def test_a_url_that_is_not_elasticsearch_is_a_clear_error(db_dsn, caplog):
    """A mistyped port that reaches some other web server: said at once, not retried for ever."""
    import http.server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = make_settings(db_dsn, f"http://127.0.0.1:{server.server_port}", "not-es-")
        started = time.monotonic()
        assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.SETUP
        assert time.monotonic() - started < 10
        if search_engine() == "opensearch":  # OpenSearch is recognised by GET /, which must be JSON
            assert "does not lead to OpenSearch" in caplog.text and "not JSON" in caplog.text
        else:
            assert "does not lead to Elasticsearch" in caplog.text and "X-Elastic-Product" in caplog.text
    finally:
        server.shutdown()


def test_elasticsearch_killed_while_the_application_commits_loses_nothing(zodb, db_dsn, es_prefix):
    """A real Elasticsearch crash (SIGKILL of the server, bulks in flight, the application
    still committing), then the server starts again on its data: the service waits,
    catches up, and the index is exactly right."""
    import signal as signals

    from tests.es_nodes import node_of_the_test_engine

    node = node_of_the_test_engine({})
    try:
        node.start()
        conn = zodb.open()
        root = conn.root()
        root["pages"] = PersistentMapping()
        transaction.commit()
        settings = make_settings(db_dsn, node.url, es_prefix, batch_limit=100, bulk_max_docs=50)
        stop_writing = threading.Event()
        written: list[int] = []

        def application() -> None:  # keeps committing small transactions, as a site does
            db_conn = zodb.open()
            n = 0
            while not stop_writing.is_set():
                container = db_conn.root()["pages"]
                for _ in range(20):
                    container[n] = Page(f"page {n}", body="text " * 40)
                    n += 1
                transaction.commit()
                written.append(n)
                time.sleep(0.02)
            db_conn.close()

        writer = threading.Thread(target=application, daemon=True)
        with running(settings):
            writer.start()
            wait_for(lambda: progress(db_dsn) > 0 and len(written) > 20, timeout=60, message="indexing under way")
            node.stop(signals.SIGKILL)  # the crash: whatever is in flight is cut off
            killed_at = time.monotonic()
            time.sleep(3)  # the application keeps committing meanwhile
            frozen = progress(db_dsn)
            node.start()  # the same data directory: acknowledged writes were fsynced
            restarted_after = time.monotonic() - killed_at
            time.sleep(2)
            stop_writing.set()
            writer.join(30)
            wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), timeout=120, message="caught up")
        assert frozen < latest_tid(db_dsn)
        check = run_esindexer("verify", "--json", env={
            "ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": node.url,
            "ESINDEXER_INDEX_PREFIX": settings.index_prefix})
        report = json.loads(check.stdout)
        assert check.returncode == 0 and report["clean"], report
        client = search_client(node.url)
        client.indices.refresh(index=settings.index_prefix)
        assert client.count(index=settings.index_prefix)["count"] == written[-1] + 2  # pages, mapping, root
        client.close()
        print(f"\n[es crash] {written[-1]} pages committed; server back {restarted_after:.1f}s after SIGKILL")
        conn.close()
    finally:
        node.close()


def test_indices_deleted_by_hand_are_noticed_at_start(zodb, db_dsn, es, es_url, es_prefix, caplog):
    """Progress says the indices were filled, but none exists: the start says so, loudly."""
    from prometheus_client import generate_latest

    conn = zodb.open()
    commit_pages(conn.root(), 3)
    settings = make_settings(db_dsn, es_url, es_prefix)
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    quiet = Metrics(process_metrics=False)
    with caplog.at_level("ERROR", logger="esindexer"):
        assert Indexer(settings, quiet).run(until_caught_up=True) == ExitCode.OK
    assert "existed at start" not in caplog.text  # the indices are there: nothing to say
    assert b"esindexer_indices_vanished 0.0" in generate_latest(quiet.registry)

    es.indices.delete(index=",".join(settings.index_for_route(r) for r in settings.route_names()))
    metrics = Metrics(process_metrics=False)
    with caplog.at_level("ERROR", logger="esindexer"):
        assert Indexer(settings, metrics).run(until_caught_up=True) == ExitCode.OK
    assert f"none of the indices {settings.index_for_route('objects')} existed at start" in caplog.text
    assert "esindexer verify --repair" in caplog.text
    assert b"esindexer_indices_vanished 1.0" in generate_latest(metrics.registry)

    done = run_esindexer("verify", "--repair", env={
        "ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": settings.index_prefix})
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(docs(es, settings.alias_name)) == 4  # the root and the three pages, back
    conn.close()
