"""Progress of long work (a backfill, a catch-up, ``verify``): rows done and left, rate, ETA.

A backfill of 200,000 objects used to log nothing between its first and last line.
:class:`ProgressReporter` runs beside the work in a thread of its own and reads how far
it got from counters the work keeps anyway (for the service: the :class:`Metrics`
counters, :func:`pipeline_counts`), against a total estimated once from the database
(:func:`esindexer.source.backlog.rows_after`):

- on a terminal it draws a live bar (tqdm) with rows done/total, rows/s and ETA, and
  log lines print above it;
- otherwise it logs one structured line every ``interval`` seconds with the same
  figures (``rows``, ``rows_total``, ``rows_per_second``, ``eta_seconds``, ...);
- at the end, one summary line: rows, each named count (indexed, deletes, skipped,
  dead-lettered for the service), elapsed seconds, rows/s and documents/s.

Work that counts by itself (``verify``, a re-index) calls :meth:`ProgressReporter.add`
instead of giving a ``counts`` function::

    with ProgressReporter("verify", total=objects, interval=settings.progress_interval) as progress:
        for page in pages:
            ...
            progress.add(rows=len(page), missing=n_missing)
    # the summary line is logged on leaving the block (also after an exception: what was done)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, TextIO

from esindexer.config import Settings
from esindexer.observe.metrics import Metrics

log = logging.getLogger("esindexer.progress")

#: Named counts; ``rows`` is what the total counts.
Counts = dict[str, int]

#: Counts left out of the bar (it has one line; the summary has them all).
BAR_HIDDEN = frozenset({"rows", "deletes", "skipped"})

#: How often a bar is redrawn (a log line goes every ``interval`` instead).
BAR_TICK = 0.5


#: Rows count once their whole batch is saved (``batch_limit`` rows, many bulk requests);
#: documents as soon as Elasticsearch acknowledges their request: the documents lead.
PIPELINE_COUNTS_LABEL = "documents acknowledged: "


def pipeline_counts(metrics: Metrics) -> Callable[[], Counts]:
    """What the service has done so far, read from its metrics.

    ``rows``: records read whose batch is settled (progress saved); ``indexed``: index
    writes settled (including "already there at that version"); ``deletes``: delete
    requests settled, one per routed index for each deleted or skipped record, plus
    pack deletions (a delete of an absent document counts); ``skipped``: records of
    excluded classes; ``dead_lettered``: records not convertible or crashed, and
    documents Elasticsearch refused.
    """
    registry = metrics.registry

    def value(name: str, labels: dict[str, str] | None = None) -> int:
        return int(registry.get_sample_value(name, labels or {}) or 0)

    def docs(action: str, outcome: str) -> int:
        return value("esindexer_documents_total", {"action": action, "outcome": outcome})

    def counts() -> Counts:
        return {
            "rows": value("esindexer_batch_size_sum"),
            "indexed": docs("index", "ok"),
            "deletes": docs("delete", "ok"),
            "skipped": docs("index", "skipped"),
            "dead_lettered": docs("index", "dead_lettered") + docs("delete", "dead_lettered")
                             + docs("index", "error"),
        }

    return counts


class PhaseNow(NamedTuple):
    """A stretch of the work that rows do not measure: its name, and either how many items
    it has left or (``left`` None) how long it has run so far."""

    name: str
    left: int | None
    elapsed: float | None = None


Phase = Callable[[], "PhaseNow | None"]  #: the stretch the work is in (None: rows measure it)

RESOLVING = "resolving the object graph"
WRITING_TREE = "writing object documents"  # (a backfill's whole tree, or what a restart found unwritten)


def pipeline_phase(metrics: Metrics) -> Phase:
    """The object model's last two stretches of a backfill, once every record is read
    (rows stand still in both: their ETA would say 0:00): the graph's resolution, all
    PostgreSQL's work (20 s at 10^6 objects), then the tree's documents."""

    def phase() -> PhaseNow | None:
        started = metrics.registry.get_sample_value("esindexer_object_graph_resolution_started_timestamp_seconds")
        if started:
            return PhaseNow(RESOLVING, None, max(time.time() - started, 0.0))
        left = metrics.registry.get_sample_value("esindexer_object_documents_to_write")
        return PhaseNow(WRITING_TREE, int(left)) if left else None

    return phase


def pipeline_live(metrics: Metrics) -> Callable[[], bool]:
    """True once the service settled a batch read while caught up: a catch-up has ended."""
    return lambda: metrics.registry.get_sample_value("esindexer_live") == 1.0


def backlog_reporter(settings: Settings, metrics: Metrics, *, until_caught_up: bool,
                     what: str | None = None,
                     cancellable: Callable[[Any], AbstractContextManager[Any]] | None = None
                     ) -> ProgressReporter | None:
    """A started reporter for the service's backlog at start, or None when there is little
    or none (quiet when caught up).

    For ``esindexer run`` and any command that runs the pipeline (a re-index's catch-up):
    call it before :meth:`Indexer.run` with the indexer's metrics and ``close()`` the result
    after it. A service run (``until_caught_up`` False) reports only a catch-up of at least
    one batch (``batch_limit`` rows) and ends its report once caught up; a backfill reports
    whatever it has to do. The estimate is best effort: without PostgreSQL at this moment
    there is no report (the service's own retries say why). ``cancellable(conn)``, when
    given, wraps the estimate's reads: a stop cancels them (they can wait for a lock).
    """
    from esindexer.source import backlog, follow, graph, partitions, pg

    if settings.progress_interval <= 0:
        return None
    try:
        conn = pg.connect(settings, "progress estimate")
    except pg.CONNECTION_ERRORS:
        return None
    try:
        with cancellable(conn) if cancellable is not None else contextlib.nullcontext():
            # Where the pipeline will start: this worker's progress, or, for a worker id without
            # any (scaling out to partitions or back to one process), the seed it will get.
            start = partitions.start_tid(conn, settings.client_id, settings.worker_id)
            end = follow.latest_tid(conn)
            ahead = backlog.rows_after(conn, start, end)
            # a restart rewriting object documents first (a whole tree's: minutes at 10^6), with
            # fewer rows than a batch after it: reported too
            rewrite = settings.documents == "objects" and graph.rewrite_pending(conn, settings.worker_id)
    except Exception:  # no RelStorage tables yet, say: the service waits for them and says so
        log.debug("no progress estimate", exc_info=True)
        return None
    finally:
        conn.close()
    if not rewrite and (ahead.rows == 0 or (not until_caught_up and ahead.rows < settings.batch_limit)):
        return None
    reporter = ProgressReporter(what or ("backfill" if until_caught_up else "catch-up"), ahead.best_guess,
                                pipeline_counts(metrics), exact=ahead.exact, interval=settings.progress_interval,
                                finished=None if until_caught_up else pipeline_live(metrics),
                                counts_label=PIPELINE_COUNTS_LABEL, phase=pipeline_phase(metrics))
    # Announced as the command's own line (logger "esindexer", as run's other start-up lines).
    where = f"after tid {start}" if start > 0 else "from the start"
    logging.getLogger("esindexer").info("%s of %s%s rows %s", reporter.what, "" if ahead.exact else "about ",
                                        f"{ahead.best_guess:,}", where,
                                        extra={"rows_total": ahead.best_guess, "tid": start})
    return reporter.start()


def eta_seconds(done: int, total: int | None, elapsed: float) -> float | None:
    """Seconds left at the average rate so far; None when unknown (no rate, no total, or
    done already past an estimated total)."""
    if total is None or done <= 0 or elapsed <= 0 or done >= total:
        return None
    return (total - done) / (done / elapsed)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressReporter:
    """Reports the progress of one piece of long work; see the module docstring.

    ``what`` names the work in every line (``backfill``, ``catch-up``, ``verify``).
    ``total`` is the rows expected (None: unknown), ``exact`` whether it is a count or
    an estimate. ``counts`` returns the cumulative counts (it is read once at start as
    the baseline); without it, :meth:`add` feeds them. ``finished`` ends the report
    (summary included) when it returns True, for work that does not end by itself (the
    catch-up of a service). ``bar`` forces or forbids the bar (default: ``stream`` is a
    terminal); ``interval`` <= 0 turns progress off except the summary.
    """

    def __init__(self, what: str, total: int | None, counts: Callable[[], Counts] | None = None, *,
                 exact: bool = True, interval: float = 10.0, stream: TextIO | None = None,
                 bar: bool | None = None, finished: Callable[[], bool] | None = None, counts_label: str = "",
                 phase: Phase | None = None):
        self.what = what
        #: says what the named counts count, when it is not what the rows count
        self.counts_label = counts_label
        #: a stretch counted in items of its own (:func:`pipeline_phase`), and where it began
        self._phase = phase
        self._phase_start: tuple[str, float, int] | None = None
        self.total = total
        self.exact = exact
        self.interval = interval
        self._stream = stream if stream is not None else sys.stderr
        self._bar_wanted = bar if bar is not None else bool(getattr(self._stream, "isatty", lambda: False)())
        self._counts = counts
        self._added: Counts = {"rows": 0}
        self._base: Counts = dict(counts()) if counts is not None else {}
        self._finished = finished
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._redirect = contextlib.ExitStack()
        self._started = time.monotonic()
        self.summary: dict[str, Any] | None = None

    # -- feeding ---------------------------------------------------------------------

    def add(self, rows: int = 0, **counts: int) -> None:
        """Count work done (for callers without a ``counts`` function); thread-safe."""
        with self._lock:
            self._added["rows"] += rows
            for name, n in counts.items():
                self._added[name] = self._added.get(name, 0) + n

    def figures(self) -> Counts:
        """The counts since start."""
        if self._counts is None:
            with self._lock:
                return dict(self._added)
        now = self._counts()
        return {name: now[name] - self._base.get(name, 0) for name in now}

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> ProgressReporter:
        self._started = time.monotonic()
        if self.interval > 0:
            if self._bar_wanted:
                self._open_bar()
            self._thread = threading.Thread(target=self._loop, name="esindexer-progress", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> ProgressReporter:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(ended="stopped" if exc_type is not None else "finished")

    def close(self, summary: bool = True, ended: str = "finished") -> dict[str, Any] | None:
        """Stop reporting; log the summary line (once) unless ``summary`` is False.
        ``ended`` says how the work ended in that line ("finished", "stopped")."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        return self._end(summary, ended)

    # -- inside ----------------------------------------------------------------------

    def _open_bar(self) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # Log lines from other threads are printed above the bar instead of through it.
        self._redirect.enter_context(logging_redirect_tqdm())
        try:  # a pseudo-terminal without a size says 0 x 0, and tqdm then draws nothing
            size = os.get_terminal_size(self._stream.fileno())
            columns, lines = size.columns, size.lines
        except (AttributeError, OSError, ValueError):
            columns = lines = 0
        self._bar = tqdm(total=self.total, desc=self.what, unit="rows", file=self._stream,
                         dynamic_ncols=columns > 0 and lines > 0, ncols=None if columns > 0 else 100,
                         nrows=None if lines > 0 else 20,
                         unit_scale=(self.total or 0) >= 100_000, smoothing=0.05, mininterval=BAR_TICK)

    def _loop(self) -> None:
        # The end of a catch-up is looked for every tick, so that its summary's time is right
        # within a tick; a line is logged every ``interval``.
        last_line = time.monotonic()
        while not self._stop.wait(min(BAR_TICK, self.interval)):
            try:
                if self._finished is not None and self._finished():
                    self._end(True, "finished")
                    return
                self._phase_now()  # a stretch's start is seen within a tick, not at the next line
                if self._bar is not None:
                    self._draw()
                elif time.monotonic() - last_line >= self.interval:
                    last_line = time.monotonic()
                    self._log_line()
            except Exception:  # reporting must never end the work it reports on
                log.debug("progress report failed", exc_info=True)

    def _draw(self) -> None:
        figures = self.figures()
        bar = self._bar
        postfix = {k: f"{v:,}" for k, v in figures.items() if k not in BAR_HIDDEN and v}
        phase = self._phase_now()  # the rows stand at their end meanwhile: say what runs
        if phase is not None:
            postfix["now"] = phase.name + (f" {_duration(phase.elapsed)}" if phase.left is None else f", {phase.left:,} left")
        bar.set_postfix(postfix, refresh=False)
        bar.update(max(figures["rows"] - bar.n, 0))

    def line(self) -> tuple[str, dict[str, Any]]:
        """The periodic progress line: its message and its structured fields."""
        figures = self.figures()
        elapsed = time.monotonic() - self._started
        rows = figures["rows"]
        rate = rows / elapsed if elapsed > 0 else 0.0
        eta = eta_seconds(rows, self.total, elapsed)
        fields: dict[str, Any] = {"event": "progress", "work": self.what, **figures, "rows_total": self.total,
                                  "rows_total_exact": self.exact, "elapsed_seconds": round(elapsed, 1),
                                  "rows_per_second": round(rate, 1),
                                  "eta_seconds": None if eta is None else round(eta)}
        if self.total:
            about = "" if self.exact else "about "
            share = f" ({min(rows / self.total, 1.0):.0%})"
            left = f", {about}{max(self.total - rows, 0):,} left"
        else:
            share = left = ""
        extra = ", ".join(f"{k.replace('_', '-')} {v:,}" for k, v in figures.items() if k != "rows")
        extra = f"; {self.counts_label}{extra}" if extra else ""
        phase = self._phase_now()
        if phase is not None:
            return self._phase_line(phase, figures, extra, fields)
        message = f"{self.what}: {rows:,} rows done{share}{left}, {rate:,.0f} rows/s, ETA {_duration(eta)}{extra}"
        return message, fields

    def _phase_now(self) -> PhaseNow | None:
        """The stretch the work is in; its start (time, documents acknowledged) noted when seen."""
        phase = self._phase() if self._phase is not None else None
        if phase is None:  # (a later stretch of the same name starts afresh)
            self._phase_start = None
        elif self._phase_start is None or self._phase_start[0] != phase.name:
            self._phase_start = (phase.name, time.monotonic(), self.figures().get("indexed", 0))
        return phase

    def _phase_line(self, phase: PhaseNow, figures: Counts, extra: str,
                    fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The line while a stretch runs: how long it has run, or its items left at the
        documents' rate since it began (no rate until a document of it is acknowledged)."""
        if phase.left is None:
            fields.update(phase=phase.name, phase_seconds=round(phase.elapsed or 0.0, 1), eta_seconds=None)
            return f"{self.what}: {phase.name}: {_duration(phase.elapsed)} so far{extra}", fields
        now, done = time.monotonic(), figures.get("indexed", 0)
        _, began, done_then = self._phase_start or (phase.name, now, done)
        rate = (done - done_then) / (now - began) if now > began and done > done_then else None
        eta = phase.left / rate if rate else None
        fields.update(phase=phase.name, phase_left=phase.left, eta_seconds=None if eta is None else round(eta))
        pace = f"{rate:,.0f} documents/s, ETA {_duration(eta)}" if rate else "no rate yet"
        return f"{self.what}: {phase.name}: {phase.left:,} left, {pace}{extra}", fields

    def _log_line(self) -> None:
        message, fields = self.line()
        log.info("%s", message, extra=fields)

    def _end(self, summary: bool, ended: str) -> dict[str, Any] | None:
        with self._lock:
            if self._closed:
                return self.summary
            self._closed = True
        self._stop.set()
        if self._bar is not None:
            with contextlib.suppress(Exception):
                self._draw()
            self._bar.close()
            self._redirect.close()
        if not summary:
            return None
        figures = self.figures()
        elapsed = time.monotonic() - self._started
        rows = figures["rows"]
        docs = figures.get("indexed")
        self.summary = {"work": self.what, "ended": ended, **figures, "elapsed_seconds": round(elapsed, 2),
                        "rows_per_second": round(rows / elapsed, 1) if elapsed > 0 else None,
                        "docs_per_second": round(docs / elapsed, 1) if docs is not None and elapsed > 0 else None}
        counts = ", ".join(f"{k.replace('_', '-')} {v:,}" for k, v in figures.items() if k != "rows")
        rate = f"{rows / elapsed:,.0f} rows/s" if elapsed > 0 else "-"
        if docs is not None and elapsed > 0:
            rate += f", {docs / elapsed:,.0f} docs/s"
        log.info("%s %s: %s rows in %.1fs (%s)%s", self.what, ended, f"{rows:,}", elapsed, rate,
                 f"; {self.counts_label}{counts}" if counts else "", extra={"event": "progress_summary", **self.summary})
        return self.summary
