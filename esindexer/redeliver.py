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

Versions make it safe while the service runs: a redelivered write can never replace a
newer one, and letters the service writes meanwhile for newer tids are left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

from esindexer import deadletters, deletions
from esindexer._follow_pg import current_revisions, has_relation
from esindexer.documents import Action, DocumentBuilder
from esindexer.jsonpickle import Jsonifier
from esindexer.sink import BulkSender

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


def summary(conn: Any, client_id: str) -> list[dict[str, Any]]:
    """Dead letters grouped by kind, class and cause (the reason up to its first colon,
    e.g. ``document_parsing_exception``), most first, each with one full example reason.
    Whole reasons name document ids and values, so they would not group."""
    with conn.cursor() as cur:
        if not has_relation(cur, deadletters.TABLE):
            conn.rollback()
            return []
        cur.execute(
            f"SELECT kind, class_name, split_part(reason, ':', 1), count(*), count(DISTINCT zoid), "
            f"min(created_at), max(created_at), left(min(reason), 300) FROM {deadletters.TABLE} "
            "WHERE client_id = %s GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3", (client_id,))
        rows = cur.fetchall()
    conn.rollback()
    return [{"kind": k, "class_name": c, "cause": cause, "letters": n, "objects": z,
             "first": first.isoformat(), "last": last.isoformat(), "example": example}
            for k, c, cause, n, z, first, last, example in rows]


def _lettered_zoids(conn: Any, client_id: str, page: int) -> Iterator[list[int]]:
    """Distinct zoids with letters, in order, a short read transaction per page."""
    after = -1
    while True:
        with conn.cursor() as cur:
            cur.execute(f"SELECT DISTINCT zoid FROM {deadletters.TABLE} WHERE client_id = %s AND zoid > %s "
                        "ORDER BY zoid LIMIT %s", (client_id, after, page))
            zoids = [row[0] for row in cur.fetchall()]
        conn.rollback()
        if not zoids:
            return
        yield zoids
        after = zoids[-1]


def _current(conn: Any, zoids: list[int]) -> dict[int, tuple[int, bytes | None]]:
    """``zoid -> (tid, state)`` of the current revisions (history-free or -preserving)."""
    with conn.cursor() as cur:
        source, key = current_revisions(cur)
        cur.execute(f"SELECT {key}, s.tid, s.state FROM {source} WHERE {key} = ANY(%s)", (zoids,))
        rows = {z: (t, bytes(s) if s is not None else None) for z, t, s in cur.fetchall()}
    conn.rollback()
    return rows


def _clear(conn: Any, client_id: str, settled: dict[int, int | None]) -> int:
    """Delete the letters of settled zoids up to the tid that settled them (all if None)."""
    if not settled:
        return 0
    zoids = list(settled)
    tids = [tid if tid is not None else 2**63 - 1 for tid in settled.values()]
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {deadletters.TABLE} d USING unnest(%s::bigint[], %s::bigint[]) AS s(zoid, tid) "
                    "WHERE d.client_id = %s AND d.zoid = s.zoid AND d.tid <= s.tid", (zoids, tids, client_id))
        cleared = cur.rowcount
    conn.commit()
    return cleared


def redeliver(conn: Any, builder: DocumentBuilder, jsonifier: Jsonifier, sender: BulkSender,
              client_id: str, *, page: int = 1000) -> RedeliveryReport:
    """Send the current state of every dead-lettered object again; clear what settles."""
    report = RedeliveryReport()
    with conn.cursor() as cur:
        exists = has_relation(cur, deadletters.TABLE)
    conn.rollback()
    if not exists:
        return report
    for zoids in _lettered_zoids(conn, client_id, page):
        current = _current(conn, zoids)
        actions: list[Action] = []
        settles: dict[int, tuple[str, int | None]] = {}  # zoid -> (outcome, tid cleared up to)
        for zoid in zoids:
            report.objects += 1
            if zoid not in current:  # packed away: the pack-deletion path removes the document
                settles[zoid] = ("gone", None)
                continue
            tid, state = current[zoid]
            conversion = jsonifier.convert((tid, zoid), state)
            if conversion.kind == "ok":
                actions.append(builder.index_action(tid, zoid, conversion.class_name, conversion.json_text))
                settles[zoid] = ("indexed", tid)
            elif conversion.kind == "error":
                report.fail(zoid, f"unconvertible: {conversion.error}")
            else:  # deleted or skipped now: the document must not exist
                actions.extend(builder.delete_actions(tid, zoid))
                settles[zoid] = ("gone", tid)
        result = sender.send(actions)
        deletions.delete_if_gone(conn, builder, sender, actions)
        for rejected in result.rejected:
            zoid = rejected.action.zoid
            if settles.pop(zoid, None) is not None:
                report.fail(zoid, f"rejected: HTTP {rejected.status}: {rejected.reason}")
        for outcome, _tid in settles.values():
            if outcome == "indexed":
                report.indexed += 1
            else:
                report.gone += 1
        report.letters_cleared += _clear(conn, client_id, {z: t for z, (_o, t) in settles.items()})
    log.info("redelivered dead letters: %d indexed, %d gone, %d still failing, %d letters cleared",
             report.indexed, report.gone, report.still_failing, report.letters_cleared,
             extra=report.as_dict())
    return report
