"""Benchmark what an Elasticsearch request size limit below ``bulk_max_bytes`` costs.

Usage (servers from ``eval "$(scripts/services env)"``; run from the repository root)::

    PYTHONPATH=. .venv/bin/python bench/oversize.py [--batches 10] [--docs 500]

A managed Elasticsearch or a proxy in front of it often accepts less than the 8 MiB
esindexer sends by default, and answers HTTP 413. The sender splits a refused request
and remembers half the refused size as its ceiling (``esindexer/sink.py``). This
starts the small test node of ``tests/es_nodes.py`` (64 KiB
``http.max_content_length``, one write thread with a queue of one) and sends the same
batches (``--docs`` documents of ~470 bytes each, ~230 KiB per batch) twice, side by
side in one run:

- **without memory**: every batch is halved until its parts fit, as a sender that
  forgets would do;
- **with memory** (esindexer): the first batch teaches the limit, later batches are
  cut to size before they are sent.

It prints the requests sent, how many were refused, and the wall time of each, and
their ratios. Nothing is asserted; the figures go into docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import time

import orjson
from elasticsearch import Elasticsearch

from esindexer.config import load_settings
from esindexer.documents import DocumentBuilder
from esindexer.es.admin import ensure_indices
from esindexer.es.bulk import BulkSender
from tests import es_nodes


def run(es: Elasticsearch, builder: DocumentBuilder, batches: int, docs: int, remember: bool
        ) -> tuple[int, int, float]:
    outcomes: list[str] = []
    sender = BulkSender(es, on_request=lambda outcome, seconds: outcomes.append(outcome))
    if not remember:
        sender._learn_from_413 = lambda refused_bytes: None  # type: ignore[method-assign]
    body = orjson.dumps({"text": "x" * 400}).decode()
    started = time.monotonic()
    for batch in range(batches):
        # a new tid per round and per batch, so every write is a real write
        tid = 10_000 * (2 if remember else 1) + batch
        actions = [builder.index_action(tid, zoid, "bench.Doc", body)
                   for zoid in range(batch * docs, (batch + 1) * docs)]
        result = sender.send(actions)
        assert result.done_total == docs and not result.rejected, result
    return len(outcomes), outcomes.count("failed"), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--docs", type=int, default=500)
    args = parser.parse_args()
    home, java = os.environ.get("ESIT_ES_HOME"), os.environ.get("ESIT_ES_JAVA_HOME")
    if not home or not java:
        raise SystemExit('set ESIT_ES_HOME and ESIT_ES_JAVA_HOME (eval "$(scripts/services env)")')
    with es_nodes.local_node(home, java, os.environ.get("ESIT_ES_USER")) as url:
        es = Elasticsearch(url, request_timeout=60)
        settings = load_settings(env={"ESINDEXER_PG_DSN": "postgresql://unused@localhost/unused",
                                      "ESINDEXER_INDEX_PREFIX": "bench", "ESINDEXER_INDEX_REPLICAS": "0"})
        ensure_indices(es, settings)
        builder = DocumentBuilder(settings)
        run(es, builder, 2, args.docs, remember=True)  # warm-up, discarded
        figures = {name: run(es, builder, args.batches, args.docs, remember)
                   for name, remember in (("without memory", False), ("with memory", True))}
    print(f"{args.batches} batches of {args.docs} documents (~{args.docs * 470 // 1024} KiB each), "
          f"64 KiB request limit")
    print(f"{'sender':<16} {'requests':>8} {'refused':>8} {'seconds':>8}")
    for name, (requests, refused, seconds) in figures.items():
        print(f"{name:<16} {requests:>8} {refused:>8} {seconds:>8.2f}")
    (r0, f0, s0), (r1, f1, s1) = figures.values()
    print(f"with memory: {r0 / r1:.2f}x fewer requests, {f0 / max(f1, 1):.0f}x fewer refused, "
          f"{s0 / s1:.2f}x faster")


if __name__ == "__main__":
    main()
