"""Verify: compare the index with the database, object by object, and optionally repair it.

The service keeps the index right by construction; this is the check an operator runs
after an incident (a restored Elasticsearch snapshot, an index deleted by hand, a pack
while everything was down, a document edited by hand) to *know* it is right. It walks the
database's current objects in zoid order, a page at a time, converts each one as the
service would, reads the documents of the same zoid range from the index (with their
bodies under ``deep``), and sorts every difference into the kinds of
:data:`esindexer.ops.compare.KINDS`: ``missing``, ``stale``, ``ahead`` (the database was
restored to an earlier point), ``orphan`` and ``changed`` (a body that is not what the
current record converts to; ``deep`` compares every body).

A difference found by the walk is only a candidate: the page of the database and the
page of the index were read at different moments. Each is confirmed by fresh reads
(:func:`esindexer.ops.recheck.confirmed`) before it is reported, and one explained by
the service's lag (a record newer than its saved progress, a pack deletion it has not
applied) is reported apart, as ``lagging``, and neither repaired nor counted in the exit
code: the service writes it.

With ``repair``, each confirmed difference is written (the scheme that beats a hand
change but never a newer commit is in :mod:`esindexer.ops.compare`), then read back;
what still differs is written again, up to :data:`ROUNDS` times, and what differs after
that is reported as still different. ``repaired`` counts only differences the re-read
found gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from esindexer.convert.jsonifier import Jsonifier
from esindexer.documents import DocumentBuilder
from esindexer.es.repair import send_writes
from esindexer.es.scan import Held, held_pages
from esindexer.es.sink import ElasticsearchSink
from esindexer.ops.compare import KINDS, Difference, differences, expect
from esindexer.ops.recheck import Context, confirmed, delete_if_gone
from esindexer.source import deadletters
from esindexer.source.pg import current_pages
from esindexer.source.progress import get_progress_tid

log = logging.getLogger(__name__)

#: Write-and-read-back rounds of a repair before what still differs is reported.
ROUNDS = 3
#: Zoids listed per kind in the report.
EXAMPLES = 10
#: Objects per page with ``deep``: a page of documents is held with their bodies.
DEEP_PAGE = 1000


def _tally() -> dict[str, int]:
    return dict.fromkeys(KINDS, 0)


def _samples() -> dict[str, list[int]]:
    return {kind: [] for kind in KINDS}


@dataclass
class Report:
    """Differences per kind (confirmed drift, and lag apart), a few zoids of each, and,
    after a repair, what the re-read found repaired and what still differs."""

    objects: int = 0
    #: objects that have no document by design (a class skipped or excluded from indexing)
    not_indexed: int = 0
    #: objects whose record does not convert (dead letters: no document either)
    unconvertible: int = 0
    documents: int = 0
    deep: bool = False
    counts: dict[str, int] = field(default_factory=_tally)
    examples: dict[str, list[int]] = field(default_factory=_samples)
    lagging: dict[str, int] = field(default_factory=_tally)
    lagging_examples: dict[str, list[int]] = field(default_factory=_samples)
    repaired: int = 0
    still: dict[str, int] = field(default_factory=_tally)
    still_examples: dict[str, list[int]] = field(default_factory=_samples)
    progress_tid: int = -1

    @property
    def clean(self) -> bool:
        """No drift found (lag aside)."""
        return not any(self.counts.values())

    @property
    def remaining(self) -> int:
        """Differences left: after a repair, those still different; else all found."""
        return sum(self.still.values())

    @staticmethod
    def _note(counts: dict[str, int], examples: dict[str, list[int]], found: list[Difference]) -> None:
        for difference in found:
            counts[difference.kind] += 1
            if len(examples[difference.kind]) < EXAMPLES and difference.zoid not in examples[difference.kind]:
                examples[difference.kind].append(difference.zoid)

    def as_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "objects_not_indexed": self.not_indexed,
                "objects_unconvertible": self.unconvertible, "documents": self.documents, "deep": self.deep,
                "differences": self.counts, "examples": self.examples, "clean": self.clean,
                "lagging": self.lagging, "lagging_examples": self.lagging_examples,
                "progress_tid": self.progress_tid, "repaired": self.repaired,
                "still_different": self.still, "still_different_examples": self.still_examples}


def verify(conn: Any, sink: ElasticsearchSink, builder: DocumentBuilder, jsonifier: Jsonifier,
           client_id: str, *, repair: bool = False, deep: bool = False, page: int = 5000,
           progress: Callable[[int], None] | None = None) -> Report:
    """Compare database and index; with ``repair``, fix what differs. Returns the report.

    Memory is one page of records and one page of documents (bodies too with ``deep``).
    ``progress(n)`` is told each page's object count once it is settled (a progress bar)."""
    report = Report(deep=deep)
    page = min(page, DEEP_PAGE) if deep else page
    ctx = Context(conn, sink.es, sink.indices, builder, jsonifier, client_id,
                  deadletters.lettered_records(conn, client_id), deep)
    report.progress_tid = get_progress_tid(conn, client_id)
    # Compare with what has been written, not with what the last scheduled refresh showed.
    sink.refresh()
    low = 0
    for rows in current_pages(conn, page):
        high = rows[-1][0]
        held = _grouped(held_pages(ctx.es, ctx.indices, page, low, high, deep))
        candidates: list[int] = []
        for zoid, tid, state in rows:
            report.objects += 1
            have = held.pop(zoid, [])
            report.documents += len(have)
            expected = expect(builder, jsonifier, ctx.letters, zoid, (tid, state))
            report.not_indexed += expected.wanted == "delete"
            report.unconvertible += expected.wanted in ("error", "lettered")
            if differences(expected, have, deep):
                candidates.append(zoid)
        candidates.extend(held)  # documents in this range without an object in the page
        report.documents += sum(map(len, held.values()))
        _settle(ctx, sink, candidates, report, repair)
        if progress is not None:
            progress(len(rows))
        low = high + 1
    tail = _grouped(held_pages(ctx.es, ctx.indices, page, low, None, deep))  # beyond the last object
    report.documents += sum(map(len, tail.values()))
    _settle(ctx, sink, list(tail), report, repair)
    return report


