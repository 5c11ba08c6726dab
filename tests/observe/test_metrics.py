"""Metrics: lag arithmetic from tid timestamps, counters, and a valid exposition."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from esindexer.observe.metrics import Metrics
from esindexer.source.tid import tid_to_epoch
from tests.observe.support import make_tid, reference_tid_to_epoch


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exposed sample, parsed back from the text format a scraper sees."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def lag_between(indexed: int, source: int) -> float:
    m = Metrics(process_metrics=False)
    m.record_progress(indexed)
    m.record_source_latest(source)
    return m.lag_seconds()


# -- tid arithmetic ----------------------------------------------------------------------


def test_spec_example_tid_decodes_to_documented_time():
    # newt-spec §6: 0x040d4b41420c85dd is 2026-11-27 09:37:15.480215 UTC.
    assert reference_tid_to_epoch(291972294502024669) == pytest.approx(1795772235.480215)


def test_tid_module_agrees_with_zodb():
    """The module the metrics rely on decodes exactly like ZODB's TimeStamp."""
    for tid in (make_tid(2026, 2, 28, 23, 59, 59.5), make_tid(2024, 2, 29, 12),
                make_tid(1999, 12, 31, 23, 59, 59.999), 291972294502024669):
        assert tid_to_epoch(tid) == pytest.approx(reference_tid_to_epoch(tid), abs=1e-5)


@pytest.mark.parametrize(
    ("indexed", "source", "expected"),
    [
        # February has 28 days but the encoding reserves 31: the tid jumps 3 days' worth.
        ((2026, 2, 28, 23, 59, 30.0), (2026, 3, 1, 0, 0, 30.0), 60.0),
        # Leap year: the 29th exists, the 30th and 31st do not.
        ((2028, 2, 29, 23, 59, 0.0), (2028, 3, 1, 0, 1, 0.0), 120.0),
        # 30-day month.
        ((2026, 4, 30, 23, 59, 59.0), (2026, 5, 1, 0, 0, 1.0), 2.0),
        # 31-day month: the encoding is contiguous here.
        ((2026, 1, 31, 23, 0, 0.0), (2026, 2, 1, 1, 0, 0.0), 7200.0),
        # Year boundary.
        ((2026, 12, 31, 23, 59, 59.25), (2027, 1, 1, 0, 0, 0.75), 1.5),
        # Several months at once: 1 March to 1 May = 31 + 30 days.
        ((2026, 3, 1), (2026, 5, 1), 61 * 86400.0),
    ],
    ids=["feb-28", "leap-feb-29", "apr-30", "jan-31", "new-year", "two-months"],
)
def test_lag_uses_calendar_time_across_month_boundaries(indexed, source, expected):
    lo, hi = make_tid(*indexed), make_tid(*source)
    assert lag_between(lo, hi) == pytest.approx(expected, abs=1e-5)


def test_raw_tid_difference_would_be_wrong_at_month_end():
    """Guards the reason for converting first: 31-day months break tid subtraction."""
    lo, hi = make_tid(2026, 2, 28, 23, 59), make_tid(2026, 3, 1, 0, 0)
    naive_minutes = (hi >> 32) - (lo >> 32)
    assert naive_minutes == 3 * 24 * 60 + 1
    assert lag_between(lo, hi) == pytest.approx(60.0)


def test_lag_is_zero_when_caught_up_or_ahead_and_never_negative():
    tid = make_tid(2026, 11, 27, 9, 37, 15.0)
    assert lag_between(tid, tid) == 0.0
    # The indexer can be ahead of what the poller saw last (the poller runs every few s).
    assert lag_between(tid + 1000, tid) == 0.0
    assert lag_between(make_tid(2026, 12, 1), tid) == 0.0


def test_lag_is_zero_while_source_is_unknown_or_empty():
    m = Metrics(process_metrics=False)
    assert m.lag_seconds() == 0.0
    m.record_progress(make_tid(2026, 1, 1))
    assert m.lag_seconds() == 0.0
    m.record_source_latest(-1)
    assert m.lag_seconds() == 0.0
    m.record_source_latest(None)
    assert m.lag_seconds() == 0.0


def test_nothing_indexed_yet_reads_as_behind_since_tid_zero():
    """A fresh start must not look caught up: without the oldest tid, lag counts from tid 0."""
    source = make_tid(2026, 11, 27, 9, 0)
    expected = reference_tid_to_epoch(source) - reference_tid_to_epoch(0)
    m = Metrics(process_metrics=False)
    m.record_source_latest(source)
    assert m.lag_seconds() == pytest.approx(expected)  # before record_progress
    m.record_progress(-1)
    assert m.lag_seconds() == pytest.approx(expected)


def test_nothing_indexed_yet_lags_by_the_history_to_index():
    """With the oldest tid known, a first backfill is behind by the span of the data."""
    oldest, newest = make_tid(2026, 11, 1, 0, 0), make_tid(2026, 11, 27, 9, 0)
    m = Metrics(process_metrics=False)
    m.record_progress(-1)
    m.record_source_latest(newest, oldest_tid=oldest)
    assert m.lag_seconds() == pytest.approx(reference_tid_to_epoch(newest) - reference_tid_to_epoch(oldest))
    m.record_progress(newest)
    assert m.lag_seconds() == 0.0


def test_lag_follows_the_newer_tid_without_new_progress():
    m = Metrics(process_metrics=False)
    m.record_progress(make_tid(2026, 6, 30, 12))
    m.record_source_latest(make_tid(2026, 6, 30, 12, 1))
    assert m.lag_seconds() == pytest.approx(60.0)
    m.record_source_latest(make_tid(2026, 7, 1, 12))
    assert m.lag_seconds() == pytest.approx(86400.0)


# -- exposed values ----------------------------------------------------------------------


