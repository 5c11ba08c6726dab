"""Documents: what one ZODB record becomes in Elasticsearch.

A record ``(tid, zoid, data)`` converted by the Jsonifier turns into bulk
*actions*:

- a converted object → one ``index`` action into the index its class routes to;
- a deleted object (NULL/empty state), a class that is skipped, or a record the
  transform drops → a ``delete`` action in *every* routed index, because the
  class of a deleted object is unknown and the document may live in any of them;
- a record that cannot be converted → nothing to write, a dead letter instead.

Every write carries the record's tid as an **external version**
(``version_type=external_gte``). Tids grow with every commit, so a replay after
a crash, or a bulk that overtakes an earlier one, can never overwrite a newer
state: Elasticsearch answers 409 and the item counts as already applied.
Deletions of objects removed by packing carry ``last tid + 1``, which beats any
write of that object still in flight (oids are never reused).

The document shape (documented in docs/documents.md)::

    {"class": "myapp.content.Document", "zoid": 42, "oid": "0x2a",
     "tid": 291972294502024669, "committed_at": "2026-11-27T09:37:15.480215Z",
     "state": {...converted state...}, "text": "all string values ...",
     "refs": [7, 12]}
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import timezone
from functools import lru_cache
from typing import Any, Iterable, Literal

import orjson

from esindexer.config import Settings
from esindexer.errors import SetupError

#: Characters of string values collected into the ``text`` field at most; keeps
#: documents small when an object holds a whole book.
TEXT_LIMIT = 32_000


#: Length of a bulk metadata line without its variable parts (op, index, id, version).
_META_FIXED = len(b'{"":{"_index":"","_id":"","version":,"version_type":"external_gte"}}')


@dataclass(frozen=True, slots=True)
class Action:
    """One bulk item: its metadata and, for ``index``, the document source as JSON bytes."""

    op: Literal["index", "delete"]
    index: str
    zoid: int
    tid: int
    version: int
    class_name: str | None = None
    source: bytes | None = None

    def metadata_line(self) -> bytes:
        return orjson.dumps(
            {self.op: {"_index": self.index, "_id": str(self.zoid), "version": self.version,
                       "version_type": "external_gte"}}
        )

    def size(self) -> int:
        """Bytes this action adds to a bulk body (metadata, source and newlines).

        Computed from the parts rather than by serialising the metadata line a second
        time: index names are validated ASCII and ids and versions are digits, so
        nothing in the line is escaped.
        """
        meta = _META_FIXED + len(self.op) + len(self.index) + len(str(self.zoid)) + len(str(self.version))
        return meta + 1 + (len(self.source) + 1 if self.source is not None else 0)


@lru_cache(maxsize=4096)
def commit_time_iso(tid: int) -> str:
    """The commit time a tid encodes, as ISO 8601 UTC with a ``Z`` (what ``date`` fields want)."""
    from esindexer.tid import tid_to_datetime

    return tid_to_datetime(tid).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _walk(value: Any, texts: list[str], refs: list[int], budget: list[int]) -> None:
    """Collect string leaves (for full-text search) and referenced zoids, iteratively-deep."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if budget[0] > 0:
                texts.append(item[: budget[0]])
                budget[0] -= len(item) + 1
        elif isinstance(item, dict):
            ref = item.get("::=>")
            if isinstance(ref, int):
                refs.append(ref)
                continue
            for key, child in item.items():
                if not key.startswith("::"):
                    stack.append(child)
        elif isinstance(item, list):
            stack.extend(reversed(item))


