"""Fields a search index could not map: found, counted and named, never silent.

Why: the indices cap the number of mapped fields (``index.mapping.total_fields.limit``)
and, past it, keep further new fields in ``_source`` without indexing them
(``ignore_dynamic_beyond_limit``), so that a document is never rejected for it. That is
right for the data and wrong for the user when nobody says so: a Plone site's tools and
registry records used up the 1,000 fields before the content's own attributes arrived,
and a range query on ``modified`` then found nothing (issue 22). Elasticsearch lists
such fields (and values refused by ``ignore_malformed``/``ignore_above``) per document
in the ``_ignored`` metadata field, which can be counted and aggregated: this module
turns that into the figures ``status``, ``explain`` and the service's metric show.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from esindexer.sink import Unmapped

#: Field names listed at most (the most frequent first).
TOP_FIELDS = 20
#: Documents whose unmapped fields are read to name and count the fields.
SAMPLE = 200


def unmapped(es: Any, indices: tuple[str, ...] | list[str]) -> Unmapped:
    """How many documents of ``indices`` carry fields that were not indexed, and which
    fields: the most frequent among a sample of up to :data:`SAMPLE` such documents (the
    ``_ignored`` of search hits; OpenSearch cannot aggregate that field, so both engines
    are asked the same way)."""
    answer = es.options(ignore_status=404).search(
        index=",".join(indices), size=SAMPLE, source=False, track_total_hits=True, ignore_unavailable=True,
        query={"exists": {"field": "_ignored"}},
        aggs={"per_index": {"terms": {"field": "_index", "size": max(len(indices), 1)}}},
    )
    aggs = answer.body.get("aggregations") if answer.meta.status != 404 else None
    if aggs is None:  # none of the indices exists (yet): no document, none unmapped
        return Unmapped(0, {}, {})
    seen = Counter(name for hit in answer["hits"]["hits"] for name in hit.get("_ignored", ()))
    top = sorted(seen.items(), key=lambda item: (-item[1], item[0]))[:TOP_FIELDS]
    return Unmapped(
        documents=int(answer["hits"]["total"]["value"]),
        fields=dict(top),
        per_index={b["key"]: int(b["doc_count"]) for b in aggs["per_index"]["buckets"]},
    )


def unmapped_of(es: Any, indices: tuple[str, ...] | list[str], zoid: int) -> dict[str, list[str]]:
    """The fields of the document of ``zoid`` that were not indexed, per index holding one
    (``_ignored`` comes with search hits, not with a GET of the document)."""
    answer = es.options(ignore_status=404).search(
        index=",".join(indices), ignore_unavailable=True, size=len(indices) or 1, source=False,
        query={"ids": {"values": [str(zoid)]}},
    )
    if answer.meta.status == 404:
        return {}
    return {hit["_index"]: sorted(hit.get("_ignored", [])) for hit in answer["hits"]["hits"]}
