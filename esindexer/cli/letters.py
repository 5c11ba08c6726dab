"""``esindexer dead-letters``: what could not be indexed, and its redelivery once fixed."""

from __future__ import annotations

import argparse
import json
import sys

from esindexer.cli.common import Command, connect, one_shot_sink
from esindexer.config import Settings
from esindexer.errors import ExitCode


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redeliver", action="store_true",
                        help="index the dead-lettered objects again and clear what succeeds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _summary(conn: object, settings: Settings, as_json: bool) -> int:
    from esindexer.source.deadletters import summary

    groups = summary(conn, settings.worker_id)
    if as_json:
        print(json.dumps(groups, indent=2))
        return 0
    if not groups:
        print(f"no dead letters for client {settings.worker_id}")
    for group in groups:
        print(f"{group['letters']:>7}  {group['kind']:<13} {group['class_name'] or '-'}  "
              f"{group['cause']}  (objects {group['objects']}, last {group['last'][:19]})\n"
              f"         e.g. {group['example']}")
    return 0


def _redeliver(conn: object, settings: Settings, as_json: bool) -> int:
    from esindexer.convert.configure import build_jsonifier
    from esindexer.documents import DocumentBuilder
    from esindexer.ops.redeliver import redeliver
    from esindexer.pipeline.isolate import IsolatedConverter

    sink = one_shot_sink(settings)
    # Objects whose letters say "crashed" are converted in a child process: a record that
    # still kills the converter must not kill this command.
    isolated = IsolatedConverter(settings)
    try:
        builder, jsonifier = DocumentBuilder(settings), build_jsonifier(settings)
        objects = None
        if settings.documents == "objects":
            from esindexer.ops.objectletters import objects_hook

            objects = objects_hook(conn, settings, builder, jsonifier)
        report = redeliver(conn, builder, jsonifier, sink, settings.worker_id, isolated=isolated, objects=objects)
    finally:
        isolated.close()
        sink.es.close()
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"objects {report.objects}: indexed {report.indexed}, gone {report.gone}, "
              f"still failing {report.still_failing}; letters cleared {report.letters_cleared}")
        for zoid, reason in report.failures.items():
            print(f"  zoid {zoid}: {reason}")
    return 0 if not report.still_failing else 1


def _dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.source import deadletters, pg

    conn = connect(settings)
    try:
        pg.require_relstorage(conn)
        if not deadletters.table_exists(conn):
            # "no dead letters" would be untrue: nothing was ever recorded here.
            print(f"esindexer: no table {deadletters.TABLE} in this database: esindexer has not run against it "
                  "(is ESINDEXER_PG_DSN the database esindexer indexes?)", file=sys.stderr)
            return ExitCode.SETUP
        conn.rollback()
        if args.redeliver:
            return _redeliver(conn, settings, args.json)
        return _summary(conn, settings, args.json)
    finally:
        conn.close()


COMMAND = Command(
    name="dead-letters",
    help="summarise dead letters; --redeliver sends them again once fixed",
    description="Without options: dead letters grouped by kind, class and reason. "
                "With --redeliver: for every dead-lettered object, convert its "
                "current state with the current settings and index it again "
                "(versioned, safe while the service runs); the letters of what "
                "settles are deleted. Exit 0 when none is left failing, 1 otherwise.",
    groups=("source", "elasticsearch", "documents", "flow"),
    run=_dead_letters,
    add_arguments=_arguments,
)
