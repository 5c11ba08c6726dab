"""The service: follow → convert → bulk → progress, with flow control and shutdown.

Three threads share the work, data flowing one way:

- the **reader** (the thread that calls :meth:`Indexer.run`) follows batches of
  committed rows, converts each record and cuts the actions into bulk requests,
  which it hands to a small pool of **senders**; a semaphore bounds the requests
  in flight, so memory stays flat however far behind the service is;
- the **committer** takes batches strictly in order, waits until every bulk of a
  batch is settled (written, or dead-lettered), then writes the batch's dead
  letters and its last tid as progress in one PostgreSQL transaction. Progress
  therefore only ever moves to a transaction boundary whose writes Elasticsearch
  acknowledged. Between batches, and every few seconds when idle, it also
  applies deletions captured from packs (:mod:`esindexer.deletions`).

Failures: Elasticsearch trouble is retried inside the senders (progress freezes
meanwhile); a lost PostgreSQL connection tears the pipeline down and restarts it
from the saved progress (replays are harmless: writes are versioned by tid).
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from esindexer import deadletters, deletions, follow
from esindexer.config import Settings, class_filter, load_dotted
from esindexer.deadletters import DeadLetter
from esindexer.documents import Action, DocumentBuilder, ensure_indices
from esindexer.errors import as_setup_error, describe_error
from esindexer.jsonpickle import Jsonifier
from esindexer.metrics import Metrics
from esindexer.sink import Abandoned, BulkBuffer, BulkResult, BulkSender, retry_reason

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_SETUP = 2  # like a configuration error: the setup the settings require is missing
EXIT_ERROR_BUDGET = 3
EXIT_LOCKED = 4

_PG_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
_LOCK_CLASS = 0x65730001  # advisory lock namespace: "es" + 1


class ErrorBudgetExhausted(RuntimeError):
    pass


class AlreadyRunning(RuntimeError):
    pass


@dataclass
class _Drain:
    """A marker in the committer's queue: apply all pending deletions, then set ``done``."""

    done: threading.Event


@dataclass
class _Batch:
    """One follow batch on its way to progress."""

    last_tid: int
    rows: int = 0
    futures: list[Future] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def make_es_client(settings: Settings) -> Any:
    """An Elasticsearch client as configured; its own retries are off (the sink retries)."""
    from elasticsearch import Elasticsearch

    kwargs: dict[str, Any] = dict(
        hosts=list(settings.es_url),
        request_timeout=settings.es_request_timeout,
        max_retries=0,
        retry_on_timeout=False,
        verify_certs=settings.es_verify_certs,
    )
    if settings.es_ca_file:
        kwargs["ca_certs"] = settings.es_ca_file
    if settings.es_api_key:
        kwargs["api_key"] = settings.es_api_key
    elif settings.es_username:
        kwargs["basic_auth"] = (settings.es_username, settings.es_password)
    return Elasticsearch(**kwargs)


def pg_dsn(settings: Settings, role: str) -> str:
    """The configured DSN with a connect timeout, keepalives (so outages are noticed) and an
    ``application_name`` naming esindexer, the client id and the connection's role, so an
    operator finds each connection in ``pg_stat_activity``. A name set in the DSN wins."""
    from psycopg2.extensions import make_dsn, parse_dsn

    extra: dict[str, Any] = dict(connect_timeout=10, keepalives=1, keepalives_idle=30,
                                 keepalives_interval=10, keepalives_count=3)
    given = parse_dsn(settings.pg_dsn)
    if "application_name" not in given:
        extra["application_name"] = f"esindexer {role} ({settings.client_id})"[:63]
    return make_dsn(settings.pg_dsn, **{k: v for k, v in extra.items() if k not in given})


def connect_pg(settings: Settings, role: str = "writer") -> Any:
    """A psycopg2 connection made from :func:`pg_dsn`."""
    return psycopg2.connect(pg_dsn(settings, role))


def build_jsonifier(settings: Settings) -> Jsonifier:
    transform = load_dotted(settings.transform) if settings.transform else None
    return Jsonifier(skip_class=class_filter(settings), transform=transform,
                     prescan=not settings.trusted_pickles)


