"""The Elasticsearch client's per-request work on a bulk request, the client's own
serializers beside esindexer's (esindexer/es/client.py), measured side by side in one run.

Usage::

    .venv/bin/python bench/client.py [--docs 1000] [--doc-bytes 1300] [--repeat 300]

For a request of ``--docs`` documents of about ``--doc-bytes`` bytes each (the backfill
corpus's mean is 1,366), it times, best of 5 rounds of ``--repeat`` calls:

- turning the body esindexer hands the client (one ``bytes`` object, already NDJSON)
  into the bytes sent: the client's NDJSON serializer copies it into a ``bytearray`` and
  back; esindexer's returns it as it is;
- reading the answer with the ``filter_path`` esindexer asks for
  (``errors,items.*.status,items.*.error``): the standard library's parser against orjson
  behind esindexer's check for numbers of 20 digits or more.

It prints milliseconds per request and per 1,000 documents, and the ratio. Nothing is
asserted; no server is needed. The figures go into docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from elasticsearch.serializer import JsonSerializer, NdjsonSerializer  # noqa: E402

from esindexer.es.client import _serializers  # noqa: E402


def best_ms(call, repeat: int) -> float:
    """Milliseconds per call, best of 5 rounds."""
    return min(timeit.repeat(call, number=repeat, repeat=5)) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1000, help="documents per bulk request")
    parser.add_argument("--doc-bytes", type=int, default=1300, help="bytes of each document's source")
    parser.add_argument("--repeat", type=int, default=300, help="calls per timing round")
    args = parser.parse_args()

    line = b'{"index":{"_index":"esindexer-objects","_id":"123456","version":292036783585787067,' \
           b'"version_type":"external_gte"}}\n'
    source = b'{"body":"' + b"x" * max(0, args.doc_bytes - 11) + b'"}\n'
    body = (line + source) * args.docs
    answer = json.dumps({"errors": False, "items": [{"index": {"status": 201}}] * args.docs}).encode()
    ours = _serializers()
    theirs = {"ndjson": NdjsonSerializer(), "json": JsonSerializer()}
    assert ours["application/x-ndjson"].dumps(body) == theirs["ndjson"].dumps(body)
    assert ours["application/json"].loads(answer) == theirs["json"].loads(answer)

    rows = [
        ("body out (NDJSON dumps)", lambda: theirs["ndjson"].dumps(body),
         lambda: ours["application/x-ndjson"].dumps(body)),
        ("answer in (JSON loads)", lambda: theirs["json"].loads(answer),
         lambda: ours["application/json"].loads(answer)),
    ]
    print(f"one bulk request: {args.docs:,} documents, body {len(body) / 1e6:.2f} MB, answer {len(answer) / 1e3:.1f} KB")
    print("| step | the client's (ms) | esindexer's (ms) | ratio | saved µs per document |")
    print("|---|---:|---:|---:|---:|")
    total = 0.0
    for name, before, after in rows:
        b, a = best_ms(before, args.repeat), best_ms(after, args.repeat)
        total += b - a
        print(f"| {name} | {b:.3f} | {a:.3f} | {a / b:.2f} | {(b - a) * 1e3 / args.docs:.2f} |")
    print(f"| both | | | | {total * 1e3 / args.docs:.2f} |")


if __name__ == "__main__":
    main()
