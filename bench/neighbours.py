"""What the search node spends per document, by who else runs on the machine: the raw bulk
alone, the raw bulk beside a process spinning on a share of a core, and esindexer.

Usage (servers from ``eval "$(scripts/services env)"``)::

    .venv/bin/python bench/neighbours.py [--objects 100000] [--rounds 3] [--duty 0.3,1.0] [--no-esindexer]

Why: at 10^6 objects the node spent 195 CPU µs per document during ``esindexer run`` and
157 during the raw ``parallel_bulk`` of the very same documents (docs/performance.md). This
tells apart two explanations. If sharing the two cores made the node's work dearer, the raw
way beside a spinning process (``--duty``: the share of a core it takes) would cost the node
more per document. If it is what esindexer's run does to the node, only the esindexer rounds
would. Each round also prints the node's merges, refreshes and flushes, and the index's
segments and size at the end.

It writes bench/backfill.py's corpus with real ZODB + RelStorage into a scratch database,
builds the documents once (the raw way sends them serialised beforehand, 2 threads, 1,000 a
request, into an index made from esindexer's template), and interleaves the ways round by
round. Nothing is asserted: the figures go into docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import backfill  # noqa: E402

from esindexer.config import load_settings  # noqa: E402
from esindexer.convert.configure import build_jsonifier  # noqa: E402
from esindexer.documents import DocumentBuilder  # noqa: E402
from esindexer.es.admin import ensure_indices  # noqa: E402
from esindexer.es.client import make_es_client  # noqa: E402
from esindexer.source import follow  # noqa: E402
from tests.support import servers_from_env  # noqa: E402

#: A process that spins for ``duty`` of every 20 ms and sleeps the rest.
SPINNER = ("import time\nwhile True:\n t = time.perf_counter()\n"
           " while time.perf_counter() - t < {busy}: pass\n time.sleep({idle})")


def node_work(es: Any) -> dict[str, float]:
    """The node's CPU seconds and its indices' merge, refresh and flush counters."""
    stats = next(iter(es.nodes.stats(metric="process,indices")["nodes"].values()))
    i = stats["indices"]
    return {"cpu_s": stats["process"]["cpu"]["total_in_millis"] / 1000, "merges": i["merges"]["total"],
            "merge_s": i["merges"]["total_time_in_millis"] / 1000, "refreshes": i["refresh"]["total"],
            "flushes": i["flush"]["total"]}


def raw_round(es: Any, settings: Any, docs: list[dict[str, Any]], duty: float) -> float:
    """Send ``docs`` with ``parallel_bulk`` beside a spinner taking ``duty`` of a core (0: none)."""
    from elasticsearch.helpers import parallel_bulk

    ensure_indices(es, settings)
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER.format(busy=0.02 * duty, idle=0.02 * (1 - duty))]) \
        if duty > 0 else None
    try:
        started = time.perf_counter()
        for ok, item in parallel_bulk(es, docs, thread_count=2, chunk_size=1000, raise_on_error=False):
            if not ok:
                raise RuntimeError(f"raw bulk item failed: {item}")
        return time.perf_counter() - started
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def esindexer_round(db_dsn: str, es_url: str, prefix: str) -> float:
    """``python -m esindexer run --until-caught-up`` into ``prefix`` from no progress."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")}
    env.update(PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ESINDEXER_PG_DSN=db_dsn,
               ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=prefix, ESINDEXER_CLIENT_ID=prefix,
               ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT="0")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "esindexer", "run", "--until-caught-up"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duty", default="0.3,1.0", help="shares of a core the spinner takes, comma-separated")
    parser.add_argument("--no-esindexer", dest="esindexer", action="store_false", help="only the raw ways")
    args = parser.parse_args()
    duties = [float(x) for x in args.duty.split(",") if x]
    pg, es_url = servers_from_env()
    backfill.compiled(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with backfill.corpus_database(pg, args.objects) as db_dsn:
        settings = load_settings(env={"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url,
                                      "ESINDEXER_INDEX_PREFIX": "bench-neighbours", "ESINDEXER_INDEX_REPLICAS": "0"})
        jsonifier, builder = build_jsonifier(settings), DocumentBuilder(settings)
        docs = []
        for batch in follow.updates(db_dsn, end_tid=follow.latest_tid(db_dsn)):
            for tid, zoid, data in batch:
                _, action = builder.record(jsonifier, tid, zoid, data)
                if action is not None:
                    docs.append({"_op_type": "index", "_index": action.index, "_id": str(action.zoid),
                                 "version": action.version, "version_type": "external_gte", "_source": action.source})
        es = make_es_client(settings)
        print(f"{len(docs):,} documents of {args.objects:,} objects")
        print("| round | way | s | node CPU µs/doc | merges | merge s | refreshes | flushes | segments | index MB |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        ways = [("raw", 0.0)] + [(f"raw beside a spinner on {d:.0%} of a core", d) for d in duties]
        ways += [("esindexer run", -1.0)] if args.esindexer else []
        for n in range(1, args.rounds + 1):
            for name, duty in ways:
                prefix = "bench-neighbours" if duty >= 0 else f"bench-neighbours-esindexer-{n}"
                es.options(ignore_status=404).indices.delete(index=f"{prefix}*")
                before = node_work(es)
                seconds = raw_round(es, settings, docs, duty) if duty >= 0 else esindexer_round(db_dsn, es_url, prefix)
                work = {k: v - before[k] for k, v in node_work(es).items()}
                store = es.indices.stats(index=f"{prefix}*", metric="segments,store")["_all"]["primaries"]
                print(f"| {n} | {name} | {seconds:.1f} | {work['cpu_s'] / len(docs) * 1e6:.0f} | {work['merges']:.0f} "
                      f"| {work['merge_s']:.1f} | {work['refreshes']:.0f} | {work['flushes']:.0f} "
                      f"| {store['segments']['count']} | {store['store']['size_in_bytes'] / 1e6:.0f} |", flush=True)
                es.options(ignore_status=404).indices.delete(index=f"{prefix}*")
                if duty < 0:
                    backfill.forget_graph(db_dsn, prefix)
        es.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
