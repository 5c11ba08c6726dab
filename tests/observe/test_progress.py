"""Progress of long work: the reporter's figures, its bar, and a real backfill's lines and summary."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import time

import psycopg2
import pytest
import transaction
from BTrees.OOBTree import OOBTree

from esindexer.observe.metrics import Metrics
from esindexer.observe.progress import ProgressReporter, eta_seconds, pipeline_counts
from tests.indexing import Page, latest_tid, progress
from tests.support import both_history_modes, esindexer_env, run_esindexer, wait_for


def test_eta_is_the_rest_at_the_average_rate_and_unknown_without_one():
    assert eta_seconds(250, 1000, 10.0) == pytest.approx(30.0)
    assert eta_seconds(0, 1000, 10.0) is None  # no rate yet
    assert eta_seconds(10, None, 1.0) is None  # no total
    assert eta_seconds(1200, 1000, 10.0) is None  # past an estimated total: not "0 s left"


def test_a_line_carries_the_figures_and_the_summary_counts_what_was_added(caplog):
    caplog.set_level(logging.INFO, logger="esindexer.progress")
    reporter = ProgressReporter("verify", total=1000, exact=False, interval=0, bar=False).start()
    reporter.add(rows=400, missing=3)
    message, fields = reporter.line()
    assert fields["rows"] == 400 and fields["missing"] == 3 and fields["rows_total"] == 1000
    assert fields["rows_total_exact"] is False and fields["event"] == "progress"
    assert "400 rows done (40%), about 600 left" in message and "missing 3" in message
    summary = reporter.close()
    assert summary is not None and summary["rows"] == 400 and summary["missing"] == 3
    assert summary["ended"] == "finished" and summary["docs_per_second"] is None  # nothing indexed
    assert reporter.close() is summary  # once
    lines = [r for r in caplog.records if getattr(r, "event", None) == "progress_summary"]
    assert len(lines) == 1 and lines[0].getMessage().startswith("verify finished: 400 rows in ")


def test_work_that_fails_inside_the_block_is_summarised_as_stopped():
    with pytest.raises(RuntimeError), ProgressReporter("verify", total=10, interval=0, bar=False) as reporter:
        reporter.add(rows=3)
        raise RuntimeError("lost the connection")
    assert reporter.summary is not None and (reporter.summary["ended"], reporter.summary["rows"]) == ("stopped", 3)


def test_counts_from_the_metrics_start_at_zero_when_the_reporter_starts():
    metrics = Metrics(process_metrics=False)
    metrics.record_documents("index", "ok", 7)
    metrics.record_batch(7)
    reporter = ProgressReporter("catch-up", total=100, counts=pipeline_counts(metrics), interval=0, bar=False)
    metrics.record_documents("index", "ok", 5)
    metrics.record_documents("index", "error", 1)
    metrics.record_documents("delete", "ok", 2)
    metrics.record_batch(8)
    assert reporter.figures() == {"rows": 8, "indexed": 5, "deletes": 2, "skipped": 0, "dead_lettered": 1}
    reporter.close(summary=False)


def _backfill_reporter(metrics: Metrics) -> ProgressReporter:
    """The service's backfill report of 100 rows with its stretches, logging no line itself."""
    from esindexer.observe import progress

    return ProgressReporter("backfill", total=100, counts=pipeline_counts(metrics), interval=0, bar=False,
                            phase=progress.pipeline_phase(metrics))


def _every_row_read(monkeypatch, clock_name: str, start: float) -> tuple[list[float], Metrics, ProgressReporter]:
    """A backfill report whose 100 rows are all read, with ``time.<clock_name>`` set by hand."""
    from esindexer.observe import progress

    clock = [start]
    monkeypatch.setattr(progress.time, clock_name, lambda: clock[0])
    metrics = Metrics(process_metrics=False)
    reporter = _backfill_reporter(metrics)
    metrics.record_batch(100)
    return clock, metrics, reporter