def _harmonise_lists(value: Any) -> Any:
    """For the ``dynamic`` mapping: a list mixing strings with other scalars gets all-string items.

    Elasticsearch maps a field from the first value it sees, and one document whose
    array holds ``[7, "myapp.User"]`` (every persistent reference's ``id``) asks for two
    types at once, which it refuses. Strings are what both values can be.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            kinds = {type(v) for v in item if v is not None}
            if str in kinds and kinds - {str, dict, list}:
                for i, v in enumerate(item):
                    if isinstance(v, (int, float, bool)):
                        item[i] = orjson.dumps(v).decode()
            stack.extend(v for v in item if isinstance(v, (dict, list)))
    return value


class DocumentBuilder:
    """Turns converted records into bulk actions, following the configured routing."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._routes = tuple(settings.class_routes)
        self._default_index = settings.index_for_route(settings.default_route)
        self.indices = tuple(settings.index_for_route(r) for r in settings.route_names())
        self._flattened = settings.state_mapping == "flattened"

    @lru_cache(maxsize=8192)
    def index_for_class(self, class_name: str) -> str:
        for pattern, route in self._routes:
            if fnmatch.fnmatchcase(class_name, pattern):
                return self._settings.index_for_route(route)
        return self._default_index

    def index_action(self, tid: int, zoid: int, class_name: str, json_text: str) -> Action:
        return Action("index", self.index_for_class(class_name), zoid, tid, tid, class_name,
                      self.source(tid, zoid, class_name, json_text))

    def delete_actions(self, tid: int, zoid: int, version: int | None = None) -> list[Action]:
        """Deletes in every routed index; ``version`` defaults to the record's tid."""
        version = tid if version is None else version
        return [Action("delete", index, zoid, tid, version) for index in self.indices]

    def source(self, tid: int, zoid: int, class_name: str, json_text: str) -> bytes:
        state = orjson.loads(json_text)
        texts: list[str] = []
        refs: list[int] = []
        _walk(state, texts, refs, [TEXT_LIMIT])
        if not isinstance(state, dict):
            # flattened (and object) fields need an object; keep non-dict states findable.
            state = {"value": state}
        if not self._flattened:
            _harmonise_lists(state)
        doc = {
            "class": class_name,
            "zoid": zoid,
            "oid": hex(zoid),
            "tid": tid,
            "committed_at": commit_time_iso(tid),
            "state": state,
            "text": " ".join(texts),
            "refs": sorted(set(refs)),
        }
        # orjson's result keeps its whole output buffer (~32 KB for a 2 KB document);
        # a copy holds exactly the document while it waits in a bulk request.
        return bytes(memoryview(orjson.dumps(doc)))


def index_template(settings: Settings) -> dict[str, Any]:
    """The composable index template covering every ``<prefix>-*`` index.

    The alias ``<prefix>`` is part of the template, so every routed index joins it
    when created and users (and Kibana) query one name.
    """
    if settings.state_mapping == "flattened":
        # One field for the whole state: no mapping conflict and no field explosion is
        # possible, whatever the classes store. Leaves are keywords (exact and prefix
        # search); ``text`` gives full-text search over the same strings, so long
        # strings (bodies) need no keyword: ignore_above 256 makes the index ~18 %
        # smaller at the same speed (docs/performance.md).
        state_mapping: dict[str, Any] = {"type": "flattened", "depth_limit": 30, "ignore_above": 256}
        index_settings: dict[str, Any] = {}
    else:
        state_mapping = {"type": "object", "dynamic": True}
        index_settings = {
            # A leaf of the wrong type is dropped from the index instead of rejecting the
            # document; fields past the limit are stored unindexed instead of failing.
            "index.mapping.ignore_malformed": True,
            "index.mapping.total_fields.limit": 5000,
            "index.mapping.total_fields.ignore_dynamic_beyond_limit": True,
            "index.mapping.depth.limit": 30,
        }
    mappings: dict[str, Any] = {
        "dynamic": "strict",
        "date_detection": False,
        "numeric_detection": False,
        "_meta": {"managed_by": "esindexer", "state_mapping": settings.state_mapping},
        "properties": {
            "class": {"type": "keyword"},
            "zoid": {"type": "long"},
            "oid": {"type": "keyword"},
            "tid": {"type": "long"},
            "committed_at": {"type": "date"},
            "state": state_mapping,
            "text": {"type": "text"},
            "refs": {"type": "long"},
        },
    }
    if settings.state_mapping == "dynamic":
        mappings["dynamic_templates"] = [
            {"state_strings": {
                "path_match": "state.*",
                "match_mapping_type": "string",
                "mapping": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
            }},
        ]
    return {
        "index_patterns": [f"{settings.index_prefix}-*"],
        # A longer prefix wins where patterns overlap (zodb-* and zodb-v2-*), so the
        # generations of a re-index can each have their template.
        "priority": 200 + len(settings.index_prefix),
        "template": {
            "settings": {
                "index.number_of_shards": settings.index_shards,
                "index.number_of_replicas": settings.index_replicas,
                # Delete tombstones remember their version this long, so a late older write
                # cannot resurrect a deleted document (default is 60 s).
                "index.gc_deletes": "10m",
                **({"index.refresh_interval": settings.index_refresh_interval}
                   if settings.index_refresh_interval else {}),
                **({"index.default_pipeline": settings.ingest_pipeline} if settings.ingest_pipeline else {}),
                **index_settings,
            },
            "mappings": mappings,
            **({"aliases": {settings.alias_name: {}}} if settings.attach_alias else {}),
        },
        "_meta": {"managed_by": "esindexer"},
    }


