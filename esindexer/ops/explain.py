"""``esindexer explain ZOID``: everything esindexer knows about one object, in one place.

The first thing to run when someone says "I can't find X": the object's current record
in the database, what it converts to (or why it does not), which index it routes to and
the document there, its dead letters, a captured pack deletion not yet applied, which
documents reference it, and a verdict in one sentence that ties these together. Every
part is read at the moment of asking; the record is converted as the service would
convert it (never running pickle code), except a record that crashed the converter
before (a ``crashed`` dead letter at the same tid), which is not converted again here.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from esindexer.config import Settings
from esindexer.convert.configure import ALWAYS_SKIPPED
from esindexer.convert.jsonifier import Jsonifier, Kind
from esindexer.documents import DocumentBuilder
from esindexer.es.fields import unmapped_of
from esindexer.source import deadletters, deletions, pg, progress
from esindexer.source.tid import tid_to_datetime

#: Referencing documents listed at most (the total is always given).
REFERRERS_SHOWN = 20

_HEX16 = re.compile(r"[0-9a-fA-F]{16}")


def parse_zoid(text: str) -> int:
    """A zoid from ``42``, ``0x2a`` or ZODB's 16 hex digits (``000000000000002a``, as
    ``repr(oid)`` and RelStorage's logs show it); ValueError with a one-line reason."""
    value = text.strip()
    try:
        if value.lower().startswith("0x") or _HEX16.fullmatch(value):
            zoid = int(value, 16)
        else:
            zoid = int(value, 10)
    except ValueError:
        raise ValueError(f"not an object id: {text!r} (give a zoid such as 42, 0x2a or 000000000000002a)") from None
    if not 0 <= zoid < 2**63:
        raise ValueError(f"object id out of range: {text!r}")
    return zoid


def _when(tid: int | None) -> str | None:
    return tid_to_datetime(tid).isoformat() if tid is not None and tid > 0 else None


def skip_reason(settings: Settings, class_name: str) -> str:
    """Why the configured converter skips ``class_name`` (or a transform dropped it)."""
    for pattern in ALWAYS_SKIPPED:
        if fnmatch.fnmatchcase(class_name, pattern):
            return f"class {class_name} is never indexed ({pattern}: its content is in other records)"
    for pattern in settings.class_exclude:
        if fnmatch.fnmatchcase(class_name, pattern):
            return f"class {class_name} matches ESINDEXER_CLASS_EXCLUDE pattern {pattern!r}"
    if not any(fnmatch.fnmatchcase(class_name, p) for p in settings.class_include):
        return f"class {class_name} matches no ESINDEXER_CLASS_INCLUDE pattern"
    return f"the transform {settings.transform} returned '' for class {class_name}"


def _record(conn: Any, zoid: int) -> dict[str, Any]:
    with conn.cursor() as cur:
        history = pg.keeps_history(cur)
        source, key = pg.current_revisions(cur)
        cur.execute(f"SELECT s.tid, s.state FROM {source} WHERE {key} = %s", (zoid,))
        row = cur.fetchone()
        revisions = None
        if history:
            cur.execute("SELECT count(*) FROM object_state WHERE zoid = %s", (zoid,))
            revisions = int(cur.fetchone()[0])
    conn.rollback()
    found: dict[str, Any] = {"history": "history-preserving" if history else "history-free",
                             "exists": row is not None, "tid": None, "committed_at": None, "size": None,
                             "revisions": revisions}
    if row is not None:
        state = bytes(row[1]) if row[1] is not None else None
        found.update(tid=int(row[0]), committed_at=_when(int(row[0])), size=len(state) if state else 0,
                     state=state)
    return found


def _dead_letters(conn: Any, client_id: str, zoid: int) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        if not pg.has_relation(cur, deadletters.TABLE):
            conn.rollback()
            return []
        cur.execute(f"SELECT kind, tid, class_name, index_name, reason, created_at FROM {deadletters.TABLE} "
                    "WHERE client_id = %s AND zoid = %s ORDER BY id", (client_id, zoid))
        rows = cur.fetchall()
    conn.rollback()
    return [{"kind": kind, "tid": tid, "committed_at": _when(tid), "class": class_name, "index": index,
             "reason": reason, "created_at": created.isoformat()}
            for kind, tid, class_name, index, reason, created in rows]


