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

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from esindexer.backoff import Backoff
from esindexer.config import Settings
from esindexer.convert.configure import build_jsonifier
from esindexer.documents import DocumentBuilder
from esindexer.errors import Abandoned, AlreadyRunning, ErrorBudgetExhausted, ExitCode
from esindexer.es.client import as_setup_error, describe_error
from esindexer.es.sink import ElasticsearchSink
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.budget import ErrorBudget
from esindexer.pipeline.committer import BatchInFlight, Committer
from esindexer.pipeline.crashguard import CrashGuard
from esindexer.pipeline.lease import LeaseKeeper, Liveness
from esindexer.pipeline.objectreader import ObjectBatchReader, open_reader
from esindexer.pipeline.reader import BatchReader
from esindexer.pipeline.retry import retry_forever
from esindexer.pipeline.rewind import Resync, check
from esindexer.pipeline.sidecars import Sidecars
from esindexer.pipeline.signals import AbandonLater, Cancels
from esindexer.pipeline.standby import LockKeeper
from esindexer.pipeline.startup import prepare_source, warn_vanished
from esindexer.pipeline.sweep import sweep
from esindexer.sink import Sink
from esindexer.source import deadletters, follow, lease, pg, progress
from esindexer.source.lease import LostLease

log = logging.getLogger(__name__)

T = TypeVar("T")


