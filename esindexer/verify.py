"""Verify: compare the index with the database, object by object, and optionally repair it.

The service keeps the index right by construction; this is the check an operator runs
after an incident (a restored Elasticsearch snapshot, an index deleted by hand, a pack
while everything was down) to *know* it is right. It walks the database's current
objects in zoid order, a page at a time, converts each one as the service would, reads
the documents of the same zoid range from the alias, and sorts every difference into:

- ``missing``: the object should be indexed and is not;
- ``stale``: the document carries an older tid than the object;
- ``ahead``: the document carries a newer tid than the database (the database was
  restored to an earlier point: its objects are re-indexed with their current state);
- ``orphan``: a document whose object is gone, or is now skipped or deleted.

Objects whose record is in the dead-letter table at their current tid are expected to
be missing and are not counted. With ``repair``, missing and stale documents are
written again and orphans deleted, through the same versioned bulk path as the service;
the service may keep running meanwhile, since versions keep a repair from overwriting
anything newer. Documents *ahead* of the database are reported, not repaired: their
higher version refuses an older write by design. After restoring a database to an
earlier point, re-index into a new prefix (docs/operations.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

from esindexer import deadletters, deletions
from esindexer._follow_pg import current_revisions, has_relation
from esindexer.deletions import indexed_zoids
from esindexer.documents import Action, DocumentBuilder
from esindexer.jsonpickle import Jsonifier
from esindexer.sink import BulkSender

log = logging.getLogger(__name__)

KINDS = ("missing", "stale", "ahead", "orphan")


@dataclass
class Report:
    """Counts per kind of difference, a few example zoids of each, and what was repaired."""

    objects: int = 0
    documents: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in KINDS})
    repaired: int = 0

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    def note(self, kind: str, zoid: int) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < 10:
            self.examples[kind].append(zoid)

    def as_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "documents": self.documents, "differences": self.counts,
                "examples": self.examples, "repaired": self.repaired, "clean": self.clean}


def _source_pages(conn: Any, page: int) -> Iterator[list[tuple[int, int, bytes | None]]]:
    """Current ``(zoid, tid, state)`` rows in zoid order, a short read transaction per page."""
    with conn.cursor() as cur:
        source, key = current_revisions(cur)
    conn.rollback()
    after = -1
    while True:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {key}, s.tid, s.state FROM {source} WHERE {key} > %s ORDER BY {key} LIMIT %s",
                        (after, page))
            rows = [(z, t, bytes(s) if s is not None else None) for z, t, s in cur.fetchall()]
        conn.rollback()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def _documents(es: Any, indices: tuple[str, ...], low: int, high: int | None) -> dict[int, list[tuple[str, int]]]:
    """``zoid -> [(index, tid)]`` for documents with ``low <= zoid`` (``<= high`` when given)."""
    found: dict[int, list[tuple[str, int]]] = {}
    for page in indexed_zoids(es, indices, low=low, high=high):
        for index, zoid, tid in page:
            found.setdefault(zoid, []).append((index, tid))
    return found


def verify(conn: Any, es: Any, builder: DocumentBuilder, jsonifier: Jsonifier, sender: BulkSender,
           client_id: str, *, repair: bool = False, page: int = 5000) -> Report:
    """Compare database and index; with ``repair``, fix what differs. Returns the report."""
    report = Report()
    # Compare with what has been written, not with what the last scheduled refresh showed.
    es.options(ignore_status=404).indices.refresh(index=",".join(builder.indices), ignore_unavailable=True)
    letters = _dead_lettered(conn, client_id)
    low = 0
    pages = _source_pages(conn, page)
    for rows in pages:
        high = rows[-1][0]
        docs = _documents(es, builder.indices, low, high)
        fixes: list[Action] = []
        for zoid, tid, state in rows:
            report.objects += 1
            have = docs.pop(zoid, [])
            report.documents += len(have)
            conversion = jsonifier.convert((tid, zoid), state)
            if conversion.kind == "ok":
                expected = builder.index_action(tid, zoid, conversion.class_name, conversion.json_text)
                mine = [doc_tid for index, doc_tid in have if index == expected.index]
                elsewhere = [(index, doc_tid) for index, doc_tid in have if index != expected.index]
                if elsewhere:  # a copy in an index this class no longer routes to
                    report.note("orphan", zoid)
                    fixes.extend(Action("delete", index, zoid, doc_tid, doc_tid + 1) for index, doc_tid in elsewhere)
                if not mine:
                    report.note("missing", zoid)
                    fixes.append(expected)
                elif mine[0] < tid:
                    report.note("stale", zoid)
                    fixes.append(expected)
                elif mine[0] > tid:
                    report.note("ahead", zoid)  # not repaired: versions refuse going back
            elif conversion.kind == "error" and (zoid, tid) in letters:
                continue  # known: it is in the dead-letter table
            elif conversion.kind == "error":
                report.note("missing", zoid)  # cannot be repaired here: the service dead-letters it
            elif have:  # deleted or skipped, yet indexed
                report.note("orphan", zoid)
                fixes.extend(Action("delete", index, zoid, tid, max(tid, doc_tid) + 1) for index, doc_tid in have)
        for zoid, have in docs.items():  # documents in this range whose object is gone
            report.documents += len(have)
            report.note("orphan", zoid)
            fixes.extend(Action("delete", index, zoid, doc_tid, doc_tid + 1) for index, doc_tid in have)
        if repair and fixes:
            result = sender.send(fixes)
            deletions.delete_if_gone(conn, builder, sender, fixes)
            report.repaired += result.done_total
            for rejected in result.rejected:
                log.error("repair of zoid %d refused: %s", rejected.action.zoid, rejected.reason,
                          extra={"zoid": rejected.action.zoid})
        low = high + 1
    # documents beyond the last object
    tail = _documents(es, builder.indices, low, None)
    tail_fixes = []
    for zoid, have in tail.items():
        report.documents += len(have)
        report.note("orphan", zoid)
        tail_fixes.extend(Action("delete", index, zoid, doc_tid, doc_tid + 1) for index, doc_tid in have)
    if repair and tail_fixes:
        report.repaired += sender.send(tail_fixes).done_total
    return report


def _dead_lettered(conn: Any, client_id: str) -> set[tuple[int, int]]:
    with conn.cursor() as cur:
        if not has_relation(cur, deadletters.TABLE):
            conn.rollback()
            return set()
        cur.execute(f"SELECT zoid, tid FROM {deadletters.TABLE} WHERE client_id = %s", (client_id,))
        rows = {(z, t) for z, t in cur.fetchall()}
    conn.rollback()
    return rows
