"""Benchmark esindexer.source.follow: catch-up throughput and commit -> batch latency.

Usage (servers from ``eval "$(scripts/services env)"``)::

    .venv/bin/python bench/follow.py [--rows 100000] [--sizes 500,2000,10000]
                                     [--history both|free|preserving] [--commits 50]

It creates a scratch database per history mode, writes ``--rows`` objects with real
ZODB + RelStorage (10,000 per transaction, ~400-byte records), then:

- reads everything with ``updates(end_tid=latest)`` for each ``internal_batch_size``
  (best of three runs; rows/s and MB/s of state);
- starts an endless follower, commits ``--commits`` small transactions one at a time
  (waiting for the follower to be idle before each), and reports the time from the
  start / the return of ``transaction.commit()`` to the batch being yielded.

Nothing is asserted: this prints figures for docs/performance.md. The scratch databases
are dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from esindexer.source import follow  # noqa: E402
from tests.support import fresh_database, open_zodb  # noqa: E402


def populate(db, rows: int, per_txn: int = 10_000):
    import transaction
    from persistent.mapping import PersistentMapping

    tm = transaction.TransactionManager(explicit=True)
    conn = db.open(tm)
    tm.begin()
    made = 0
    while made < rows:
        batch = PersistentMapping()
        for i in range(min(per_txn - 1, rows - made - 1)):
            batch[i] = PersistentMapping({"n": made + i, "text": "lorem ipsum " * 24})
        conn.root()[f"b{made}"] = batch
        tm.commit()
        tm.begin()
        made += len(batch) + 1
    tm.abort()
    conn.close()


def catch_up(dsn: str, size: int) -> tuple[float, int, int]:
    end = follow.latest_tid(dsn)
    started = time.perf_counter()
    count = nbytes = 0
    for batch in follow.updates(dsn, end_tid=end, internal_batch_size=size):
        for _, _, data in batch:
            count += 1
            nbytes += len(data) if data else 0
    return time.perf_counter() - started, count, nbytes


def latency(dsn: str, db, commits: int) -> list[tuple[float, float, float]]:
    import transaction

    tm = transaction.TransactionManager(explicit=True)
    conn = db.open(tm)
    tm.begin()
    conn.root()["probe"] = 0
    tm.commit()
    start = follow.latest_tid(dsn)
    seen: dict[int, float] = {}
    cond = threading.Condition()
    updates = follow.updates(dsn, start_tid=start, batch_limit=1)

    def run():
        for batch in updates:
            rows = list(batch)
            with cond:
                seen[rows[0][0]] = time.perf_counter()
                cond.notify_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    spans = []
    try:
        for i in range(commits):
            time.sleep(0.05)
            tm.begin()
            conn.root()["probe"] = i
            t0 = time.perf_counter()
            tm.commit()
            t1 = time.perf_counter()
            tid = int.from_bytes(conn.root()._p_serial, "big")
            with cond:
                cond.wait_for(lambda: tid in seen, timeout=30)
                spans.append((t0, t1, seen[tid]))
    finally:
        updates.stop()
        thread.join(30)
        conn.close()
    return spans


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("ESIT_PG_DSN"),
                        help="admin DSN that may create databases (default $ESIT_PG_DSN)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--sizes", default="500,1000,2000,5000,10000")
    parser.add_argument("--history", choices=["both", "free", "preserving"], default="both")
    parser.add_argument("--commits", type=int, default=50)
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("no --dsn and no ESIT_PG_DSN")
    modes = {"both": [False, True], "free": [False], "preserving": [True]}[args.history]
    sizes = [int(s) for s in args.sizes.split(",")]
    for keep_history in modes:
        label = "history-preserving" if keep_history else "history-free"
        with fresh_database(args.dsn, prefix="esbench") as dsn:
            db = open_zodb(dsn, keep_history)
            t = time.perf_counter()
            populate(db, args.rows)
            print(f"{label}: wrote {args.rows} objects with ZODB in {time.perf_counter() - t:.1f} s")
            with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
                conn.autocommit = True
                cur.execute("VACUUM ANALYZE")
            for size in sizes:
                runs = [catch_up(dsn, size) for _ in range(3)]
                best, count, nbytes = min(runs)
                print(f"{label}: catch-up internal_batch_size={size:>6}: {count} rows in {best:.2f} s "
                      f"= {count / best:,.0f} rows/s, {nbytes / best / 1e6:.1f} MB/s of state")
            spans = latency(dsn, db, args.commits)
            db.close()

            def fmt(values):
                ms = sorted(1000 * v for v in values)
                return (f"median {statistics.median(ms):.1f} ms, p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, "
                        f"max {ms[-1]:.1f} ms")

            print(f"{label}: commit -> batch over {len(spans)} commits: from commit start "
                  f"{fmt([s - a for a, _, s in spans])}; from commit return {fmt([s - b for _, b, s in spans])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