class Indexer:
    """Keeps the configured indices equal to the database's current objects."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None, sink: Sink | None = None,
                 repair: Callable[[], bool] | None = None):
        """``repair``: one compare-and-repair walk after the database went back in time,
        True when it removed the mark (:mod:`esindexer.ops.restored`; the command line
        passes it, the pipeline may not import the operator commands)."""
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._abandon_later = AbandonLater(self._abandon, settings.shutdown_timeout + 1)  # a first stop's bound
        self.sink: Sink = sink if sink is not None else ElasticsearchSink(
            settings, stop=self._abandon,
            on_retry=self._on_sink_retry, on_request=self._on_sink_request)
        self.builder = DocumentBuilder(settings)
        self.jsonifier = build_jsonifier(settings)
        self.budget = ErrorBudget(settings.dead_letter_budget, settings.dead_letter_window, settings.worker_id)
        self.crash_guard = CrashGuard(settings, self.metrics, connect=lambda: pg.connect(settings, "crash guard"),
                                      cancel=self._abandon)
        self._updates: follow.Updates | None = None
        self.locks = LockKeeper(settings, self.metrics, self._stop)
        self.liveness = Liveness()
        #: ``(epoch, lock session's backend pid)`` of the lease this process holds (None: no
        #: lease tables, and no privilege to create them)
        self._lease: tuple[int, int] | None = None
        self._lease_lost: LostLease | None = None  # why the last pipeline's lease keeper gave the lease up
        self._claimed: Any = None  # the writer connection, when claim() took the lock ahead of run()
        self._cancels = Cancels()  # what a stop cancels: the writer while it sets up, the follower...
        self._backoff = Backoff(first=0.5, maximum=settings.retry_max_seconds)
        # With partitions, one process of the set walks (partition 0); the others watch the mark.
        spec = settings.partition_spec
        self._repair_mode = "off" if settings.repair_after_restore == "off" else \
            "partition" if spec is not None and spec[0] != 0 else "library" if repair is None else "auto"
        self.resync = Resync(settings, self.sink, self.metrics, repair if self._repair_mode == "auto" else None,
                             self._repair_mode)
        self.exit_code = ExitCode.OK
        #: With ``until_caught_up``: True once everything committed at start is indexed. A stop before
        #: that leaves it False: the command exits non-zero (a script tells "done" from "interrupted").
        self.caught_up = False

    def _on_sink_retry(self, reason: str, exc: BaseException) -> None:
        self.liveness.beat()
        self.metrics.record_retry(reason, describe_error(exc))

    def _on_sink_request(self, outcome: str, seconds: float) -> None:
        self.liveness.beat()
        self.metrics.record_bulk(outcome, seconds)

    # -- control -------------------------------------------------------------------------

    def stop(self, abandon: bool = False) -> None:
        """Ask the service to stop; safe from signal handlers and other threads.

        The reader stops taking rows; in-flight requests may finish within
        ``shutdown_timeout`` (or at once with ``abandon``; any wait for a server one second
        later: :class:`AbandonLater`); progress never moves past unacknowledged work."""
        self._stop.set()
        self.resync.stop()
        if abandon:
            self._abandon.set()
        self._abandon_later.start()
        self._wake_reader()

    def _wake_reader(self) -> None:
        """End the follow iteration now (it may be waiting for a commit): on a stop, or when
        the lease is lost. Safe from signal handlers and other threads."""
        updates = self._updates
        if updates is not None:
            try:
                updates.stop()
            except Exception:  # pragma: no cover - best effort from another thread
                pass

    def interrupt(self, abandon: bool = False) -> None:
        """After :meth:`stop`: cancel the PostgreSQL statements the stop would wait for
        (:class:`esindexer.pipeline.signals.Cancels`); called from the signal thread, repeatedly."""
        if self.stopping:
            self._cancels.cancel(self._updates, abandon)

    def cancellable(self, conn: Any) -> AbstractContextManager[Any]:
        """For the block, :meth:`interrupt` also cancels ``conn``'s statements (a connection
        of the main thread outside the pipeline, such as the backlog estimate's)."""
        return self._cancels.cancellable(conn)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_stopped(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` s, waking early when a stop is requested."""
        return self._stop.wait(timeout)

    # -- setup ---------------------------------------------------------------------------

    def _retry_forever(self, what: str, fn: Callable[[], T], *, reconnect: bool = False) -> T:
        """:func:`esindexer.pipeline.retry.retry_forever` with this indexer's stop and back-off."""
        return retry_forever(what, fn, stop=self._stop, backoff=self._backoff, metrics=self.metrics,
                             reconnect=reconnect)

    def _open_writer(self) -> Any:
        """The committer's connection: holds the per-client advisory lock for its lifetime."""
        conn = self._cancels.setup = self._cancels.writer = pg.connect(self.settings, "writer")
        try:
            self._lease = self.locks.take(conn)
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

    def _check_rewind(self, conn: Any, first: bool) -> bool:
        """Find out whether the database went back in time behind the index (at every start
        of the pipeline: a restore drops the connections, so the pipeline restarts); say so
        once per finding, and keep watching until it is repaired (esindexer.pipeline.rewind).
        True when found for the first time (the crash guard's row is then the backup's: a run
        on the restored database would have marked the indices before it)."""
        # A lost connection is not retried here: the pipeline reconnects (reconnect=True).
        mark, evidence, new = self._retry_forever("comparing the newest documents with the database",
                                                  lambda: check(conn, self.sink, self.settings.worker_id),
                                                  reconnect=True)
        self.resync.found(mark, evidence, first)
        self.resync.start()
        return bool(new)

    # -- main loop -----------------------------------------------------------------------

    def run(self, until_caught_up: bool = False) -> ExitCode:
        """Index until stopped (or, with ``until_caught_up``, until the current end)."""
        try:
            return self._run(until_caught_up)
        finally:  # any Python-level exit: not a crash (esindexer.pipeline.crashguard)
            self._abandon_later.cancel()
            self.resync.stop()
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
                except (*pg.CONNECTION_ERRORS, LostLease) as exc:
                    if self.stopping:
                        break
                    if self._lost_lease(exc):
                        continue  # to the lock: standing by, or taking it again if nobody else did
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

    def _lost_lease(self, exc: BaseException) -> bool:
        """Whether ``exc`` ended the pipeline because this process lost the client's lease
        (:meth:`LockKeeper.lost`, which says so)."""
        held, self._lease = self._lease, None
        lost, self._lease_lost = self._lease_lost, None
        return held is not None and self.locks.lost(held[0], lost or exc)

    def _run_pipeline(self, until_caught_up: bool, first: bool) -> bool:
        """One life of the pipeline, from the saved progress. True when finished for good."""
        s = self.settings
        conn, self._claimed = self._claimed, None
        if conn is None:
            conn = self._retry_forever("connecting to PostgreSQL", self._open_writer)
        committer: Committer | None = None
        reader: BatchReader | None = None
        sidecars: Sidecars | None = None
        keeper: LeaseKeeper | None = None
        fence: Callable[[Any], None] | None = None
        try:
            if self._lease is not None:
                epoch = self._lease[0]
                keeper = LeaseKeeper(s, epoch, self._lease[1], self.liveness,
                                     connect=lambda: pg.connect(s, "lease"), on_lost=self._wake_reader)
                keeper.start()

                def fence(conn: Any) -> None:  # before any progress or cursor write
                    assert keeper is not None
                    keeper.check()
                    lease.check(conn, s.worker_id, epoch)
            missing: tuple[str, ...] = ()
            if first:  # only once the lock is ours: a refused second instance changes nothing
                missing = self._retry_forever("looking for the indices", self.sink.missing_indices)
                self._retry_forever("creating index template and indices", self.sink.ensure_indices)
            # A database without RelStorage's tables is waited for, loudly: in a compose stack
            # the application may create them after esindexer starts; otherwise the DSN is wrong.
            self._retry_forever("waiting for RelStorage's tables", lambda: pg.require_relstorage(conn))
            sweep_due = prepare_source(conn, self.settings)
            if first and sweep_due:  # a 503 while shards start (another partition creating the index): retried
                self._retry_forever("sweeping documents of deleted objects", lambda: sweep(conn, self.sink, self.metrics),
                                    reconnect=True)
            restored = self._check_rewind(conn, first)
            start_tid = progress.get_progress_tid(conn, s.worker_id)
            conn.commit()
            if start_tid > 0 and missing and len(missing) == len(self.sink.indices):
                warn_vanished(self.settings, self.sink, self.metrics, start_tid)
            self.crash_guard.begin(conn, start_tid, restored=restored)
            if first:  # after a reconnect, keep the time of the last real progress (stall detection)
                self.metrics.record_progress(start_tid)
            self.metrics.set_dead_letters(deadletters.count(conn, s.worker_id))
            conn.rollback()
            sidecars = Sidecars(s, self.sink, self.metrics, until_caught_up)
            sidecars.start()
            committer = Committer(conn, settings=s, sink=self.sink, builder=self.builder, metrics=self.metrics,
                                  budget=self.budget, abandon=self._abandon, progress_tid=start_tid,
                                  refresher=sidecars.refresher, fence=fence, liveness=self.liveness,
                                  stopping=lambda: self.stopping)
            end_tid = None
            if until_caught_up:
                end_tid = follow.latest_tid(conn)
                conn.rollback()
                if end_tid <= start_tid and s.documents != "objects":  # (objects: the graph forgets packed records)
                    # nothing read, nothing in flight: caught up once every known deletion is applied
                    self.caught_up = committer.drain_all_known(lambda: self.stopping)
                    return True
            log.info("following from tid %d%s", start_tid,
                     f" to {end_tid}" if end_tid is not None else "", extra={"tid": start_tid})
            self._cancels.setup = None  # the committer's now: a first stop no longer cancels its statements
            if self.stopping:
                return True
            committer.start()
            if keeper is not None:
                keeper.watch()
            reader = open_reader(s, self.jsonifier, self.builder, self.sink, self.metrics,
                                 abandon=self._abandon, stopping=lambda: self.stopping, guard=self.crash_guard,
                                 liveness=self.liveness, fence=keeper.check if keeper is not None else None)
            if isinstance(reader, ObjectBatchReader):
                committer.objects = reader
                reader.begin(start_tid, end_tid)  # refuses a graph that does not cover start_tid
                self._cancels.others.update(reader.connections)  # a stop cancels the graph's statements too
                self._retry_forever("rewriting object documents left by the last run", reader.recover)
            put_tid = start_tid  # the last tid handed to the committer

            def on_idle() -> None:
                nonlocal put_tid
                committer.drain_when_idle()
                if isinstance(reader, ObjectBatchReader) and (tail := reader.finish(put_tid, committer.raise_failure)):
                    committer.put(tail)  # caught up: a graph still being built is resolved now
                passed = updates.passed_tid  # a partition: also past commits without its objects
                if passed is not None and passed > put_tid and committer.put(BatchInFlight(last_tid=passed, live=True)):
                    put_tid = passed

            updates = self._updates = follow.updates(
                pg.dsn(s, "follower"), start_tid=start_tid, end_tid=end_tid, batch_limit=s.batch_limit,
                internal_batch_size=s.fetch_size, poll_timeout=s.poll_timeout,
                poll_interval=s.poll_interval, on_idle=on_idle, partition=s.partition_spec,
            )
            committer.watch(updates)
            if isinstance(reader, ObjectBatchReader):
                reader.caught_up = lambda: updates.caught_up
            # A stop, or the lease lost, that came before there was an iteration to stop.
            if self.stopping or (keeper is not None and keeper.lost is not None):
                updates.stop()
            try:
                for rows in updates:
                    batch = reader.read(rows, committer.raise_failure)
                    if batch is None:  # stopped part-way: this batch must not count as done
                        break
                    batch.live = updates.caught_up
                    if batch.rows:
                        if not committer.put(batch):
                            break  # a stop while earlier batches wait for Elasticsearch: this one does not count
                        put_tid = batch.last_tid
                    # Not kept while the next commit is awaited: a settled batch holds its
                    # requests' results, which may be a very large document (issue 21).
                    del batch
                    committer.raise_failure()
            except pg.CANCELLED:
                if not self.stopping:
                    raise  # a statement_timeout: handled like a lost connection
                log.info("cancelled the follower's read to stop")
            if keeper is not None:  # the lease keeper ends the iteration when the lease is lost
                keeper.check()
            finished = not self.stopping
            if finished and isinstance(reader, ObjectBatchReader) and (tail := reader.finish(put_tid, committer.raise_failure)):
                committer.put(tail)  # a backfill of objects: the graph resolved, every object written
            if finished and end_tid is not None and end_tid > put_tid:
                committer.put(BatchInFlight(last_tid=end_tid))  # a partition read all its rows up to end_tid
            committer.finish(timeout=None if finished else s.shutdown_timeout)
            finished = finished and not self._abandon.is_set()  # a stop meanwhile may have cut the last batches
            if not finished:
                # Requests of a batch cut short by the stop are not waited for: their batch
                # will not count as done, and the sink may be the reason we stop.
                self._abandon.set()
            committer.raise_failure()
            if finished and until_caught_up:
                # the reader is done, every batch settled: caught up once every known deletion is applied
                self.caught_up = committer.drain_all_known(lambda: self.stopping)
            return finished or self.stopping
        finally:
            self._updates = None
            if keeper is not None:
                keeper.close()
                self._lease_lost = keeper.lost
            self._cancels.setup = self._cancels.writer = None
            if committer is not None:
                committer.close()
            if reader is not None:
                reader.close()
            if sidecars is not None:
                sidecars.close(self.caught_up)
            try:
                conn.close()
            except Exception:
                pass
