"""The catalog queries the Plone profile is compared on, and each one as an Elasticsearch query.

A query is written once, in ``portal_catalog``'s own form (what ``site_script.py query``
passes to ``unrestrictedSearchResults``; dates as ISO 8601 text, turned into ``DateTime``
there), and :func:`es_query` says what the same question is on the profile's fields:

===============================  ===================================================
catalog index (its kind)          the profile's field
===============================  ===================================================
``portal_type`` (FieldIndex)      ``fields.portal_type`` (term)
``review_state`` (FieldIndex)     ``fields.review_state`` (term)
``Subject`` (KeywordIndex)        ``fields.subject`` (term: any of the item's keywords)
``path`` (ExtendedPathIndex)      ``fields.path`` (the item itself and everything below;
                                  ``depth: 1``: ``fields.parent``, the children only)
``effective``/``modified``        ``fields.effective``/``fields.modified``/``fields.start``
(DateIndex), ``start``            (range); the catalog keeps **minutes**
(DateRecurringIndex)              (``DateIndex._convert``), so ``max: T`` for a whole
                                  minute T is ``lt: T + 1 minute``, ``min: T`` is ``gte: T``
``SearchableText`` (ZCTextIndex)  ``fields.body`` (match), for words only bodies contain
``sort_on: modified``             sort on ``fields.modified``; the catalog sorts by the
                                  minute, so the orders are compared minute by minute
===============================  ===================================================

Nothing here imports esindexer or the tests package: ``site_script.py`` loads this file in
Plone's interpreter to ask the catalog the same queries.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

TYPES = ["Plone Site", "Folder", "Document", "News Item", "Event", "Link", "File", "Image", "Collection"]
STATES = ["private", "pending", "published"]
SUBJECTS = ["budget", "meadow", "zephyr"]
#: Words only bodies hold (site_script writes "body<i>" into item i's rich text, "fresh<id>"
#: into an edited one's): a SearchableText query for them is a query on the body.
BODY_WORDS = ["body0", "body1", "body2", "body9", "body16", "body23"]


def minute(iso: str) -> datetime:
    """An ISO instant floored to its minute (what a catalog DateIndex keeps of it), UTC."""
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    return moment.replace(second=0, microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def catalog_queries(folders: list[str], modified: list[str], body_words: list[str]) -> list[dict[str, Any]]:
    """The comparison's queries, for a site whose folders' paths, items' modification dates
    and body-only words are given (the modification boundary is a whole minute among them)."""
    middle = _iso(minute(sorted(modified)[len(modified) // 2]))
    queries: list[dict[str, Any]] = [{"portal_type": t} for t in TYPES]
    queries += [{"review_state": s} for s in STATES]
    queries += [{"Subject": s} for s in SUBJECTS]
    queries += [{"path": {"query": "/Plone"}}]
    for folder in folders[:3]:
        queries += [{"path": {"query": folder}}, {"path": {"query": folder, "depth": 1}}]
    queries += [
        {"effective": {"query": ["2024-06-01T00:00:00Z", "2025-01-01T00:00:00Z"], "range": "min:max"}},
        {"effective": {"query": "1970-01-01T00:00:00Z", "range": "max"}},  # never set: the catalog's floor
        {"expires": {"query": "2100-01-01T00:00:00Z", "range": "min"}},  # never set: the ceiling
        {"modified": {"query": middle, "range": "min"}},
        {"modified": {"query": middle, "range": "max"}},
        {"start": {"query": ["2024-03-01T00:00:00Z", "2024-09-01T00:00:00Z"], "range": "min:max"}},
        {"portal_type": ["Document", "News Item"], "review_state": "published"},
    ]
    queries += [{"SearchableText": word} for word in body_words]
    queries += [{"portal_type": ["Document", "News Item", "Event"], "sort_on": "modified", "sort_order": "descending"}]
    return queries


_TERMS = {"portal_type": "fields.portal_type", "review_state": "fields.review_state", "Subject": "fields.subject"}
_DATES = {"effective": "fields.effective", "expires": "fields.expires", "modified": "fields.modified",
          "start": "fields.start"}


def _date_range(field: str, spec: dict[str, Any]) -> dict[str, Any]:
    values = spec["query"] if isinstance(spec["query"], list) else [spec["query"]]
    bounds: dict[str, str] = {}
    kinds = spec["range"].split(":")
    for kind, value in zip(kinds if len(values) == len(kinds) else [spec["range"]], values, strict=False):
        if kind == "min":
            bounds["gte"] = _iso(minute(value))
        elif kind == "max":
            bounds["lt"] = _iso(minute(value) + timedelta(minutes=1))
    return {"range": {field: bounds}}


def es_query(query: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """``query`` on the profile's fields, and its sort (None: unordered)."""
    must: list[dict[str, Any]] = [{"exists": {"field": "fields.uid"}}]
    for key, value in query.items():
        if key in ("sort_on", "sort_order"):
            continue
        if key in _TERMS:
            must.append({"terms": {_TERMS[key]: value if isinstance(value, list) else [value]}})
        elif key in _DATES:
            must.append(_date_range(_DATES[key], value))
        elif key == "path":
            path = value["query"]
            if value.get("depth") == 1:
                must.append({"term": {"fields.parent": path}})
            else:
                must.append({"bool": {"should": [{"term": {"fields.path": path}},
                                                 {"prefix": {"fields.path": path.rstrip("/") + "/"}}]}})
        elif key == "SearchableText":
            must.append({"match": {"fields.body": value}})
        else:
            raise ValueError(f"no translation for the catalog index {key!r}")
    sort = None
    if query.get("sort_on") == "modified":
        sort = [{"fields.modified": "desc" if query.get("sort_order") == "descending" else "asc"}]
    return {"bool": {"filter": must}}, sort
