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

One kind of entry is not an unmapped field: a string longer than its ``.keyword``
sub-field's ``ignore_above`` (256 characters). The text field beside it indexes the
string, so full-text search finds it; only an exact match or an aggregation on the
sub-field misses it, as docs/documents.md says of ``.keyword``. Counting those would warn
about every page with a body, and send the operator to split indices for nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from esindexer.sink import Unmapped

log = logging.getLogger(__name__)

#: Field names listed at most (the most frequent first).
TOP_FIELDS = 20
#: Documents whose unmapped fields are read to name and count the fields.
SAMPLE = 200
#: The strings' exact-match sub-field (a key of that name in the data is written ``keyword_``).
KEYWORD = ".keyword"
#: Distinct ignored field names asked for when long strings must be told apart.
NAMES = 10_000


def long_string(name: str) -> bool:
    """Whether an ``_ignored`` entry is a string longer than its ``.keyword`` sub-field takes."""
    return name.endswith(KEYWORD)


def unmapped(es: Any, indices: tuple[str, ...] | list[str]) -> Unmapped:
    """How many documents of ``indices`` carry fields that were not indexed, and which
    fields: the most frequent among a sample of up to :data:`SAMPLE` such documents (the
    ``_ignored`` of search hits; OpenSearch cannot aggregate that field, so both engines
    are asked the same way). Strings longer than their ``.keyword`` sub-field
    (:func:`long_string`) are left out wherever the names in ``_ignored`` can be listed."""
    found = _search(es, indices, {"exists": {"field": "_ignored"}})
    if found is None:  # none of the indices exists (yet): no document, none unmapped
        return Unmapped(0, {}, {})
    if any(long_string(name) for hit in found["hits"]["hits"] for name in hit.get("_ignored", ())):
        names = _ignored_names(es, indices)
        if names is not None:  # else (an engine that cannot aggregate _ignored): an upper bound, as before
            unmapped_names = sorted(name for name in names if not long_string(name))
            found = _search(es, indices, {"terms": {"_ignored": unmapped_names}}) if unmapped_names else None
            if found is None:
                return Unmapped(0, {}, {})
    aggs = found["aggregations"]
    seen = Counter(name for hit in found["hits"]["hits"] for name in hit.get("_ignored", ())
                   if not long_string(name))
    top = sorted(seen.items(), key=lambda item: (-item[1], item[0]))[:TOP_FIELDS]
    return Unmapped(
        documents=int(found["hits"]["total"]["value"]),
        fields=dict(top),
        per_index={b["key"]: int(b["doc_count"]) for b in aggs["per_index"]["buckets"]},
    )


def _search(es: Any, indices: tuple[str, ...] | list[str], query: dict[str, Any]) -> Any:
    """Up to :data:`SAMPLE` hits of ``query`` with their ``_ignored``, the exact total and the
    count per index; None when none of the indices exists."""
    answer = es.options(ignore_status=404).search(
        index=",".join(indices), size=SAMPLE, source=False, track_total_hits=True, ignore_unavailable=True,
        query=query, aggs={"per_index": {"terms": {"field": "_index", "size": max(len(indices), 1)}}},
    )
    if answer.meta.status == 404 or answer.body.get("aggregations") is None:
        return None
    return answer.body


def _ignored_names(es: Any, indices: tuple[str, ...] | list[str]) -> set[str] | None:
    """Every field name in the indices' ``_ignored`` (Elasticsearch 8.15 and later aggregate
    that field); None where it cannot be aggregated (OpenSearch, whose ``_ignored`` lists
    no long strings either: 3.3.0 leaves them out), or when there are more than
    :data:`NAMES` (a count from part of them would be too low)."""
    try:
        answer = es.search(index=",".join(indices), size=0, ignore_unavailable=True,
                           aggs={"names": {"terms": {"field": "_ignored", "size": NAMES}}})
    except Exception as exc:  # noqa: BLE001 - refused by the engine: fall back to the upper bound
        log.debug("cannot list the names in _ignored: %s", exc)
        return None
    names = answer["aggregations"]["names"]
    if names.get("sum_other_doc_count", 0):
        return None
    return {bucket["key"] for bucket in names["buckets"]}


def unmapped_of(es: Any, indices: tuple[str, ...] | list[str], zoid: int) -> dict[str, list[str]]:
    """The fields of the document of ``zoid`` that were not indexed, per index holding one
    (``_ignored`` comes with search hits, not with a GET of the document)."""
    answer = es.options(ignore_status=404).search(
        index=",".join(indices), ignore_unavailable=True, size=len(indices) or 1, source=False,
        query={"ids": {"values": [str(zoid)]}},
    )
    if answer.meta.status == 404:
        return {}
    return {hit["_index"]: sorted(name for name in hit.get("_ignored", []) if not long_string(name))
            for hit in answer["hits"]["hits"]}
