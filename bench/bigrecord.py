"""Measure the service's memory around one very large record (issue 21).

Usage (servers from ``eval "$(scripts/services up)"``; run from the repository root)::

    PYTHONPATH=. .venv/bin/python bench/bigrecord.py [--mb 150] [--neighbours 200]

It writes, with real ZODB + RelStorage, ``--neighbours`` small pages, one page whose
``body`` is a ``--mb`` MB string of random words, and ``--neighbours`` more pages, then
runs ``python -m esindexer run`` against the test Elasticsearch (whose default
``http.max_content_length`` is 100 MB, so a record above that is refused with HTTP 413
and dead-lettered) until every neighbour is indexed. It samples the process's resident
memory every 50 ms and prints the peak (``VmHWM``), the resident size once caught up
and 5 s later, each also as a multiple of the record's size. Nothing is asserted; the
figures go into docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import persistent
import psycopg2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.pipeline.processes import Service, service_env  # noqa: E402
from tests.support import fresh_database, open_zodb  # noqa: E402

WORDS = ["alpha", "beta", "gamma", "delta", "report", "budget", "meeting", "review", "draft"]


class Page(persistent.Persistent):
    """A page with a title and a body."""


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def write(db, mb: int, neighbours: int) -> int:
    import transaction

    rng = random.Random(21)
    conn = db.open()
    root = conn.root()
    for i in range(neighbours):
        p = Page()
        p.title, p.body = f"before {i}", " ".join(rng.choice(WORDS) for _ in range(50))
        root[f"before{i}"] = p
    transaction.commit()
    big = Page()
    words = " ".join(rng.choice(WORDS) for _ in range(200_000))
    big.title, big.body = "the big one", (words * (mb * 1_000_000 // len(words) + 1))[: mb * 1_000_000]
    root["big"] = big
    transaction.commit()
    del big, words
    for i in range(neighbours):
        p = Page()
        p.title, p.body = f"after {i}", " ".join(rng.choice(WORDS) for _ in range(50))
        root[f"after{i}"] = p
    transaction.commit()
    conn.close()
    return 2 * neighbours


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=150)
    parser.add_argument("--neighbours", type=int, default=200)
    args = parser.parse_args()
    dsn, es_url = os.environ["ESIT_PG_DSN"], os.environ["ESIT_ES_URL"]
    import urllib.request

    prefix = f"esbench-{uuid.uuid4().hex[:8]}"
    with fresh_database(dsn, prefix="esbench") as db_dsn:
        db = open_zodb(db_dsn, keep_history=False)
        try:
            expected = write(db, args.mb, args.neighbours)
        finally:
            db.close()
        with tempfile.TemporaryDirectory() as tmp:
            service = Service(service_env(db_dsn, es_url, prefix), Path(tmp) / "log")
            pid, peak, started = service.proc.pid, 0, time.monotonic()
            try:
                while time.monotonic() - started < 600:
                    if service.proc.poll() is not None:
                        raise SystemExit(f"the service exited ({service.proc.returncode}):\n{service.log()[-3000:]}")
                    peak = max(peak, _status_kb(pid, "VmRSS"))
                    done, head = service.metric("esindexer_last_indexed_tid"), \
                        service.metric("esindexer_source_latest_tid")
                    if done is not None and done > 0 and done == head:
                        break
                    time.sleep(0.05)
                hwm = _status_kb(pid, "VmHWM")
                after = _status_kb(pid, "VmRSS")
                time.sleep(5)
                later = _status_kb(pid, "VmRSS")
                urllib.request.urlopen(f"{es_url}/{prefix}-*/_refresh", data=b"").read()
                with urllib.request.urlopen(f"{es_url}/{prefix}-*/_count") as r:
                    indexed = int(__import__("json").loads(r.read())["count"])
            finally:
                service.stop()
                urllib.request.urlopen(urllib.request.Request(f"{es_url}/{prefix}-*", method="DELETE")).read()
            log = service.log()
            with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:  # what the service really kept
                cur.execute("SELECT kind, left(reason, 80) FROM esindexer_dead_letters")
                letters = cur.fetchall()
            pg.close()
    print("\n".join(line for line in log.splitlines() if "memory back" in line))
    size = args.mb * 1_000_000 / 1024
    print(f"record: {args.mb} MB; neighbours indexed: {indexed} (of {expected} + root)")
    print(f"peak RSS (VmHWM): {hwm / 1024:,.0f} MiB ({hwm / size:.1f}x the record); "
          f"sampled peak {peak / 1024:,.0f} MiB")
    print(f"RSS caught up: {after / 1024:,.0f} MiB; 5 s later: {later / 1024:,.0f} MiB ({later / size:.1f}x)")
    print(f"dead letters in the database: {len(letters)} {letters}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
