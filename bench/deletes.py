"""What the versioned deletes of skipped records cost the search node, beside documents.

Usage (servers from ``eval "$(scripts/services env)"``; run from the repository root)::

    PYTHONPATH=. .venv/bin/python bench/deletes.py [--count 55000] [--rounds 2]

A backfill sends a versioned delete for every record it skips (BTree buckets, excluded
classes: ``docs/documents.md``, *Deletes*), so that a document an earlier run wrote for it
goes; on an empty index each one only writes a tombstone. The raw bulk of
``bench/backfill.py`` sends no such deletes, so this measures what they cost the node:
``--count`` versioned deletes of ids that do not exist, and as many small documents
(~600 bytes), each way into its own new index (no replicas, no refresh until the end),
the node's CPU seconds (``_nodes/stats``) around each, rounds interleaved. Nothing is
asserted; the figures go into docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backfill import es_cpu_seconds, search_client  # noqa: E402  # the sibling benchmark's helpers

_DOCUMENT = orjson.dumps({"title": "word " * 120, "n": 5})


def send(es, index: str, op: str, count: int) -> tuple[float, float]:
    """``count`` versioned ``op`` actions into a new ``index``; (node CPU s, wall s)."""
    es.options(ignore_status=404).indices.delete(index=index)
    es.indices.create(index=index, settings={"number_of_replicas": 0, "refresh_interval": "-1"})
    cpu, started = es_cpu_seconds(es), time.perf_counter()
    for start in range(0, count, 1000):
        lines = []
        for i in range(start, min(count, start + 1000)):
            lines.append(b'{"%s":{"_index":"%s","_id":"%d","version":%d,"version_type":"external_gte"}}'
                         % (op.encode(), index.encode(), i, 100 + i))
            if op == "index":
                lines.append(_DOCUMENT)
        lines.append(b"")
        answer = es.bulk(operations=b"\n".join(lines), filter_path="errors")
        if answer.get("errors"):
            raise RuntimeError(f"{op}: the node refused some actions")
    es.indices.refresh(index=index)
    took = es_cpu_seconds(es) - cpu, time.perf_counter() - started
    es.indices.delete(index=index)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=55_000, help="actions of each kind")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each way once per round")
    args = parser.parse_args()
    es = search_client(os.environ["ESIT_ES_URL"])
    print(f"{args.count:,} actions each way, node CPU s (wall s) per round:")
    for _ in range(args.rounds):
        for op in ("delete", "index"):
            cpu, wall = send(es, f"bench-deletes-{op}", op, args.count)
            print(f"  {op:6s} {cpu:6.2f} CPU s ({wall:.2f} s)")


if __name__ == "__main__":
    main()