def _captured_deletions(conn: Any, client_id: str, zoid: int) -> list[dict[str, Any]]:
    """Captured deletions of ``zoid`` still in the log, and whether this client applied each.
    (The log is pruned once every client applied a row: an old deletion is not listed.)"""
    with conn.cursor() as cur:
        if not pg.has_relation(cur, deletions.LOG_TABLE) or not pg.has_relation(cur, deletions.CURSOR_TABLE):
            conn.rollback()
            return []
        cur.execute(
            f"SELECT d.id, d.tid, d.deleted_at, (d.xid, d.id) > (COALESCE(c.last_xid, '0'::xid8), "
            f"COALESCE(c.last_id, 0)) FROM {deletions.LOG_TABLE} d LEFT JOIN {deletions.CURSOR_TABLE} c "
            "ON c.client_id = %s WHERE d.zoid = %s ORDER BY d.id", (client_id, zoid))
        rows = cur.fetchall()
    conn.rollback()
    return [{"tid_of_last_state": tid, "deleted_at": at.isoformat(), "applied": not pending}
            for _id, tid, at, pending in rows]


def _documents(es: Any, indices: tuple[str, ...], zoid: int) -> dict[str, Any]:
    """The document of ``zoid`` in each routed index that holds one."""
    found: dict[str, Any] = {}
    lenient = es.options(ignore_status=404)
    for index in indices:
        answer = lenient.get(index=index, id=str(zoid), source_includes=["class", "tid", "committed_at", "refs"])
        if answer.meta.status == 200 and answer.get("found"):
            body = answer["_source"]
            found[index] = {"version": int(answer["_version"]), "tid": body.get("tid"), "class": body.get("class"),
                            "committed_at": body.get("committed_at"), "references": body.get("refs", [])}
    if found:  # fields kept in _source but not indexed: a search on them misses this object
        for index, fields in unmapped_of(es, tuple(found), zoid).items():
            found[index]["unmapped_fields"] = fields
    return found


def _referrers(es: Any, indices: tuple[str, ...], zoid: int) -> dict[str, Any]:
    answer = es.search(index=",".join(indices), query={"term": {"refs": zoid}}, size=REFERRERS_SHOWN,
                       source_includes=["class"], track_total_hits=True, ignore_unavailable=True,
                       sort=[{"zoid": "asc"}])
    hits = answer["hits"]
    return {"total": int(hits["total"]["value"]),
            "shown": [{"zoid": int(h["_id"]), "class": h["_source"].get("class"), "index": h["_index"]}
                      for h in hits["hits"]]}


def explain(conn: Any, es: Any, settings: Settings, jsonifier: Jsonifier, builder: DocumentBuilder,
            zoid: int) -> dict[str, Any]:
    """The whole story of ``zoid`` as a dict (the JSON of ``explain --json``)."""
    client_id = settings.client_id
    record = _record(conn, zoid)
    state = record.pop("state", None)
    saved = progress.get_progress_tid(conn, client_id)
    letters = _dead_letters(conn, client_id, zoid)
    captured = _captured_deletions(conn, client_id, zoid)
    tid = record["tid"]
    conversion: dict[str, Any] | None = None
    routed: str | None = None
    if record["exists"]:
        crashed = any(letter["kind"] == "crashed" and letter["tid"] == tid for letter in letters)
        if crashed:
            conversion = {"kind": "crashed", "class": None,
                          "reason": "not converted again here: it crashed the converter (see dead letters)"}
        else:
            converted = jsonifier.convert((tid, zoid), state)
            conversion = {"kind": str(converted.kind), "class": converted.class_name}
            if converted.kind is Kind.OK:
                routed = builder.index_for_class(converted.class_name or "")
                conversion["json_bytes"] = len((converted.json_text or "").encode())
            elif converted.kind is Kind.SKIPPED:
                conversion["reason"] = skip_reason(settings, converted.class_name or "")
            elif converted.kind is Kind.DELETED:
                conversion["reason"] = "the current revision has no state (an undone creation or a deleteObject)"
            else:
                conversion["reason"] = converted.error
    documents = _documents(es, builder.indices, zoid)
    report: dict[str, Any] = {
        "zoid": zoid, "oid": f"0x{zoid:016x}", "client_id": client_id,
        "progress_tid": saved if saved > 0 else None,
        "record": record, "conversion": conversion, "index": routed, "documents": documents,
        "dead_letters": letters, "pack_deletions": captured,
        "pending_pack_deletion": any(not c["applied"] for c in captured),
        "referenced_by": _referrers(es, builder.indices, zoid),
    }
    if settings.documents == "objects":
        from esindexer.ops.objectexplain import describe

        report["object_model"] = model = describe(conn, settings, zoid, es, builder.indices)
        if record["exists"] and model["kind"] != "object":
            report["index"] = None  # nothing of it is its own document
    report["verdict"] = verdict(report)
    return report


