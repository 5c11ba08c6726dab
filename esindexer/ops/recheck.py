"""After writing states read earlier: look again, and delete what left the database meanwhile.

``verify --repair`` and ``dead-letters --redeliver`` read an object's state, convert it
and write it, outside the service's ordering of writes and pack deletions (see
docs/architecture.md, "Guarantees about deletions"). This is the step that keeps them
from bringing a packed object back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from esindexer.documents import Action, DocumentBuilder
from esindexer.sink import Sink
from esindexer.source import deletions

log = logging.getLogger(__name__)


def delete_if_gone(conn: Any, builder: DocumentBuilder, sink: Sink, written: Sequence[Action]) -> int:
    """After ``written`` index actions were acknowledged, delete the documents of those
    objects that have left the database meanwhile; returns how many were deleted.

    ``verify --repair`` and ``dead-letters --redeliver`` write states they read earlier,
    outside the service's ordering (a pack deletion is applied only once every earlier
    write of the object is settled). If the object was packed between their read and
    their write, only the delete's tombstone would refuse the late write, and Elasticsearch
    forgets tombstones after ``index.gc_deletes`` and on a crash. Checking the database
    *after* the write settled closes that: a deletion committed before the check is seen
    here, one committed after it is applied by the service after this write.
    """
    written = [action for action in written if action.op == "index"]
    if not written:
        return 0
    gone = set(deletions.missing_zoids(conn, sorted({action.zoid for action in written})))
    actions = [delete for action in written if action.zoid in gone
               for delete in builder.delete_actions(action.tid, action.zoid, version=action.tid + 1)]
    if not actions:
        return 0
    result = sink.send(actions)
    log.info("deleted %d document(s) written for objects that left the database meanwhile",
             result.done_total, extra={"count": result.done_total})
    return int(result.done_total)

