"""Prometheus metrics for the indexer, kept in a registry of their own.

Why a registry of its own: the process-wide default registry is shared with every
library that happens to register something, and tests create many ``Metrics`` objects
side by side; an own ``CollectorRegistry`` keeps names unique and scrapes predictable.

Why the state gauges (tids, timestamps, lag) come from a custom collector rather than
plain ``Gauge.set`` calls: the lag is *derived* from two tids that are written by two
different threads (the indexing loop and the source poller). Reading both under one
lock at scrape time means a scrape can never show a lag that disagrees with the tids
exposed next to it, and the lag keeps growing between progress commits without anyone
having to "tick" it.

Tids become times through their ZODB ``TimeStamp`` encoding (31-day months, so tids
must never be subtracted directly); see :func:`esindexer.source.tid.tid_to_epoch`.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from esindexer.observe.gauges import GAUGE_HELP

log = logging.getLogger(__name__)

#: Label values the service may use; they are pre-created so every series exists (at 0)
#: from the first scrape, which keeps ``rate()`` and ``absent()`` alerts honest.
DOCUMENT_ACTIONS = ("index", "delete")
DOCUMENT_OUTCOMES = ("ok", "dead_lettered", "skipped", "error")
BULK_OUTCOMES = ("ok", "retried", "failed")

#: Bulk requests range from a few milliseconds to minutes while Elasticsearch throttles.
BULK_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                         60.0, 120.0)
#: Documents per batch: from single-object transactions up to a 100,000-row backfill batch.
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000,
                      100000)


def _tid_epoch(tid: int) -> float:
    """Commit time (seconds since the Unix epoch, UTC) encoded in ``tid``.

    A tid <= 0 means "no transaction"; it is treated as tid 0, 1900-01-01 00:00 UTC,
    so "nothing indexed yet" reads as a very large lag rather than as caught up.
    The import is deferred so importing this module stays free of work and of
    ordering constraints between the modules.
    """
    from esindexer.source.tid import tid_to_epoch

    return tid_to_epoch(max(tid, 0))


@dataclass
class _State:
    """What the custom collector reads; guarded by ``Metrics._lock``."""

    indexed_tid: int | None = None
    indexed_epoch: float | None = None
    progress_wall: float | None = None
    source_tid: int | None = None
    source_epoch: float | None = None
    source_oldest_epoch: float | None = None
    source_reachable: bool | None = None
    source_error: str | None = None
    source_poll_wall: float | None = None
    dead_letters: int | None = None
    budget_exhausted: bool = False
    indices_vanished: bool = False
    unmapped_documents: int | None = None
    object_documents_to_write: int | None = None
    object_graph_resolution_started: float | None = None
    database_behind: bool = False
    crash_guard_active: bool | None = None
    live: bool | None = None
    standby: bool = False
    crash_guard_unclean_exits: int | None = None
    last_retry_wall: float | None = None
    last_retry: str | None = None  # "reason: what failed", for /readyz


class _StateCollector(Collector):
    """Yields the tid/lag/state gauges from one consistent snapshot."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Registering must not call collect() (it would run tid conversions at start-up).
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        state = self._metrics._snapshot()
        families = self._families()
        lag = self._metrics._lag_from(state)

        def put(name: str, value: float | None) -> None:
            if value is not None:
                families[name].add_metric([], float(value))

        put("lag_seconds", lag)
        put("last_indexed_tid", state.indexed_tid)
        put("last_indexed_commit_timestamp_seconds", state.indexed_epoch)
        put("last_progress_timestamp_seconds", state.progress_wall)
        put("source_latest_tid", state.source_tid)
        put("source_latest_commit_timestamp_seconds", state.source_epoch)
        put("source_reachable",
            None if state.source_reachable is None else int(state.source_reachable))
        put("source_last_poll_timestamp_seconds", state.source_poll_wall)
        put("dead_letters", state.dead_letters)
        put("error_budget_exhausted", int(state.budget_exhausted))
        put("indices_vanished", int(state.indices_vanished))
        put("documents_with_unmapped_fields", state.unmapped_documents)
        put("object_documents_to_write", state.object_documents_to_write)
        put("object_graph_resolution_started_timestamp_seconds", state.object_graph_resolution_started)
        put("database_behind_index", int(state.database_behind))
        put("live", None if state.live is None else int(state.live))
        put("standby", int(state.standby))
        put("crash_guard_active", None if state.crash_guard_active is None else int(state.crash_guard_active))
        put("crash_guard_unclean_exits", state.crash_guard_unclean_exits)
        return families.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {name: GaugeMetricFamily(f"esindexer_{name}", text) for name, text in GAUGE_HELP.items()}


