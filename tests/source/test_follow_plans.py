"""The follower's reads have the same plan whatever PostgreSQL's statistics say.

Issue 21, part 5: right after a bulk import into a history-preserving database (a new
client id, so the whole import is the backlog) the follower read 37 rows/s for minutes.
The statistics were stale (ANALYZE had seen the first few transactions): PostgreSQL
estimated ten rows on each side of ``current_object JOIN object_state`` and hashed every
revision newer than the position, for every page. The reads now take the page's keys
from ``current_object``'s tid index and look each state up by ``object_state``'s primary
key; these tests check the plans with no statistics, stale ones and fresh ones (autovacuum
is turned off, so nothing analyzes behind the test's back), and that a stale-statistics
backlog is read at a speed of thousands of rows per second.
"""

from __future__ import annotations

import time

import psycopg2
import pytest
import transaction
from BTrees.OOBTree import OOBTree

from esindexer.source import follow
from esindexer.source.pages import PLANNER, Pages
from tests.indexing import Page
from tests.support import both_history_modes

OBJECTS = 20_000
PER_TRANSACTION = 1000


def _load(zodb, db_dsn: str, keep_history: bool, analyze_after: int | None) -> None:
    """OBJECTS pages in an OOBTree, PER_TRANSACTION a transaction, autovacuum off;
    ANALYZE once ``analyze_after`` objects are in (None: never)."""
    admin = psycopg2.connect(db_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        for table in ("object_state", "current_object") if keep_history else ("object_state",):
            cur.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        conn = zodb.open()
        conn.root()["pages"] = tree = OOBTree()
        transaction.commit()
        for n in range(OBJECTS):
            tree[n] = Page(f"page {n}")
            if n % PER_TRANSACTION == PER_TRANSACTION - 1:
                transaction.commit()
                if n + 1 == analyze_after:
                    cur.execute("ANALYZE")
        transaction.commit()
        conn.close()
        if analyze_after == OBJECTS:
            cur.execute("ANALYZE")
        cur.execute("SELECT count(*) FROM pg_stats WHERE tablename IN ('object_state', 'current_object')")
        has_stats = cur.fetchone()[0] > 0
    admin.close()
    assert has_stats == (analyze_after is not None)


def _plan(db_dsn: str, sql: str, params: dict) -> str:
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute(PLANNER + "EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cur.fetchall())
    conn.close()
    return plan


def _positions(db_dsn: str) -> list[int]:
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT tid FROM object_state ORDER BY tid")
        tids = [row[0] for row in cur.fetchall()]
    conn.close()
    return [-1, tids[0], tids[len(tids) // 2], tids[-2]]


STATISTICS = pytest.mark.parametrize("analyze_after", [None, 2 * PER_TRANSACTION, OBJECTS],
                                     ids=["no-statistics", "stale-statistics", "fresh-statistics"])


@STATISTICS
@both_history_modes
def test_every_page_is_read_through_indexes(zodb, db_dsn, keep_history, analyze_after):
    _load(zodb, db_dsn, keep_history, analyze_after)
    for partition in (None, (1, 3)):
        pages = Pages(None, keep_history, -1, None, 2000, 16 * 1024 * 1024, partition)
        for tid in _positions(db_dsn):
            for sql in (pages._after, pages._within):
                plan = _plan(db_dsn, sql, {"tid": tid, "zoid": 5, "limit": 2000, "budget": 16 << 20})
                assert "Seq Scan" not in plan and "Hash" not in plan and "Merge Join" not in plan, plan
                if keep_history:
                    # States are looked up one key at a time, by the primary key only.
                    assert "object_state_tid" not in plan, plan
                    assert "using object_state_pk on object_state o" in plan, plan


@both_history_modes
def test_a_backlog_with_stale_statistics_is_read_quickly(zodb, db_dsn, keep_history):
    _load(zodb, db_dsn, keep_history, analyze_after=2 * PER_TRANSACTION)
    conn = psycopg2.connect(db_dsn, options="-c statement_timeout=60000")
    conn.autocommit = True
    started = time.monotonic()
    rows = sum(1 for batch in follow.updates(conn, end_tid=2**62, internal_batch_size=500) for _ in batch)
    took = time.monotonic() - started
    conn.close()
    assert rows >= OBJECTS
    assert rows / took > 2000, f"{rows / took:.0f} rows/s"
