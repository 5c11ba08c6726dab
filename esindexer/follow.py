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

Why keyset pagination cannot miss or repeat a row
-------------------------------------------------
The follower remembers the position ``(tid, zoid)`` of the last row it read and asks
for rows after it. RelStorage serializes commits under one lock and gives each commit a
tid larger than every tid already in ``object_state``; a transaction's rows all become
visible at once, at its commit, before the next commit can choose its tid. So a row
can never *appear* at or before a position the follower has passed: new rows always
land after every existing position. What can happen between two chunks:

- an object the follower has not reached yet is changed again: in a history-free
  database its row moves to the new tid (in a history-preserving one,
  ``current_object`` moves). The follower sees it later, once, at the new tid, with the
  newest state: exactly what an indexer needs;
- an object the follower already passed is changed again: it is seen again at its new
  tid, as it should be.

Within one large transaction the follower pages by ``zoid`` (``tid = t AND zoid > z``,
which PostgreSQL serves from the zoid index), and moves to the next transactions with
``tid > t ORDER BY tid, zoid LIMIT n``. A single ``(tid, zoid) > (t, z)`` row comparison
would re-scan the whole remaining transaction for every chunk, which is quadratic on
a large transaction.

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
Without ``end_tid`` the follower LISTENs on :data:`esindexer.notify.CHANNEL`. The
notification trigger is installed on first use if the role may (idempotent; see
:func:`esindexer.notify.install_trigger`, also available as ``esindexer
install-trigger``). The follower starts listening **before** its first read, so a
commit made while it catches up is either in what it reads or wakes it afterwards;
notifications received before a read are discarded at that read, because the read
sees their commits. ``conn.notifies`` is emptied at every read, so nothing grows with
the number of notifications.

``poll_timeout`` (default 300 s) is a backstop: the follower reads anyway when no
notification came for that long. Where the trigger cannot be installed (a role without
DDL rights) or LISTEN is refused (a hot-standby replica), it logs a warning once and
polls every ``poll_interval`` seconds (default 5 s, never longer than
``poll_timeout``); in that mode it re-checks at each poll whether an administrator has
installed the trigger since, and then switches to notifications.

Stopping
========
:meth:`Updates.stop` may be called from any thread or from a signal handler: it sets a
flag and writes a byte to a socket pair the waiting ``select()`` also watches. The
iteration ends promptly after the current batch, including when it is blocked waiting
for commits. Leaving the ``for`` loop, :meth:`Updates.close` or ``with updates(...)``
close the connections the follower opened.

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
import select
import socket
from typing import Callable, Iterator, Optional

import psycopg2
import psycopg2.errors

from esindexer import notify
from esindexer._follow_pg import ConnOrDsn, SchemaError, is_idle, keeps_history, reading
from esindexer.notify import install_trigger, trigger_installed, uninstall_trigger
from esindexer.progress import get_progress_tid, set_progress_tid

log = logging.getLogger(__name__)

__all__ = [
    "Batch",
    "ConnectionBusy",
    "Row",
    "SchemaError",
    "Updates",
    "get_progress_tid",
    "install_trigger",
    "latest_tid",
    "set_progress_tid",
    "trigger_installed",
    "uninstall_trigger",
    "updates",
]

#: ``(tid, zoid, data)``; ``data`` is None for a NULL state.
Row = tuple[int, int, Optional[bytes]]

DEFAULT_BATCH_LIMIT = 100_000
#: Rows per read; see docs/performance.md ("Following") for the measurements behind it.
DEFAULT_INTERNAL_BATCH_SIZE = 2_000
#: State bytes per read: a read stops after the record that crosses this.
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
DEFAULT_POLL_TIMEOUT = 300.0
DEFAULT_POLL_INTERVAL = 5.0


class ConnectionBusy(RuntimeError):
    """The caller's connection has a transaction in progress when the follower must read."""


