"""``esindexer run --until-caught-up``: its exit code tells "done" from "interrupted"."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import psycopg2
import pytest
import transaction

from esindexer.errors import ExitCode
from tests.indexing import Page, commit_tree, latest_tid, progress
from tests.support import TcpProxy, esindexer_env, run_esindexer, wait_for


@pytest.mark.parametrize("signum, expected", [(signal.SIGINT, ExitCode.INTERRUPTED),
                                              (signal.SIGTERM, ExitCode.TERMINATED)],
                         ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_backfill_exits_non_zero_and_resumes(zodb, db_dsn, es_url, es_prefix, signum, expected):
    conn = zodb.open()
    commit_tree(conn.root(), 20_000)  # a backfill of seconds: one of 3,000 pages can end before the signal
    conn.close()
    target = urlsplit(es_url)
    proxy = TcpProxy(target.hostname, target.port)
    settings = dict(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=proxy.url,
                    ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"), ESINDEXER_INDEX_REPLICAS="0",
                    ESINDEXER_METRICS_PORT="0", ESINDEXER_BATCH_LIMIT="300", ESINDEXER_SHUTDOWN_TIMEOUT="1")
    proc = subprocess.Popen([sys.executable, "-m", "esindexer", "run", "--until-caught-up"],
                            env=esindexer_env(**settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: progress(db_dsn) > 0, message="a first batch indexed")
        proxy.pause()  # Elasticsearch gone: the backfill cannot finish before the signal
        proc.send_signal(signum)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(err[-5000:]) from None
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.resume()
    assert proc.returncode == expected, err
    assert "stopped before catching up" in err
    assert 0 < progress(db_dsn) < latest_tid(db_dsn)

    done = run_esindexer("run", "--until-caught-up", env=settings)
    proxy.close()
    assert done.returncode == 0, done.stderr
    assert progress(db_dsn) == latest_tid(db_dsn)


def test_a_finished_backfill_exits_zero(zodb, db_dsn, es_url, es_prefix):
    conn = zodb.open()
    conn.root()["x"] = Page("x")
    transaction.commit()
    conn.close()
    done = run_esindexer("run", "--until-caught-up", env=dict(
        ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
        ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT="0"))
    assert done.returncode == 0, done.stderr
    assert progress(db_dsn) == latest_tid(db_dsn)


def test_a_deadline_ends_a_backfill_that_cannot_reach_elasticsearch(zodb, db_dsn, es_prefix):
    """Issue 26.4: a wrong Elasticsearch port made a cron job's backfill retry for ever, and
    every warning was printed twice (once more by elastic_transport)."""
    conn = zodb.open()
    conn.root()["x"] = Page("x")
    transaction.commit()
    conn.close()
    env = dict(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL="http://127.0.0.1:9", ESINDEXER_METRICS_PORT="0",
               ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"), ESINDEXER_RETRY_MAX_SECONDS="1")
    started = time.monotonic()
    done = run_esindexer("run", "--until-caught-up", "--deadline", "3", env=env, timeout=60)
    took = time.monotonic() - started
    assert done.returncode == ExitCode.UNREACHABLE, done.stderr
    assert took < 15
    assert "gave up at the deadline of 3s: a server could not be reached" in done.stderr
    assert "elastic_transport" not in done.stderr  # each failure is said once, by esindexer
    assert "looking for the indices failed (es_unreachable" in done.stderr


def test_a_deadline_ends_a_backfill_that_is_not_done_in_time(zodb, db_dsn, es_url, es_prefix):
    conn = zodb.open()
    conn.root()["x"] = Page("x")
    transaction.commit()
    conn.close()
    locker = psycopg2.connect(db_dsn)
    with locker.cursor() as cur:  # the backfill cannot read: held by the lock until the deadline
        cur.execute("LOCK TABLE object_state IN ACCESS EXCLUSIVE MODE")
    try:
        done = run_esindexer("run", "--until-caught-up", "--deadline", "3", timeout=60, env=dict(
            ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
            ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT="0"))
    finally:
        locker.rollback()
        locker.close()
    assert done.returncode == ExitCode.DEADLINE, done.stderr
    assert "not caught up within the deadline of 3s (exit 124)" in done.stderr


def test_a_deadline_is_for_backfills_only(db_dsn):
    done = run_esindexer("run", "--deadline", "3", env=dict(ESINDEXER_PG_DSN=db_dsn))
    assert done.returncode == ExitCode.SETUP
    assert "--deadline needs --until-caught-up" in done.stderr
