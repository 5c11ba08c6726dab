"""``esindexer verify``: the index compared with the database, object by object."""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

from esindexer.cli.common import Command, connect, one_shot_sink
from esindexer.config import Settings
from esindexer.errors import SetupError


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repair", action="store_true",
                        help="write what differs (also over changes made by hand, never over a newer "
                             "commit; safe while the service runs), read it back, and report repaired "
                             "and still different apart")
    parser.add_argument("--deep", action="store_true",
                        help="also compare every document's body with what the current record converts "
                             "to (finds hand edits and a changed transform or converter; reads every body)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _examples(zoids: list[int]) -> str:
    return f"  (zoids {', '.join(map(str, zoids))})" if zoids else ""


def _print_text(report: object, repair: bool) -> None:
    from esindexer.ops.verify import Report

    assert isinstance(report, Report)
    apart = [f"{n} never indexed (classes skipped or excluded)" for n in [report.not_indexed] if n] + \
        [f"{n} unconvertible (dead letters)" for n in [report.unconvertible] if n]
    print(f"objects {report.objects}" + (f" ({', '.join(apart)})" if apart else "")
          + f", documents {report.documents}" + (", bodies compared" if report.deep else ""))
    print("differences" + ("" if report.clean else " (confirmed by a second read)") + ":")
    for kind, count in report.counts.items():
        print(f"  {kind:<8} {count}" + _examples(report.examples[kind]))
    lag = sum(report.lagging.values())
    if lag:
        print(f"lagging {lag} (the service has not indexed these commits yet, progress tid "
              f"{report.progress_tid}, or they changed under every read; left to the service, not in the "
              "exit code):")
        for kind, count in report.lagging.items():
            if count:
                print(f"  {kind:<8} {count}" + _examples(report.lagging_examples[kind]))
    if repair:
        print(f"repaired {report.repaired} (read back: now as the database says)")
        print(f"still different {report.remaining}" + (":" if report.remaining else ""))
        for kind, count in report.still.items():
            if count:
                print(f"  {kind:<8} {count}" + _examples(report.still_examples[kind]))


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.convert.configure import build_jsonifier
    from esindexer.documents import DocumentBuilder
    from esindexer.ops.restored import repair_walk
    from esindexer.ops.verify import verify

    if args.deep and settings.ingest_pipeline:
        raise SetupError("verify --deep compares bodies with what esindexer sends, and "
                         f"ESINDEXER_INGEST_PIPELINE ({settings.ingest_pipeline}) changes them on the way in; "
                         "run verify without --deep")
    from esindexer.observe.progress import ProgressReporter
    from esindexer.source.backlog import rows_after

    if settings.documents == "objects" and not args.repair:
        return _verify_objects(settings, args)
    conn = connect(settings)
    sink = one_shot_sink(settings)
    try:
        objects = rows_after(conn, 0)  # every current object: what verify walks
        conn.rollback()
        reporter = ProgressReporter("verify", objects.best_guess, exact=objects.exact,
                                    interval=settings.progress_interval) \
            if settings.progress_interval > 0 else None
        counted = (lambda n: reporter.add(rows=n)) if reporter is not None else None
        mark, cleared = None, False
        with reporter if reporter is not None else contextlib.nullcontext():
            if args.repair:  # also ends a "database behind the index" mark when it may
                report, mark, cleared = repair_walk(conn, sink, DocumentBuilder(settings), build_jsonifier(settings),
                                                    settings, deep=args.deep, progress=counted)
            else:
                report = verify(conn, sink, DocumentBuilder(settings), build_jsonifier(settings),
                                settings.worker_id, deep=args.deep, progress=counted)
    finally:
        conn.close()
        sink.es.close()
    behind = _behind(mark, cleared, report.remaining)
    if args.json:
        print(json.dumps({**report.as_dict(), **({"database_behind": behind} if behind else {})}, indent=2))
    else:
        (_print_objects if settings.documents == "objects" else _print_text)(report, args.repair)
        if behind:
            print(behind)
    return 1 if report.remaining else 0


def _verify_objects(settings: Settings, args: argparse.Namespace) -> int:
    """documents=objects: the object documents against the graph and the database."""
    from esindexer.convert.configure import build_jsonifier
    from esindexer.documents import DocumentBuilder
    from esindexer.ops.objectverify import verify_objects

    conn = connect(settings)
    sink = one_shot_sink(settings)
    try:
        report = verify_objects(conn, sink.es, DocumentBuilder(settings), build_jsonifier(settings),
                                settings, deep=args.deep, repair=args.repair)
    finally:
        conn.close()
        sink.es.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_objects(report, repair=False)
    return 1 if report.remaining else 0


def _print_objects(report: Any, repair: bool) -> None:
    print(f"objects in the tree {report.objects}, object documents {report.documents}")
    print("differences (confirmed by a second read):")
    for kind, count in report.counts.items():
        print(f"  {kind:<8} {count}" + _examples(report.examples[kind]))
    if report.lagging:
        print(f"lagging {report.lagging} (not applied by the service yet; left to it, not in the exit code)")
    if report.pending_deletions:
        print(f"pending pack deletions {report.pending_deletions} (captured, not applied by the service yet; "
              "what they change is counted as lagging)")
    if repair:
        print(f"repaired {report.repaired} (read back: now as the database says)")
        print(f"still different {report.still_different}")


def _behind(mark: dict[str, object] | None, cleared: bool, remaining: int) -> str | None:
    """What became of the mark of a database found behind the index (None: there was none)."""
    if mark is None:
        return None
    if cleared:
        return ("database behind the index: repaired (no difference left after the service had re-read the "
                "restored records); the mark is removed")
    if remaining:
        return (f"database behind the index (found {mark['detected_at']}): the mark stays while differences "
                "remain (above)")
    return (f"database behind the index (found {mark['detected_at']}): the mark stays: when this walk began "
            f"the service had not indexed up to the restored database's newest tid ({mark['database_tid']}), "
            "or it found the database behind again meanwhile; let it catch up (esindexer status) and run "
            "this again")


COMMAND = Command(
    name="verify",
    help="compare the index with the database; --repair fixes it",
    description="Walk every current object in zoid order, convert it as the service "
                "would, and compare with the indexed documents: missing, stale, "
                "ahead (database restored to an earlier point), orphan and changed "
                "(--deep: bodies) documents. Each difference is confirmed by a second read; "
                "those due to the service's lag are listed apart. Exit 0 when no difference "
                "remains (lag aside), 1 when differences remain (with --repair: still "
                "different after the repair was read back).",
    groups=("source", "elasticsearch", "documents", "flow"),
    run=_verify,
    add_arguments=_arguments,
)
