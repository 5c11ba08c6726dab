"""The active process's lease: renewed while the pipeline works, given up when it does not.

The client lock is held by a PostgreSQL session, which outlives what it protects when
the process is stopped (SIGSTOP), frozen, or stuck in a query: the session stays open,
so a standby polling the lock waits for ever (issue 21). The lease
(:mod:`esindexer.source.lease`) adds time to it:

- :class:`LeaseKeeper`, a thread of the active process with a connection of its own,
  renews the lease every :func:`tick` (a quarter of ``lease_seconds``, at most 2 s) and
  judges the pipeline at the same pace. A stopped or frozen process
  renews nothing; a standby then finds the lease older than ``lease_seconds`` and ends
  the holder's session (:mod:`esindexer.pipeline.standby`).
- A process that runs but whose pipeline is stuck would keep renewing, so the keeper
  also watches :class:`Liveness`: with transactions waiting to be indexed and no sign of
  life from the reader, the senders or the committer for ``lease_seconds`` (a request
  waiting for Elasticsearch within its own timeout and back-off counts as life: a
  standby could not do better; so does a long statement of the pipeline's that
  PostgreSQL says it is running, :meth:`Liveness.in_statement`), it ends its *own* lock
  session. The standby (or, without
  one, this process's next pipeline) takes over within a second.
- Fencing: :meth:`LeaseKeeper.check` refuses, before every bulk request and every
  progress save, once the lease is lost or was last renewed longer than ``lease_seconds``
  ago by this process's clock (the monotonic clock runs on while a process is stopped:
  a process woken after a takeover stops at its first request). The progress save also
  checks the epoch in its own transaction (:func:`esindexer.source.lease.check`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2

from esindexer.config import Settings
from esindexer.source import lease
from esindexer.source.lease import LostLease

log = logging.getLogger(__name__)


#: The longest time between two renewals (and two looks at the pipeline): each look may come
#: this late, so a hang is acted on within ``lease_seconds`` + 2 ticks (25 s by default).
MAX_TICK = 2.0


def tick(lease_seconds: float) -> float:
    """Seconds between renewals: a quarter of the lease, at most :data:`MAX_TICK`."""
    return min(lease_seconds / 4, MAX_TICK)


class Liveness:
    """Signs of life of one process's pipeline: a time stamp the steps bump (cheap, no
    lock: a float assignment is atomic under the GIL) and the requests in flight."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self._sending = 0
        self._lock = threading.Lock()
        #: the PostgreSQL session running the pipeline's long set-based work, while it runs
        self.statement_pid: int | None = None

    def beat(self) -> None:
        self.last = time.monotonic()

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Around a request to Elasticsearch, retries included."""
        with self._lock:
            self._sending += 1
        try:
            yield
        finally:
            with self._lock:
                self._sending -= 1
            self.beat()

    @contextlib.contextmanager
    def in_statement(self, backend_pid: int) -> Iterator[None]:
        """Around set-based work that PostgreSQL does alone for as long as the data takes
        (a backfill's graph resolution: 20 s at 10^6 objects, minutes at 10^7, a single
        statement of it longer than any fixed allowance): the keeper asks PostgreSQL
        whether that session is still working instead of waiting for a beat."""
        self.statement_pid = backend_pid
        try:
            yield
        finally:
            self.statement_pid = None
            self.beat()

    def quiet_for(self) -> float:
        return time.monotonic() - self.last

    @property
    def in_flight(self) -> bool:
        return self._sending > 0


class LeaseKeeper:
    """Renews the lease of ``epoch`` for the pipeline whose lock session is ``writer_pid``."""

    def __init__(self, settings: Settings, epoch: int, writer_pid: int, liveness: Liveness,
                 connect: Callable[[], Any], on_lost: Callable[[], None]) -> None:
        self.settings = settings
        self.epoch = epoch
        self.writer_pid = writer_pid
        self.liveness = liveness
        self._connect = connect
        self._on_lost = on_lost  # wakes the reader, so the loss is handled now
        self.interval = tick(settings.lease_seconds)
        #: Monotonic time at which the last successful renewal *started* (conservative:
        #: the server's renewed_at is later, so a standby's view of expiry is later too).
        self.renewed = time.monotonic()
        #: why this process may not write any more (raised by :meth:`check` from then on)
        self.lost: LostLease | None = None
        self._pending_since: float | None = None
        #: the watchdog judges the pipeline only once it runs (set by :meth:`watch`): the
        #: set-up before it (indices, triggers, a start-up sweep of every document) has no
        #: beats, and has retries and log lines of its own
        self._watching = False
        self._stop = threading.Event()
        self._conn: Any = None
        self._thread = threading.Thread(target=self._run, name="esindexer-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def watch(self) -> None:
        """The pipeline runs from now: judge its signs of life."""
        self.liveness.beat()
        self._watching = True

    def check(self) -> None:
        """Raise :class:`LostLease` when this process must not write any more."""
        if self.lost is not None:
            raise self.lost
        age = time.monotonic() - self.renewed
        if age > self.settings.lease_seconds:
            raise LostLease(f"its lease was last renewed {age:.0f}s ago (limit {self.settings.lease_seconds:g}s), "
                            "so a standby may have taken over", taken=False)

    def _lose(self, lost: LostLease) -> None:
        self.lost = lost
        self._on_lost()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval) and self.lost is None:
                try:
                    self._tick()
                except psycopg2.Error as exc:  # unreachable, or a statement refused: a fresh connection next time
                    log.warning("could not renew the lease (%s); trying again in %.1fs (this process stops "
                                "writing once its lease is %gs old)", " ".join(str(exc).split())[:200],
                                self.interval, self.settings.lease_seconds)
                    self._close_conn()
        finally:
            self._close_conn()

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _tick(self) -> None:
        s = self.settings
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        started = time.monotonic()
        if not lease.renew(conn, s.worker_id, self.epoch):
            conn.rollback()
            self._lose(LostLease(f"another esindexer took over client id {s.worker_id!r} (its lease moved past "
                                 f"epoch {self.epoch})"))
            return
        conn.commit()
        self.renewed = started
        pending = lease.work_pending(conn, s.worker_id)
        conn.rollback()
        now = time.monotonic()
        if not pending or not self._watching:
            self._pending_since = None
            return
        if self._pending_since is None:
            self._pending_since = now
        quiet = min(self.liveness.quiet_for(), now - self._pending_since)
        limit = s.lease_seconds
        if self.liveness.in_flight:  # waiting for Elasticsearch: its own timeout and back-off first
            limit += s.es_request_timeout + s.retry_max_seconds
        if quiet <= limit:
            return
        statement = self.liveness.statement_pid
        if statement is not None and lease.backend_working(conn, statement):
            conn.rollback()
            return  # PostgreSQL is working on the pipeline's statement: a sign of life
        log.error("the pipeline has done nothing for %.0fs (no record read, no request answered, no batch "
                  "settled) while transactions wait to be indexed: ending this process's lock session (PostgreSQL pid %d) so that a standby, or a new pipeline of this "
                  "process, takes over from the saved progress", quiet, self.writer_pid,
                  extra={"client_id": s.worker_id, "quiet_seconds": round(quiet, 1), "backend_pid": self.writer_pid})
        self._lose(LostLease(f"its pipeline did nothing for {quiet:.0f}s while transactions waited", taken=False))
        lease.terminate(conn, self.writer_pid)
        conn.commit()