class Indexer:
    """Keeps the configured Elasticsearch indices equal to the database's current objects."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None, es: Any = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.es = es if es is not None else make_es_client(settings)
        self.builder = DocumentBuilder(settings)
        self.jsonifier = build_jsonifier(settings)
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._updates: Any = None
        self._failure: BaseException | None = None
        self._dead_times: collections.deque[float] = collections.deque()
        self.sender = BulkSender(
            self.es, retry_max_seconds=settings.retry_max_seconds, retry_attempts=settings.retry_attempts,
            stop=self._abandon, on_retry=lambda reason, exc: self.metrics.record_retry(reason, describe_error(exc)),
            on_request=self.metrics.record_bulk,
        )
        self.exit_code = EXIT_OK

    # -- control -------------------------------------------------------------------------

    def stop(self, abandon: bool = False) -> None:
        """Ask the service to stop; safe from signal handlers and other threads.

        The reader stops taking rows; in-flight bulks may finish within
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

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_stopped(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` s, waking early when a stop is requested."""
        return self._stop.wait(timeout)

    # -- setup ---------------------------------------------------------------------------

    def _retry_forever(self, what: str, fn: Any) -> Any:
        """Run ``fn`` until it works or the service stops, backing off on connection errors."""
        delay = 0.5
        while True:
            try:
                return fn()
            except _PG_ERRORS as exc:
                reason = "pg_unreachable"
                error = exc
            except follow.SchemaError as exc:  # started before the application created its tables?
                reason = "source_schema_missing"
                error = exc
            except Exception as exc:
                reason = retry_reason(exc)
                if reason is None:
                    raise
                error = exc
            self.metrics.record_retry(reason, f"{what}: {describe_error(error)}")
            log.warning("%s failed (%s: %s); retrying in %.1fs", what, reason, describe_error(error), delay,
                        extra={"reason": reason})
            if self._stop.wait(delay):
                raise Abandoned(what)
            delay = min(delay * 2, self.settings.retry_max_seconds)

    def _open_writer(self) -> Any:
        """The committer's connection: holds the per-client advisory lock for its lifetime."""
        conn = connect_pg(self.settings)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_LOCK_CLASS, self.settings.client_id))
            locked = cur.fetchone()[0]
        conn.commit()
        if not locked:
            conn.close()
            raise AlreadyRunning(
                f"another esindexer with client id {self.settings.client_id!r} is running against this "
                "database; give each indexer its own ESINDEXER_CLIENT_ID")
        deadletters.ensure_table(conn)
        conn.commit()
        return conn

    def _prepare_source(self, conn: Any) -> bool:
        """Install triggers if allowed. Returns True when a sweep is due.

        A sweep is due when the deletion trigger was missing at start: packs may have
        run unseen before now (or, without the right to install it, at any time).
        """
        had_trigger = deletions.trigger_installed(conn)
        conn.rollback()
        if self.settings.install_triggers:
            follow.install_trigger(conn)
            conn.commit()
            deletions.install(conn)
        else:
            deletions.ensure_tables(conn)
        deletions.start_cursor_at_end(conn, self.settings.client_id)
        conn.commit()
        mode = self.settings.sweep_on_start
        return mode == "always" or (mode == "auto" and not had_trigger)

    def sweep(self, conn: Any) -> int:
        """Delete documents of objects no longer in the database. Returns how many."""
        removed = 0
        for page in deletions.indexed_zoids(self.es, self.builder.indices):
            gone = set(deletions.missing_zoids(conn, sorted({zoid for _, zoid, _ in page})))
            actions = [Action("delete", index, zoid, tid, tid + 1) for index, zoid, tid in page if zoid in gone]
            if actions:
                result = self.sender.send(actions)
                removed += result.done_total
                self.metrics.record_documents("delete", "ok", result.done_total)
        log.info("sweep removed %d document(s) of objects gone from the database", removed,
                 extra={"removed": removed})
        return removed

    # -- main loop -----------------------------------------------------------------------

    def run(self, until_caught_up: bool = False) -> int:
        """Index until stopped (or, with ``until_caught_up``, until the current end). Returns an exit code."""
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
                except _PG_ERRORS as exc:
                    if self.stopping:
                        break
                    self.metrics.record_retry("pg_connection", describe_error(exc))
                    log.warning("PostgreSQL connection lost (%s); resuming from saved progress",
                                str(exc).strip()[:300])
                    if self._stop.wait(min(2.0, s.retry_max_seconds)):
                        break
        except Abandoned:
            log.info("abandoned work in progress on shutdown")
        except AlreadyRunning as exc:
            log.error("%s", exc)
            return EXIT_LOCKED
        except ErrorBudgetExhausted as exc:
            self.metrics.set_error_budget_exhausted(True)
            log.critical("%s", exc)
            return EXIT_ERROR_BUDGET
        except Exception as exc:  # a wrong password, a missing privilege, an unverifiable certificate
            problem = as_setup_error(exc)
            if problem is None:
                raise
            log.error("%s", problem)
            return EXIT_SETUP
        log.info("esindexer stopped")
        return self.exit_code

    def _run_pipeline(self, until_caught_up: bool, first: bool) -> bool:
        """One life of the pipeline, from the saved progress. True when finished for good."""
        s = self.settings
        conn = self._retry_forever("connecting to PostgreSQL", lambda: self._open_writer())
        if first:  # only once the lock is ours: a refused second instance changes nothing
            try:
                self._retry_forever("creating index template and indices", lambda: ensure_indices(self.es, s))
            except BaseException:
                conn.close()
                raise
        committer: _Committer | None = None
        pool = ThreadPoolExecutor(max_workers=s.bulk_concurrency, thread_name_prefix="esindexer-bulk")
        in_flight = threading.BoundedSemaphore(s.bulk_concurrency)
        try:
            # A database without RelStorage's tables is waited for, loudly: in a compose stack
            # the application may create them after esindexer starts; otherwise the DSN is wrong.
            self._retry_forever("waiting for RelStorage's tables", lambda: _has_relstorage_tables(conn))
            sweep_due = self._prepare_source(conn)
            if first and sweep_due:
                self.sweep(conn)
            start_tid = follow.get_progress_tid(conn, s.client_id)
            conn.commit()
            if first:  # after a reconnect, keep the time of the last real progress (stall detection)
                self.metrics.record_progress(start_tid)
            self.metrics.set_dead_letters(deadletters.count(conn, s.client_id))
            conn.rollback()
            end_tid = None
            if until_caught_up:
                end_tid = follow.latest_tid(conn)
                conn.rollback()
                if end_tid <= start_tid:
                    committer = _Committer(self, conn)
                    committer.drain_deletions(all_settled=True)  # nothing read, nothing in flight
                    return True
            log.info("following from tid %d%s", start_tid,
                     f" to {end_tid}" if end_tid is not None else "", extra={"tid": start_tid})
            committer = _Committer(self, conn)
            committer.progress_tid = start_tid
            committer.start()
            self._updates = follow.updates(
                pg_dsn(s, "follower"), start_tid=start_tid, end_tid=end_tid, batch_limit=s.batch_limit,
                internal_batch_size=s.fetch_size, poll_timeout=s.poll_timeout,
                poll_interval=s.poll_interval, on_idle=committer.drain_when_idle,
            )
            committer.watch(self._updates)
            if self.stopping:
                self._updates.stop()
            for rows in self._updates:
                batch = self._read_batch(rows, pool, in_flight, committer)
                if batch is None:  # stopped part-way: this batch must not count as done
                    break
                if batch.rows:
                    committer.put(batch)
                committer.raise_failure()
            finished = not self.stopping
            committer.finish(timeout=None if finished else s.shutdown_timeout)
            if not finished:
                # Bulks of a batch cut short by the stop are not waited for: their batch
                # will not count as done, and Elasticsearch may be the reason we stop.
                self._abandon.set()
            committer.raise_failure()
            if finished and until_caught_up:
                committer.drain_deletions(all_settled=True)  # the reader is done, every batch settled
            return finished or self.stopping
        finally:
            self._updates = None
            if committer is not None:
                committer.close()
            pool.shutdown(wait=not self._abandon.is_set(), cancel_futures=True)
            try:
                conn.close()
            except Exception:
                pass

    def _read_batch(self, rows: Any, pool: ThreadPoolExecutor, in_flight: threading.BoundedSemaphore,
                    committer: "_Committer") -> _Batch | None:
        s = self.settings
        batch = _Batch(last_tid=-1)
        buffer = BulkBuffer(s.bulk_max_docs, s.bulk_max_bytes)
        convert = self.jsonifier.convert
        builder = self.builder

        def submit() -> None:
            while not in_flight.acquire(timeout=0.5):
                committer.raise_failure()
                if self._abandon.is_set():
                    raise Abandoned("shutdown while waiting for a bulk slot")
            future = pool.submit(self._send, buffer.take())
            future.add_done_callback(lambda _f: in_flight.release())
            batch.futures.append(future)

        for tid, zoid, data in rows:
            conversion = convert((tid, zoid), data)
            kind = conversion.kind
            full = False
            if kind == "ok":
                full = buffer.add(builder.index_action(tid, zoid, conversion.class_name, conversion.json_text))
            elif kind == "error":
                batch.dead.append(DeadLetter(zoid, tid, "unconvertible", conversion.error or "conversion failed",
                                             class_name=conversion.class_name, record=bytes(data or b"")))
                self.metrics.record_documents("index", "error")
            else:  # deleted, skipped (class filter or transform): the document must go
                if kind == "skipped":
                    self.metrics.record_documents("index", "skipped")
                for action in builder.delete_actions(tid, zoid):
                    full = buffer.add(action) or full
            batch.rows += 1
            batch.last_tid = tid
            if full:
                submit()
                if self.stopping:
                    return None
        if buffer:
            submit()
        return batch

    def _send(self, actions: list[Action]) -> BulkResult:
        result = self.sender.send(actions)
        for op, count in result.done.items():
            self.metrics.record_documents(op, "ok", count)
        return result

    # -- accounting used by the committer -----------------------------------------------

    def note_dead_letters(self, count: int) -> None:
        """Count dead letters in the budget window; raise when the budget is exhausted."""
        budget = self.settings.dead_letter_budget
        if not count or budget <= 0:
            return
        now = time.monotonic()
        self._dead_times.extend([now] * count)
        window_start = now - self.settings.dead_letter_window
        while self._dead_times and self._dead_times[0] < window_start:
            self._dead_times.popleft()
        if len(self._dead_times) > budget:
            raise ErrorBudgetExhausted(
                f"error budget exhausted: {len(self._dead_times)} dead letters within "
                f"{self.settings.dead_letter_window:g}s (budget {budget}); stopping instead of dropping "
                f"everything. Inspect {deadletters.TABLE} (client_id={self.settings.client_id!r}), fix the "
                "cause, then restart.")


class _Committer:
    """Settles batches in order and moves progress; owns the writer connection."""

    def __init__(self, indexer: Indexer, conn: Any):
        self.indexer = indexer
        self.conn = conn
        self.settings = indexer.settings
        self.metrics = indexer.metrics
        self._queue: queue.Queue[_Batch | _Drain | None] = queue.Queue(maxsize=4)
        #: the last tid whose batch is settled (set by the pipeline before start()).
        self.progress_tid = -1
        #: a captured deletion waits for progress or for the reader's next idle moment.
        self.deletions_waiting = False
        self._thread = threading.Thread(target=self._run, name="esindexer-committer", daemon=True)
        self._failure: BaseException | None = None
        self._updates: Any = None  # the follow iteration to wake on failure (watch())
        self._closed = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def put(self, batch: _Batch | _Drain) -> None:
        while True:
            self.raise_failure()
            try:
                self._queue.put(batch, timeout=0.5)
                return
            except queue.Full:
                continue

    def watch(self, updates: Any) -> None:
        """The follow iteration to end early if this committer fails (see :meth:`_run`)."""
        self._updates = updates
        if self._failure is not None:  # failed already, before there was anything to wake
            updates.stop()

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def finish(self, timeout: float | None) -> None:
        """Let queued batches settle (up to ``timeout`` s), then stop the thread."""
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("in-flight bulks did not finish within %.0fs; abandoning them (progress stays at the "
                        "last acknowledged batch)", timeout or 0)
            self.indexer._abandon.set()
            self._closed.set()
            self._thread.join(10)

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(10)

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                try:
                    batch = self._queue.get(timeout=self.settings.lag_poll_interval)
                except queue.Empty:
                    self.drain_deletions()
                    continue
                if batch is None:
                    return
                if isinstance(batch, _Drain):  # every earlier batch is settled: all may go
                    self.deletions_waiting = False
                    self.drain_deletions(all_settled=True)
                    batch.done.set()
                    continue
                self._settle(batch)
                self.drain_deletions()
        except BaseException as exc:  # handed to the reader thread
            self._failure = exc
            # The reader may be waiting for the next commit, which can be hours away in a
            # quiet database: wake it so the failure is seen now (not a silent stall).
            # Only this pipeline's iteration: a late failure of an old committer must not
            # end a newer one.
            updates = self._updates
            if updates is not None:
                updates.stop()

    def _settle(self, batch: _Batch) -> None:
        dead = list(batch.dead)
        for future in batch.futures:
            result: BulkResult = future.result()  # Abandoned propagates: no progress for this batch
            for rejected in result.rejected:
                action = rejected.action
                dead.append(DeadLetter(action.zoid, action.tid, "rejected", rejected.reason,
                                       class_name=action.class_name, index_name=action.index,
                                       document=action.source))
                self.metrics.record_documents(action.op, "dead_lettered")
                log.warning("Elasticsearch rejected %s of zoid %d: %s", action.op, action.zoid, rejected.reason,
                            extra={"zoid": action.zoid, "tid": action.tid, "index": action.index})
        s = self.settings
        deadletters.add(self.conn, s.client_id, dead)
        follow.set_progress_tid(self.conn, s.client_id, batch.last_tid)
        self.conn.commit()
        self.progress_tid = batch.last_tid
        self.metrics.record_progress(batch.last_tid)
        self.metrics.record_batch(batch.rows)
        if dead:
            self.metrics.set_dead_letters(deadletters.count(self.conn, s.client_id))
            self.conn.rollback()
        log.debug("progress saved", extra={"tid": batch.last_tid, "rows": batch.rows, "dead": len(dead)})
        self.indexer.note_dead_letters(len(dead))

    def drain_deletions(self, all_settled: bool = False) -> int:
        """Apply captured pack deletions; returns how many documents were deleted.

        A deletion of an object whose last state has tid T is sent only when no write of
        that object can still be unsettled: when progress has reached T (everything read
        up to T is acknowledged, and later reads cannot return the object: it is gone),
        or with ``all_settled`` (the reader is idle and every batch it read is settled;
        see :meth:`drain_when_idle`). So the delete is always the object's last write to
        reach Elasticsearch, and nothing rests on its tombstone, which does not survive
        an Elasticsearch crash. The log is read in cursor order and stops at the first
        deletion that must wait; :attr:`deletions_waiting` then asks the reader to drain
        at its next idle moment (a quiet database may never move progress to T).
        """
        s = self.settings
        total = 0
        while True:
            items = deletions.pending(self.conn, s.client_id)
            self.conn.rollback()
            ready = items if all_settled else list(itertools.takewhile(
                lambda item: item[3] <= self.progress_tid, items))
            if len(ready) < len(items) and not self.deletions_waiting:
                self.deletions_waiting = True
                updates = self._updates
                if updates is not None:
                    updates.wake()
            if not ready:
                return total
            actions: list[Action] = []
            for _xid, _id, zoid, tid in ready:
                actions.extend(self.indexer.builder.delete_actions(tid, zoid, version=tid + 1))
            result = self.indexer.sender.send(actions)
            for rejected in result.rejected:  # a delete is only refused when the index is broken
                log.error("delete of packed zoid %d refused: %s", rejected.action.zoid, rejected.reason)
            last_xid, last_id = ready[-1][0], ready[-1][1]
            deletions.advance(self.conn, s.client_id, last_xid, last_id)
            self.conn.commit()
            deletions.prune(self.conn)
            self.metrics.record_documents("delete", "ok", len(ready))
            total += len(ready)
            log.info("applied %d pack deletion(s)", len(ready), extra={"count": len(ready)})
            if len(ready) < len(items):
                return total

    def drain_when_idle(self) -> None:
        """Called by the reader when it has read everything and is about to wait: settle
        every batch queued so far, then apply every pending deletion, before the reader
        reads again. Does nothing unless a deletion was found waiting for progress."""
        if not self.deletions_waiting or not self._thread.is_alive():
            return
        done = threading.Event()
        self.put(_Drain(done))
        while not done.wait(0.5):
            self.raise_failure()
            if self.indexer._abandon.is_set():
                raise Abandoned("shutdown while applying pack deletions")
        self.raise_failure()


def _has_relstorage_tables(conn: Any) -> None:
    """Raise :class:`follow.SchemaError` unless ``conn``'s database has RelStorage's tables."""
    try:
        follow.latest_tid(conn)
    finally:
        conn.rollback()
