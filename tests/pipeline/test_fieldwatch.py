"""The periodic searches wait while a backlog is worked through (esindexer.pipeline.fieldwatch):
each search wakes a search-idle index into refreshing every second, which slowed a 10^6
backfill's indexing by a fifth (docs/performance.md, *The node's work at 10^6*)."""

from __future__ import annotations

import time

import pytest

from esindexer.es.sink import ElasticsearchSink
from esindexer.observe.metrics import Metrics
from esindexer.pipeline import fieldwatch
from esindexer.pipeline.fieldwatch import BACKLOG_SEARCH_EVERY, FieldWatch, search_every
from tests.indexing import make_settings
from tests.support import wait_for


@pytest.mark.parametrize("interval, backlog, expected", [
    (60.0, False, 60.0), (60.0, True, BACKLOG_SEARCH_EVERY), (0.5, True, BACKLOG_SEARCH_EVERY),
    (3600.0, True, 3600.0), (3600.0, False, 3600.0),
])
def test_a_backlog_spaces_the_searches_out(interval, backlog, expected):
    assert search_every(interval, backlog) == expected


def test_a_backlog_is_being_behind_with_batches_read_behind():
    newest = 300_000_000_000_000_000  # a tid of 2026
    metrics = Metrics(process_metrics=False)
    assert not metrics.working_through_backlog()  # nothing known yet
    metrics.record_source_latest(newest)
    metrics.record_progress(newest)  # caught up at its start, no batch yet: not a backlog
    assert not metrics.working_through_backlog()
    metrics.record_progress(-1)  # a backfill from the start
    assert metrics.working_through_backlog()
    metrics.set_live(True)  # its last batch was read caught up: a commit being indexed, not a backlog
    assert not metrics.working_through_backlog()


class _Counted:
    """A real sink whose unmapped-field searches are counted."""

    def __init__(self, sink: ElasticsearchSink):
        self.sink, self.searches = sink, 0

    def unmapped(self):
        self.searches += 1
        return self.sink.unmapped()


def test_the_field_watch_searches_once_caught_up_and_seldom_before(db_dsn, es_url, es_prefix, monkeypatch):
    monkeypatch.setattr(fieldwatch, "BACKLOG_SEARCH_EVERY", 1.5)
    settings = make_settings(db_dsn, es_url, es_prefix)
    sink = ElasticsearchSink(settings)
    sink.ensure_indices()
    counted, metrics = _Counted(sink), Metrics(process_metrics=False)
    metrics.record_source_latest(300_000_000_000_000_000)
    metrics.record_progress(-1)  # a backfill: nothing indexed yet
    watch = FieldWatch(counted, 0.2, metrics)  # type: ignore[arg-type]  # the sink's one method it calls
    watch.start()
    try:
        time.sleep(1.0)
        assert counted.searches == 0  # behind: the first search waits for the backlog's spacing
        wait_for(lambda: counted.searches >= 1, timeout=10, interval=0.05)  # ...and comes once it has passed
        assert counted.searches == 1  # the next one is 1.5 s away
        metrics.set_live(True)
        wait_for(lambda: counted.searches >= 5, timeout=10, interval=0.05)  # caught up: one every interval
    finally:
        watch.close()
        sink.es.close()
