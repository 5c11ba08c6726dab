"""Reading committed rows in pages: short transactions, bounded memory, nothing missed.

Why keyset pagination cannot miss or repeat a row
=================================================
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

"""

from __future__ import annotations

from typing import Any, Optional

from esindexer.errors import ConnectionBusy
from esindexer.source import copyrows
from esindexer.source.pg import is_idle

#: States larger than this are read in pieces of this size (:meth:`Pages._read_in_pieces`).
PIECE_BYTES = 8 << 20

#: ``(tid, zoid, data)``; ``data`` is None for a NULL state.
Row = tuple[int, int, Optional[bytes]]

#: Sent with every page read, in the same statement string (one implicit transaction, so
#: ``SET LOCAL`` ends with the read): index scans only. A page is a short range of an index
#: in tid order; PostgreSQL chooses a full scan and sort, a bitmap scan (every row after
#: the position, then a sort) or a hash join only on estimates, and estimates go wrong when
#: the statistics are missing or stale (right after a bulk import) or cannot know the
#: selectivity (a partition's ``mod(zoid, N) = i``): then each page costs as much as the
#: whole backlog. docs/performance.md, "Following", has the measurements.
PLANNER = ("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; "
           "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; ")


class Pages:
    """Keyset-paginated reads of current rows, each in its own short transaction."""

    def __init__(self, conn: Any, keep_history: bool, start_tid: int, end_tid: Optional[int],
                 size: int, budget: int, partition: Optional[tuple[int, int]] = None):
        self.conn = conn
        self.partition = partition
        self.end_tid = end_tid
        #: with a partition: a tid up to which every row of the partition has been read,
        #: also past commits that had none of its objects (None until known)
        self.passed_tid: Optional[int] = None
        self.size = size
        self.budget = budget
        self.tid = start_tid  # position: the last row read...
        self.zoid = -1  # ...(zoid -1: before any zoid of self.tid)
        self.mid_transaction = False  # whether rows of self.tid may remain after self.zoid
        self.caught_up = False
        upper = "" if end_tid is None else f" AND {{t}}.tid <= {int(end_tid)}"
        within = "{t}.tid = %(tid)s AND {t}.zoid > %(zoid)s"
        after = "{t}.tid > %(tid)s" + upper
        t = "c" if keep_history else "s"
        within, after = within.format(t=t), after.format(t=t)
        if partition is not None:
            index, count = (int(v) for v in partition)
            within += f" AND mod({t}.zoid, {count}) = {index}"
            after += f" AND mod({t}.zoid, {count}) = {index}"
        if keep_history:
            self._within = self._sized(self._current(within, "c.zoid"))
            self._after = self._sized(self._current(after, "c.tid, c.zoid"))
        else:
            columns = "s.tid AS tid, s.zoid AS zoid, s.state, s.state_size"
            self._within = self._sized(
                f"SELECT {columns} FROM object_state s WHERE {within} ORDER BY s.zoid LIMIT %(limit)s")
            self._after = self._sized(
                f"SELECT {columns} FROM object_state s WHERE {after} ORDER BY s.tid, s.zoid LIMIT %(limit)s")

    @staticmethod
    def _current(where: str, order: str) -> str:
        """A page of current revisions of a history-preserving database, planned the same
        way whatever the statistics say (docs/performance.md, "Following").

        The page's keys come from ``current_object`` alone (its tid index, in order, up to
        the limit); each key's state is then looked up by ``object_state``'s primary key,
        one row at a time (``LATERAL`` with ``OFFSET 0``, which the planner cannot turn into
        a join). A plain join of the two tables leaves the join method to the statistics:
        right after a bulk import, before ANALYZE has seen it, PostgreSQL estimated ten rows
        on each side and hashed every revision newer than the position for every page,
        quadratic in the backlog (a 100,000-object backlog stalled after 6,000 rows).
        """
        return (
            f"WITH page AS MATERIALIZED (SELECT c.tid, c.zoid FROM current_object c WHERE {where}"
            f" ORDER BY {order} LIMIT %(limit)s)"
            " SELECT page.tid AS tid, page.zoid AS zoid, s.state, s.state_size FROM page"
            " CROSS JOIN LATERAL (SELECT o.state, o.state_size FROM object_state o"
            " WHERE o.zoid = page.zoid AND o.tid = page.tid OFFSET 0) AS s"
        )

    @staticmethod
    def _sized(page: str) -> str:
        # Keep rows while the state bytes *before* each row are under the budget: at
        # most `limit` rows and about `budget` bytes, and always at least one row.
        # A state larger than a piece comes back as NULL with its size, and is then read
        # in pieces (:meth:`_read_in_pieces`).
        return (
            f"SELECT tid, zoid, CASE WHEN state_size > {int(PIECE_BYTES)} THEN NULL ELSE state END, state_size FROM ("
            " SELECT tid, zoid, state, state_size, sum(state_size) OVER"
            " (ORDER BY tid, zoid ROWS UNBOUNDED PRECEDING) - state_size AS before"
            f" FROM ({page}) AS page) AS sized "
            "WHERE before < %(budget)s ORDER BY tid, zoid"
        )

    def _query(self, sql: str, limit: int, budget: int) -> tuple[list[Row], bool]:
        """Rows, and whether the query returned everything there was (not cut by a limit)."""
        conn = self.conn
        if not is_idle(conn):
            raise ConnectionBusy(
                "the connection given to esindexer.source.follow.updates() has a transaction in "
                "progress; commit or roll back before the follower reads, use an autocommit "
                "connection, or pass a DSN"
            )
        if conn.notifies:
            # Every commit notified so far is visible to this read: drop the backlog.
            del conn.notifies[:]
        params = {"tid": self.tid, "zoid": self.zoid, "limit": limit, "budget": budget}
        try:
            with conn.cursor() as cur:
                # The parameters are four integers, written into the statement by psycopg2's
                # own quoting: COPY takes no parameters. Binary COPY: esindexer.source.copyrows.
                fetched: list[Any] = copyrows.fetch(cur, cur.mogrify(sql, params).decode(), PLANNER)
        finally:
            if not conn.autocommit and not conn.closed:
                conn.rollback()  # our own read-only transaction
        rows: list[Row] = []
        nbytes = 0
        for n, (tid, zoid, state, size) in enumerate(fetched):
            fetched[n] = None  # (the copy below is the one kept)
            if state is None and size is not None and size > PIECE_BYTES:
                data = self._read_in_pieces(tid, zoid, size)
                if data is None:  # changed or packed meanwhile: seen again at its new tid
                    nbytes += size
                    continue
            else:
                data = state
            nbytes += 0 if data is None else len(data)
            rows.append((tid, zoid, data))
        return rows, len(fetched) < limit and nbytes < budget

    def _read_in_pieces(self, tid: int, zoid: int, size: int) -> bytes | None:
        """The state of ``(zoid, tid)`` read :data:`PIECE_BYTES` at a time, or None when
        that row no longer exists.

        Why: bytea travels as hex text, and libpq keeps a buffer as large as the largest
        message a connection ever received; one 150 MB state read whole took the process
        past 1.3 GB and left 400 MB behind for the life of the connection (issue 21).
        A ``(zoid, tid)`` row never changes, so pieces read in separate transactions
        belong together; in a history-free database the row is gone once the object is
        changed again, and its new row lies ahead of the follower's position.
        """
        conn = self.conn
        pieces: list[bytes] = []
        try:
            with conn.cursor() as cur:
                for offset in range(1, size + 1, PIECE_BYTES):
                    cur.execute("SELECT substring(state FROM %s FOR %s) FROM object_state "
                                "WHERE zoid = %s AND tid = %s", (offset, PIECE_BYTES, zoid, tid))
                    found = cur.fetchone()
                    if found is None or found[0] is None:
                        return None
                    pieces.append(bytes(found[0]))
                    del found
        finally:
            if not conn.autocommit and not conn.closed:
                conn.rollback()
        return b"".join(pieces)

    def _head(self) -> int:
        """The newest committed tid (bounded by ``end_tid``), read *before* the rows."""
        conn = self.conn
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT max(tid) FROM object_state")
                value = cur.fetchone()[0]
        finally:
            if not conn.autocommit and not conn.closed:
                conn.rollback()
        head = -1 if value is None else int(value)
        return head if self.end_tid is None else min(head, self.end_tid)

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
                head = self._head() if self.partition is not None else None
                more, complete = self._query(self._after, room, max(self.budget - used, 1))
                rows.extend(more)
                if complete and head is not None:
                    # Every commit up to head was visible to that read (commits never
                    # un-happen), and it found no more of the partition's rows.
                    self.passed_tid = max(head, rows[-1][0] if rows else self.tid, self.passed_tid or -1)
            else:
                complete = False
        if rows:
            self.tid, self.zoid = rows[-1][0], rows[-1][1]
        self.mid_transaction = not complete
        self.caught_up = complete
        return rows
