"""``esindexer verify``: the index compared with the database, object by object."""

from __future__ import annotations

import argparse
import json

from esindexer.cli.common import Command, connect, one_shot_sink
from esindexer.config import Settings


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repair", action="store_true",
                        help="index missing and stale documents and delete orphans (versioned, safe while "
                             "the service runs)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.convert.configure import build_jsonifier
    from esindexer.documents import DocumentBuilder
    from esindexer.ops.verify import verify

    conn = connect(settings)
    sink = one_shot_sink(settings)
    try:
        report = verify(conn, sink, DocumentBuilder(settings), build_jsonifier(settings),
                        settings.worker_id, repair=args.repair)
    finally:
        conn.close()
        sink.es.close()
    result = report.as_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"objects {report.objects}, documents {report.documents}, repaired {report.repaired}")
        for kind, count in report.counts.items():
            examples = ", ".join(map(str, report.examples[kind]))
            print(f"{kind:<8} {count}" + (f"  (zoids {examples})" if count else ""))
    unrepaired = report.counts["ahead"] if args.repair else sum(report.counts.values())
    return 0 if report.clean or (args.repair and not unrepaired) else 1


COMMAND = Command(
    name="verify",
    help="compare the index with the database; --repair fixes it",
    description="Walk every current object in zoid order, convert it as the service "
                "would, and compare with the indexed documents: missing, stale, "
                "ahead (database restored to an earlier point) and orphan documents. "
                "Exit 0 when clean (or repaired), 1 when differences remain.",
    groups=("source", "elasticsearch", "documents", "flow"),
    run=_verify,
    add_arguments=_arguments,
)
