"""The "database behind the index" mark, kept in the indices' own mapping ``_meta``.

Why in Elasticsearch and not in PostgreSQL: the mark records that the database went back
in time (restored from a backup) relative to what the indices hold. A restore rewrites
esindexer's own tables too, so a mark kept there could be rolled back by the next restore
before the index was made equal to the database; the indices' mapping goes back only with
the indices themselves. Written when the service finds the database behind, removed only after a
full compare-and-repair walk left no difference (:mod:`esindexer.ops.restored`); both
are rare, so the mapping updates (cluster-state changes) cost nothing noticeable.

``_meta`` is replaced as a whole by a mapping update, so each write reads the current
``_meta`` and keeps its other keys (``managed_by``, ``state_mapping``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

#: The key under ``_meta`` holding the mark (a JSON object; absent when none).
META_KEY = "esindexer_database_behind"


def _metas(es: Elasticsearch, indices: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``index -> _meta`` of the indices that exist."""
    answer = es.options(ignore_status=404).indices.get_mapping(index=",".join(indices), ignore_unavailable=True)
    if answer.meta.status == 404:
        return {}
    return {name: dict(body.get("mappings", {}).get("_meta") or {}) for name, body in answer.body.items()}


def read_mark(es: Elasticsearch, indices: tuple[str, ...]) -> dict[str, Any] | None:
    """The mark held by any of ``indices`` (the one with the newest database tid), or None."""
    marks = [meta[META_KEY] for meta in _metas(es, indices).values() if isinstance(meta.get(META_KEY), dict)]
    return max(marks, key=lambda mark: int(mark.get("database_tid", -1)), default=None)


def write_mark(es: Elasticsearch, indices: tuple[str, ...], mark: dict[str, Any] | None) -> None:
    """Put ``mark`` on every existing index of ``indices`` (None: remove it)."""
    for name, meta in _metas(es, indices).items():
        if mark is None and META_KEY not in meta:
            continue
        meta.pop(META_KEY, None)
        if mark is not None:
            meta[META_KEY] = mark
        es.indices.put_mapping(index=name, meta=meta)
