"""``esindexer status``: whether each indexer runs, how far behind it is, what its index holds."""

from __future__ import annotations

import argparse
import json
import sys

from esindexer.cli.common import Command, connect
from esindexer.config import Settings
from esindexer.errors import ExitCode
from esindexer.redact import redact


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--all", action="store_true",
                        help="every client id that has run against this database, not only "
                             "ESINDEXER_CLIENT_ID (--json then prints a list)")


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.es.client import make_es_client
    from esindexer.ops.status import UnknownClient, status_lines, status_reports

    conn = connect(settings)
    es = make_es_client(settings).options(request_timeout=min(settings.es_request_timeout, 10.0))
    failures: list[Exception] = []
    try:
        reports = status_reports(conn, settings, es, every_client=args.all, failures=failures)
    except UnknownClient as exc:
        print(f"esindexer: {redact(str(exc))}", file=sys.stderr)
        return ExitCode.SETUP
    finally:
        conn.close()
        es.close()
    if args.json:
        print(json.dumps(reports if args.all else reports[0], indent=2))
    else:
        print("\n\n".join("\n".join(status_lines(report)) for report in reports))
    if failures:  # what PostgreSQL knows is printed; the documents are not known: not a success
        sys.stdout.flush()
        raise failures[0]  # main() says what it was, with the exit code (5 unreachable, 2 refused)
    return ExitCode.OK


COMMAND = Command(
    name="status",
    help="show whether the indexer runs, its progress, rows behind, documents and dead letters",
    description="Per client id: whether an indexer holds its lock now, the saved progress (tid, its commit "
                "time, when it was saved), rows committed after it, lag, dead letters by kind, pack "
                "deletions not yet applied and the crash guard, from PostgreSQL; the documents in its "
                "indices and the alias, from Elasticsearch (shown as unknown when it cannot be "
                "reached: the rest is printed, then exit 5). Exit 2 for a client id that never ran against this database (the message "
                "names the client ids that have).",
    groups=("elasticsearch",),
    settings=("pg_dsn", "client_id", "partition", "index_prefix", "alias", "class_routes", "default_route",
              "crash_guard_after"),
    run=_status,
    add_arguments=_arguments,
)
