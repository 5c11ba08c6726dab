"""The refresh policy: changes written while caught up are searchable without waiting for
the index's own refresh; a backlog causes no explicit refresh (real servers), and the
refresher's rate limit and coalescing (no servers)."""

from __future__ import annotations

import threading
import time

import transaction
from prometheus_client import generate_latest

from esindexer.observe.metrics import Metrics
from esindexer.pipeline.refresher import Refresher
from tests.indexing import Page, commit_pages, latest_tid, make_settings, progress, running, zoid_of
from tests.support import wait_for


class RecordingSink:
    """Only what the refresher calls: ``refresh``; records when and what."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, frozenset[str]]] = []
        self.lock = threading.Lock()

    def refresh(self, indices=None) -> None:
        with self.lock:
            self.calls.append((time.monotonic(), frozenset(indices or ())))


def _searchable(es, alias: str, zoid: int) -> bool:
    """A search (never a refresh: that would do the policy's work) finds the document."""
    hits = es.search(index=alias, query={"term": {"zoid": zoid}}, size=1, source=False)["hits"]["hits"]
    return bool(hits)


def test_refreshes_are_rate_limited_and_coalesced():
    sink = RecordingSink()
    refresher = Refresher(sink, interval=0.2, metrics=Metrics(process_metrics=False))  # type: ignore[arg-type]
    refresher.start()
    try:
        started = time.monotonic()
        for n in range(100):  # 100 live batches within ~1 s, over two indices
            refresher.touched({f"p-{n % 2}"})
            time.sleep(0.01)
        wait_for(lambda: sink.calls and sink.calls[-1][0] > started + 1.0, timeout=5, message="last refresh")
    finally:
        refresher.close()
    times = [t for t, _ in sink.calls]
    assert all(b - a >= 0.19 for a, b in zip(times, times[1:])), times  # never more often than the interval
    assert len(sink.calls) <= (times[-1] - started) / 0.2 + 2  # coalesced: not one per batch
    assert {"p-0", "p-1"} <= set().union(*(indices for _, indices in sink.calls))


def test_a_change_made_while_caught_up_is_searchable_without_the_index_refresh(zodb, db_dsn, es, es_url,
                                                                                es_prefix):
    """The indices refresh only when told (refresh_interval -1): what a search finds was
    published by the policy."""
    conn = zodb.open()
    root = conn.root()
    commit_pages(root, 3)
    settings = make_settings(db_dsn, es_url, es_prefix, index_refresh_interval="-1")
    metrics = Metrics(process_metrics=False)
    with running(settings, metrics):
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), message="caught up")
        root["live"] = page = Page("written while caught up")
        transaction.commit()
        zoid = zoid_of(page)
        wait_for(lambda: _searchable(es, settings.index_prefix, zoid), timeout=10,
                 message="searchable with the index's own refresh off")
        assert metrics.refreshes._value.get() >= 1
        assert "esindexer_live 1.0" in generate_latest(metrics.registry).decode()  # the policy's state, as scraped
    conn.close()


def test_without_the_policy_the_same_change_stays_unsearchable(zodb, db_dsn, es, es_url, es_prefix):
    """The control: live_refresh_interval 0 and refresh_interval -1 publish nothing."""
    conn = zodb.open()
    root = conn.root()
    settings = make_settings(db_dsn, es_url, es_prefix, index_refresh_interval="-1", live_refresh_interval="0")
    with running(settings):
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), message="caught up")
        root["live"] = page = Page("written while caught up")
        transaction.commit()
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), message="indexed")
        time.sleep(1.0)
        assert not _searchable(es, settings.index_prefix, zoid_of(page))
        es.indices.refresh(index=settings.index_prefix)
        assert _searchable(es, settings.index_prefix, zoid_of(page))  # it was written, only not published
    conn.close()


def test_a_backlog_causes_no_explicit_refresh(zodb, db_dsn, es, es_url, es_prefix):
    """40 batches of a backlog: not one is live, so nothing is refreshed until the
    service has caught up (the last batch may be live and refresh once)."""
    conn = zodb.open()
    root = conn.root()
    for n in range(40):  # 40 transactions: batches end on transaction boundaries
        root[f"folder {n}"] = folder = {}
        folder.update({k: Page(f"page {n}.{k}") for k in range(50)})
        root._p_changed = True
        transaction.commit()
    settings = make_settings(db_dsn, es_url, es_prefix, batch_limit="50")
    metrics = Metrics(process_metrics=False)
    with running(settings, metrics):
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), timeout=120, message="backlog indexed")
        batches = [s.value for f in metrics.batch_size.collect() for s in f.samples if s.name.endswith("_count")]
        assert batches[0] >= 40  # it did work through many batches
        assert metrics.refreshes._value.get() <= 1
        assert "esindexer_live 1.0" in generate_latest(metrics.registry).decode()  # caught up at the end
    conn.close()
