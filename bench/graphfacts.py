"""Benchmark what the object model's first pass does per record, in Python CPU: decode the
pickle, find its name, find its references with their keys (the C walk and the Python
one, side by side), and make its graph facts.

Usage (servers from ``eval "$(scripts/services up)"``)::

    .venv/bin/python bench/graphfacts.py [--objects 100000] [--rounds 2]

The records are ``bench/backfill.py``'s corpus, read once from a scratch database. The
collector is off while timing (the service's is tuned so that it costs little: see
docs/performance.md, *Fixed costs*). Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import backfill  # noqa: E402

from esindexer.config import load_settings  # noqa: E402
from esindexer.convert.configure import build_jsonifier  # noqa: E402
from esindexer.objects import edges  # noqa: E402
from esindexer.source import follow  # noqa: E402
from tests.support import servers_from_env  # noqa: E402


def per_record(label: str, seconds: float, records: int) -> str:
    return f"{label} {seconds:.2f} s ({seconds * 1e6 / records:.1f} us/record)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000, help="objects of bench/backfill.py's corpus")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the records (each is printed)")
    args = parser.parse_args(argv)
    pg, _ = servers_from_env()
    with backfill.corpus_database(pg, args.objects) as dsn:
        rows = [(tid, zoid, bytes(data)) for batch in follow.updates(dsn, end_tid=follow.latest_tid(dsn))
                for tid, zoid, data in batch if data is not None]
    settings = load_settings(env={"ESINDEXER_PG_DSN": "postgresql://x@localhost/x", "ESINDEXER_DOCUMENTS": "objects"})
    jsonifier = build_jsonifier(settings)
    print(f"{len(rows):,} records; Python CPU per pass (process_time), the collector off")
    walks = [("C walk", edges.walk), ("Python walk", edges.walk_py)]
    gc.disable()
    for round_ in range(1, args.rounds + 1):
        t = time.process_time()
        decoded = [(zoid, jsonifier.decode((tid, zoid), data)) for tid, zoid, data in rows]
        out = [per_record("decode", time.process_time() - t, len(rows))]
        t = time.process_time()
        for zoid, d in decoded:
            edges.record_name(zoid, d.state)
        out.append(per_record("name", time.process_time() - t, len(rows)))
        for label, walk in walks:
            edges.walk = walk
            t = time.process_time()
            for _zoid, d in decoded:
                edges.record_edges(d.class_name, d.state)
            out.append(per_record(f"references ({label})", time.process_time() - t, len(rows)))
        edges.walk = walks[0][1]
        print(f"round {round_}: " + "; ".join(out))
        del decoded
    gc.enable()
    return 0


if __name__ == "__main__":
    sys.exit(main())
