"""Hot standby: wait for the client id's lock instead of refusing to start.

Two processes with one client id would race on one progress row, so only the holder of
the client's PostgreSQL advisory lock indexes (:func:`esindexer.source.pg.try_lock_client`).
A second process either exits (``ESINDEXER_STANDBY=false``, exit code 4) or, by default,
stands by: it keeps its metrics server up (``/readyz`` 503 "standby", ``/healthz`` 200,
``esindexer_standby 1``) and tries the lock again every :data:`POLL_SECONDS`. The lock is
a session lock, so PostgreSQL frees it the moment the active process dies (its socket
closes) or its connection is lost; the standby then takes over and resumes from the
saved progress, which is what the active process had committed (writes are versioned
by tid, so replaying from there is harmless).

A process that is stopped or stuck keeps its session, and so the lock: the standby first
in line also watches the active process's lease (:mod:`esindexer.pipeline.lease`), and
when it is older than ``lease_seconds`` while transactions wait to be indexed, ends that
session with ``pg_terminate_backend`` and takes the lock at its next try.

Standbys queue (:func:`esindexer.source.lease.first_in_line`): only the one that has
waited longest tries the lock, and a process that starts while one waits joins the
queue behind it, so a freshly started process never wins the lock from a waiting one.

Why poll rather than block in ``pg_advisory_lock`` (whose waiters PostgreSQL grants in
queue order): a blocked statement keeps a snapshot, which holds back vacuum for as long
as the standby waits (days), and can only be left by cancelling it, which the server
logs as an error.

While it stands by, the process also holds a shared advisory lock of its own
(:func:`esindexer.source.runs.announce_standby`): the client lock it only *tries*, so
without it nothing in ``pg_locks`` would show that a process waits. ``esindexer
reindex`` reads it to hand a new generation over to the service restarted on it
(:mod:`esindexer.ops.handover`).

While it stands by, the process mirrors the client's saved progress into its own metrics
(lag, last progress time), so its lag gauge and alerts say the same as the active's.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import psycopg2.errors

from esindexer.config import Settings
from esindexer.errors import Abandoned, AlreadyRunning
from esindexer.observe.metrics import Metrics
from esindexer.source import lease, pg, progress, runs

log = logging.getLogger(__name__)

#: Seconds between tries of the lock while standing by: the takeover delay after the
#: active process is gone (plus a reconnect if PostgreSQL itself went away).
POLL_SECONDS = 1.0

#: A standby that has not polled for this long (stopped, frozen) loses its place in the queue.
FRESH_SECONDS = 5.0

#: Rows of standbys not seen for this long (killed while waiting) are removed.
FORGET_SECONDS = 3600.0


class LockKeeper:
    """Takes the client's lock on the writer connection, standing by for it if configured."""

    def __init__(self, settings: Settings, metrics: Metrics, stop: threading.Event,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.settings = settings
        self.metrics = metrics
        self._stop = stop
        self.poll_seconds = poll_seconds
        self._since: float | None = None  # monotonic start of the current standby
        #: this process in the standbys' queue (one id for its life: a reconnect keeps its place)
        self.member = uuid.uuid4().hex
        self.holder = f"{socket.gethostname()}:{os.getpid()}"[:200]
        self._refused_terminate = False

    @property
    def standing_by(self) -> bool:
        return self._since is not None

    def acquire(self, conn: Any, with_lease: bool) -> None:
        """Return once ``conn`` holds the lock; raise :class:`AlreadyRunning` when it is held
        and standby is off, :class:`Abandoned` when the service stops while standing by.
        ``with_lease``: the lease tables exist (the queue and the takeover of a stale holder
        use them; without them only the lock counts). Connection errors propagate (the caller
        reconnects and calls again; the standby state, its one log line and the place in
        the queue carry over)."""
        worker = self.settings.worker_id
        announced = False
        if with_lease:
            lease.register(conn, worker, self.member, self.holder)
            conn.commit()
        try:
            if self._my_turn(conn, with_lease) and pg.try_lock_client(conn, worker):
                self._took_over()
                return
            if not self.settings.standby:
                raise AlreadyRunning(
                    f"another esindexer with client id {worker!r} is running against this database; give each "
                    "indexer its own ESINDEXER_CLIENT_ID (or ESINDEXER_STANDBY=true to wait as a hot standby)")
            if self._since is None:
                self._since = time.monotonic()
                self.metrics.set_standby(True)
                log.info("standing by: another esindexer holds the lock of client id %r; taking over when it "
                         "stops, loses its PostgreSQL connection, or its lease is older than %gs while work is "
                         "pending", worker, self.settings.lease_seconds, extra={"client_id": worker})
            # Seen in pg_locks by `esindexer reindex`, which then hands the client id over;
            # the session ends it if this process dies, and it is withdrawn below.
            runs.announce_standby(conn, worker)
            announced = True
            while True:
                self._mirror_progress(conn, worker)
                if self._stop.wait(self.poll_seconds):
                    raise Abandoned("standing by")
                if with_lease:
                    lease.register(conn, worker, self.member, self.holder)  # still here (seen_at)
                    conn.commit()
                if not self._my_turn(conn, with_lease):
                    continue
                if pg.try_lock_client(conn, worker):
                    self._took_over()
                    return
                if with_lease and self._end_stale_holder(conn, worker):
                    return
        finally:
            if announced and not conn.closed:
                try:
                    conn.rollback()
                    runs.withdraw_standby(conn, worker)
                except pg.CONNECTION_ERRORS:
                    pass  # the session is gone, and its shared lock with it
            if with_lease and not conn.closed:
                try:
                    conn.rollback()
                    lease.unregister(conn, worker, self.member, forget_after=FORGET_SECONDS)
                    conn.commit()
                except pg.CONNECTION_ERRORS:
                    pass  # reconnecting: the row keeps our place, or is passed once stale

    def take(self, conn: Any) -> tuple[int, int] | None:
        """:meth:`acquire` the lock on ``conn``, then claim the lease with a new epoch; returns
        ``(epoch, the lock session's backend pid)``, or None when the lease tables are
        missing and this role may not create them (only the lock counts then)."""
        worker = self.settings.worker_id
        with pg.schema_lock(conn):
            with_lease = lease.ensure_tables(conn)
            conn.commit()
        if not with_lease:
            log.warning("cannot create %s and %s (no privilege): without them a standby cannot replace an active "
                        "process that hangs, and may lose the lock to a newly started one; run `esindexer setup "
                        "--grant-to <this role>` once", lease.TABLE, lease.STANDBY_TABLE)
        self.acquire(conn, with_lease)
        if not with_lease:
            return None
        epoch, previous = lease.claim(conn, worker, self.holder)
        conn.commit()
        log.info("holding the lease of client id %r, epoch %d (previous holder: %s)", worker, epoch,
                 previous or "none", extra={"client_id": worker, "epoch": epoch})
        return epoch, conn.get_backend_pid()

    def lost(self, epoch: int, exc: BaseException) -> bool:
        """Whether ``exc``, which ended the pipeline of the lease ``epoch``, means this process
        lost the lock to another (or its own watchdog gave it up). If so, log it in one
        line and count as standing by from now (/readyz 503 "standby" at once), until the
        lock is ours again."""
        worker = self.settings.worker_id
        reason = " ".join(str(exc).split())
        given_up = isinstance(exc, lease.LostLease)
        taken = isinstance(exc, lease.LostLease) and exc.taken
        if not taken:  # has another process claimed the lease? (a woken process may first meet its own fence)
            try:
                conn = pg.connect(self.settings, "lease check")
                try:
                    now = lease.holder_of(conn, worker)
                finally:
                    conn.close()
            except pg.CONNECTION_ERRORS:
                now = None  # PostgreSQL is away: the usual reconnect says so, or the reason given stands
            if now is not None and now[0] != epoch:
                taken = True
                reason = (f"{reason[:200]}; another esindexer ({now[1]}) holds the lease now, epoch {now[0]} (this "
                          f"process had {epoch})")
            elif not given_up:
                return False  # still ours: a plain connection loss
        if taken:
            log.warning("lost the lock of client id %r: %s; this process writes nothing more and stands by",
                        worker, reason[:400], extra={"client_id": worker, "epoch": epoch})
        else:
            log.warning("giving up the lock of client id %r: %s; this process writes nothing more, frees the lock "
                        "and stands by (it takes the lock again if no other process does)", worker, reason[:400],
                        extra={"client_id": worker, "epoch": epoch})
        if self._since is None:
            self._since = time.monotonic()
            self.metrics.set_standby(True)
        return True

    def _my_turn(self, conn: Any, with_lease: bool) -> bool:
        if not with_lease:
            return True
        first = lease.first_in_line(conn, self.settings.worker_id, self.member, FRESH_SECONDS)
        conn.rollback()
        return first

    def _end_stale_holder(self, conn: Any, worker: str) -> bool:
        """End the session of an active process whose lease ran out while work waits;
        True when the lock is ours now."""
        lease_seconds = self.settings.lease_seconds
        stale = lease.stale_holder(conn, worker, lease_seconds)
        if stale is None or not lease.work_pending(conn, worker):
            conn.rollback()
            return False
        conn.rollback()
        log.warning("the active esindexer %s of client id %r has not renewed its lease for %.0fs (limit %gs) "
                    "while transactions wait to be indexed (stopped, frozen or stuck): ending its PostgreSQL "
                    "session (pid %d) to take over", stale.holder, worker, stale.age, lease_seconds,
                    stale.backend_pid, extra={"client_id": worker, "holder": stale.holder,
                                              "backend_pid": stale.backend_pid, "epoch": stale.epoch,
                                              "lease_age_seconds": round(stale.age, 1)})
        try:
            lease.terminate(conn, stale.backend_pid)
            conn.commit()
        except psycopg2.errors.InsufficientPrivilege as exc:
            conn.rollback()
            if not self._refused_terminate:
                self._refused_terminate = True
                log.error("cannot end the session of the stale holder (%s): run every process of a client id "
                          "as the same PostgreSQL role, or grant this role pg_signal_backend "
                          "(docs/operations.md, Hot standby)", " ".join(str(exc).split())[:300])
            return False
        # The session exits at once and frees the lock: try it now rather than in a second.
        for _ in range(20):
            if self._stop.wait(0.05):
                return False
            if pg.try_lock_client(conn, worker):
                self._took_over()
                return True
        return False

    def _mirror_progress(self, conn: Any, worker: str) -> None:
        row = progress.get_progress_row(conn, worker)
        if row is not None:
            self.metrics.record_progress(row[0], wall_time=row[1])

    def _took_over(self) -> None:
        if self._since is None:
            return
        waited = time.monotonic() - self._since
        self._since = None
        self.metrics.set_standby(False)
        log.warning("taking over client id %r after standing by for %.1fs: its lock was freed",
                    self.settings.worker_id, waited, extra={"client_id": self.settings.worker_id,
                                                             "standby_seconds": round(waited, 3)})
