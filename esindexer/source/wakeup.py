"""Waiting for commits: LISTEN/NOTIFY where possible, polling where not, and wake-ups.

Without ``end_tid`` the follower LISTENs on :data:`esindexer.source.notify.CHANNEL`. The
notification trigger is installed on first use if the role may (idempotent; see
:func:`esindexer.source.notify.install_trigger`, also available as ``esindexer
install-trigger``). The follower starts listening **before** its first read, so a
commit made while it catches up is either in what it reads or wakes it afterwards;
notifications received before a read are discarded at that read, because the read
sees their commits. ``conn.notifies`` is emptied at every read, so nothing grows with
the number of notifications.

``poll_timeout`` (default 30 s) is a backstop: the follower reads anyway when no
notification came for that long. Where the trigger cannot be installed (a role without
DDL rights) or LISTEN is refused (a hot-standby replica), it logs a warning once and
polls every ``poll_interval`` seconds (default 2 s, never longer than
``poll_timeout``); in that mode it re-checks at each poll whether an administrator has
installed the trigger since, and then switches to notifications.

Waking up
=========
:meth:`CommitWaiter.signal` writes a byte to a socket pair that the waiting
``select()`` also watches: it is safe from any thread and from a signal handler (no
lock is taken), which is how :meth:`esindexer.source.follow.Updates.stop` and
``wake`` end a wait at once.
"""

from __future__ import annotations

import logging
import select
import socket
from typing import Any, Optional

import psycopg2
import psycopg2.errors

from esindexer.errors import ConnectionBusy
from esindexer.source import notify
from esindexer.source.pg import is_idle, reading

log = logging.getLogger("esindexer.source.follow")


class CommitWaiter:
    """Blocks the follower until a commit is notified, the poll interval passes, or it is signalled."""

    def __init__(self, poll_timeout: Optional[float], poll_interval: float):
        self.poll_timeout = poll_timeout
        self.poll_interval = poll_interval
        #: True when woken by notifications, False when polling, None before/without waiting.
        self.notifying: Optional[bool] = None
        self._wake_recv, self._wake_send = socket.socketpair()
        self._wake_recv.setblocking(False)
        self._wake_send.setblocking(False)

    def signal(self) -> None:
        """End the current (or next) wait at once. Thread- and signal-handler-safe."""
        try:
            self._wake_send.send(b"\0")
        except OSError:  # closed, or the buffer is full of earlier wake-ups: either is fine
            pass

    def close(self) -> None:
        self._wake_recv.close()
        self._wake_send.close()

    def start_listening(self, conn: Any) -> bool:
        """Install the trigger if possible, then LISTEN; False if LISTEN is refused."""
        if not is_idle(conn):
            raise ConnectionBusy("the connection has a transaction in progress; cannot LISTEN")
        try:
            installed = notify.install_trigger(conn, warn=False)  # one warning below
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {notify.CHANNEL}")
            if not conn.autocommit:
                conn.commit()  # the connection was idle: this transaction is ours
        except (psycopg2.errors.FeatureNotSupported, psycopg2.errors.ReadOnlySqlTransaction,
                psycopg2.errors.InsufficientPrivilege) as exc:
            if not conn.autocommit:
                conn.rollback()
            log.warning("LISTEN refused (%s); polling every %s s", str(exc).strip(),
                        self.polling_timeout(), extra={"sqlstate": exc.pgcode})
            self.notifying = False
            return False
        except BaseException:
            if not conn.autocommit and not conn.closed:
                conn.rollback()  # ours: the connection was idle when we started
            raise
        self.notifying = installed
        if not installed:
            log.warning(
                "no change-notification trigger, and this role may not install it; polling "
                "every %s s. An administrator can run `esindexer install-trigger`.",
                self.polling_timeout())
        return True

    def unlisten(self, conn: Any) -> None:
        try:
            if is_idle(conn):
                with conn.cursor() as cur:
                    cur.execute(f"UNLISTEN {notify.CHANNEL}")
                if not conn.autocommit:
                    conn.commit()
                del conn.notifies[:]
        except psycopg2.Error:
            log.debug("UNLISTEN failed on the caller's connection", exc_info=True)

    def polling_timeout(self) -> float:
        if self.poll_timeout is None:
            return self.poll_interval
        return min(self.poll_interval, self.poll_timeout)

    def wait(self, conn: Any, listening: bool) -> None:
        """Block until a notification, a stop, or the timeout; then the caller reads."""
        timeout = self.poll_timeout if self.notifying else self.polling_timeout()
        watched: list[Any] = [self._wake_recv]
        if listening:
            conn.poll()  # collect what already arrived while we were reading
            if conn.notifies:
                self._consume_notifies(conn)
                return
            watched.append(conn)
        ready, _, _ = select.select(watched, [], [], timeout)
        if self._wake_recv in ready:
            self._drain_wakeups()
        if listening and conn in ready:
            conn.poll()
            self._consume_notifies(conn)
        elif not ready and listening and not self.notifying:
            # Polling: has an administrator installed the trigger since?
            with reading(conn) as cur:
                if notify.installed_in(cur):
                    log.info("change-notification trigger found; switching to notifications")
                    self.notifying = True

    @staticmethod
    def _consume_notifies(conn: Any) -> None:
        if conn.notifies:
            last = conn.notifies[-1]
            log.debug("notified", extra={"payload": last.payload, "count": len(conn.notifies)})
            del conn.notifies[:]

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_recv.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
