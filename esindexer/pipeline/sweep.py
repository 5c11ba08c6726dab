"""The start-up sweep: delete documents whose objects are no longer in the database.

Needed when deletions could have happened unseen: the capture trigger was missing at
start (a pack before esindexer was installed, or a role that may not create triggers).
The sweep walks the sink's documents in zoid order, a page at a time, and asks
PostgreSQL which of their objects are gone; each delete is versioned above the
document's own version.
"""

from __future__ import annotations

import logging
from typing import Any

from esindexer.documents import Action
from esindexer.observe.metrics import Metrics
from esindexer.sink import Sink
from esindexer.source import deletions

log = logging.getLogger(__name__)


def sweep(conn: Any, sink: Sink, metrics: Metrics) -> int:
    """Delete documents of objects no longer in the database. Returns how many."""
    removed = 0
    for page in sink.indexed():
        gone = set(deletions.missing_zoids(conn, sorted({doc.zoid for doc in page})))
        actions = [Action("delete", doc.index, doc.zoid, doc.tid, doc.tid + 1) for doc in page if doc.zoid in gone]
        if actions:
            result = sink.send(actions)
            removed += result.done_total
            metrics.record_documents("delete", "ok", result.done_total)
    log.info("sweep removed %d document(s) of objects gone from the database", removed,
             extra={"removed": removed})
    return removed