def test_the_object_trees_documents_are_counted_left_at_their_own_rate(monkeypatch):
    """A backfill with the object model ends with the tree's documents while rows stand
    still: the line says how many are left, at the documents' rate since that began
    (not the rows' ETA, which says 0:00 for minutes at 10^6 objects). Before any document
    of that stretch is acknowledged it says there is no rate yet, not "0 documents/s"."""
    from esindexer.observe import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    metrics = Metrics(process_metrics=False)
    reporter = _backfill_reporter(metrics)
    metrics.record_batch(90)
    metrics.record_documents("index", "ok", 500)
    clock[0] = 110.0
    message, fields = reporter.line()
    assert message.startswith("backfill: 90 rows done (90%)") and "phase" not in fields  # the gauge is absent
    metrics.set_object_documents_to_write(9_000)  # resolved: the tree's write begins
    message, fields = reporter.line()
    assert message.startswith("backfill: writing object documents: 9,000 left, no rate yet;")
    assert fields["eta_seconds"] is None
    clock[0] = 112.0
    metrics.record_documents("index", "ok", 2_000)
    metrics.set_object_documents_to_write(7_000)
    message, fields = reporter.line()
    assert "7,000 left, 1,000 documents/s, ETA 0:07" in message and "indexed 2,500" in message
    assert (fields["phase_left"], fields["eta_seconds"], fields["rows"]) == (7_000, 7, 90)
    metrics.set_object_documents_to_write(0)  # all sent: back to rows
    message, fields = reporter.line()
    assert message.startswith("backfill: 90 rows done") and "phase" not in fields
    reporter.close(summary=False)


def test_the_stretch_is_seen_starting_between_lines_so_the_first_line_has_its_rate(monkeypatch):
    """The reporter notes a stretch's start at its tick (every 0.5 s), not at the next
    line (every 10 s): the first line in the tree's write gives the rate since it began,
    where it said "0 documents/s, ETA ?" after 52,000 of the tree's documents (10^5 run)."""
    clock, metrics, reporter = _every_row_read(monkeypatch, "monotonic", 100.0)
    metrics.set_object_documents_to_write(60_000)
    reporter._phase_now()  # a tick
    clock[0] = 105.0
    metrics.record_documents("index", "ok", 40_000)
    metrics.set_object_documents_to_write(20_000)
    message, fields = reporter.line()  # the first line since the stretch began
    assert "20,000 left, 8,000 documents/s, ETA 0:02" in message, message
    reporter.close(summary=False)


def test_a_stretch_seen_again_later_is_measured_from_its_own_start(monkeypatch):
    """A pipeline started again in the same process (a lease lost and taken back) rewrites
    the tree after the backfill's own write of it: the same stretch's name, later. Its
    rate is measured from its own start, not from the first one's (half the real rate
    here)."""
    clock, metrics, reporter = _every_row_read(monkeypatch, "monotonic", 100.0)
    metrics.set_object_documents_to_write(10_000)  # the backfill's tree write
    reporter._phase_now()
    clock[0] = 110.0
    metrics.record_documents("index", "ok", 10_000)
    metrics.set_object_documents_to_write(0)  # written; then standing by, 10 s
    reporter._phase_now()
    clock[0] = 120.0
    metrics.set_object_documents_to_write(10_000)  # the restart's rewrite of it
    reporter._phase_now()
    clock[0] = 125.0
    metrics.record_documents("index", "ok", 5_000)
    metrics.set_object_documents_to_write(5_000)
    message, _fields = reporter.line()
    assert "5,000 left, 1,000 documents/s, ETA 0:05" in message, message
    reporter.close(summary=False)


def test_the_graphs_resolution_says_how_long_it_has_run(monkeypatch):
    """While a backfill's object graph is resolved (PostgreSQL's work alone, 20 s at 10^6
    objects; every row read), the line says so and for how long, not the rows' ETA 0:00."""
    from esindexer.observe import progress

    wall, metrics, reporter = _every_row_read(monkeypatch, "time", 1_000.0)
    metrics.set_object_graph_resolving(1_000.0)
    wall[0] = 1_083.0
    message, fields = reporter.line()
    assert message.startswith("backfill: resolving the object graph: 1:23 so far"), message
    assert (fields["phase"], fields["phase_seconds"], fields["eta_seconds"]) == ("resolving the object graph", 83.0, None)
    gauge = "esindexer_object_graph_resolution_started_timestamp_seconds"
    assert metrics.registry.get_sample_value(gauge) == 1_000.0
    metrics.set_object_graph_resolving(None)
    assert metrics.registry.get_sample_value(gauge) is None
    message, fields = reporter.line()
    assert message.startswith("backfill: 100 rows done") and "phase" not in fields
    reporter.close(summary=False)
    stream = io.StringIO()  # on a terminal, the bar (at 100 %) says it too
    bar = ProgressReporter("backfill", total=100, counts=pipeline_counts(metrics), interval=10, stream=stream,
                           bar=True, phase=progress.pipeline_phase(metrics)).start()
    metrics.set_object_graph_resolving(1_000.0)
    bar._draw()
    bar._bar.refresh()  # (tqdm redraws at most every BAR_TICK by itself)
    metrics.set_object_graph_resolving(None)
    metrics.set_object_documents_to_write(9_000)
    bar._draw()
    bar._bar.refresh()
    bar.close(summary=False)
    assert "now=resolving the object graph 1:23" in stream.getvalue(), stream.getvalue()
    assert "now=writing object documents, 9,000 left" in stream.getvalue(), stream.getvalue()


