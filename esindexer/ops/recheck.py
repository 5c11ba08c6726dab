"""Looking again: a difference confirmed by fresh reads before it is reported, and after a
write, what left the database meanwhile deleted.

:func:`confirmed` is how ``verify`` tells drift from the race between its two reads and
from the service's lag: each candidate is read again, the index (realtime, no refresh)
*before* the database, with the service's progress and unapplied pack deletions read
before the index, and once more after the database, so that a difference is reported
only when the document stayed the same revision across the database read.

:func:`delete_if_gone`: ``verify --repair`` and ``dead-letters --redeliver`` read an
object's state, convert it and write it, outside the service's ordering of writes and
pack deletions (see docs/architecture.md, "Guarantees about deletions"). This is the
step that keeps them from bringing a packed object back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from esindexer.convert.jsonifier import Jsonifier
from esindexer.documents import Action, DocumentBuilder
from esindexer.es.scan import Held, held_now
from esindexer.ops.compare import Difference, Expected, differences, expect, lagging
from esindexer.sink import Sink
from esindexer.source import deletions
from esindexer.source.pg import current_states
from esindexer.source.progress import get_progress_tid

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



@dataclass
class Context:
    """What every re-read needs: both servers, the conversion, the known dead letters."""

    conn: Any
    es: Any
    indices: tuple[str, ...]
    builder: DocumentBuilder
    jsonifier: Jsonifier
    client_id: str
    letters: Collection[tuple[int, int]]
    deep: bool = False


@dataclass
class Confirmed:
    """Differences that held across fresh reads (``real``), and those explained by the
    service's lag or by documents changing under every read (``lagging``), by zoid."""

    real: dict[int, list[Difference]] = field(default_factory=dict)
    lagging: dict[int, list[Difference]] = field(default_factory=dict)
    progress: int = -1


def _revisions(held: list[Held]) -> set[tuple[str, int, int, int]]:
    return {h.revision() for h in held}


def confirmed(ctx: Context, zoids: list[int], attempts: int = 3, pause: float = 0.2) -> Confirmed:
    """Re-read ``zoids`` and sort what still differs into real drift and lag.

    Order of the reads, and why: the service's progress and its unapplied deletions
    first, then the documents, then the database, then the deletions and the documents
    again. A record at or below that progress had been acknowledged before the documents
    were read, so a document missing or older is drift; above it, lag. A document that
    changed between the two index reads is read again after ``pause`` (a live writer),
    up to ``attempts`` times, and is then reported as lag rather than guessed at."""
    out = Confirmed()
    todo = sorted(set(zoids))
    for attempt in range(attempts):
        if not todo:
            break
        if attempt:
            time.sleep(pause)
        progress = get_progress_tid(ctx.conn, ctx.client_id)
        unapplied = deletions.unapplied_zoids(ctx.conn, ctx.client_id, todo)
        held = held_now(ctx.es, ctx.indices, todo, ctx.deep)
        states = current_states(ctx.conn, todo)
        unapplied |= deletions.unapplied_zoids(ctx.conn, ctx.client_id, todo)
        out.progress = progress
        suspects: dict[int, list[Difference]] = {}
        for zoid in todo:
            expected: Expected = expect(ctx.builder, ctx.jsonifier, ctx.letters, zoid, states.get(zoid))
            for difference in differences(expected, held[zoid], ctx.deep):
                if lagging(expected, difference, progress, unapplied):
                    out.lagging.setdefault(zoid, []).append(difference)
                else:
                    suspects.setdefault(zoid, []).append(difference)
        again = held_now(ctx.es, ctx.indices, list(suspects), ctx.deep)
        todo = []
        for zoid, found in suspects.items():
            if _revisions(again[zoid]) == _revisions(held[zoid]):
                out.real[zoid] = found
            elif attempt < attempts - 1:
                todo.append(zoid)
                out.lagging.pop(zoid, None)  # read again from scratch
            else:  # still changing under every read: a live writer, reported as lag
                out.lagging.setdefault(zoid, []).extend(found)
    return out
