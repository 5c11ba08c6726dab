"""``esindexer alias``: the switch of a re-index without downtime, refused when unsafe."""

from __future__ import annotations

import argparse
import sys

from esindexer.cli.common import Command, connect
from esindexer.config import Settings
from esindexer.errors import ExitCode


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="switch even when the indices are missing, empty or behind the database")


def _alias(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.es.client import make_es_client
    from esindexer.ops.publish import readiness, switch

    es = make_es_client(settings)
    conn = connect(settings)
    try:
        ready = readiness(es, conn, settings)
        print(f"alias {ready.alias}: {', '.join(ready.current) or '(none)'} -> {', '.join(ready.target)} "
              f"({ready.documents} documents)")
        if ready.problems and not args.force:
            for problem in ready.problems:
                print(f"esindexer: refusing to switch: {problem}", file=sys.stderr)
            print("esindexer: the alias is unchanged; --force switches anyway", file=sys.stderr)
            return ExitCode.ERROR
        for problem in ready.problems:
            print(f"esindexer: switching anyway (--force): {problem}", file=sys.stderr)
        if ready.current == sorted(ready.target):
            print("  already there: nothing to change")
            return 0
        now = switch(es, settings)
    finally:
        conn.close()
        es.close()
    if sorted(now) != sorted(ready.target):  # re-read: say only what the cluster holds
        print(f"esindexer: after the switch the alias points at {', '.join(now) or 'nothing'}, not at "
              f"{', '.join(ready.target)}: another change raced this one", file=sys.stderr)
        return ExitCode.ERROR
    if ready.removed:
        print(f"  removed from {', '.join(ready.removed)}")
    if ready.added:
        print(f"  added to {', '.join(ready.added)}")
    return 0


COMMAND = Command(
    name="alias",
    help="point the alias at this prefix's indices (the switch of a re-index)",
    description="Atomically make ESINDEXER_ALIAS (default: the prefix) point at exactly the indices of "
                "ESINDEXER_INDEX_PREFIX, removing it from any other index: the last step of a re-index "
                "without downtime (docs/operations.md). Refused (exit 1, alias unchanged) when those "
                "indices do not exist, are empty, or their client id (ESINDEXER_CLIENT_ID) is behind the "
                "database; --force overrides.",
    groups=("elasticsearch", "documents"),
    settings=("pg_dsn", "client_id"),
    run=_alias,
    add_arguments=_arguments,
)