def test_state_gauges_are_consistent_with_lag_at_scrape_time():
    indexed, source = make_tid(2026, 2, 28, 23, 0), make_tid(2026, 3, 1, 1, 0, 30.0)
    m = Metrics(process_metrics=False)
    m.record_progress(indexed, wall_time=1_800_000_000.0)
    m.record_source_latest(source)
    got = samples(m)
    assert got[("esindexer_lag_seconds", ())] == pytest.approx(2 * 3600 + 30.0)
    assert got[("esindexer_last_indexed_commit_timestamp_seconds", ())] == pytest.approx(
        reference_tid_to_epoch(indexed))
    assert got[("esindexer_source_latest_commit_timestamp_seconds", ())] == pytest.approx(
        reference_tid_to_epoch(source))
    assert got[("esindexer_last_indexed_tid", ())] == pytest.approx(float(indexed))
    assert got[("esindexer_source_latest_tid", ())] == pytest.approx(float(source))
    assert got[("esindexer_last_progress_timestamp_seconds", ())] == 1_800_000_000.0
    assert got[("esindexer_source_reachable", ())] == 1.0


def test_unknown_state_is_absent_rather_than_zero():
    got = samples(Metrics(process_metrics=False))
    names = {name for name, _ in got}
    assert "esindexer_last_indexed_commit_timestamp_seconds" not in names
    assert "esindexer_source_latest_tid" not in names
    assert "esindexer_dead_letters" not in names
    assert got[("esindexer_lag_seconds", ())] == 0.0
    assert got[("esindexer_error_budget_exhausted", ())] == 0.0


def test_counters_histograms_and_flags():
    m = Metrics(process_metrics=False)
    m.record_documents("index", "ok", 5)
    m.record_documents("delete", "dead_lettered")
    m.record_bulk("ok", 0.2)
    m.record_bulk("retried", 3.0)
    m.record_retry("es_unavailable")
    m.record_retry("es_unavailable")
    m.record_batch(1)
    m.record_batch(100_000)
    m.set_dead_letters(4)
    m.set_error_budget_exhausted(True)
    got = samples(m)
    assert got[("esindexer_documents_total", (("action", "index"), ("outcome", "ok")))] == 5
    assert got[("esindexer_documents_total",
                (("action", "delete"), ("outcome", "dead_lettered")))] == 1
    # Every known combination exists from the start.
    assert got[("esindexer_documents_total", (("action", "delete"), ("outcome", "error")))] == 0
    assert got[("esindexer_bulk_requests_total", (("outcome", "retried"),))] == 1
    assert got[("esindexer_bulk_requests_total", (("outcome", "failed"),))] == 0
    assert got[("esindexer_bulk_duration_seconds_count", ())] == 2
    assert got[("esindexer_bulk_duration_seconds_sum", ())] == pytest.approx(3.2)
    assert got[("esindexer_retries_total", (("reason", "es_unavailable"),))] == 2
    assert got[("esindexer_batch_size_bucket", (("le", "1.0"),))] == 1
    assert got[("esindexer_batch_size_bucket", (("le", "100000.0"),))] == 2
    assert got[("esindexer_dead_letters", ())] == 4
    assert got[("esindexer_error_budget_exhausted", ())] == 1
    assert m.error_budget_exhausted()
    build = [labels for (name, labels), value in got.items()
             if name == "esindexer_build_info" and value == 1]
    assert len(build) == 1 and {k for k, _ in build[0]} == {"python", "version"}


def test_unknown_labels_are_rejected():
    m = Metrics(process_metrics=False)
    with pytest.raises(ValueError):
        m.record_documents("update", "ok")
    with pytest.raises(ValueError):
        m.record_documents("index", "maybe")
    with pytest.raises(ValueError):
        m.record_bulk("partial", 1.0)


def test_seconds_since_progress():
    m = Metrics(process_metrics=False)
    assert m.seconds_since_progress() is None
    m.record_progress(make_tid(2026, 1, 1), wall_time=time.time() - 100)
    assert 100 <= m.seconds_since_progress() < 1000
    m.record_progress(make_tid(2026, 1, 2))
    assert m.seconds_since_progress() < 100


def test_registries_are_private():
    a, b = Metrics(), Metrics()
    a.record_documents("index", "ok")
    assert samples(b)[("esindexer_documents_total", (("action", "index"), ("outcome", "ok")))] == 0
    assert "esindexer_documents_total" not in {
        s.name for family in REGISTRY.collect() for s in family.samples}


def promtool() -> str:
    path = os.environ.get("ESIT_PROMTOOL") or shutil.which("promtool") or "/usr/bin/promtool"
    if not os.path.exists(path):
        pytest.skip("promtool not installed (set ESIT_PROMTOOL)")
    return path


def test_exposition_passes_promtool_lint():
    m = Metrics()
    m.record_progress(make_tid(2026, 3, 1))
    m.record_source_latest(make_tid(2026, 3, 2))
    m.record_documents("index", "ok", 3)
    m.record_bulk("failed", 0.5)
    m.record_retry("es_429")
    m.record_batch(3)
    m.set_dead_letters(0)
    text = generate_latest(m.registry)
    result = subprocess.run([promtool(), "check", "metrics"], input=text,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_every_metric_is_documented():
    """docs/metrics.md is the reference: a new metric without a row there fails here."""
    docs = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "metrics.md")).read()
    m = Metrics(process_metrics=False)
    # The client names families without the "_total" / "_info" suffix it adds on output.
    suffix = {"counter": "_total", "info": "_info"}
    exported = {f.name + suffix.get(f.type, "") for f in m.registry.collect()}
    missing = sorted(n for n in exported if f"`{n}`" not in docs)
    assert not missing, f"undocumented metrics: {missing}"
