"""systemd service notifications (``sd_notify``), without libsystemd.

Why: with ``Type=notify`` (deploy/systemd/esindexer.service) systemd considers the unit
started only when the service says ``READY=1``, so units ordered after it, and
``systemctl start``, wait until esindexer can really index (the same conditions as
``/readyz``) rather than until the process exists. ``STATUS=`` puts the readiness reasons
into ``systemctl status``; ``WATCHDOG=1`` lets systemd restart a process whose threads have
stopped running (a deadlock, a hung interpreter). The watchdog proves the process is alive
and its health checks answer, not that it makes progress: a stall is what ``/readyz`` and
the ``EsindexerStalled`` alert report.

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without that
variable (not started by systemd, or ``Type=simple``) nothing is sent and no thread runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: How often readiness is checked before READY=1, and the status refreshed after it.
CHECK_INTERVAL = 1.0
STATUS_INTERVAL = 5.0


def socket_address(value: str) -> str:
    """The ``connect()`` address for a ``$NOTIFY_SOCKET`` value (``@`` = abstract namespace)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise ValueError(f"NOTIFY_SOCKET {value!r} is neither a path nor an abstract socket name (@...)")


def notify(*assignments: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``assignments`` (``"READY=1"``, ...) in one datagram; False when not under systemd.

    A failure to send is logged and returned as False: losing a status line must never
    stop the service (systemd then times out the start or the watchdog, and says so).
    """
    value = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not value or not assignments:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(socket_address(value))
            sock.sendall("\n".join(assignments).encode("utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot notify systemd: %s", exc, extra={"notify_socket": value})
        return False
    return True


def watchdog_seconds(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd asks for (``WatchdogSec=``), or None when there is none.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for; a child
    that inherited the variables must not answer for its parent.
    """
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None
    return seconds if seconds > 0 else None


def status_line(started: bool, ready: bool, reasons: list[str]) -> str:
    """The ``STATUS=`` text: what ``systemctl status`` shows on its ``Status:`` line."""
    if not started:
        reasons = ["starting (client lock, indices, RelStorage tables, saved progress)", *reasons]
    elif ready:
        return "ready: following the database"
    return "not ready: " + "; ".join(" ".join(reason.split()) for reason in reasons)


class ServiceNotifier:
    """Tells systemd when the service is ready, why it is not, and that it is alive.

    ``readiness`` is :meth:`esindexer.observe.http.HealthServer.readiness` (``(ready,
    reasons)``); ``started`` says whether the pipeline has begun following (it holds the
    client lock and has loaded its saved progress), so that a second instance refused by
    the lock never reports ready. Both run in this object's thread, every second until
    the service is ready, every few seconds after. READY=1 is sent once, the first time
    both say so.
    """

    def __init__(self, readiness: Callable[[], tuple[bool, list[str]]], started: Callable[[], bool],
                 env: Mapping[str, str] | None = None) -> None:
        self._readiness = readiness
        self._started = started
        self._env = dict(os.environ if env is None else env)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        """True when started by systemd with a notification socket."""
        return bool(self._env.get("NOTIFY_SOCKET"))

    def start(self) -> None:
        """Start the notifying thread (nothing happens outside systemd)."""
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="esindexer-systemd-notify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and tell systemd the service is stopping."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        if self.enabled:
            notify("STOPPING=1", "STATUS=stopping", env=self._env)

    def _loop(self) -> None:
        watchdog = watchdog_seconds(self._env)
        ping_every = watchdog / 2 if watchdog else None
        last_ping = 0.0
        last_status = None
        while True:
            lines = []
            try:
                started = self._started()
                ready, reasons = self._readiness()
                status = status_line(started, ready, reasons)
                ready = ready and started
            except Exception as exc:  # a failing check must not silence the watchdog
                ready, status = False, f"not ready: readiness check failed: {exc}"
            if ready and not self.ready_sent:
                lines.append("READY=1")
                self.ready_sent = True
                log.info("told systemd the service is ready")
            if status != last_status:
                lines.append(f"STATUS={status}")
                last_status = status
            now = time.monotonic()
            if ping_every is not None and now - last_ping >= ping_every:
                lines.append("WATCHDOG=1")
                last_ping = now
            if lines:
                notify(*lines, env=self._env)
            wait = CHECK_INTERVAL if not self.ready_sent else STATUS_INTERVAL
            if ping_every is not None:
                wait = min(wait, max(0.0, last_ping + ping_every - time.monotonic()))
            if self._stop.wait(wait):
                return
