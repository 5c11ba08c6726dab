"""``esindexer setup [--grant-to ROLE]``: esindexer's tables and triggers, made once by an administrator."""

from __future__ import annotations

import argparse

from esindexer.cli.common import Command, connect
from esindexer.config import Settings
from esindexer.errors import ExitCode


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grant-to", metavar="ROLE",
                        help="grant ROLE exactly what run, status, verify, dead-letters and alias need "
                             "(it then needs no CREATE right anywhere)")


def _setup(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.source.schema import create_all, grant

    conn = connect(settings)
    try:
        report = create_all(conn)
        for what in report.done:
            print(what)  # "created: ..." or, when it was there already, "present: ..."
        for what in report.missing:
            print(f"NOT created (this role may not): {what}")
        if args.grant_to:
            for statement in grant(conn, args.grant_to):
                print(f"granted: {statement}")
    finally:
        conn.close()
    return ExitCode.OK if not report.missing else ExitCode.ERROR


COMMAND = Command(
    name="setup",
    help="create esindexer's tables and triggers once, as an administrator; --grant-to ROLE",
    description="Create (idempotently) the tables esindexer keeps in the RelStorage database (progress, "
                "dead letters, pack-deletion log and cursor, crash guard, lease and standbys, the object graph of "
                "documents=objects with its staging tables) and its triggers (change "
                "notification, pack-deletion capture). Run it with ESINDEXER_PG_DSN naming a role that may "
                "create tables in the schema and triggers on RelStorage's tables. With --grant-to ROLE, "
                "ROLE gets exactly the rights the other commands use; run the service as ROLE. Exit 0 when "
                "everything is present, 1 when something could not be created.",
    groups=(),
    settings=("pg_dsn",),
    run=_setup,
    add_arguments=_arguments,
)
