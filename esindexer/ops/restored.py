"""After the database went back in time: one compare-and-repair walk that may end it.

The service finds a database behind its index (:mod:`esindexer.pipeline.rewind`) and
marks the indices. What makes the index equal to the restored database again is
``verify --repair`` (:mod:`esindexer.ops.verify`): it rewrites ``ahead`` documents on the
revision it read, writes ``missing`` ones and deletes ``orphan`` ones (those of objects
the database does not have), each confirmed and read back, safe beside the running
service (:mod:`esindexer.ops.compare`). The mark is removed only when

- the mark read *before* the walk is still the one on the indices after it (a second
  restore found meanwhile keeps its own mark),
- the service had saved progress at or past the database's newest tid of the mark before
  the walk began (so every record of the restored database had been re-read and sent;
  a difference the walk then leaves to the service as "lagging" belongs to a commit made
  after the restore, which the service writes as any other), and
- the walk, read back, left no difference.

Both the service (``ESINDEXER_REPAIR_AFTER_RESTORE=auto``) and ``esindexer verify
--repair`` come through here.
"""

from __future__ import annotations

import logging
from typing import Any

from esindexer.config import Settings
from esindexer.convert.configure import build_jsonifier
from esindexer.convert.jsonifier import Jsonifier
from esindexer.documents import DocumentBuilder
from esindexer.es.sink import ElasticsearchSink
from esindexer.ops.verify import Report, verify
from esindexer.pipeline.rewind import check, reread_to
from esindexer.source import pg

log = logging.getLogger(__name__)


def repair_walk(conn: Any, sink: ElasticsearchSink, builder: DocumentBuilder, jsonifier: Jsonifier,
                settings: Settings, **options: Any) -> tuple[Report | Any, dict[str, Any] | None, bool]:
    """The check of :mod:`esindexer.pipeline.rewind` (marking what it finds), ``verify
    --repair`` (``options`` go to :func:`~esindexer.ops.verify.verify`), then the mark
    removed if the module docstring's three conditions hold: ``(report, the mark in force
    before the walk, whether it was removed)``."""
    # Check first (and mark what is found): a walk run before the service saw the restore
    # must not repair the evidence away and leave the records the service has still to
    # re-read without a mark that waits for them.
    mark, _, _ = check(conn, sink, settings.worker_id)
    ready = mark is not None and reread_to(conn, settings, int(mark["database_tid"]))
    if settings.documents == "objects":
        from esindexer.ops.objectverify import verify_objects

        report: Any = verify_objects(conn, sink.es, builder, jsonifier, settings, repair=True,
                                     deep=bool(options.get("deep")))
    else:
        report = verify(conn, sink, builder, jsonifier, settings.worker_id, repair=True, **options)
    cleared = False
    if ready and report.remaining == 0 and sink.behind_mark() == mark:
        sink.set_behind_mark(None)
        cleared = True
    return report, mark, cleared


def service_repair(settings: Settings) -> bool:
    """One walk for the service's :class:`~esindexer.pipeline.rewind.Resync`, on connections
    of its own; logs what it found and did. True when the mark was removed."""
    conn = pg.connect(settings, "repair after restore")
    sink = ElasticsearchSink(settings)
    try:
        report, _, cleared = repair_walk(conn, sink, DocumentBuilder(settings), build_jsonifier(settings),
                                         settings)
    finally:
        conn.close()
        sink.es.close()
    found = ", ".join(f"{kind} {count}" for kind, count in report.counts.items())
    level = logging.INFO if cleared else logging.WARNING
    log.log(level, "repair walk after the database went back in time: %d objects, %d documents; found %s; "
                   "repaired %d; still different %d%s", report.objects, report.documents, found,
            report.repaired, report.remaining, "" if cleared else "; walking again later",
            extra={"differences": report.counts, "repaired": report.repaired, "still_different": report.still})
    return cleared
