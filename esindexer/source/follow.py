"""Follow committed transactions in a RelStorage PostgreSQL database.

:func:`updates` yields **batches**; each batch is an iterator of ``(tid, zoid, data)``
rows, where ``tid`` and ``zoid`` are ints and ``data`` is the object's ZODB record as
``bytes`` (``None`` when the row's state is NULL: an undone creation or a
``deleteObject`` whiteout in a history-preserving database).

Guarantees
==========

Order
    Rows come in ``(tid, zoid)`` order, always; unlike newt.db, the order within a
    transaction is not left to the physical row order, so two runs over the same data
    give the same sequence.

Whole transactions
    A batch ends only at a transaction boundary: once it holds at least
    ``batch_limit`` rows (a soft minimum, so a 10-million-row transaction is one
    batch), or when there is nothing more to read right now. ``batch_limit=1`` makes
    every batch exactly one transaction. A batch the consumer abandons half-way is
    read to its end and discarded when the next batch is asked for, so batches never
    shift; save progress only for batches you processed completely.

Range
    ``start_tid`` is exclusive and ``end_tid`` inclusive. With ``end_tid`` the iteration
    ends once everything up to it (or up to the newest data, if ``end_tid`` is in the
    future) has been yielded. Without it, the iteration never ends by itself: it blocks
    until new transactions are committed, and ends only after :meth:`Updates.stop`.

History modes
    History-free databases are read from ``object_state``; history-preserving ones
    from ``current_object`` joined to ``object_state``, so only the **current**
    revision of each object is returned, once, at its current tid. The mode is
    detected once per iteration: history-preserving iff ``to_regclass('current_object')``
    resolves in the connection's ``search_path``.

Bounded memory, short snapshots
    Rows are read in chunks of at most ``internal_batch_size`` rows and about
    ``chunk_bytes`` bytes of state (a chunk stops after the row that crosses
    ``chunk_bytes``, so it exceeds it by at most one record, and a record larger than
    the limit is read on its own). Each chunk is read by one or two short statements,
    each in its own transaction (keyset pagination, below). At most one chunk
    is held in memory, whatever the size of the database or of one transaction, and
    no transaction stays open while the consumer works on rows: a slow consumer never
    pins a snapshot on the source database or holds back its vacuum.

How the rows are read (keyset pagination, and why it cannot miss or repeat a row): see
:mod:`esindexer.source.pages`.

Deletions and packs
-------------------
The follower only sees rows that exist. Packing (with garbage collection) and
history-free ``deleteObject`` delete rows **without** writing a new tid, so those
deletions never come through here: the service reconciles them separately (documents
whose zoid is no longer in ``object_state``). A NULL ``data`` (history-preserving undo
of a creation, or a whiteout) does come through and means "the object does not exist
any more".

Waiting for commits
===================
Without ``end_tid`` the follower waits for commits with LISTEN/NOTIFY, or polls where
that is not possible: see :mod:`esindexer.source.wakeup`.

Stopping
========
:meth:`Updates.stop` may be called from any thread or from a signal handler: it sets a
flag and writes a byte to a socket pair the waiting ``select()`` also watches. The
iteration ends promptly after the current batch, including when it is blocked waiting
for commits. A read in progress is not interrupted by :meth:`Updates.stop`;
:meth:`Updates.cancel` (from another thread) cancels it, and the iteration then raises
``psycopg2.errors.QueryCanceled``. Leaving the ``for`` loop, :meth:`Updates.close` or
``with updates(...)`` close the connections the follower opened.

Connections
===========
``conn`` may be a DSN string (recommended: the follower opens and owns one autocommit
connection, used for reading and for LISTEN) or a psycopg2 connection, which the
follower then uses for reading and listening and does not close. A caller's
connection must not have a transaction in progress when the follower reads (commit,
roll back, use autocommit, or pass a DSN): the follower ends each of its short read
transactions itself and refuses to run inside, or end, someone else's. Errors
(connection lost, server restart) propagate out of the iteration; the service restarts
from its saved progress.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Generator, Iterator
from typing import Optional

import psycopg2

from esindexer.config_table import SETTINGS_BY_NAME
from esindexer.source.pages import Pages, Row
from esindexer.source.pg import ConnOrDsn, cancel_if_busy, keeps_history, reading
from esindexer.source.wakeup import CommitWaiter

log = logging.getLogger(__name__)

__all__ = ["Batch", "Row", "Updates", "latest_tid", "updates"]

# The library's defaults are the service's: declared once, in the settings table.
DEFAULT_BATCH_LIMIT: int = SETTINGS_BY_NAME["batch_limit"].default
#: Rows per read; see docs/performance.md ("Following") for the measurements behind it.
DEFAULT_INTERNAL_BATCH_SIZE: int = SETTINGS_BY_NAME["fetch_size"].default
DEFAULT_POLL_TIMEOUT: float = SETTINGS_BY_NAME["poll_timeout"].default
DEFAULT_POLL_INTERVAL: float = SETTINGS_BY_NAME["poll_interval"].default
#: State bytes per read: a read stops after the record that crosses this.
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024


def latest_tid(conn: ConnOrDsn) -> int:
    """The newest committed tid in ``object_state``, or ``-1`` if it is empty.

    Read-only (an idle non-autocommit connection is left idle). Served by the tid index
    in both history modes. Used for lag: convert with :mod:`esindexer.source.tid` before
    subtracting.
    """
    with reading(conn) as cur:
        keeps_history(cur)  # a clear error when there is no RelStorage schema
        cur.execute("SELECT max(tid) FROM object_state")
        value = cur.fetchone()[0]
    return -1 if value is None else int(value)


def updates(
    conn: ConnOrDsn,
    start_tid: int = -1,
    end_tid: Optional[int] = None,
    batch_limit: int = DEFAULT_BATCH_LIMIT,
    internal_batch_size: int = DEFAULT_INTERNAL_BATCH_SIZE,
    poll_timeout: Optional[float] = DEFAULT_POLL_TIMEOUT,
    *,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    listen: bool = True,
    on_idle: Optional[Callable[[], None]] = None,
    partition: Optional[tuple[int, int]] = None,
) -> Updates:
    """Batches of committed rows after ``start_tid`` (see the module docstring).

    :param conn: a DSN string, or a psycopg2 connection (see "Connections").
    :param start_tid: exclusive lower bound; ``-1`` starts at the beginning.
    :param end_tid: inclusive upper bound; ``None`` follows new commits forever.
    :param batch_limit: soft minimum of rows per batch, which always ends at a
        transaction boundary.
    :param internal_batch_size: rows per read from the database (memory bound).
    :param poll_timeout: seconds to wait for a notification before reading anyway;
        ``None`` waits for notifications only (polling-only mode still polls).
    :param poll_interval: seconds between reads when notifications are unavailable.
    :param chunk_bytes: state bytes per read (memory bound for large records).
    :param listen: use LISTEN/NOTIFY (installing the trigger if missing and
        permitted); ``False`` polls every ``poll_interval`` seconds.
    :param on_idle: called from the iterating thread whenever every row read so far
        has been handed out and the follower is about to wait for new commits: a
        moment when no read is in progress and none starts until it returns (the
        service applies pack deletions there). :meth:`Updates.wake` makes a waiting
        follower read again, and so call it again.
    :param partition: ``(i, N)``: only the rows of objects with ``zoid % N == i``
        (partitioned workers); :attr:`Updates.passed_tid` then tells how far the
        partition is read although its last rows may be older.
    """
    return Updates(
        conn,
        start_tid=start_tid,
        end_tid=end_tid,
        batch_limit=batch_limit,
        internal_batch_size=internal_batch_size,
        poll_timeout=poll_timeout,
        poll_interval=poll_interval,
        chunk_bytes=chunk_bytes,
        listen=listen,
        on_idle=on_idle,
        partition=partition,
    )


class Batch:
    """The rows of one or more whole transactions, in ``(tid, zoid)`` order.

    Iterate it once. :attr:`last_tid` is the tid of the last row yielded so far; once
    the batch is exhausted it is the batch's final transaction, the value to save as
    progress after processing the batch.
    """

    def __init__(self, updates: Updates):
        self._updates = updates
        self.first_tid: Optional[int] = None
        self.last_tid: Optional[int] = None
        self.row_count = 0
        self.done = False

    def __iter__(self) -> Batch:
        return self

    def __next__(self) -> Row:
        if self.done:
            raise StopIteration
        row = self._updates._next_row(self)
        if row is None:
            self.done = True
            raise StopIteration
        if self.first_tid is None:
            self.first_tid = row[0]
        self.last_tid = row[0]
        self.row_count += 1
        return row

    def __repr__(self) -> str:
        return (f"<Batch rows={self.row_count} tids={self.first_tid}..{self.last_tid}"
                f"{' done' if self.done else ''}>")


class Updates:
    """The iterable :func:`updates` returns: batches, plus :meth:`stop` and :meth:`close`.

    Iterate it once, from one thread; call :meth:`stop` from anywhere.
    """

    def __init__(self, conn: ConnOrDsn, *, start_tid: int, end_tid: Optional[int],
                 batch_limit: int, internal_batch_size: int, poll_timeout: Optional[float],
                 poll_interval: float, chunk_bytes: int, listen: bool,
                 on_idle: Optional[Callable[[], None]] = None, partition: Optional[tuple[int, int]] = None):
        if internal_batch_size < 1:
            raise ValueError("internal_batch_size must be at least 1")
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be at least 1")
        if poll_timeout is not None and poll_timeout <= 0:
            raise ValueError("poll_timeout must be positive or None")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._conn_arg = conn
        self.start_tid = start_tid
        self.end_tid = end_tid
        self.batch_limit = max(1, batch_limit)
        self.internal_batch_size = internal_batch_size
        self.poll_timeout = poll_timeout
        self.poll_interval = poll_interval
        self.chunk_bytes = chunk_bytes
        self.listen = listen and end_tid is None
        self.on_idle = on_idle
        self.partition = partition
        #: tid of the last row handed out (``start_tid`` before the first).
        self.last_tid = start_tid
        self.keep_history: Optional[bool] = None
        # A plain attribute, not a threading.Event: Event.set() takes a lock, which a
        # signal handler must not do (it could interrupt the same thread inside set()).
        self._stop_requested = False
        self._waiter = CommitWaiter(poll_timeout, poll_interval)
        self._started = False
        self._generator: Optional[Generator[Batch, None, None]] = None
        self._pending: collections.deque[Row] = collections.deque()
        self._reader: Optional[Pages] = None
        self._closed = False
        self._conn: Optional[psycopg2.extensions.connection] = None

    # -- public -------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        if self._started:
            raise RuntimeError("an Updates object can be iterated once; call updates() again")
        self._started = True
        self._generator = self._run()
        return self._generator

    def stop(self) -> None:
        """End the iteration after the current batch. Thread- and signal-handler-safe."""
        self._stop_requested = True
        self._waiter.signal()

    def cancel(self) -> None:
        """Cancel the statement the follower is running, if any (from any thread): a read
        that waits for a lock or runs a slow plan then fails at once with ``QueryCanceled``
        instead of delaying a stop until it ends. Call :meth:`stop` first."""
        cancel_if_busy(self._conn)

    def wake(self) -> None:
        """Make a waiting follower read now (and call ``on_idle`` again). Thread-safe."""
        self._waiter.signal()

    @property
    def caught_up(self) -> bool:
        """Whether everything committed when the follower last read has been handed out
        (always False with ``end_tid``: a bounded read is a backfill, never "live")."""
        reader = self._reader
        return self.end_tid is None and reader is not None and reader.caught_up and not self._pending

    @property
    def passed_tid(self) -> Optional[int]:
        """With a partition, once everything read is handed out: a tid up to which every row
        of the partition has been handed out (the progress to save although the partition's
        newest row may be older); None otherwise."""
        reader = self._reader
        if reader is None or self._pending or not reader.caught_up:
            return None
        return reader.passed_tid

    @property
    def notifying(self) -> Optional[bool]:
        """True when woken by notifications, False when polling, None before/without waiting."""
        return self._waiter.notifying

    @property
    def stopping(self) -> bool:
        return self._stop_requested

    def close(self) -> None:
        """Stop and release the connection(s) the follower opened. Idempotent."""
        self.stop()
        if self._generator is not None:
            self._generator.close()
        self._closed = True
        self._waiter.close()

    def __enter__(self) -> Updates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- batches ------------------------------------------------------------------

    def _fill(self) -> bool:
        """Make sure a row is pending if one exists now; True if one is."""
        if not self._pending:
            assert self._reader is not None
            self._pending.extend(self._reader.read())
        return bool(self._pending)

    def _next_row(self, batch: Batch) -> Optional[Row]:
        if self._closed or self._reader is None:
            raise RuntimeError("the follower was closed while a batch was being read")
        if not self._pending:
            if self._reader.caught_up or not self._fill():
                return None  # caught up: nothing committed after the end of this batch yet
        row = self._pending[0]
        if row[0] != batch.last_tid and batch.row_count >= self.batch_limit:
            return None  # a transaction boundary after enough rows
        self._pending.popleft()
        self.last_tid = row[0]
        return row

    def _run(self) -> Generator[Batch, None, None]:
        owned = isinstance(self._conn_arg, str)
        conn: psycopg2.extensions.connection
        if isinstance(self._conn_arg, str):
            conn = psycopg2.connect(self._conn_arg)
        else:
            conn = self._conn_arg
        self._conn = conn
        listening = False
        try:
            if owned:
                conn.autocommit = True
            with reading(conn) as cur:
                self.keep_history = keeps_history(cur)
            if self.listen:
                listening = self._waiter.start_listening(conn)
            self._reader = Pages(conn, self.keep_history, self.start_tid, self.end_tid,
                                 self.internal_batch_size, self.chunk_bytes, self.partition)
            log.info(
                "following",
                extra={"start_tid": self.start_tid, "end_tid": self.end_tid,
                       "keep_history": self.keep_history, "notifying": self.notifying},
            )
            while not self._stop_requested:
                if self._fill():
                    batch = Batch(self)
                    yield batch
                    for _ in batch:  # the consumer abandoned it: skip to its end
                        pass
                    log.debug("batch done", extra={"rows": batch.row_count, "tid": batch.last_tid})
                    continue
                if self.end_tid is not None:
                    return
                if self.on_idle is not None:
                    self.on_idle()
                    if self._stop_requested:
                        break
                self._waiter.wait(conn, listening)
        finally:
            self._reader = None
            self._conn = None
            if not conn.closed:
                if owned:
                    conn.close()
                elif listening:
                    self._waiter.unlisten(conn)
