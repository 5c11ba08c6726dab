"""Command line: ``esindexer`` / ``python -m esindexer``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from esindexer import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esindexer",
        description=(
            "Keep Elasticsearch in step with a ZODB database stored by RelStorage in "
            "PostgreSQL: follow committed transactions, convert each object to JSON, "
            "write bulk upserts and deletes, and export lag metrics for Prometheus."
        ),
    )
    parser.add_argument("--version", action="version", version=f"esindexer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the indexing service in the foreground")
    sub.add_parser("status", help="show progress, lag and dead letters")
    sub.add_parser("install-trigger", help="install the change-notification trigger")
    sub.add_parser("config", help="print the effective configuration, secrets redacted")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    parser.error(f"{args.command}: not implemented yet")
    return 2
