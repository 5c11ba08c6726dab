"""What the indexing tests share: content classes as applications define them, settings
for a test's servers, running the service in a thread, and reading back what it did.

The content classes live here (not in a test module) because their dotted names are
what the indexed documents carry in ``class``.
"""

from __future__ import annotations

import contextlib
import threading

import psycopg2
import transaction
from persistent import Persistent

from esindexer.config import Settings, load_settings
from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from esindexer.source import follow
from esindexer.source.progress import get_progress_tid as progress_tid
from tests.support import search_engine


class Page(Persistent):
    """A content class as applications define them (pickled by module and name)."""

    def __init__(self, title, body="", tags=()):
        self.title = title
        self.body = body
        self.tags = list(tags)


class Folderish(Persistent):
    def __init__(self, title):
        self.title = {"text": title}  # the same attribute name, another shape than Page's


def commit_pages(container, count: int) -> list[Page]:
    """Put ``count`` pages into ``container`` (keys 0..count-1) and commit; return them."""
    pages = [Page(f"page {n}") for n in range(count)]
    for n, page in enumerate(pages):
        container[n] = page
    transaction.commit()
    return pages


def commit_tree(root, count: int, per_transaction: int = 300):
    """``count`` pages in an OOBTree at ``root["pages"]``, committed ``per_transaction`` at a
    time: a backfill long enough to interrupt."""
    from BTrees.OOBTree import OOBTree

    root["pages"] = tree = OOBTree()
    for n in range(count):
        tree[n] = Page(f"page {n}")
        if n % per_transaction == per_transaction - 1:
            transaction.commit()
    transaction.commit()
    return tree


def make_settings(db_dsn: str, es_url: str, es_prefix: str, **overrides) -> Settings:
    env = {
        "ESINDEXER_PG_DSN": db_dsn,
        "ESINDEXER_ES_URL": es_url,
        "ESINDEXER_INDEX_PREFIX": es_prefix.rstrip("-"),
        "ESINDEXER_INDEX_REPLICAS": "0",
        "ESINDEXER_POLL_TIMEOUT": "1",
        "ESINDEXER_LAG_POLL_INTERVAL": "0.3",
        "ESINDEXER_RETRY_MAX_SECONDS": "0.5",
        "ESINDEXER_BATCH_LIMIT": "50",
        "ESINDEXER_FETCH_SIZE": "20",
        "ESINDEXER_BULK_MAX_DOCS": "25",
        "ESINDEXER_METRICS_PORT": "0",
        "ESINDEXER_SEARCH_ENGINE": search_engine(),
    }
    env.update({f"ESINDEXER_{k.upper()}": str(v) for k, v in overrides.items()})
    return load_settings(env=env)


@contextlib.contextmanager
def running(settings, metrics: Metrics | None = None):
    """Run an Indexer in a thread; stop it (gracefully) on exit and check it ended well."""
    indexer = Indexer(settings, metrics or Metrics(process_metrics=False))
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("code", indexer.run()), daemon=True)
    thread.start()
    try:
        yield indexer
    finally:
        indexer.stop()
        thread.join(60)
        assert not thread.is_alive(), "indexer did not stop"
    assert outcome.get("code") == ExitCode.OK


def docs(es, alias: str) -> dict[int, dict]:
    from elasticsearch import NotFoundError

    try:
        es.indices.refresh(index=alias)
    except NotFoundError:  # the indexer has not created its indices yet
        return {}
    hits = es.search(index=alias, size=1000, query={"match_all": {}}, version=True)["hits"]["hits"]
    return {int(h["_id"]): {**h["_source"], "_version": h["_version"]} for h in hits}


def zoid_of(obj) -> int:
    return int.from_bytes(obj._p_oid, "big")


def latest_tid(db_dsn: str) -> int:
    with psycopg2.connect(db_dsn) as conn:
        tid = follow.latest_tid(conn)
    conn.close()
    return tid


def progress(db_dsn: str, client_id: str = "esindexer") -> int:
    with psycopg2.connect(db_dsn) as conn:
        tid = progress_tid(conn, client_id)
    conn.close()
    return tid


def dead_letters(db_dsn: str) -> list[tuple]:
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT zoid, tid, class_name, kind, reason, document IS NOT NULL, record IS NOT NULL "
                    "FROM esindexer_dead_letters ORDER BY id")
        rows = cur.fetchall()
    conn.close()
    return rows