def template_name(settings: Settings) -> str:
    return f"{settings.index_prefix}-esindexer"


#: Answers that say nothing about what serves the URL: a proxy's while Elasticsearch
#: behind it is away (transient), and authentication failures, which Elasticsearch's
#: security layer sends without the product header (handled as credentials problems).
_NOT_PRODUCT_EVIDENCE = {401, 403, 429, 502, 503, 504}


def check_elasticsearch(es: Any) -> None:
    """Raise :class:`SetupError` when the URL answers, but not as Elasticsearch does.

    Elasticsearch marks every answer, errors included, with ``X-Elastic-Product``; the
    client checks it on successes. An error without it (a web server's 404 or 501 at a
    mistyped port or path) would otherwise be retried for ever as a server error.
    """
    from elasticsearch import ApiError, UnsupportedProductError

    try:
        es.cluster.health(timeout="1s")
    except UnsupportedProductError as exc:
        raise SetupError(f"ESINDEXER_ES_URL does not lead to Elasticsearch: {exc}") from None
    except ApiError as exc:
        headers = {k.lower() for k in (exc.meta.headers or {})}
        if "x-elastic-product" not in headers and exc.meta.status not in _NOT_PRODUCT_EVIDENCE:
            raise SetupError(f"ESINDEXER_ES_URL does not lead to Elasticsearch: the server answered "
                             f"HTTP {exc.meta.status} without Elasticsearch's X-Elastic-Product header "
                             "(wrong host, port or path?)") from None
        raise


def ensure_indices(es: Any, settings: Settings) -> tuple[str, ...]:
    """Install the template and create every routed index that does not exist yet.

    Idempotent; run at every start. Existing indices keep their mapping (a template
    change applies to indices created afterwards). With ``attach_alias`` the indices
    are (also) put behind the alias here, since indices created while detached did not
    get it from the template.
    """
    from elasticsearch import BadRequestError, NotFoundError

    check_elasticsearch(es)
    if settings.ingest_pipeline:
        try:
            es.ingest.get_pipeline(id=settings.ingest_pipeline)
        except NotFoundError:
            raise SetupError(
                f"the ingest pipeline {settings.ingest_pipeline!r} (ESINDEXER_INGEST_PIPELINE) does not exist; "
                f"create it with PUT _ingest/pipeline/{settings.ingest_pipeline} or unset the setting") from None
    es.indices.put_index_template(name=template_name(settings), **index_template(settings))
    builder_indices = tuple(settings.index_for_route(r) for r in settings.route_names())
    for index in builder_indices:
        try:
            es.indices.create(index=index)
        except BadRequestError as exc:  # only "it exists" is fine; a bad setting must be seen
            if exc.error != "resource_already_exists_exception":
                raise
    if settings.ingest_pipeline:  # indices created before the setting was given follow it too
        es.indices.put_settings(index=",".join(builder_indices),
                                settings={"index.default_pipeline": settings.ingest_pipeline})
    if settings.attach_alias:
        es.indices.put_alias(index=",".join(builder_indices), name=settings.alias_name)
    return builder_indices


def switch_alias(es: Any, settings: Settings) -> tuple[list[str], list[str]]:
    """Point the alias at exactly this prefix's indices, atomically; returns (removed, added).

    The last step of a re-index without downtime: searches see the old generation until
    this one request, then the new one, never both and never neither.
    """
    alias = settings.alias_name
    indices = [settings.index_for_route(r) for r in settings.route_names()]
    current = sorted(es.indices.get_alias(name=alias)) if es.indices.exists_alias(name=alias) else []
    removed = [index for index in current if index not in indices]
    actions: list[dict[str, Any]] = [{"remove": {"index": index, "alias": alias}} for index in removed]
    actions += [{"add": {"index": index, "alias": alias}} for index in indices]
    es.indices.update_aliases(actions=actions)
    # From now on, indices this prefix creates join the alias too.
    es.indices.put_index_template(name=template_name(settings),
                                  **index_template(_attached(settings)))
    return removed, [index for index in indices if index not in current]


def _attached(settings: Settings) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, attach_alias=True)


def iter_lines(actions: Iterable[Action]) -> Iterable[bytes]:
    """NDJSON lines of a bulk body."""
    for action in actions:
        yield action.metadata_line()
        if action.source is not None:
            yield action.source
