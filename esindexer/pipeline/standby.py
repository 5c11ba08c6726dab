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

Why poll rather than block in ``pg_advisory_lock``: a blocked statement can only be left
by cancelling it, and the service must stop promptly on SIGTERM while standing by.

While it stands by, the process also holds a shared advisory lock of its own
(:func:`esindexer.source.runs.announce_standby`): the client lock it only *tries*, so
without it nothing would show that a process waits. ``esindexer reindex`` reads it to
hand a new generation over to the service restarted on it (:mod:`esindexer.ops.handover`).

While it stands by, the process mirrors the client's saved progress into its own metrics
(lag, last progress time), so its lag gauge and alerts say the same as the active's.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from esindexer.config import Settings
from esindexer.errors import Abandoned, AlreadyRunning
from esindexer.observe.metrics import Metrics
from esindexer.source import pg, progress, runs

log = logging.getLogger(__name__)

#: Seconds between tries of the lock while standing by: the takeover delay after the
#: active process is gone (plus a reconnect if PostgreSQL itself went away).
POLL_SECONDS = 1.0


class LockKeeper:
    """Takes the client's lock on the writer connection, standing by for it if configured."""

    def __init__(self, settings: Settings, metrics: Metrics, stop: threading.Event,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.settings = settings
        self.metrics = metrics
        self._stop = stop
        self.poll_seconds = poll_seconds
        self._since: float | None = None  # monotonic start of the current standby

    @property
    def standing_by(self) -> bool:
        return self._since is not None

    def acquire(self, conn: Any) -> None:
        """Return once ``conn`` holds the lock; raise :class:`AlreadyRunning` when it is held
        and standby is off, :class:`Abandoned` when the service stops while standing by.
        Connection errors propagate (the caller reconnects and calls again; the standby
        state and its one log line carry over)."""
        worker = self.settings.worker_id
        if pg.try_lock_client(conn, worker):
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
                     "stops or loses its PostgreSQL connection", worker, extra={"client_id": worker})
        # Seen in pg_locks by `esindexer reindex`, which then hands the client id over; the
        # session ends it if this process dies, and it is withdrawn on taking over.
        runs.announce_standby(conn, worker)
        while True:
            self._mirror_progress(conn, worker)
            if self._stop.wait(self.poll_seconds):
                raise Abandoned("standing by")
            if pg.try_lock_client(conn, worker):
                runs.withdraw_standby(conn, worker)
                self._took_over()
                return

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
