"""The service: follow → convert → send → progress, with reconnects and shutdown.

:class:`Indexer` wires the steps together and owns their lifecycle; each step is its
own module and is handed its collaborators:

- the **reader** (the thread that calls :meth:`Indexer.run`) follows batches of
  committed rows and turns them into requests (:mod:`esindexer.pipeline.reader`);
- the **committer** settles batches strictly in order and saves progress, and applies
  pack deletions (:mod:`esindexer.pipeline.committer`);
- the **sink** (:mod:`esindexer.sink`; Elasticsearch by default) sends the requests,
  retrying transient trouble itself.

Failures: sink trouble is retried inside the senders (progress freezes meanwhile); a
lost PostgreSQL connection tears the pipeline down and restarts it from the saved
progress (replays are harmless: writes are versioned by tid); a setup the servers
refuse for good ends :meth:`Indexer.run` with :attr:`ExitCode.SETUP`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from esindexer.backoff import Backoff
from esindexer.config import Settings
from esindexer.convert.configure import build_jsonifier
from esindexer.documents import DocumentBuilder
from esindexer.errors import Abandoned, AlreadyRunning, ErrorBudgetExhausted, ExitCode, SchemaError
from esindexer.es.client import as_setup_error, connection_hint, describe_error, retry_reason
from esindexer.es.sink import ElasticsearchSink
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.budget import ErrorBudget
from esindexer.pipeline.committer import BatchInFlight, Committer
from esindexer.pipeline.crashguard import CrashGuard
from esindexer.pipeline.reader import BatchReader
from esindexer.pipeline.refresher import Refresher
from esindexer.pipeline.standby import LockKeeper
from esindexer.pipeline.sweep import sweep
from esindexer.sink import Sink
from esindexer.source import deadletters, deletions, follow, notify, partitions, pg, progress
from esindexer.source.tid import tid_to_datetime

log = logging.getLogger(__name__)

T = TypeVar("T")


class Indexer:
    """Keeps the configured indices equal to the database's current objects."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None, sink: Sink | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self.sink: Sink = sink if sink is not None else ElasticsearchSink(
            settings, stop=self._abandon,
            on_retry=lambda reason, exc: self.metrics.record_retry(reason, describe_error(exc)),
            on_request=self.metrics.record_bulk)
        self.builder = DocumentBuilder(settings)
        self.jsonifier = build_jsonifier(settings)
        self.budget = ErrorBudget(settings.dead_letter_budget, settings.dead_letter_window, settings.worker_id)
        self.crash_guard = CrashGuard(settings, self.metrics, connect=lambda: pg.connect(settings, "crash guard"),
                                      cancel=self._abandon)
        self._updates: follow.Updates | None = None
        self.locks = LockKeeper(settings, self.metrics, self._stop)
        self._claimed: Any = None  # the writer connection, when claim() took the lock ahead of run()
        #: the writer connection while the reader thread uses it (setup), and for the committer
        self._setup_conn: Any = None
        self._writer: Any = None
        self._others: set[Any] = set()  # more connections the main thread reads with (cancellable())
        self._backoff = Backoff(first=0.5, maximum=settings.retry_max_seconds)
        self.exit_code = ExitCode.OK
        #: With ``until_caught_up``: True once everything committed at start is indexed. A stop
        #: before that leaves it False, so the command can exit non-zero (a re-index script
        #: must tell "done" from "interrupted").
        self.caught_up = False

    # -- control -------------------------------------------------------------------------

    def stop(self, abandon: bool = False) -> None:
        """Ask the service to stop; safe from signal handlers and other threads.

        The reader stops taking rows; in-flight requests may finish within
        ``shutdown_timeout`` (or at once with ``abandon``); progress never moves past
        unacknowledged work.
        """
        self._stop.set()
        if abandon:
            self._abandon.set()
        updates = self._updates
        if updates is not None:
            try:
                updates.stop()
            except Exception:  # pragma: no cover - best effort from a signal handler
                pass

    def interrupt(self, abandon: bool = False) -> None:
        """After :meth:`stop`: cancel the PostgreSQL statements the stop would wait for.

        Called from the signal thread (esindexer.pipeline.signals), repeatedly: a read that
        waits for a lock or runs a slow plan is cancelled, so a stop never waits for a
        statement. The committer's statements are cancelled only with ``abandon`` (a first
        stop lets it save the progress of what Elasticsearch acknowledged)."""
        if not self.stopping:
            return
        updates = self._updates
        if updates is not None:
            updates.cancel()
        pg.cancel_if_busy(self._setup_conn)
        for conn in list(self._others):
            pg.cancel_if_busy(conn)
        if abandon:
            pg.cancel_if_busy(self._writer)

    @contextlib.contextmanager
    def cancellable(self, conn: Any) -> Iterator[Any]:
        """For the block, :meth:`interrupt` also cancels ``conn``'s statements (a connection
        of the main thread outside the pipeline, such as the backlog estimate's)."""
        self._others.add(conn)
        try:
            yield conn
        finally:
            self._others.discard(conn)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_stopped(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` s, waking early when a stop is requested."""
        return self._stop.wait(timeout)

    # -- setup ---------------------------------------------------------------------------

    def _retry_forever(self, what: str, fn: Callable[[], T], *, reconnect: bool = False) -> T:
        """Run ``fn`` until it works or the service stops, backing off on transient errors.
        With ``reconnect``, a lost PostgreSQL connection propagates instead (``fn`` uses the
        pipeline's connection, which only a new pipeline life replaces)."""
        attempt = 0
        while True:
            try:
                return fn()
            except pg.CONNECTION_ERRORS as exc:
                if reconnect and not self.stopping:
                    raise
                if self.stopping:
                    raise Abandoned(what) from None  # cancelled by the stop (interrupt())
                if (problem := pg.refused_for_good(exc)) is not None:
                    raise problem from None  # a wrong password: retrying cannot help
                reason, error = "pg_unreachable", exc
            except SchemaError as exc:  # started before the application created its tables?
                reason, error = "source_schema_missing", exc
            except Exception as exc:
                found = retry_reason(exc)
                if found is None:
                    raise
                reason, error = found, exc
            attempt += 1
            delay = self._backoff.delay(attempt)
            self.metrics.record_retry(reason, f"{what}: {describe_error(error)}")
            hint = connection_hint(error)
            log.warning("%s failed (%s: %s); retrying in %.1fs%s", what, reason, describe_error(error), delay,
                        f"; {hint}" if hint else "",
                        extra={"reason": reason})
            if self._stop.wait(delay):
                raise Abandoned(what)

    def _open_writer(self) -> Any:
        """The committer's connection: holds the per-client advisory lock for its lifetime."""
        conn = self._setup_conn = self._writer = pg.connect(self.settings, "writer")
        try:
            self.locks.acquire(conn)
            with pg.schema_lock(conn):
                deadletters.ensure_table(conn)
                self.crash_guard.ensure_table(conn)
                conn.commit()
        except pg.NOT_PERMITTED as exc:
            conn.close()
            raise pg.privilege_problem(exc) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def claim(self) -> None:
        """Take the client's lock now, before :meth:`run` (which then keeps it): with
        standby off, a second instance is refused (:class:`AlreadyRunning`) before it binds
        its metrics port or changes anything. Waits for PostgreSQL like :meth:`run`;
        raises :class:`Abandoned` if stopped meanwhile."""
        if self._claimed is None:
            self._claimed = self._retry_forever("connecting to PostgreSQL", self._open_writer)

    def _warn_vanished(self, start_tid: int) -> None:
        """None of the routed indices existed, yet progress says they were filled: they were
        deleted (or this is another cluster). Following on from the saved progress would
        index only what changes from now on, so say so, loudly, with the way back."""
        self.metrics.set_indices_vanished(True)
        log.error(
            "none of the indices %s existed at start, although client id %r has indexed up to %s: "
            "the documents written before were lost (indices deleted, or another Elasticsearch). Only "
            "changes from now on will be indexed. Rebuild the rest with `esindexer verify --repair` "
            "(writes every missing document) or build a new generation with `esindexer reindex`",
            ", ".join(self.sink.indices), self.settings.worker_id,
            tid_to_datetime(start_tid).isoformat(timespec="seconds"),
            extra={"indices": list(self.sink.indices), "progress_tid": start_tid})

    def _prepare_source(self, conn: Any) -> bool:
        """Install triggers if allowed. Returns True when a sweep is due.

        A sweep is due when the deletion trigger was missing at start: packs may have
        run unseen before now (or, without the right to install it, at any time).
        """
        with pg.schema_lock(conn):  # processes starting at once must not race on CREATE
            had_trigger = deletions.capture_installed(conn)
            conn.rollback()
            if self.settings.install_triggers:
                notify.install_trigger(conn)
                conn.commit()
                deletions.install(conn)
            else:
                deletions.ensure_tables(conn)
        # A worker id without progress starts where the clients that covered its objects got to
        # (scaling out to partitions, or back to one process): esindexer.source.partitions.
        partitions.seed(conn, self.settings.client_id, self.settings.worker_id)
        deletions.start_cursor_at_end(conn, self.settings.worker_id)
        conn.commit()
        mode = self.settings.sweep_on_start
        return mode == "always" or (mode == "auto" and not had_trigger)

    # -- main loop -----------------------------------------------------------------------

    def run(self, until_caught_up: bool = False) -> ExitCode:
        """Index until stopped (or, with ``until_caught_up``, until the current end)."""
        try:
            return self._run(until_caught_up)
        finally:  # any Python-level exit: not a crash (esindexer.pipeline.crashguard)
            self.crash_guard.finish()

    def _run(self, until_caught_up: bool) -> ExitCode:
        s = self.settings
        log.info("esindexer starting", extra={"config": s.redacted()})
        try:
            first = True
            while not self.stopping:
                try:
                    done = self._run_pipeline(until_caught_up, first)
                    first = False
                    if done:
                        break
                except pg.CONNECTION_ERRORS as exc:
                    if self.stopping:
                        break
                    self.metrics.record_retry("pg_connection", describe_error(exc))
                    log.warning("PostgreSQL connection lost (%s); resuming from saved progress",
                                str(exc).strip()[:300])
                    if self._stop.wait(min(2.0, s.retry_max_seconds)):
                        break
        except Abandoned as exc:  # says what it was doing: standing by, waiting for a server...
            log.info("stopped while %s", exc)
        except AlreadyRunning as exc:
            log.error("%s", exc)
            return ExitCode.LOCKED
        except ErrorBudgetExhausted as exc:
            self.metrics.set_error_budget_exhausted(True)
            log.critical("%s", exc)
            return ExitCode.ERROR_BUDGET
        except Exception as exc:  # a wrong password, a missing privilege, an unverifiable certificate
            problem = as_setup_error(exc)
            if problem is None:
                raise
            log.error("%s", problem)
            return ExitCode.SETUP
        log.info("esindexer stopped")
        return self.exit_code

    def _run_pipeline(self, until_caught_up: bool, first: bool) -> bool:
        """One life of the pipeline, from the saved progress. True when finished for good."""
        s = self.settings
        conn, self._claimed = self._claimed, None
        if conn is None:
            conn = self._retry_forever("connecting to PostgreSQL", self._open_writer)
        committer: Committer | None = None
        reader: BatchReader | None = None
        refresher: Refresher | None = None
        try:
            missing: tuple[str, ...] = ()
            if first:  # only once the lock is ours: a refused second instance changes nothing
                missing = self._retry_forever("looking for the indices", self.sink.missing_indices)
                self._retry_forever("creating index template and indices", self.sink.ensure_indices)
            # A database without RelStorage's tables is waited for, loudly: in a compose stack
            # the application may create them after esindexer starts; otherwise the DSN is wrong.
            self._retry_forever("waiting for RelStorage's tables", lambda: pg.require_relstorage(conn))
            sweep_due = self._prepare_source(conn)
            if first and sweep_due:  # a 503 while shards start (another partition creating the index): retried
                self._retry_forever("sweeping documents of deleted objects", lambda: sweep(conn, self.sink, self.metrics),
                                    reconnect=True)
            start_tid = progress.get_progress_tid(conn, s.worker_id)
            conn.commit()
            if start_tid > 0 and missing and len(missing) == len(self.sink.indices):
                self._warn_vanished(start_tid)
            self.crash_guard.begin(conn, start_tid)
            if first:  # after a reconnect, keep the time of the last real progress (stall detection)
                self.metrics.record_progress(start_tid)
            self.metrics.set_dead_letters(deadletters.count(conn, s.worker_id))
            conn.rollback()
            if s.live_refresh_interval > 0 and not until_caught_up:  # a backfill never refreshes
                refresher = Refresher(self.sink, s.live_refresh_interval, self.metrics)
                refresher.start()
            committer = Committer(conn, settings=s, sink=self.sink, builder=self.builder, metrics=self.metrics,
                                  budget=self.budget, abandon=self._abandon, progress_tid=start_tid,
                                  refresher=refresher)
            end_tid = None
            if until_caught_up:
                end_tid = follow.latest_tid(conn)
                conn.rollback()
                if end_tid <= start_tid:
                    committer.drain_deletions(all_settled=True)  # nothing read, nothing in flight
                    self.caught_up = True
                    return True
            log.info("following from tid %d%s", start_tid,
                     f" to {end_tid}" if end_tid is not None else "", extra={"tid": start_tid})
            self._setup_conn = None  # the committer's now: a first stop no longer cancels its statements
            if self.stopping:
                return True
            committer.start()
            reader = BatchReader(s, self.jsonifier, self.builder, self.sink, self.metrics,
                                 abandon=self._abandon, stopping=lambda: self.stopping, guard=self.crash_guard)
            put_tid = start_tid  # the last tid handed to the committer

            def on_idle() -> None:
                nonlocal put_tid
                committer.drain_when_idle()
                passed = updates.passed_tid  # a partition: also past commits without its objects
                if passed is not None and passed > put_tid:
                    committer.put(BatchInFlight(last_tid=passed, live=True))
                    put_tid = passed

            updates = self._updates = follow.updates(
                pg.dsn(s, "follower"), start_tid=start_tid, end_tid=end_tid, batch_limit=s.batch_limit,
                internal_batch_size=s.fetch_size, poll_timeout=s.poll_timeout,
                poll_interval=s.poll_interval, on_idle=on_idle, partition=s.partition_spec,
            )
            committer.watch(updates)
            if self.stopping:
                updates.stop()
            try:
                for rows in updates:
                    batch = reader.read(rows, committer.raise_failure)
                    if batch is None:  # stopped part-way: this batch must not count as done
                        break
                    batch.live = updates.caught_up
                    if batch.rows:
                        committer.put(batch)
                        put_tid = batch.last_tid
                    committer.raise_failure()
            except pg.CANCELLED:
                if not self.stopping:
                    raise  # a statement_timeout: handled like a lost connection
                log.info("cancelled the follower's read to stop")
            finished = not self.stopping
            if finished and end_tid is not None and end_tid > put_tid:
                committer.put(BatchInFlight(last_tid=end_tid))  # a partition read all its rows up to end_tid
            committer.finish(timeout=None if finished else s.shutdown_timeout)
            if not finished:
                # Requests of a batch cut short by the stop are not waited for: their batch
                # will not count as done, and the sink may be the reason we stop.
                self._abandon.set()
            committer.raise_failure()
            if finished and until_caught_up:
                committer.drain_deletions(all_settled=True)  # the reader is done, every batch settled
                self.caught_up = True
            return finished or self.stopping
        finally:
            self._updates = None
            self._setup_conn = self._writer = None
            if committer is not None:
                committer.close()
            if reader is not None:
                reader.close()
            if refresher is not None:
                refresher.close()
            try:
                conn.close()
            except Exception:
                pass
