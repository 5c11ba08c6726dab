"""Repair writes: the three ways ``verify --repair`` writes a document, each answered per item.

The service's bulk path (:mod:`esindexer.es.bulk`) counts a 409 as "already applied",
which is right for the service (a newer version is there) and wrong for a repair: after a
hand ``DELETE`` the tombstone's version (the old one + 1) refuses the repair, and counting
that as done is how ``verify --repair`` used to report repairs it had not made. Here
every item's answer is returned as it is, and a write can be:

- **external** (``version_type=external_gte`` at the object's tid): what the service
  does; used when the held version is not above the tid, so anything newer refuses it;
- **conditional** (``if_seq_no``/``if_primary_term`` of the revision read): used when a
  hand change put the version above the object's tid. It succeeds only if the document
  is still exactly the revision that was read, so a commit the service wrote meanwhile
  makes it fail instead of being overwritten. Elasticsearch then counts the version on
  internally (read version + 1);
- **external, else create**: for a missing document. When the external write is refused
  although nothing was there (a tombstone), it is retried as ``op_type=create``, which
  succeeds only while no document exists; the version becomes the tombstone's + 1.

Who decides which write to use, and the argument why none of them overwrites a newer
commit, is :mod:`esindexer.ops.compare`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from esindexer.documents import Action

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

Mode = Literal["external", "conditional", "create_on_conflict"]

_RETRIED = {429, 502, 503, 504}
#: Bounds of one request: a repair after an index was lost writes a whole page at once.
MAX_ITEMS = 1000
MAX_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Write:
    """One repair write: an action, how it is conditioned, and the revision it expects."""

    action: Action
    mode: Mode = "external"
    seq_no: int | None = None
    primary_term: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What Elasticsearch answered to one write (after the create retry, if any)."""

    write: Write
    status: int
    error: str = ""
    #: written as ``op_type=create`` over a tombstone: the version is Elasticsearch's count
    created: bool = False

    @property
    def at_tid(self) -> bool:
        """Written with the action's own version (externally), so a delete at tid + 1 beats it."""
        return self.written and self.write.mode != "conditional" and not self.created

    @property
    def written(self) -> bool:
        return self.status in (200, 201) or (self.status == 404 and self.write.action.op == "delete")


def _meta(write: Write, create: bool) -> dict[str, Any]:
    action = write.action
    target: dict[str, Any] = {"_index": action.index, "_id": str(action.zoid)}
    if create:
        return {"create": target}
    if write.mode == "conditional":
        target.update(if_seq_no=write.seq_no, if_primary_term=write.primary_term)
    else:
        target.update(version=action.version, version_type="external_gte")
    return {action.op: target}


def _requests(writes: Sequence[Write]) -> list[list[Write]]:
    """``writes`` cut into requests of at most :data:`MAX_ITEMS` items and about :data:`MAX_BYTES`."""
    requests: list[list[Write]] = []
    current: list[Write] = []
    size = 0
    for write in writes:
        if current and (len(current) >= MAX_ITEMS or size + write.action.size() > MAX_BYTES):
            requests.append(current)
            current, size = [], 0
        current.append(write)
        size += write.action.size()
    return requests + [current] if current else requests


def _bulk(es: Elasticsearch, writes: Sequence[Write], create: bool) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for request in _requests(writes):
        lines: list[bytes] = []
        for write in request:
            lines.append(orjson.dumps(_meta(write, create)))
            if write.action.source is not None:
                lines.append(write.action.source)
        answer = es.bulk(operations=b"\n".join(lines) + b"\n",  # type: ignore[arg-type]
                         filter_path="items.*.status,items.*.error")
        for item in answer["items"]:
            result = next(iter(item.values()))
            error = result.get("error")
            reason = f"{error.get('type')}: {error.get('reason')}" if isinstance(error, dict) else ""
            out.append((int(result.get("status", 0)), reason))
    return out


def send_writes(es: Elasticsearch, writes: Sequence[Write], attempts: int = 3) -> list[Outcome]:
    """Send ``writes``; return one :class:`Outcome` per write, in order. Items refused for
    load (429, 50x) are tried again up to ``attempts`` times; a refusal for good is
    returned, never counted as done."""
    outcomes = _send(es, list(enumerate(writes)), False, attempts)
    # A missing document whose external write was refused: a tombstone stood in the way.
    refused = [(position, writes[position]) for position, outcome in outcomes.items()
               if outcome.status == 409 and outcome.write.mode == "create_on_conflict"
               and outcome.write.action.op == "index"]
    outcomes.update(_send(es, refused, True, attempts))
    for position, _ in refused:
        outcome = outcomes[position]
        outcomes[position] = Outcome(outcome.write, outcome.status, outcome.error, created=True)
    return [outcomes[position] for position in range(len(writes))]


def _send(es: Elasticsearch, pending: list[tuple[int, Write]], create: bool, attempts: int) -> dict[int, Outcome]:
    outcomes: dict[int, Outcome] = {}
    for attempt in range(attempts):
        if not pending:
            break
        if attempt:
            time.sleep(min(0.2 * 2 ** attempt, 2.0))
        answers = _bulk(es, [write for _, write in pending], create)
        for (position, write), (status, error) in zip(pending, answers):
            outcomes[position] = Outcome(write, status, error)
        pending = [(position, write) for (position, write), (status, _) in zip(pending, answers)
                   if status in _RETRIED]
    return outcomes