def _grouped(pages: Any) -> dict[int, list[Held]]:
    found: dict[int, list[Held]] = {}
    for held_page in pages:
        for held in held_page:
            found.setdefault(held.zoid, []).append(held)
    return found


def _settle(ctx: Context, sink: ElasticsearchSink, candidates: list[int], report: Report, repair: bool) -> None:
    """Confirm the candidates of one page, count them, and repair what is real."""
    if not candidates:
        return
    found = confirmed(ctx, candidates)
    report.progress_tid = found.progress
    for diffs in found.lagging.values():
        report._note(report.lagging, report.lagging_examples, diffs)
    for diffs in found.real.values():
        report._note(report.counts, report.examples, diffs)
    if not found.real:
        return
    if not repair:
        for diffs in found.real.values():
            report._note(report.still, report.still_examples, diffs)
        return
    pending = dict(found.real)
    for _ in range(ROUNDS):
        writes = [d.fix for diffs in pending.values() for d in diffs if d.fix is not None]
        if not writes:
            break
        outcomes = send_writes(ctx.es, writes)
        for outcome in outcomes:
            if not outcome.written:
                # 409: the document changed since it was read; the re-read below says how.
                log.log(logging.INFO if outcome.status == 409 else logging.ERROR,
                        "repair of zoid %d not applied (HTTP %d %s)", outcome.write.action.zoid,
                        outcome.status, outcome.error, extra={"zoid": outcome.write.action.zoid})
        # Written at the tid: a delete at tid + 1 removes them if their object left meanwhile.
        # (What a conditional write or a create left has a higher version: the read back
        # below finds such an object gone and the next round deletes the document.)
        delete_if_gone(ctx.conn, ctx.builder, sink, [o.write.action for o in outcomes if o.at_tid])
        again = confirmed(ctx, list(pending))
        for zoid, diffs in again.lagging.items():  # overtaken by a newer commit: the service's now
            report._note(report.lagging, report.lagging_examples, diffs)
            pending.pop(zoid, None)
        for zoid in [zoid for zoid in pending if zoid not in again.real]:
            report.repaired += len(found.real[zoid])
            del pending[zoid]
        pending = {zoid: again.real[zoid] for zoid in pending}
        if not pending:
            break
    for diffs in pending.values():
        report._note(report.still, report.still_examples, diffs)
