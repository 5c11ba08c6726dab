"""One object compared: what the database asks of the index, what the index holds, what differs,
how each difference is repaired, and whether it is only the service's lag. Pure functions.

How a repair wins over a change by hand, yet never over a commit
-----------------------------------------------------------------
The service writes every state with its tid as external version, so a document it wrote
has ``version == tid``. A hand ``PUT`` without a version, or a hand ``DELETE`` (whose
tombstone Elasticsearch keeps for ``index.gc_deletes``), leaves version ``tid + 1``, which
refuses a repair at the object's tid. The comparison reads the index *before* the
database (:mod:`esindexer.ops.recheck`), so every version the service had written by
then is the tid of a record committed before the database read, hence at most the
object's current tid ``T``. The repair of an object whose document holds version ``V``:

- ``V <= T`` (or a document in a wrong index, or a deleted object): an external write at
  ``T``, as the service's own. Anything written meanwhile by a newer commit has a higher
  version and refuses it.
- ``V > T``: not a version of any commit the database had when it was read, so a change
  by hand, or (``ahead``: the document's own ``tid`` is above ``T``) a document of a
  transaction the database lost when it went back in time (restored from a backup). The
  write is conditional on the revision read (``if_seq_no``/``if_primary_term``): if the
  service wrote a newer commit meanwhile the revision differs and the repair fails; it
  never overwrites that commit. An ``ahead`` document cannot be written over at ``T``
  any other way: its version refuses every external write below it.
- no document: an external write at ``T``; if a tombstone refuses it, ``op_type=create``,
  which fails as soon as any document exists (a newer commit written meanwhile).

What a conditional write or a create leaves has the version Elasticsearch counted on
(``V + 1``; a hand edit's ``T + 1`` becomes ``T + 2``), so a later commit, whose tid is
higher than ``T + 2`` unless two commits came within 3 tid units (tens of nanoseconds,
possible only when the clock stepped back), still wins: its external write is accepted.
After a restore the same holds: the application's next commits get tids above the newest
tid of the restored database *and* (the clock having moved on since the lost transactions
were committed) above every version ``V`` the lost transactions left, so they win over
``V + 1``. Only a clock set back past the lost commits breaks that; the service's writes
of such objects are then refused until their tids pass ``V + 1``, and the next ``verify
--repair`` rewrites them. An object of a lost transaction that the database does not have
is deleted at ``V + 1`` although its oid may be given out again after a restore: the new
object's commit has a higher tid, and whichever of the two writes comes second, the
newer version stays.

A newer *deletion* committed between the read and a create is the one case a precondition
cannot see (a tombstone does not count as a document for ``create``); the re-read that
follows every repair finds the object deleted and deletes the document again.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import orjson

from esindexer.convert.jsonifier import Jsonifier, Kind
from esindexer.documents import Action, DocumentBuilder
from esindexer.es.repair import Write
from esindexer.es.scan import Held

#: Kinds of difference, in report order. ``changed`` is found by ``--deep`` (a body that
#: is not what the current record converts to) and for documents without a ``tid``.
KINDS = ("missing", "stale", "ahead", "orphan", "changed")

Wanted = Literal["index", "delete", "gone", "error", "lettered"]


@dataclass(frozen=True, slots=True)
class Expected:
    """What the database, as of one read, asks of the index for one object."""

    zoid: int
    wanted: Wanted
    tid: int | None = None  #: the current record's tid (None: the object is gone)
    action: Action | None = None  #: the index action, when the record converts


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing the index holds wrongly for one object, and the write that repairs it
    (None: not repairable here: a record that does not convert)."""

    zoid: int
    kind: str
    fix: Write | None = None


def expect(builder: DocumentBuilder, jsonifier: Jsonifier, letters: Collection[tuple[int, int]],
           zoid: int, current: tuple[int, bytes | None] | None) -> Expected:
    """What the index should hold for ``zoid`` given its current ``(tid, state)`` (None: gone)."""
    if current is None:
        return Expected(zoid, "gone")
    tid, state = current
    conversion = jsonifier.convert((tid, zoid), state)
    if conversion.kind is Kind.OK:
        return Expected(zoid, "index", tid, builder.actions_for(tid, zoid, conversion)[0])
    if conversion.kind in (Kind.ERROR, Kind.CRASHED):
        return Expected(zoid, "lettered" if (zoid, tid) in letters else "error", tid)
    return Expected(zoid, "delete", tid)


def _overwrite(action: Action, held: Held | None, tid: int) -> Write:
    """The write that puts ``action`` (versioned ``tid``) over ``held`` (module docstring)."""
    if held is None:
        return Write(action, "create_on_conflict")
    if held.version <= tid:
        return Write(action)
    return Write(action, "conditional", held.seq_no, held.primary_term)


def _delete(held: Held, tid: int | None) -> Write:
    if tid is None:  # the object is gone and oids are never reused: nothing newer can come
        version = max(held.version, held.tid or 0) + 1
        return Write(Action("delete", held.index, held.zoid, held.tid or held.version, version))
    return _overwrite(Action("delete", held.index, held.zoid, tid, tid), held, tid)


def _same_body(action: Action, held: Held) -> bool:
    assert action.source is not None
    return held.source is not None and bool(orjson.loads(action.source) == held.source)


def differences(expected: Expected, held: list[Held], deep: bool) -> list[Difference]:
    """What differs between ``expected`` and the documents ``held`` for one zoid."""
    zoid, tid = expected.zoid, expected.tid
    if expected.wanted == "lettered":  # known: in the dead-letter table at this tid
        return []
    if expected.wanted == "error":  # the service dead-letters it; nothing to write here
        return [Difference(zoid, "missing")]
    if expected.wanted in ("gone", "delete"):
        return [Difference(zoid, "ahead" if _ahead(h, tid) else "orphan", _delete(h, tid)) for h in held]
    action = expected.action
    assert action is not None and tid is not None
    found: list[Difference] = [Difference(zoid, "orphan", _delete(h, tid)) for h in held if h.index != action.index]
    mine = next((h for h in held if h.index == action.index), None)
    if mine is None:
        found.append(Difference(zoid, "missing", _overwrite(action, None, tid)))
    elif mine.tid is None:
        found.append(Difference(zoid, "changed", _overwrite(action, mine, tid)))
    elif mine.tid > tid:
        found.append(Difference(zoid, "ahead", _overwrite(action, mine, tid)))
    elif mine.tid < tid:
        found.append(Difference(zoid, "stale", _overwrite(action, mine, tid)))
    elif deep and not _same_body(action, mine):
        found.append(Difference(zoid, "changed", _overwrite(action, mine, tid)))
    return found


def _ahead(held: Held, tid: int | None) -> bool:
    """A document of a deleted object carrying a newer tid than its deletion (restored database)."""
    return tid is not None and held.tid is not None and held.tid > tid


def lagging(expected: Expected, difference: Difference, progress: int, unapplied: Collection[int]) -> bool:
    """Whether ``difference`` is the service's lag rather than drift.

    ``progress`` is the service's saved tid read *before* the index was (-1: it never
    saved one, so nothing is explained by lag); ``unapplied`` the zoids whose captured
    pack deletion it has not applied. A record at or below that progress was written and
    acknowledged before the index was read, so its document had to be there."""
    if difference.kind == "ahead":
        return False
    if expected.wanted == "gone":
        return expected.zoid in unapplied
    return progress >= 0 and expected.tid is not None and expected.tid > progress
