"""Benchmark the follower's catch-up whatever PostgreSQL's statistics say (issue 21, part 5).

Usage (servers from ``eval "$(scripts/services env)"``)::

    .venv/bin/python bench/follow_stats.py [--objects 100000] [--per-txn 1000]
                                           [--history both|free|preserving] [--limit 60]

For each history mode and each state of the statistics — none (never analyzed), stale
(ANALYZE after the first 5 % of the objects) and fresh (ANALYZE at the end) — it creates
a scratch database with autovacuum off (so nothing analyzes behind its back), writes
``--objects`` pages into an ``OOBTree``, ``--per-txn`` a transaction (a bulk import), and
reads the whole backlog once with ``updates(end_tid=...)``, as a new client id does. A
read that takes more than ``--limit`` seconds is cancelled (statement_timeout) and the
rows read until then are reported. Nothing is asserted: this prints the figures of
docs/performance.md ("Plans that do not depend on statistics"). The scratch databases
are dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import psycopg2
from psycopg2.extensions import make_dsn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from esindexer.source import follow  # noqa: E402
from tests.indexing import Page  # noqa: E402
from tests.support import fresh_database, open_zodb  # noqa: E402


def load(dsn: str, keep_history: bool, objects: int, per_txn: int, analyze_after: int | None) -> None:
    import transaction
    from BTrees.OOBTree import OOBTree

    db = open_zodb(dsn, keep_history)
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    cur = admin.cursor()
    for table in ("object_state", "current_object") if keep_history else ("object_state",):
        cur.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    conn = db.open()
    conn.root()["pages"] = tree = OOBTree()
    transaction.commit()
    for n in range(objects):
        tree[n] = Page(f"page {n}")
        if n % per_txn == per_txn - 1:
            transaction.commit()
            if n + 1 == analyze_after:
                cur.execute("ANALYZE")
    transaction.commit()
    if analyze_after == objects:
        cur.execute("ANALYZE")
    conn.close()
    db.close()
    admin.close()


def catch_up(dsn: str, limit: float) -> tuple[int, float, bool]:
    """(rows, seconds, whether a read hit the limit)."""
    conn = psycopg2.connect(make_dsn(dsn, options=f"-c statement_timeout={int(limit * 1000)}"))
    conn.autocommit = True
    rows, started, cut = 0, time.monotonic(), False
    try:
        for batch in follow.updates(conn, end_tid=2**62):
            rows += sum(1 for _ in batch)
            if time.monotonic() - started > limit:
                cut = True
                break
    except psycopg2.errors.QueryCanceled:
        cut = True
    finally:
        conn.close()
    return rows, time.monotonic() - started, cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--per-txn", type=int, default=1000)
    parser.add_argument("--history", choices=("both", "free", "preserving"), default="both")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds before a read is given up")
    args = parser.parse_args()
    admin_dsn = os.environ.get("ESIT_PG_DSN")
    if not admin_dsn:
        sys.exit('ESIT_PG_DSN is not set: eval "$(scripts/services env)" first')
    modes = {"both": (False, True), "free": (False,), "preserving": (True,)}[args.history]
    stale = max(args.per_txn, args.objects // 20 // args.per_txn * args.per_txn)
    print("| history | statistics | rows | seconds | rows/s |")
    print("|---|---|---:|---:|---:|")
    for keep_history in modes:
        for label, analyze_after in (("none", None), (f"stale (after {stale:,})", stale),
                                     ("fresh", args.objects)):
            with fresh_database(admin_dsn, "esbench") as dsn:
                load(dsn, keep_history, args.objects, args.per_txn, analyze_after)
                rows, seconds, cut = catch_up(dsn, args.limit)
            note = " (a read hit the limit)" if cut else ""
            print(f"| {'preserving' if keep_history else 'free'} | {label} | {rows:,}{note} | {seconds:.1f} | "
                  f"{rows / seconds:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
