"""Benchmark the object graph alone (no Elasticsearch): a backfill's write and resolve, then
live batches on the resolved graph.

Usage (servers from ``eval "$(scripts/services up)"``)::

    .venv/bin/python bench/objectgraph.py [--items 20000] [--batch 5000] [--live 20]

The graph is made of facts, not pickles: a site holding 50 folders, each keeping its items
in a ``_tree`` BTree split into buckets, each item with two parts (a holder and a history
mapping), shuffled, written ``--batch`` records at a time as a backfill does
(:meth:`GraphStore.apply` with ``resolve=False``: written into the graph's tables
unresolved; here one after the other, where the service writes them on a thread of their
own while it reads the next batch), then resolved once (:meth:`GraphStore.resolve_all`).
Then ``--live`` one-record batches (an item's record
again) and one folder rename (every item of the folder re-pathed) on the resolved graph.
Figures are printed; nothing is asserted (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg2  # noqa: E402

from esindexer.objects.edges import RecordFacts  # noqa: E402
from esindexer.objects.store import GraphStore  # noqa: E402
from esindexer.source import graph  # noqa: E402
from tests.support import fresh_database  # noqa: E402

FOLDERS = 50


def corpus(items: int) -> tuple[list[RecordFacts], list[tuple[int, int]], list[tuple[int, str, bool]]]:
    """The facts, the (folder, tree) zoids and the site's edges."""
    facts = [RecordFacts(0, 1, "persistent.mapping.PersistentMapping", "", [(1, "site", False)])]
    zoid = 2
    folders, site_edges = [], []
    for f in range(FOLDERS):
        folders.append((zoid, zoid + 1))
        site_edges.append((zoid, f"f{f}", False))
        zoid += 2
    facts.append(RecordFacts(1, 1, "app.Folder", "site", site_edges))
    per = items // FOLDERS
    for f, (folder, tree) in enumerate(folders):
        held = []
        for i in range(per):
            facts.append(RecordFacts(zoid, 2, "app.Item", f"i{i}", [(zoid + 1, "holder", False),
                                                                   (zoid + 2, "history", False)]))
            facts.append(RecordFacts(zoid + 1, 2, "app.Holder", None, []))
            facts.append(RecordFacts(zoid + 2, 2, "persistent.mapping.PersistentMapping", None, []))
            held.append((zoid, f"i{i}", False))
            zoid += 3
        buckets = list(range(zoid, zoid + max(1, per // 30)))
        zoid += len(buckets)
        for b, bucket in enumerate(buckets):
            chained = [(buckets[b + 1], None, False)] if b + 1 < len(buckets) else []
            facts.append(RecordFacts(bucket, 2, "BTrees.OOBTree.OOBucket", None, held[b::len(buckets)] + chained))
        facts.append(RecordFacts(folder, 3, "app.Folder", f"f{f}", [(tree, "_tree", False)]))
        facts.append(RecordFacts(tree, 3, "BTrees.OOBTree.OOBTree", None, [(b, None, False) for b in buckets]))
    return facts, folders, site_edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--live", type=int, default=20)
    args = parser.parse_args()
    facts, folders, site_edges = corpus(args.items)
    random.Random(1).shuffle(facts)
    with fresh_database(os.environ["ESIT_PG_DSN"]) as dsn:
        conn = psycopg2.connect(dsn)
        graph.ensure_tables(conn)
        conn.commit()
        store = GraphStore(conn, "bench", lambda c: True)
        started = time.perf_counter()
        for start in range(0, len(facts), args.batch):
            store.apply(facts[start:start + args.batch], [], 10 + start, resolve=False)
        written = time.perf_counter() - started
        count, _version = store.resolve_all(10**8)
        total = time.perf_counter() - started
        print(f"backfill: {len(facts):,} records written in {written:.2f} s, resolved in {total - written:.2f} s "
              f"({len(facts) / total:,.0f} records/s); {count:,} objects in the tree")
        items = [f for f in facts if f.class_name == "app.Item"][: args.live]
        times = []
        for n, item in enumerate(items):
            t = time.perf_counter()
            store.apply([RecordFacts(item.zoid, 10**9 + n, item.class_name, item.name, item.edges)], [], 10**9 + n)
            times.append(time.perf_counter() - t)
        print(f"one-record batch: median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms "
              f"({len(times)} batches)")
        folder, tree = folders[3]
        t = time.perf_counter()
        dirty, _version = store.apply(
            [RecordFacts(folder, 10**9 + 100, "app.Folder", "renamed", [(tree, "_tree", False)]),
             RecordFacts(1, 10**9 + 100, "app.Folder", "site",
                         [(z, "renamed" if z == folder else k, False) for z, k, _l in site_edges])], [], 10**9 + 100)
        print(f"folder rename: {len(dirty):,} objects re-pathed in {(time.perf_counter() - t) * 1000:.0f} ms")
        conn.close()


if __name__ == "__main__":
    main()
