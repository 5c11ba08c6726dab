"""SIGINT and SIGTERM, handled on a thread of their own, so that they are never deferred.

Python runs a signal handler on the main thread, between two bytecodes. While the main
thread waits inside C code that does not return to the interpreter — above all libpq
executing a statement that waits for a lock or runs a slow plan — the handler is not run
at all, and a stop is ignored until the statement ends (minutes, or for ever).

:class:`SignalWatcher` installs a do-nothing Python handler and points
:func:`signal.set_wakeup_fd` at a socket pair: the C-level handler writes the signal
number there at once, whatever the main thread is doing, and the watcher thread reads it
and calls ``on_signal(signum, count)``. After the first signal it also calls
``on_tick(count)`` every ``tick`` seconds until it is closed: a statement that started
just after a cancel (the cancel found nothing to cancel) is cancelled by the next tick.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, Optional

from esindexer.source import pg

log = logging.getLogger(__name__)

#: Seconds between two ``on_tick`` calls once a signal came.
TICK = 0.25


def _ignore(_signum: int, _frame: Optional[FrameType]) -> None:
    """The Python-level handler: the work is done on the watcher thread."""


class SignalWatcher:
    """Calls ``on_signal(signum, count)`` on its own thread for each SIGINT/SIGTERM
    (``count``: how many so far), then ``on_tick(count)`` every :data:`TICK` seconds.

    Use as a context manager, from the main thread (Python sets handlers only there).
    """

    def __init__(self, on_signal: Callable[[int, int], None], on_tick: Callable[[int], None],
                 signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM), tick: float = TICK):
        self._on_signal = on_signal
        self._on_tick = on_tick
        self._signals = {int(s) for s in signals}
        self._tick = tick
        self._count = 0
        self._closed = False
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._thread = threading.Thread(target=self._loop, name="esindexer-signals", daemon=True)

    @property
    def count(self) -> int:
        """How many of the watched signals came so far."""
        return self._count

    def __enter__(self) -> SignalWatcher:
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, _ignore)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Restore the previous handlers and end the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        try:
            self._write.send(b"\0")  # no signal has number 0: just wakes the thread
        except OSError:
            pass
        self._thread.join(5)
        self._read.close()
        self._write.close()

    def _loop(self) -> None:
        while not self._closed:
            ready, _, _ = select.select([self._read], [], [], self._tick if self._count else None)
            if ready:
                try:
                    data = self._read.recv(256)
                except BlockingIOError:
                    data = b""
                for signum in data:
                    if signum in self._signals and not self._closed:
                        self._count += 1
                        self._call(self._on_signal, signum, self._count)
            if self._count and not self._closed:
                self._call(self._on_tick, self._count)

    @staticmethod
    def _call(fn: Callable[..., None], *args: int) -> None:
        try:
            fn(*args)
        except Exception:  # the watcher must survive a failing callback: the next signal needs it
            log.exception("signal handling failed")


class Cancels:
    """The PostgreSQL connections whose statements a stop cancels (:meth:`cancel`, called
    from the signal thread, repeatedly): a read that waits for a lock or runs a slow plan
    must never hold a stop up. The writer's statements (progress) only when abandoning: a
    first stop lets it save the progress of what Elasticsearch acknowledged."""

    def __init__(self) -> None:
        self.setup: Any = None  # the writer connection while the pipeline sets up
        self.writer: Any = None
        self.others: set[Any] = set()  # connections of the main thread (cancellable())

    def cancel(self, updates: Any, abandon: bool) -> None:
        """Cancel the follower's read (``updates``, if any) and the statements in progress."""
        if updates is not None:
            updates.cancel()
        pg.cancel_if_busy(self.setup)
        for conn in list(self.others):
            pg.cancel_if_busy(conn)
        if abandon:
            pg.cancel_if_busy(self.writer)

    @contextlib.contextmanager
    def cancellable(self, conn: Any) -> Iterator[Any]:
        """For the block, :meth:`cancel` also cancels ``conn``'s statements."""
        self.others.add(conn)
        try:
            yield conn
        finally:
            self.others.discard(conn)


class AbandonLater:
    """A first stop's bound on everything that still waits for a server: ``abandon`` is set
    ``seconds`` after :meth:`start` unless :meth:`cancel` comes first.

    The committer bounds its own wait for the batches in flight (``shutdown_timeout``, from
    the end of reading). Some sends happen elsewhere and are retried by the sink until
    ``abandon``: the start-up sweep's deletions, a restart's rewrite of object documents, the
    last pack deletions of a bounded run. Without this a first stop waited there for as long
    as Elasticsearch was away; nothing they send is progress, so abandoning them loses nothing.
    """

    def __init__(self, abandon: threading.Event, seconds: float):
        self._abandon = abandon
        self._seconds = seconds
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the countdown (once; later calls keep the first)."""
        with self._lock:
            if self._timer is None and not self._abandon.is_set():
                self._timer = threading.Timer(self._seconds, self._expire)
                self._timer.name, self._timer.daemon = "esindexer-stop-bound", True
                self._timer.start()

    def cancel(self) -> None:
        """The stop completed: nothing is left to abandon."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def _expire(self) -> None:
        if not self._abandon.is_set():
            log.warning("still waiting for a server %.0fs after the stop; abandoning that work (progress stays "
                        "at the last acknowledged batch)", self._seconds, extra={"seconds": self._seconds})
            self._abandon.set()
