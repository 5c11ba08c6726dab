"""``esindexer reindex --to PREFIX``: a new generation, built, verified and published in one command."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from esindexer.cli.common import ALL_GROUPS, Command, connect
from esindexer.config import Settings
from esindexer.errors import ExitCode


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", required=True, metavar="PREFIX",
                        help="index prefix of the new generation (give the same one to resume)")
    parser.add_argument("--new-client-id", metavar="ID",
                        help="client id the new generation's progress is kept under (default: PREFIX)")
    parser.add_argument("--delete-old", action="store_true",
                        help="after publishing and handing over, delete the old generation's indices, template and "
                             "progress (refused while an indexer with the old client id runs)")


def _reindex(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.es.client import make_es_client
    from esindexer.ops.reindex import Reindex

    try:
        job = Reindex(settings, args.to, args.new_client_id, delete_old=args.delete_old)
    except ValueError as exc:
        print(f"esindexer: {exc}", file=sys.stderr)
        return ExitCode.SETUP
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        job.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    es = make_es_client(settings)
    conn = connect(settings)
    try:
        # Each step as it is done: the operator restarts the service when told to.
        outcome = job.run(conn, es, say=lambda step: print(step, flush=True))
    finally:
        conn.close()
        es.close()
    for problem in outcome.problems:
        print(f"esindexer: {problem}", file=sys.stderr)
    if outcome.code == ExitCode.INTERRUPTED and received and received[-1] == signal.SIGTERM:
        return ExitCode.TERMINATED
    return outcome.code


COMMAND = Command(
    name="reindex",
    help="build a new generation beside the live one, verify it and switch the alias to it",
    description="Re-index without downtime in one resumable command: build the indices of --to PREFIX from the "
                "database under their own client id (bulk-load settings, restored afterwards), follow it live "
                "from then on, verify, and switch the alias (ESINDEXER_ALIAS, default the live prefix) only when "
                "the new generation exists, is not empty and has reached the newest commit read just before "
                "the switch. Searches through the alias never see it before. While a service follows the live "
                "generation, the command keeps following the new one after the switch until the service, "
                "restarted with the new prefix and client id as it says, stands by for it, and then hands over. "
                "Run with the live service's settings plus what should change (a mapping, routes). "
                "Interrupted (exit 130/143) or failed: run the same command again to resume.",
    groups=ALL_GROUPS,
    run=_reindex,
    add_arguments=_arguments,
)
