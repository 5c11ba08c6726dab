"""``esindexer explain ZOID``: one object's record, conversion, route, document, dead letters and referrers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from esindexer.cli.common import Command, connect
from esindexer.config import Settings
from esindexer.errors import ExitCode


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("zoid", metavar="ZOID", help="the object id: 42, 0x2a or 000000000000002a")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _lines(report: dict[str, Any]) -> list[str]:
    record, conversion = report["record"], report["conversion"]
    lines = [f"object      {report['zoid']} ({report['oid']})",
             f"verdict     {report['verdict']}"]
    if record["exists"]:
        lines.append(f"record      tid {record['tid']} committed {record['committed_at']}, {record['size']} bytes, "
                     f"{record['history']}" + (f", {record['revisions']} revision(s) kept"
                                               if record["revisions"] is not None else ""))
    else:
        lines.append(f"record      none ({record['history']}"
                     + (f", {record['revisions']} old revision(s) kept" if record["revisions"] else "") + ")")
    if conversion is not None:
        text = f"{conversion['kind']}" + (f", class {conversion['class']}" if conversion.get("class") else "")
        if conversion.get("reason"):
            text += f": {conversion['reason']}"
        lines.append(f"conversion  {text}")
    model = report.get("object_model")
    if model is not None:
        lines.append(f"object model {model['kind']}: {model['why']}")
        if "path" in model:
            lines.append(f"path        {model['path']} (parent {model['parent']}, depth {model['depth']}), "
                         f"{model['parts']['total']} part(s)" + (f": {', '.join(map(str, model['parts']['shown']))}"
                                                                 if model["parts"]["shown"] else ""))
        if "owner" in model:
            lines.append(f"owner       {model['owner']}" + (f" at {model['owner_path']}" if model["owner_path"] else ""))
        if "holders" in model:
            held = ", ".join(f"{h['zoid']} ({h['key'] if h['key'] is not None else 'structure'})"
                             for h in model["holders"]["shown"])
            lines.append(f"held by     {model['holders']['total']} record(s)" + (f": {held}" if held else ""))
    lines.append(f"routes to   {report['index'] or '-'}")
    for index, doc in report["documents"].items() or [("-", None)]:
        # A repair written over a hand change or a restored database's lost state leaves the
        # version above the tid the document holds: show both then.
        version = f"version {doc['version']} (tid)" if doc and doc.get("tid") in (None, doc["version"]) \
            else f"version {doc['version']}, tid {doc['tid']}" if doc else ""
        lines.append(f"document    {index}: {version}, committed {doc['committed_at']}, "
                     f"references {len(doc['references'])}" if doc else "document    none in any routed index")
    for letter in report["dead_letters"]:
        lines.append(f"dead letter {letter['kind']} at tid {letter['tid']} ({letter['created_at']}): "
                     f"{letter['reason']}")
    for deletion in report["pack_deletions"]:
        state = "applied" if deletion["applied"] else "pending"
        lines.append(f"pack        deleted {deletion['deleted_at']} (last state tid {deletion['tid_of_last_state']}), "
                     f"{state}")
    refs = report["referenced_by"]
    shown = ", ".join(f"{r['zoid']} ({r['class']})" for r in refs["shown"])
    lines.append(f"referenced  by {refs['total']} indexed document(s)" + (f": {shown}" if shown else "")
                 + (" ..." if refs["total"] > len(refs["shown"]) else ""))
    lines.append(f"progress    tid {report['progress_tid'] or '-'} (client id {report['client_id']})")
    return lines


def _explain(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.convert.configure import build_jsonifier
    from esindexer.documents import DocumentBuilder
    from esindexer.es.client import make_es_client
    from esindexer.ops.explain import explain, parse_zoid

    try:
        zoid = parse_zoid(args.zoid)
    except ValueError as exc:
        print(f"esindexer: {exc}", file=sys.stderr)
        return ExitCode.SETUP
    conn = connect(settings)
    es = make_es_client(settings).options(request_timeout=min(settings.es_request_timeout, 10.0))
    try:
        report = explain(conn, es, settings, build_jsonifier(settings), DocumentBuilder(settings), zoid)
    finally:
        conn.close()
        es.close()
    print(json.dumps(report, indent=2) if args.json else "\n".join(_lines(report)))
    return ExitCode.OK


COMMAND = Command(
    name="explain",
    help="everything known about one object: record, conversion, index, document, dead letters",
    description="The first command to run when someone cannot find an object: its current record "
                "(tid, commit time, size, history mode), what it converts to or why not, which index it "
                "routes to and the document there, its dead letters, a captured pack deletion not yet "
                "applied, the documents that reference it, and a one-line verdict. Reads PostgreSQL and "
                "Elasticsearch, writes nothing. Exit 2 for an id that is not a number.",
    groups=("source", "elasticsearch", "documents"),
    run=_explain,
    add_arguments=_arguments,
)
