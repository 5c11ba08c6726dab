"""Reading back what the index holds: ``(index, zoid, tid)`` of documents, in zoid order.

Used where the database is compared with the index (the start-up sweep, ``verify``).
Only doc values are read (no ``_source``), in pages with ``search_after``, so no scroll
context stays open on the cluster and memory is one page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

from collections.abc import Iterator
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


