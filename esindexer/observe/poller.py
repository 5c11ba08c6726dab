"""The source poller: how far ahead the database is, measured independently.

Why a separate thread on its own connection: the lag must keep growing while the
indexing loop is stuck (in a bulk request that Elasticsearch keeps rejecting, in a
retry back-off, in a hung socket). If the loop itself reported the source's newest tid,
a stalled loop would freeze the lag at its last value and the stall would look like
"caught up" — the silent-stall failure that users of other indexers complain about.

The query, ``SELECT max(tid) FROM object_state``, is answered from the ``tid`` index in
both history-free and history-preserving RelStorage schemas, so it is cheap to run
every few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2.errors

from esindexer.backoff import Backoff
from esindexer.observe.metrics import Metrics
from esindexer.redact import redact
from esindexer.source.pg import cancel_if_busy, privilege_problem, refused_for_good

log = logging.getLogger(__name__)

# Both ends of the tid index: cheap in either history mode.
LATEST_TID_SQL = "SELECT max(tid), min(tid) FROM object_state"


class SourcePoller:
    """Daemon thread that records the source's newest tid in :class:`Metrics`.

    ``connect`` returns a new psycopg2 connection; it should set a ``connect_timeout``
    and TCP keepalives, because a connection that hangs client-side cannot be
    interrupted from here. Each query runs under ``statement_timeout`` seconds.
    """

    def __init__(self, connect: Callable[[], Any], metrics: Metrics, interval: float = 5.0,
                 *, max_backoff: float = 30.0, statement_timeout: float = 10.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._connect = connect
        self._metrics = metrics
        self.interval = interval
        self.max_backoff = max(max_backoff, interval)
        self.statement_timeout = statement_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._oldest: int | None = None
        self._poll_lock = threading.Lock()  # the thread and poll_once() share _conn
        self._failures = 0
        self._outage_started: float | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start polling in a daemon thread (first poll immediately)."""
        if self._thread is not None:
            raise RuntimeError("SourcePoller already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="esindexer-source-poller",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to stop and wait for it (at most one in-flight query)."""
        self._stop.set()
        cancel_if_busy(self._conn)  # a poll waiting for a lock must not delay the exit
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout if timeout is not None else self.statement_timeout + 5.0)

    # -- one poll --------------------------------------------------------------------

    def poll_once(self) -> bool:
        """Query the newest tid once and record the result; return whether it worked.

        Public so the service (or a test) can poll synchronously, e.g. at start-up.
        """
        with self._poll_lock:
            try:
                tid = self._query()
            except Exception as exc:  # any failure means: treat the source as unreachable
                self._close()
                if self._stop.is_set():
                    return False  # cancelled by stop(): not an outage
                self._on_failure(exc)
                return False
            self._metrics.record_source_latest(tid, oldest_tid=self._oldest)
            self._on_success()
            return True

    def _query(self) -> int | None:
        if self._conn is None:
            conn = self._connect()
            # Autocommit: no transaction stays open between polls, so the poller never
            # holds back VACUUM or a snapshot.
            self._conn = conn  # assigned first, so a failure below still closes it
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s",
                            (f"{int(self.statement_timeout * 1000)}ms",))
        with self._conn.cursor() as cur:
            cur.execute(LATEST_TID_SQL)
            row = cur.fetchone()
        if row is None or row[0] is None:
            return None
        self._oldest = int(row[1])
        return int(row[0])

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing more to release
                log.debug("closing the broken poller connection failed", exc_info=True)

    def _on_failure(self, exc: BaseException) -> None:
        refused = refused_for_good(exc)
        if getattr(exc, "pgcode", None) == "42P01":  # undefined_table: reachable, but not RelStorage's
            reason = ("no RelStorage table object_state in this database (not created yet, or "
                      "ESINDEXER_PG_DSN names another database)")
        elif refused is not None:  # the indexer itself exits with code 2, saying so
            reason = redact(str(refused))
        elif isinstance(exc, psycopg2.errors.InsufficientPrivilege):  # reachable, but not permitted
            reason = redact(str(privilege_problem(exc)))
        elif isinstance(exc, psycopg2.errors.QueryCanceled):  # reachable, but too slow (a lock, load)
            reason = (f"PostgreSQL did not answer the lag query within {self.statement_timeout:g}s "
                      "(statement_timeout): a lock on object_state, or an overloaded server")
        else:
            reason = f"PostgreSQL unreachable: {type(exc).__name__}: {redact(' '.join(str(exc).split()))}"
        self._metrics.record_source_unreachable(reason)
        self._failures += 1
        if self._outage_started is None and refused is None:
            # One warning per outage; the attempts that follow are only debug noise.
            self._outage_started = time.monotonic()
            log.warning("source poll failed, retrying with back-off: %s", reason,
                        extra={"error": reason})
        else:
            log.debug("source poll still failing", extra={"attempt": self._failures})

    def _on_success(self) -> None:
        if self._outage_started is not None:
            log.info("source poll recovered",
                     extra={"outage_seconds": round(time.monotonic() - self._outage_started, 3),
                            "attempts": self._failures})
        self._outage_started = None
        self._failures = 0

    def _next_delay(self) -> float:
        """Interval while healthy; capped exponential back-off with jitter while not."""
        if self._failures == 0:
            return self.interval
        policy = Backoff(first=min(self.interval, 1.0), maximum=self.max_backoff, jitter=True, jitter_floor=0.8)
        return policy.delay(self._failures)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.poll_once()
                if self._stop.wait(self._next_delay()):
                    break
        finally:
            with self._poll_lock:
                self._close()