def test_on_a_terminal_a_bar_is_drawn():
    stream = io.StringIO()
    reporter = ProgressReporter("backfill", total=50, interval=10, stream=stream, bar=True).start()
    reporter.add(rows=20, indexed=20)
    summary = reporter.close()
    text = stream.getvalue()
    assert "backfill:" in text and "20/50" in text and "rows/s" in text and "indexed=20" in text, text
    assert summary is not None and summary["rows"] == 20


def _fill(zodb, count: int, per_commit: int) -> list[int]:
    conn = zodb.open()
    conn.root()["pages"] = tree = OOBTree()
    for n in range(count):
        tree[n] = Page(f"page {n}", body="words " * 20)
        if n % per_commit == per_commit - 1:
            transaction.commit()
    transaction.commit()
    zoids = [int.from_bytes(tree[n]._p_oid, "big") for n in (0, 1)]
    conn.close()
    return zoids


def _rows(db_dsn: str) -> int:
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("SELECT to_regclass('current_object') IS NOT NULL")
        cur.execute(f"SELECT count(*) FROM {'current_object' if cur.fetchone()[0] else 'object_state'}")
        rows = int(cur.fetchone()[0])
    pg.close()
    return rows


@both_history_modes
def test_a_backfill_logs_progress_and_a_true_summary(zodb, db_dsn, es, es_url, es_prefix, keep_history):
    """Not a terminal: structured lines while it works, one summary whose counts are the index's."""
    broken = _fill(zodb, 12_000, 1_000)[0]
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:  # one record the converter cannot read
        cur.execute("UPDATE object_state SET state = %s WHERE zoid = %s", (psycopg2.Binary(b"junk"), broken))
    pg.close()
    env = dict(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
               ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT="0", ESINDEXER_BATCH_LIMIT="500",
               ESINDEXER_BULK_CONCURRENCY="1", ESINDEXER_PROGRESS_INTERVAL="0.2", ESINDEXER_LOG_FORMAT="json")
    done = run_esindexer("run", "--until-caught-up", env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    ticks = [x for x in lines if x.get("event") == "progress"]
    summaries = [x for x in lines if x.get("event") == "progress_summary"]
    rows = _rows(db_dsn)
    assert ticks, done.stderr[-3000:]
    announced = [x for x in lines if x["message"].startswith("backfill of ")]
    assert [(x["logger"], x["message"]) for x in announced] == [("esindexer", f"backfill of {rows:,} rows from the start")]
    for tick in ticks:
        assert tick["work"] == "backfill" and tick["rows_total"] == rows and tick["rows_total_exact"] is True
        assert 0 <= tick["rows"] <= rows and tick["rows_per_second"] >= 0
        assert set(tick) >= {"eta_seconds", "indexed", "deletes", "skipped", "dead_lettered", "elapsed_seconds"}
    assert [t["rows"] for t in ticks] == sorted(t["rows"] for t in ticks)
    assert len(summaries) == 1, done.stderr[-3000:]
    summary = summaries[0]
    # Issue 26.7: "10,002 rows done ... indexed 14,776" read as a contradiction: the counts are
    # documents acknowledged (ahead of rows, which count once their batch is saved), and say so.
    assert all("; documents acknowledged: indexed " in x["message"] for x in ticks + summaries)
    es.indices.refresh(index=f"{es_prefix}*")
    indexed = es.count(index=f"{es_prefix}*")["count"]
    assert summary["rows"] == rows and summary["ended"] == "finished"
    assert summary["indexed"] == indexed > 10_000
    assert summary["dead_lettered"] == 1
    # every record is indexed, skipped (the tree's nodes) or dead-lettered; each skipped one asks
    # for a delete in the one routed index
    assert summary["indexed"] + summary["skipped"] + summary["dead_lettered"] == rows
    assert summary["deletes"] == summary["skipped"] > 0
    assert summary["docs_per_second"] > 0 and summary["elapsed_seconds"] > 0
    assert progress(db_dsn) == latest_tid(db_dsn)


def test_a_backfill_with_nothing_to_do_is_quiet(zodb, db_dsn, es, es_url, es_prefix):
    _fill(zodb, 10, 10)
    env = dict(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
               ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT="0", ESINDEXER_PROGRESS_INTERVAL="0.2")
    assert run_esindexer("run", "--until-caught-up", env=env).returncode == 0
    again = run_esindexer("run", "--until-caught-up", env=env)
    assert again.returncode == 0, again.stderr
    for said in ("rows done", "backfill of", "backfill finished"):  # (the index prefix holds "backfill")
        assert said not in again.stderr, again.stderr


def test_at_debug_level_the_batch_lines_are_not_drowned_by_the_http_client(zodb, db_dsn, es, es_url, es_prefix):
    _fill(zodb, 300, 100)
    env = dict(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
               ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT="0", ESINDEXER_BATCH_LIMIT="100",
               ESINDEXER_BULK_MAX_DOCS="50", ESINDEXER_LOG_LEVEL="debug", ESINDEXER_LOG_FORMAT="json")
    done = run_esindexer("run", "--until-caught-up", env=env)
    assert done.returncode == 0, done.stderr
    loggers = [json.loads(line)["logger"] for line in done.stderr.splitlines() if line.startswith("{")]
    assert loggers.count("esindexer.pipeline.committer") >= 3  # "progress saved", once per batch
    assert not [name for name in loggers if name.split(".")[0] in ("urllib3", "elastic_transport", "elasticsearch")]


def test_a_service_summarises_its_catch_up_once_caught_up_and_goes_on_quietly(zodb, db_dsn, es, es_url, es_prefix):
    _fill(zodb, 3000, 500)
    env = dict(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
               ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT="0", ESINDEXER_BATCH_LIMIT="200",
               ESINDEXER_PROGRESS_INTERVAL="0.2", ESINDEXER_LOG_FORMAT="json")
    proc = subprocess.Popen([sys.executable, "-m", "esindexer", "run"], env=esindexer_env(**env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), timeout=60, message="caught up")
        time.sleep(1.5)  # the reporter looks every 0.5 s
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    summaries = [x for x in lines if x.get("event") == "progress_summary"]
    assert len(summaries) == 1 and summaries[0]["work"] == "catch-up" and summaries[0]["ended"] == "finished"
    assert summaries[0]["rows"] == _rows(db_dsn)
    after = lines[lines.index(summaries[0]) + 1:]
    assert not [x for x in after if x.get("event") == "progress"]  # quiet once caught up


def test_one_process_taking_over_from_partitions_announces_its_catch_up_from_where_they_were(
        zodb, db_dsn, es_url, es_prefix, caplog):
    """Scaling back from 2 partitions to one process: the worker id ``esindexer`` has no progress
    yet, and starts where both partitions had got to (esindexer.source.partitions.seed). The
    announcement used to count from the start ("15,747 rows from the start") although the work
    then was 11 rows."""
    from esindexer.config import partition_worker_id
    from esindexer.observe.progress import backlog_reporter
    from esindexer.source.progress import set_progress_tid
    from tests.indexing import make_settings

    _fill(zodb, 3000, 500)
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("SELECT DISTINCT tid FROM object_state ORDER BY tid")
        tids = [row[0] for row in cur.fetchall()]
    pg.close()
    low, high = tids[-3], tids[-2]  # the partitions got to different points: the lower one counts
    set_progress_tid(db_dsn, partition_worker_id("esindexer", 0, 2), high)
    set_progress_tid(db_dsn, partition_worker_id("esindexer", 1, 2), low)
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM object_state WHERE tid > %s", (low,))
        expected = int(cur.fetchone()[0])
    pg.close()
    assert 0 < expected < 3000
    settings = make_settings(db_dsn, es_url, es_prefix, progress_interval="5")
    with caplog.at_level(logging.INFO, logger="esindexer"):
        reporter = backlog_reporter(settings, Metrics(), until_caught_up=True)
    assert reporter is not None
    reporter.close()
    announced = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backfill of ")]
    assert announced == [f"backfill of {expected:,} rows after tid {low}"], announced
