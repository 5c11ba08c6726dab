"""``esindexer status``: progress, lag and dead letters, read from PostgreSQL."""

from __future__ import annotations

import argparse
import json

from esindexer.cli.common import Command, connect
from esindexer.config import Settings


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.ops.status import status_lines, status_report

    conn = connect(settings)
    try:
        report = status_report(conn, settings)
    finally:
        conn.close()
    print(json.dumps(report, indent=2) if args.json else "\n".join(status_lines(report)))
    return 0


COMMAND = Command(
    name="status",
    help="show progress, lag and dead letters",
    description="Read progress, the newest commit and the dead-letter count from "
                "PostgreSQL (Elasticsearch is not contacted).",
    groups=(),
    settings=("pg_dsn", "client_id", "partition"),
    run=_status,
    add_arguments=_arguments,
)
