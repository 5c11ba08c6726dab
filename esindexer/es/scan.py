"""Reading back what the index holds, in zoid order.

Used where the database is compared with the index: :func:`indexed_zoids` gives
``(index, zoid, tid)`` (the start-up sweep); :func:`held_pages` adds each document's
version and sequence number, and its body when asked (``verify``, ``verify --deep``);
:func:`held_now` re-reads given zoids in real time (``verify``'s confirmation and read
back). Pages are read with ``search_after``, so no scroll context stays open on the
cluster and memory is one page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


def indexed_zoids(es: Elasticsearch, indices: tuple[str, ...], page: int = 5000, low: int | None = None,
                  high: int | None = None) -> Iterator[list[tuple[str, int, int]]]:
    """Pages of ``(index, zoid, tid)`` of the documents (with ``low <= zoid <= high`` when
    given), in zoid order, read with search_after so no scroll context stays open.

    The sort ends with ``_index`` so that copies of one zoid in two indices (a class
    re-routed) are both returned even when a page boundary falls between them."""
    bounds = {k: v for k, v in (("gte", low), ("lte", high)) if v is not None}
    after: list[Any] | None = None
    while True:
        kwargs: dict[str, Any] = dict(
            index=",".join(indices), size=page,
            sort=[{"zoid": "asc"}, {"tid": "asc"}, {"_index": "asc"}],
            source=False, docvalue_fields=["zoid", "tid"], ignore_unavailable=True,
            track_total_hits=False, query={"range": {"zoid": bounds}} if bounds else {"match_all": {}},
        )
        if after is not None:
            kwargs["search_after"] = after
        hits = es.search(**kwargs)["hits"]["hits"]
        if not hits:
            return
        yield [(h["_index"], int(h["fields"]["zoid"][0]), int(h["fields"]["tid"][0])) for h in hits]
        after = hits[-1]["sort"]




def newest_documents(es: Elasticsearch, indices: tuple[str, ...], count: int) -> list[tuple[str, int, int]]:
    """``(index, zoid, tid)`` of the ``count`` documents with the highest ``tid`` field,
    newest first: where the documents of transactions a restored database lost are."""
    hits = es.search(index=",".join(indices), size=count, sort=[{"tid": "desc"}, {"zoid": "asc"}],
                     source=False, docvalue_fields=[{"field": "zoid"}, {"field": "tid"}],
                     ignore_unavailable=True, track_total_hits=False, query={"exists": {"field": "tid"}})["hits"]["hits"]
    return [(h["_index"], int(h["fields"]["zoid"][0]), int(h["fields"]["tid"][0])) for h in hits
            if "zoid" in h.get("fields", {})]


@dataclass(frozen=True, slots=True)
class Held:
    """One document as the index holds it now, with what a conditional write needs.

    ``tid`` is the document's own ``tid`` field (None when a hand-written body has
    none); ``version`` is Elasticsearch's version, which equals ``tid`` for every
    document esindexer wrote with external versioning and differs after a change by
    hand (an unversioned ``PUT`` adds 1) or a repair of one. ``seq_no`` and
    ``primary_term`` identify this very revision (``if_seq_no``/``if_primary_term``).
    ``source`` is the body, read only when asked for (``verify --deep``)."""

    index: str
    zoid: int
    tid: int | None
    version: int
    seq_no: int
    primary_term: int
    source: dict[str, Any] | None = None

    def revision(self) -> tuple[str, int, int, int]:
        """What changes with every write of this document (to tell two reads apart)."""
        return self.index, self.version, self.seq_no, self.primary_term


def held_pages(es: Elasticsearch, indices: tuple[str, ...], page: int = 5000, low: int | None = None,
               high: int | None = None, with_source: bool = False) -> Iterator[list[Held]]:
    """Pages of the documents with ``low <= zoid <= high``, in zoid order, with their
    versions and sequence numbers (and bodies with ``with_source``): memory is one page."""
    bounds = {k: v for k, v in (("gte", low), ("lte", high)) if v is not None}
    after: list[Any] | None = None
    while True:
        kwargs: dict[str, Any] = dict(
            index=",".join(indices), size=page, sort=[{"zoid": "asc"}, {"_index": "asc"}],
            source=with_source, docvalue_fields=["zoid", "tid"], version=True, seq_no_primary_term=True,
            ignore_unavailable=True, track_total_hits=False,
            query={"range": {"zoid": bounds}} if bounds else {"match_all": {}},
        )
        if after is not None:
            kwargs["search_after"] = after
        hits = es.search(**kwargs)["hits"]["hits"]
        if not hits:
            return
        yield [_held(hit, int(hit["fields"]["zoid"][0]), hit["fields"].get("tid", [None])[0]) for hit in hits]
        after = hits[-1]["sort"]


def held_now(es: Elasticsearch, indices: tuple[str, ...], zoids: list[int],
             with_source: bool = False) -> dict[int, list[Held]]:
    """``zoid -> documents`` as they are *now* (a realtime multi-get, no refresh needed):
    the re-read after a comparison or a repair. Zoids without a document map to []."""
    found: dict[int, list[Held]] = {zoid: [] for zoid in zoids}
    if not zoids:
        return found
    wanted: Any = True if with_source else ["tid"]
    docs = [{"_index": index, "_id": str(zoid), "_source": wanted} for zoid in zoids for index in indices]
    for start in range(0, len(docs), 1000):
        answer = es.mget(docs=docs[start:start + 1000], realtime=True)
        for doc in answer["docs"]:
            if doc.get("found"):  # a missing index answers with an "error" per document
                source = doc.get("_source") or {}
                tid = source.get("tid")
                zoid = int(doc["_id"])
                found[zoid].append(_held(doc, zoid, tid if isinstance(tid, int) else None,
                                         source if with_source else None))
    return found


def _held(doc: dict[str, Any], zoid: int, tid: Any, source: dict[str, Any] | None = None) -> Held:
    return Held(doc["_index"], zoid, None if tid is None else int(tid), int(doc["_version"]),
                int(doc["_seq_no"]), int(doc["_primary_term"]),
                source if source is not None else doc.get("_source"))
