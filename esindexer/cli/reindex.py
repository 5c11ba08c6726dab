"""``esindexer reindex --to PREFIX``: a new generation, built, verified and published in one command."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING

from esindexer.cli.common import ALL_GROUPS, Command, connect, tune_gc
from esindexer.cli.exits import failed, finish
from esindexer.config import Settings
from esindexer.errors import ExitCode

if TYPE_CHECKING:
    from esindexer.ops.reindex import Reindex


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", required=True, metavar="PREFIX",
                        help="index prefix of the new generation (give the same one to resume)")
    parser.add_argument("--new-client-id", metavar="ID",
                        help="client id the new generation's progress is kept under (default: PREFIX)")
    parser.add_argument("--delete-old", action="store_true",
                        help="after publishing and handing over, delete the old generation's indices, template and "
                             "progress (refused while an indexer with the old client id runs)")


def _reindex(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.ops.reindex import Reindex
    from esindexer.pipeline.signals import SignalWatcher

    try:
        job = Reindex(settings, args.to, args.new_client_id, delete_old=args.delete_old)
    except ValueError as exc:
        print(f"esindexer: {exc}", file=sys.stderr)
        return ExitCode.SETUP
    received: list[int] = []

    def on_signal(signum: int, count: int) -> None:
        # On the signal thread, at once: also while the main thread waits in a statement.
        received.append(signum)
        job.stop(abandon=count > 1)

    with SignalWatcher(on_signal, lambda count: job.interrupt(abandon=count > 1)) as watcher:
        try:
            code = _run_job(settings, job, received)
        except BrokenPipeError:
            raise  # main(): stdout's reader went away
        except Exception as exc:
            code = failed(settings, "reindex", exc)  # as main() would, then the exit below
        # Its indexer ran in this process: a sender still waiting for Elasticsearch (a request
        # of the batch the stop cut short) must not keep it up, nor a signal meanwhile kill it.
        return finish(code, watcher.count)


def _run_job(settings: Settings, job: Reindex, received: list[int]) -> int:
    from esindexer.es.client import make_es_client

    es = make_es_client(settings)
    conn = connect(settings)
    tune_gc()  # the build is a backfill
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