class Metrics:
    """Every metric the indexer exports, with the small API the service calls.

    The recording methods are cheap and thread-safe; they never talk to a server.
    """

    def __init__(self, *, process_metrics: bool = True) -> None:
        """Create the metrics in a new registry at ``self.registry``.

        ``process_metrics`` adds the standard ``process_*`` series (memory, CPU, fds),
        which is how memory growth in a long-running indexer gets noticed.
        """
        from esindexer import __version__

        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._state = _State()
        self._started_wall = time.time()
        reg = self.registry
        self.documents = Counter(
            "esindexer_documents_total", "Documents handled, by bulk action and outcome.",
            ["action", "outcome"], registry=reg)
        self.bulk_requests = Counter(
            "esindexer_bulk_requests_total", "Elasticsearch bulk requests, by outcome.",
            ["outcome"], registry=reg)
        self.retries = Counter(
            "esindexer_retries_total", "Retries of any step, by reason.", ["reason"], registry=reg)
        self.bulk_duration = Histogram(
            "esindexer_bulk_duration_seconds", "Wall time of one Elasticsearch bulk request.",
            buckets=BULK_DURATION_BUCKETS, registry=reg)
        self.crashed_records = Counter(
            "esindexer_crash_guard_isolated_records_total",
            "Records that crashed the converter's child process in guarded mode (dead-lettered as crashed).",
            registry=reg)
        self.refreshes = Counter(
            "esindexer_refreshes_total",
            "Explicit index refreshes made so that changes written while caught up are searchable at once.",
            registry=reg)
        self.batch_size = Histogram(
            "esindexer_batch_size", "Documents per indexed batch.",
            buckets=BATCH_SIZE_BUCKETS, registry=reg)
        self.build_info = Info("esindexer_build", "Version of esindexer and of Python.",
                               registry=reg)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        for action in DOCUMENT_ACTIONS:
            for outcome in DOCUMENT_OUTCOMES:
                self.documents.labels(action, outcome)
        for outcome in BULK_OUTCOMES:
            self.bulk_requests.labels(outcome)
        reg.register(_StateCollector(self))
        if process_metrics:
            ProcessCollector(registry=reg)

    # -- counters and histograms (indexing loop) ---------------------------------------

    def record_documents(self, action: str, outcome: str, count: int = 1) -> None:
        """Count ``count`` documents; unknown labels raise, to keep cardinality fixed."""
        if action not in DOCUMENT_ACTIONS or outcome not in DOCUMENT_OUTCOMES:
            raise ValueError(f"unknown document action/outcome: {action!r}/{outcome!r}")
        if count:
            self.documents.labels(action, outcome).inc(count)

    def record_bulk(self, outcome: str, seconds: float) -> None:
        """Count one bulk request and observe how long it took."""
        if outcome not in BULK_OUTCOMES:
            raise ValueError(f"unknown bulk outcome: {outcome!r}")
        self.bulk_requests.labels(outcome).inc()
        self.bulk_duration.observe(seconds)

    def record_retry(self, reason: str, detail: str | None = None) -> None:
        """Count one retry; ``reason`` must come from a small fixed set chosen by the caller.

        ``detail`` (the error's text) is kept, not exported: /readyz shows the last one
        next to a stall, so ``curl /readyz`` says *why* nothing moves.
        """
        self.retries.labels(reason).inc()
        text = reason if not detail else f"{reason}: {' '.join(detail.split())[:400]}"
        with self._lock:
            self._state.last_retry_wall = time.time()
            self._state.last_retry = text

    def last_retry(self) -> tuple[float, str] | None:
        """``(seconds ago, "reason: detail")`` of the most recent retry, or None."""
        with self._lock:
            wall, text = self._state.last_retry_wall, self._state.last_retry
        return None if wall is None or text is None else (max(0.0, time.time() - wall), text)

    def record_batch(self, size: int) -> None:
        """Observe the number of documents in one batch."""
        self.batch_size.observe(size)

    # -- state (custom collector) ------------------------------------------------------

    def record_progress(self, tid: int, wall_time: float | None = None) -> None:
        """Note that progress up to ``tid`` was saved at ``wall_time`` (default: now). Call
        it at start-up too, with the loaded progress tid (-1 if none): the lag is right
        from the first scrape."""
        epoch = _tid_epoch(tid) if tid > 0 else None
        wall = time.time() if wall_time is None else wall_time
        with self._lock:
            self._state.indexed_tid = tid
            self._state.indexed_epoch = epoch
            self._state.progress_wall = wall

    def record_source_latest(self, tid: int | None, wall_time: float | None = None,
                             oldest_tid: int | None = None) -> None:
        """Note the newest tid in the source (``None`` or <= 0 when it has none).

        ``oldest_tid`` (the oldest tid still holding a current object) is where a
        first backfill starts: before any progress, the lag counts from it.
        A successful poll also proves PostgreSQL reachable, so it is recorded as such.
        """
        tid = -1 if tid is None or tid <= 0 else tid
        epoch = _tid_epoch(tid) if tid > 0 else None
        oldest = _tid_epoch(oldest_tid) if oldest_tid and oldest_tid > 0 else None
        wall = time.time() if wall_time is None else wall_time
        with self._lock:
            self._state.source_tid = tid
            self._state.source_epoch = epoch
            if oldest is not None:
                self._state.source_oldest_epoch = oldest
            self._state.source_reachable = True
            self._state.source_error = None
            self._state.source_poll_wall = wall

    def record_source_unreachable(self, reason: str) -> None:
        """Note that the source could not be polled; the last known tid is kept."""
        with self._lock:
            self._state.source_reachable = False
            self._state.source_error = reason

    def set_dead_letters(self, count: int) -> None:
        """Set the current number of rows in the dead-letter table."""
        with self._lock:
            self._state.dead_letters = count

    def set_crash_guard(self, active: bool, unclean_exits: int | None) -> None:
        """Whether guarded mode is on, and (unless None: unchanged) the count it was judged on."""
        with self._lock:
            self._state.crash_guard_active = bool(active)
            if unclean_exits is not None:
                self._state.crash_guard_unclean_exits = unclean_exits

    def record_refresh(self) -> None:
        """Count one explicit refresh (the refresh policy)."""
        self.refreshes.inc()

    def set_live(self, live: bool) -> None:
        """Whether the last settled batch was read while caught up."""
        with self._lock:
            self._state.live = live

    def working_through_backlog(self) -> bool:
        """Whether this process is behind the source and its last settled batch was not read
        caught up: a backfill, or a backlog after an outage. Not a caught-up service that
        has had no batch since its start, nor a live one whose last commit is being indexed."""
        state = self._snapshot()
        return not state.live and self._lag_from(state) > 0

    def set_standby(self, standby: bool) -> None:
        """Whether this process stands by for the client id's lock (readiness fails meanwhile)."""
        with self._lock:
            self._state.standby = bool(standby)

    def standby(self) -> bool:
        """Whether :meth:`set_standby` last said so."""
        with self._lock:
            return self._state.standby

    def record_crashed_record(self) -> None:
        """Count one record isolated by the crash guard."""
        self.crashed_records.inc()

    def set_indices_vanished(self, flag: bool) -> None:
        """Set whether the indices were found gone at start while progress was saved."""
        with self._lock:
            self._state.indices_vanished = bool(flag)

    def set_unmapped_documents(self, count: int) -> None:
        """Set how many documents hold fields the index did not map."""
        with self._lock:
            self._state.unmapped_documents = int(count)

    def set_object_documents_to_write(self, count: int) -> None:
        """Set how many of the tree's object documents a backfill has still to send."""
        with self._lock:
            self._state.object_documents_to_write = int(count)

    def set_object_graph_resolving(self, started: float | None) -> None:
        """Set when the running resolution of a backfill's object graph began (None: none runs)."""
        with self._lock:
            self._state.object_graph_resolution_started = started

    def set_database_behind(self, flag: bool) -> None:
        """Set whether the database was found behind the index and is not repaired yet."""
        with self._lock:
            self._state.database_behind = bool(flag)

    def database_behind(self) -> bool:
        """Whether :meth:`set_database_behind` last said so (readiness fails if so)."""
        with self._lock:
            return self._state.database_behind

    def set_error_budget_exhausted(self, flag: bool) -> None:
        """Set whether the dead-letter error budget is used up (readiness fails if so)."""
        with self._lock:
            self._state.budget_exhausted = bool(flag)

    # -- derived values (health checks, tests) ------------------------------------------

    def lag_seconds(self) -> float:
        """Current lag in seconds, computed exactly as the exported gauge."""
        return self._lag_from(self._snapshot())

    def seconds_since_progress(self) -> float | None:
        """Seconds since the last progress commit, or ``None`` if none was recorded."""
        with self._lock:
            wall = self._state.progress_wall
        return None if wall is None else max(0.0, time.time() - wall)

    def seconds_since_start(self) -> float:
        """Seconds since this object was created (a stand-in before the first progress)."""
        return max(0.0, time.time() - self._started_wall)

    def source_status(self) -> tuple[bool | None, str | None]:
        """``(reachable, error)`` from the source poller; ``(None, None)`` before any poll."""
        with self._lock:
            return self._state.source_reachable, self._state.source_error

    def seconds_since_source_poll(self) -> float | None:
        """Seconds since the last successful source poll, or ``None`` if none succeeded."""
        with self._lock:
            wall = self._state.source_poll_wall
        return None if wall is None else max(0.0, time.time() - wall)

    def error_budget_exhausted(self) -> bool:
        """Whether :meth:`set_error_budget_exhausted` last said so."""
        with self._lock:
            return self._state.budget_exhausted

    def _snapshot(self) -> _State:
        with self._lock:
            return _State(**vars(self._state))

    @staticmethod
    def _lag_from(state: _State) -> float:
        """Lag rule: 0 when nothing is known or when caught up, never negative.

        Tids are compared first because they are exact integers, while the times are
        floats; comparing them decides "caught up" without rounding noise.
        """
        if state.source_tid is None or state.source_tid <= 0 or state.source_epoch is None:
            return 0.0
        indexed_tid = -1 if state.indexed_tid is None else state.indexed_tid
        if indexed_tid >= state.source_tid:
            return 0.0
        indexed_epoch = state.indexed_epoch
        if indexed_epoch is None:
            # Nothing indexed yet: behind by all the history there is to index (or,
            # before the oldest tid is known, since tid 0 rather than "caught up").
            indexed_epoch = state.source_oldest_epoch
            if indexed_epoch is None:
                indexed_epoch = _tid_epoch(0)
        return max(0.0, state.source_epoch - indexed_epoch)

