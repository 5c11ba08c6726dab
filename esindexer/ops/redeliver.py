"""Redeliver dead letters: once their cause is fixed, index the objects again and clear them.

A dead letter records that an object *at one tid* could not be indexed. What to send
after the cause is fixed (a mapping changed, the class routed to its own index, the
transform or the converter mended) is not the stored document or record but the
object's **current** state, converted with the current settings: it may have changed
or gone since. So, for every zoid with dead letters of this client, redelivery reads the
current revision, converts it as the service would, and sends it through the same
versioned bulk path:

- indexed (or already there at that version): the zoid's letters up to that tid are
  deleted;
- the object is deleted or now skipped: a versioned delete is sent and the letters are
  deleted; an object packed away has nothing to send (the service's pack-deletion path
  removes its document) and its letters are deleted too;
- unconvertible or refused again: the letters stay, and the report says why.

Objects with a ``crashed`` letter (their conversion killed the service once, see
:mod:`esindexer.pipeline.crashguard`) are converted in a child process
(:class:`~esindexer.pipeline.isolate.IsolatedConverter`), so that a record that still
crashes the converter kills the child, not the command: its letters stay, reported as
crashed again. Without a child converter they are left alone and reported as not
redelivered.

Versions make it safe while the service runs: a redelivered write can never replace a
newer one, and letters the service writes meanwhile for newer tids are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from esindexer.convert.jsonifier import Conversion, Jsonifier, Kind
from esindexer.documents import Action, DocumentBuilder
from esindexer.ops.recheck import delete_if_gone
from esindexer.pipeline.isolate import IsolatedConverter, Record, convert_in_process
from esindexer.sink import Sink
from esindexer.source import deadletters
from esindexer.source.pg import current_states, has_relation

log = logging.getLogger(__name__)


@dataclass
class RedeliveryReport:
    """What became of the dead-lettered objects of one client."""

    objects: int = 0
    indexed: int = 0
    gone: int = 0
    still_failing: int = 0
    letters_cleared: int = 0
    failures: dict[int, str] = field(default_factory=dict)  # a few zoid -> reason

    def fail(self, zoid: int, reason: str) -> None:
        self.still_failing += 1
        if len(self.failures) < 10:
            self.failures[zoid] = reason[:300]

    def as_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "indexed": self.indexed, "gone": self.gone,
                "still_failing": self.still_failing, "letters_cleared": self.letters_cleared,
                "failures": {str(z): r for z, r in self.failures.items()}}


def redeliver(conn: Any, builder: DocumentBuilder, jsonifier: Jsonifier, sink: Sink,
              client_id: str, *, page: int = 1000, isolated: IsolatedConverter | None = None,
              objects: Callable[[list[tuple[int, int, Conversion]]], list[Action]] | None = None) -> RedeliveryReport:
    """Send the current state of every dead-lettered object again; clear what settles.

    Objects with ``crashed`` letters are converted by ``isolated`` (a child process), or
    left alone without it. With ``objects`` (documents=objects) the records go through the
    object graph, which answers with the documents to write."""
    report = RedeliveryReport()
    with conn.cursor() as cur:
        exists = has_relation(cur, deadletters.TABLE)
    conn.rollback()
    if not exists:
        return report
    for zoids in deadletters.lettered_zoids(conn, client_id, page):
        current = current_states(conn, zoids)
        crashed = deadletters.crashed_zoids(conn, client_id, zoids)
        rows = [(current[z][0], z, current[z][1]) for z in zoids if z in current]
        converted: dict[int, Record] = {
            record[1]: record for record in convert_in_process(jsonifier, builder, [r for r in rows if r[1] not in crashed])}
        if isolated is not None:  # (without it, crashed objects are left alone: reported below)
            converted.update((record[1], record) for record in isolated.records([r for r in rows if r[1] in crashed]))
        actions: list[Action] = []
        mended: list[tuple[int, int, Conversion]] = []
        settles: dict[int, tuple[str, int | None]] = {}  # zoid -> (outcome, tid cleared up to)
        for zoid in zoids:
            report.objects += 1
            if zoid not in current:  # packed away: the pack-deletion path removes the document
                settles[zoid] = ("gone", None)
                continue
            if zoid not in converted:
                report.fail(zoid, "crashed: not redelivered (its conversion crashed the service; it is only "
                                  "converted in a child process)")
                continue
            tid, _zoid, _data, conversion, built = converted[zoid]
            if conversion.kind is Kind.ERROR:
                report.fail(zoid, f"unconvertible: {conversion.error}")
                continue
            if conversion.kind is Kind.CRASHED:
                report.fail(zoid, f"crashed again: {conversion.error}")
                continue
            if objects is not None:
                mended.append((tid, zoid, conversion))
            else:
                actions.extend([built] if built is not None else builder.actions_for(tid, zoid, conversion))
            settles[zoid] = ("indexed" if conversion.kind is Kind.OK else "gone", tid)
        if objects is not None and mended:
            actions = objects(mended)
        result = sink.send(actions)
        delete_if_gone(conn, builder, sink, actions)
        for rejected in result.rejected:
            zoid = rejected.action.zoid
            if settles.pop(zoid, None) is not None:
                report.fail(zoid, f"rejected: HTTP {rejected.status}: {rejected.reason}")
        for outcome, _tid in settles.values():
            if outcome == "indexed":
                report.indexed += 1
            else:
                report.gone += 1
        report.letters_cleared += deadletters.clear(conn, client_id, {z: t for z, (_o, t) in settles.items()})
    log.info("redelivered dead letters: %d indexed, %d gone, %d still failing, %d letters cleared",
             report.indexed, report.gone, report.still_failing, report.letters_cleared,
             extra=report.as_dict())
    return report
