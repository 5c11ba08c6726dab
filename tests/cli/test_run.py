"""``esindexer run --until-caught-up``: its exit code tells "done" from "interrupted"."""

from __future__ import annotations

import signal
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
import transaction
from BTrees.OOBTree import OOBTree

from esindexer.errors import ExitCode
from tests.indexing import Page, latest_tid, progress
from tests.support import TcpProxy, esindexer_env, run_esindexer, wait_for


@pytest.mark.parametrize("signum, expected", [(signal.SIGINT, ExitCode.INTERRUPTED),
                                              (signal.SIGTERM, ExitCode.TERMINATED)],
                         ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_backfill_exits_non_zero_and_resumes(zodb, db_dsn, es_url, es_prefix, signum, expected):
    conn = zodb.open()
    conn.root()["pages"] = tree = OOBTree()
    for n in range(3000):
        tree[n] = Page(f"page {n}")
        if n % 300 == 299:
            transaction.commit()
    transaction.commit()
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