def verdict(report: dict[str, Any]) -> str:
    """One sentence tying the parts together: where the object is, and why."""
    record, conversion, documents = report["record"], report["conversion"], report["documents"]
    routed, saved = report["index"], report["progress_tid"] or -1
    tid = record["tid"]
    pending_deletion = report["pending_pack_deletion"]
    letter = next((x for x in reversed(report["dead_letters"]) if x["tid"] == tid), None)
    elsewhere = sorted(set(documents) - {routed}) if documents else []
    if not record["exists"]:
        if not documents:
            return "not in the database (packed, deleted or never created) and not in the index"
        if pending_deletion:
            return "deleted from the database (a pack); the deletion is captured and not applied yet"
        return ("deleted from the database but still indexed in " + ", ".join(sorted(documents))
                + ": `esindexer verify --repair` removes it")
    assert conversion is not None
    behind = tid > saved
    model = report.get("object_model")
    if model is not None and model["kind"] != "object" and conversion["kind"] == "ok":
        return str(model["why"]) + ("" if not documents else "; yet a document is indexed: `esindexer verify --repair`")
    if conversion["kind"] == "ok":
        doc = documents.get(routed) if routed else None
        extra = f" (also a stale copy in {', '.join(elsewhere)}: verify --repair removes it)" if elsewhere else ""
        # The tid field says which state a document holds; its version may be above it after a
        # repair wrote over a hand change or a document of a lost transaction (compare.py).
        held = doc.get("tid") if doc is not None and isinstance(doc.get("tid"), int) else \
            doc["version"] if doc is not None else None
        if held == tid:
            return f"indexed in {routed} at its current tid{extra}"
        if held is not None and held > tid:
            return (f"the index holds a newer state (tid {held}) than the database: the database went back in "
                    "time (restored from a backup?); the service repairs it (docs/operations.md, After a "
                    "database restore), or `esindexer verify --repair`")
        if behind:
            return f"not indexed yet at tid {tid}: committed after the saved progress (tid {saved}){extra}"
        if letter is not None:
            return f"dead-lettered ({letter['kind']}) at its current tid: {letter['reason']}"
        what = "an older version" if doc is not None else "no document"
        return f"{routed} holds {what} although progress passed tid {tid}: `esindexer verify --repair` fixes it{extra}"
    if conversion["kind"] in ("skipped", "deleted"):
        why = conversion["reason"]
        if not documents:
            return f"not indexed: {why}"
        if behind:
            return f"{why}; the document is removed once tid {tid} is indexed (after the saved progress)"
        return f"{why}, yet indexed in {', '.join(sorted(documents))}: `esindexer verify --repair` removes it"
    if letter is not None:
        return f"dead-lettered ({letter['kind']}): {letter['reason']}"
    if behind:
        return f"not indexed yet; it will be dead-lettered when reached: {conversion['reason']}"
    return f"not convertible and not dead-lettered (cleared?): {conversion['reason']}"