def latest_tid(conn: ConnOrDsn) -> int:
    """The newest committed tid in ``object_state``, or ``-1`` if it is empty.

    Read-only (an idle non-autocommit connection is left idle). Served by the tid index
    in both history modes. Used for lag: convert with :mod:`esindexer.tid` before
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
) -> "Updates":
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
    )


class _Reader:
    """Keyset-paginated reads of current rows, each in its own short transaction."""

    def __init__(self, conn, keep_history: bool, start_tid: int, end_tid: Optional[int],
                 size: int, budget: int):
        self.conn = conn
        self.size = size
        self.budget = budget
        self.tid = start_tid  # position: the last row read...
        self.zoid = -1  # ...(zoid -1: before any zoid of self.tid)
        self.mid_transaction = False  # whether rows of self.tid may remain after self.zoid
        self.caught_up = False
        upper = "" if end_tid is None else f" AND {{t}}.tid <= {int(end_tid)}"
        within = "{t}.tid = %(tid)s AND {t}.zoid > %(zoid)s"
        after = "{t}.tid > %(tid)s" + upper
        if keep_history:
            # current_object drives (it lists current revisions, with indexes on zoid
            # and tid). The conditions are repeated for object_state because the planner
            # does not carry inequalities across the join: without them a merge join
            # scans object_state's primary key from its first zoid.
            source = "current_object c JOIN object_state s ON s.zoid = c.zoid AND s.tid = c.tid"
            within = within.format(t="c") + " AND " + within.format(t="s")
            after = after.format(t="c") + " AND " + after.format(t="s")
            t = "c"
        else:
            source = "object_state s"
            within, after, t = within.format(t="s"), after.format(t="s"), "s"
        columns = f"{t}.tid AS tid, {t}.zoid AS zoid, s.state, s.state_size"
        self._within = self._sized(
            f"SELECT {columns} FROM {source} WHERE {within} ORDER BY {t}.zoid LIMIT %(limit)s"
        )
        self._after = self._sized(
            f"SELECT {columns} FROM {source} WHERE {after} ORDER BY {t}.tid, {t}.zoid LIMIT %(limit)s"
        )

    @staticmethod
    def _sized(page: str) -> str:
        # Keep rows while the state bytes *before* each row are under the budget: at
        # most `limit` rows and about `budget` bytes, and always at least one row.
        return (
            "SELECT tid, zoid, state FROM ("
            " SELECT tid, zoid, state, sum(state_size) OVER"
            " (ORDER BY tid, zoid ROWS UNBOUNDED PRECEDING) - state_size AS before"
            f" FROM ({page}) AS page) AS sized "
            "WHERE before < %(budget)s ORDER BY tid, zoid"
        )

    def _query(self, sql: str, limit: int, budget: int) -> tuple[list[Row], bool]:
        """Rows, and whether the query returned everything there was (not cut by a limit)."""
        conn = self.conn
        if not is_idle(conn):
            raise ConnectionBusy(
                "the connection given to esindexer.follow.updates() has a transaction in "
                "progress; commit or roll back before the follower reads, use an autocommit "
                "connection, or pass a DSN"
            )
        if conn.notifies:
            # Every commit notified so far is visible to this read: drop the backlog.
            del conn.notifies[:]
        params = {"tid": self.tid, "zoid": self.zoid, "limit": limit, "budget": budget}
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                fetched = cur.fetchall()
        finally:
            if not conn.autocommit and not conn.closed:
                conn.rollback()  # our own read-only transaction
        rows: list[Row] = []
        nbytes = 0
        for tid, zoid, state in fetched:
            data = None if state is None else bytes(state)
            nbytes += 0 if data is None else len(data)
            rows.append((tid, zoid, data))
        return rows, len(rows) < limit and nbytes < budget

    def read(self) -> list[Row]:
        """The next chunk (possibly empty); sets :attr:`caught_up`."""
        rows: list[Row] = []
        complete = True
        if self.mid_transaction:
            rows, complete = self._query(self._within, self.size, self.budget)
        if complete:
            used = sum(len(data) for _, _, data in rows if data is not None)
            room = self.size - len(rows)
            if room > 0 and (used < self.budget or not rows):
                more, complete = self._query(self._after, room, max(self.budget - used, 1))
                rows.extend(more)
            else:
                complete = False
        if rows:
            self.tid, self.zoid = rows[-1][0], rows[-1][1]
        self.mid_transaction = not complete
        self.caught_up = complete
        return rows


class Batch:
    """The rows of one or more whole transactions, in ``(tid, zoid)`` order.

    Iterate it once. :attr:`last_tid` is the tid of the last row yielded so far; once
    the batch is exhausted it is the batch's final transaction, the value to save as
    progress after processing the batch.
    """

    def __init__(self, updates: "Updates"):
        self._updates = updates
        self.first_tid: Optional[int] = None
        self.last_tid: Optional[int] = None
        self.row_count = 0
        self.done = False

    def __iter__(self) -> "Batch":
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
                 on_idle: Optional[Callable[[], None]] = None):
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
        #: tid of the last row handed out (``start_tid`` before the first).
        self.last_tid = start_tid
        #: True when woken by notifications, False when polling, None before/without waiting.
        self.notifying: Optional[bool] = None
        self.keep_history: Optional[bool] = None
        # A plain attribute, not a threading.Event: Event.set() takes a lock, which a
        # signal handler must not do (it could interrupt the same thread inside set()).
        self._stop_requested = False
        self._wake_recv, self._wake_send = socket.socketpair()
        self._wake_recv.setblocking(False)
        self._wake_send.setblocking(False)
        self._started = False
        self._generator: Optional[Iterator[Batch]] = None
        self._pending: collections.deque[Row] = collections.deque()
        self._reader: Optional[_Reader] = None
        self._closed = False

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
        try:
            self._wake_send.send(b"\0")
        except OSError:  # closed, or the buffer is full of earlier wake-ups: either is fine
            pass

    def wake(self) -> None:
        """Make a waiting follower read now (and call ``on_idle`` again). Thread-safe."""
        try:
            self._wake_send.send(b"\0")
        except OSError:
            pass

    @property
    def stopping(self) -> bool:
        return self._stop_requested

    def close(self) -> None:
        """Stop and release the connection(s) the follower opened. Idempotent."""
        self.stop()
        if self._generator is not None:
            self._generator.close()
        self._closed = True
        self._wake_recv.close()
        self._wake_send.close()

    def __enter__(self) -> "Updates":
        return self

    def __exit__(self, *exc) -> None:
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

    def _run(self) -> Iterator[Batch]:
        owned = isinstance(self._conn_arg, str)
        conn = psycopg2.connect(self._conn_arg) if owned else self._conn_arg
        listening = False
        try:
            if owned:
                conn.autocommit = True
            with reading(conn) as cur:
                self.keep_history = keeps_history(cur)
            if self.listen:
                listening = self._start_listening(conn)
            self._reader = _Reader(conn, self.keep_history, self.start_tid, self.end_tid,
                                   self.internal_batch_size, self.chunk_bytes)
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
                self._wait(conn, listening)
        finally:
            self._reader = None
            if not conn.closed:
                if owned:
                    conn.close()
                elif listening:
                    self._unlisten(conn)

    # -- waiting ------------------------------------------------------------------

    def _start_listening(self, conn) -> bool:
        """Install the trigger if possible, then LISTEN; False if LISTEN is refused."""
        if not is_idle(conn):
            raise ConnectionBusy("the connection has a transaction in progress; cannot LISTEN")
        try:
            installed = notify._install_trigger(conn, warn=False)  # one warning below
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {notify.CHANNEL}")
            if not conn.autocommit:
                conn.commit()  # the connection was idle: this transaction is ours
        except (psycopg2.errors.FeatureNotSupported, psycopg2.errors.ReadOnlySqlTransaction,
                psycopg2.errors.InsufficientPrivilege) as exc:
            if not conn.autocommit:
                conn.rollback()
            log.warning("LISTEN refused (%s); polling every %s s", str(exc).strip(),
                        self._polling_timeout(), extra={"sqlstate": exc.pgcode})
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
                self._polling_timeout())
        return True

    def _unlisten(self, conn) -> None:
        try:
            if is_idle(conn):
                with conn.cursor() as cur:
                    cur.execute(f"UNLISTEN {notify.CHANNEL}")
                if not conn.autocommit:
                    conn.commit()
                del conn.notifies[:]
        except psycopg2.Error:
            log.debug("UNLISTEN failed on the caller's connection", exc_info=True)

    def _polling_timeout(self) -> float:
        if self.poll_timeout is None:
            return self.poll_interval
        return min(self.poll_interval, self.poll_timeout)

    def _wait(self, conn, listening: bool) -> None:
        """Block until a notification, a stop, or the timeout; then the caller reads."""
        timeout = self.poll_timeout if self.notifying else self._polling_timeout()
        watched: list = [self._wake_recv]
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
                if notify._installed(cur):
                    log.info("change-notification trigger found; switching to notifications")
                    self.notifying = True

    @staticmethod
    def _consume_notifies(conn) -> None:
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
