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
from typing import Any

from esindexer.convert.jsonifier import Jsonifier, Kind
from esindexer.documents import Action, DocumentBuilder
from esindexer.ops.recheck import delete_if_gone
from esindexer.sink import Sink
from esindexer.source import deadletters
from esindexer.source.pg import current_pages

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


def _documents(sink: Sink, low: int, high: int | None) -> dict[int, list[tuple[str, int]]]:
    """``zoid -> [(index, tid)]`` for documents with ``low <= zoid`` (``<= high`` when given)."""
    found: dict[int, list[tuple[str, int]]] = {}
    for page in sink.indexed(low=low, high=high):
        for doc in page:
            found.setdefault(doc.zoid, []).append((doc.index, doc.tid))
    return found


def verify(conn: Any, sink: Sink, builder: DocumentBuilder, jsonifier: Jsonifier,
           client_id: str, *, repair: bool = False, page: int = 5000) -> Report:
    """Compare database and index; with ``repair``, fix what differs. Returns the report."""
    report = Report()
    # Compare with what has been written, not with what the last scheduled refresh showed.
    sink.refresh()
    letters = deadletters.lettered_records(conn, client_id)
    low = 0
    for rows in current_pages(conn, page):
        high = rows[-1][0]
        docs = _documents(sink, low, high)
        fixes: list[Action] = []
        for zoid, tid, state in rows:
            report.objects += 1
            have = docs.pop(zoid, [])
            report.documents += len(have)
            conversion = jsonifier.convert((tid, zoid), state)
            if conversion.kind is Kind.OK:
                expected = builder.actions_for(tid, zoid, conversion)[0]
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
            elif conversion.kind is Kind.ERROR and (zoid, tid) in letters:
                continue  # known: it is in the dead-letter table
            elif conversion.kind is Kind.ERROR:
                report.note("missing", zoid)  # cannot be repaired here: the service dead-letters it
            elif have:  # deleted or skipped, yet indexed
                report.note("orphan", zoid)
                fixes.extend(Action("delete", index, zoid, tid, max(tid, doc_tid) + 1) for index, doc_tid in have)
        for zoid, have in docs.items():  # documents in this range whose object is gone
            report.documents += len(have)
            report.note("orphan", zoid)
            fixes.extend(Action("delete", index, zoid, doc_tid, doc_tid + 1) for index, doc_tid in have)
        if repair and fixes:
            result = sink.send(fixes)
            delete_if_gone(conn, builder, sink, fixes)
            report.repaired += result.done_total
            for rejected in result.rejected:
                log.error("repair of zoid %d refused: %s", rejected.action.zoid, rejected.reason,
                          extra={"zoid": rejected.action.zoid})
        low = high + 1
    # documents beyond the last object
    tail = _documents(sink, low, None)
    tail_fixes: list[Action] = []
    for zoid, have in tail.items():
        report.documents += len(have)
        report.note("orphan", zoid)
        tail_fixes.extend(Action("delete", index, zoid, doc_tid, doc_tid + 1) for index, doc_tid in have)
    if repair and tail_fixes:
        report.repaired += sink.send(tail_fixes).done_total
    return report


