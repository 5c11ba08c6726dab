"""Index administration: the index template, the routed indices and the alias.

Everything here is idempotent and runs at every start (:func:`ensure_indices`) or on
an operator's command (:func:`switch_alias`). The template fixes the mapping of every
``<prefix>-*`` index, so indices created later by routing look like the first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

import dataclasses
from typing import Any

from esindexer.config import Settings
from esindexer.errors import SetupError
from esindexer.es.client import check_elasticsearch, engine_of

#: The flattened field: one field, keyword leaves, for a whole state or what the typed model sets aside.
FLATTENED: dict[str, Any] = {"type": "flattened", "depth_limit": 30, "ignore_above": 256}

#: Fields per typed index at most (Elasticsearch's default, stated so that it is a decision).
TYPED_FIELDS_LIMIT = 1000

#: The dynamic paths of the typed model: attributes and transform-added fields.
_TYPED_PATHS = ["state.*", "fields.*"]


def typed_properties() -> dict[str, Any]:
    """The typed model's containers: flat paths (no subobjects, so a path is never an object
    and "a dict here, a string there" cannot conflict), the flattened rest, the catch-all."""
    flat = {"type": "object", "dynamic": True, "subobjects": False}
    return {
        "state": dict(flat),
        "fields": dict(flat),
        "more": dict(FLATTENED),
        # The builder writes every number, date and boolean here too, as a keyword: when
        # its typed field drops it as malformed (a conflicting kind) it stays findable.
        # (Not copy_to: Elasticsearch refuses copy_to from a path like state.a.x once
        # state.a exists, taking it for a multi-field.)
        "values": {"type": "keyword", "ignore_above": 256},
    }


def typed_dynamic_templates() -> list[dict[str, Any]]:
    """One mapping per kind of leaf (esindexer/documents/typed.py makes a path one kind per document).

    ``ignore_malformed`` keeps a document whose value has another kind than the field
    (a word where numbers were mapped); the value stays findable in ``values`` or ``text``.
    Numbers are ``double`` whatever the first one was, so 3.5 is never cut to 3 by a
    ``long`` mapped from an int. Booleans are keywords: true/false, and any later kind fits.
    """
    return [
        {"typed_dates": {"path_match": _TYPED_PATHS, "match_mapping_type": "date",
                         # queried with any ISO form ("2026-06-01" in KQL), written in one
                         "mapping": {"type": "date", "format": "strict_date_optional_time",
                                     "ignore_malformed": True}}},
        {"typed_strings": {"path_match": _TYPED_PATHS, "match_mapping_type": "string",
                           "mapping": {"type": "text",
                                       "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}}},
        {"typed_longs": {"path_match": _TYPED_PATHS, "match_mapping_type": "long",
                         "mapping": {"type": "double", "ignore_malformed": True}}},
        {"typed_doubles": {"path_match": _TYPED_PATHS, "match_mapping_type": "double",
                           "mapping": {"type": "double", "ignore_malformed": True}}},
        {"typed_booleans": {"path_match": _TYPED_PATHS, "match_mapping_type": "boolean",
                            "mapping": {"type": "keyword"}}},
    ]


#: The object model's fields (docs/documents.md#objects): an object's place and its parts.
OBJECT_PROPERTIES: dict[str, Any] = {
    "name": {"type": "keyword"},
    "path": {"type": "keyword"},
    "parent": {"type": "long"},
    "depth": {"type": "integer"},
    "ancestors": {"type": "keyword"},
    "parts": {"type": "long"},
    "parts_omitted": {"type": "integer"},
    "parts_tid": {"type": "long"},
}


def index_template(settings: Settings, engine: str = "elasticsearch") -> dict[str, Any]:
    """The composable index template covering every ``<prefix>-*`` index, in the dialect
    of ``engine`` (OpenSearch's: :func:`esindexer.opensearch.mapping.opensearch_template`).

    The alias ``<prefix>`` is part of the template, so every routed index joins it
    when created and users (and Kibana) query one name.
    """
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
            "text": {"type": "text"},
            "refs": {"type": "long"},
        },
    }
    index_settings: dict[str, Any] = {}
    props = mappings["properties"]
    if settings.documents == "objects":
        mappings["_meta"]["documents"] = "objects"
        props.update(OBJECT_PROPERTIES)
    if settings.state_mapping == "typed":
        props.update(typed_properties())
        mappings["dynamic_templates"] = typed_dynamic_templates()
        # Dates are recognised by one exact form only, the form the builder writes every
        # date in (esindexer/documents/dates.py); no other string can become a date field.
        mappings["date_detection"] = True
        mappings["dynamic_date_formats"] = ["strict_date_time"]
        index_settings = {
            # The field count stays bounded whatever the corpus: past the limit, new fields
            # are kept in _source unindexed (listed in _ignored) instead of failing.
            "index.mapping.total_fields.limit": TYPED_FIELDS_LIMIT,
            "index.mapping.total_fields.ignore_dynamic_beyond_limit": True,
        }
    elif settings.state_mapping == "flattened":
        # One field for the whole state: no mapping conflict and no field explosion is
        # possible, whatever the classes store. Leaves are keywords (exact and prefix
        # search); ``text`` gives full-text search over the same strings, so long
        # strings (bodies) need no keyword: ignore_above 256 makes the index ~18 %
        # smaller at the same speed (docs/performance.md).
        props["state"] = dict(FLATTENED)
        props["fields"] = dict(FLATTENED)
    else:
        props["state"] = {"type": "object", "dynamic": True}
        props["fields"] = {"type": "object", "dynamic": True}
        index_settings = {
            # A leaf of the wrong type is dropped from the index instead of rejecting the
            # document; fields past the limit are stored unindexed instead of failing.
            "index.mapping.ignore_malformed": True,
            "index.mapping.total_fields.limit": 5000,
            "index.mapping.total_fields.ignore_dynamic_beyond_limit": True,
            "index.mapping.depth.limit": 30,
        }
        mappings["dynamic_templates"] = [
            {"state_strings": {
                "path_match": ["state.*", "fields.*"],
                "match_mapping_type": "string",
                "mapping": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
            }},
        ]
    profile_fields = profile_field_mapping(settings)
    if profile_fields and props["fields"].get("type") == "object":
        props["fields"] = {**props["fields"], "properties": profile_fields}
    template = {
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
    if engine == "opensearch":
        from esindexer.opensearch.mapping import opensearch_template

        return opensearch_template(template)
    return template


def profile_field_mapping(settings: Settings) -> dict[str, Any]:
    """The explicit mapping of ``fields.*`` a profile's transform writes (``ESINDEXER_PROFILE``),
    or nothing. Explicit fields exist from the index's creation on, so their type is never
    guessed from a first value and the field budget cannot leave them unmapped."""
    if settings.profile == "plone":
        from esindexer.transforms.plone import FIELD_MAPPING

        return {name: dict(mapping) for name, mapping in FIELD_MAPPING.items()}
    return {}


def template_name(settings: Settings) -> str:
    return f"{settings.index_prefix}-esindexer"


def ensure_indices(es: Elasticsearch, settings: Settings) -> tuple[str, ...]:
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
    if settings.attach_alias:  # before the template: an index it creates joins the alias at once
        refuse_second_generation(es, settings)
    es.indices.put_index_template(name=template_name(settings), **index_template(settings, engine_of(es)))
    builder_indices = settings.routed_indices
    for index in builder_indices:
        try:
            es.indices.create(index=index)
        except BadRequestError as exc:  # only "it exists" is fine; a bad setting must be seen
            if exc.error != "resource_already_exists_exception":
                raise
    check_state_mapping(es, settings, builder_indices)
    if settings.ingest_pipeline:  # indices created before the setting was given follow it too
        es.indices.put_settings(index=",".join(builder_indices),
                                settings={"index.default_pipeline": settings.ingest_pipeline})
    if settings.attach_alias:
        es.indices.put_alias(index=",".join(builder_indices), name=settings.alias_name)
    return builder_indices


def other_generations(es: Elasticsearch, settings: Settings) -> list[str]:
    """The indices the alias points at that esindexer manages and that are not this prefix's
    routed indices: another generation (or a route no longer configured). Indices someone
    else put behind the alias (no ``_meta.managed_by``) are not counted."""
    from elasticsearch import NotFoundError

    alias, ours = settings.alias_name, set(settings.routed_indices)
    try:
        foreign = sorted(index for index in es.indices.get_alias(name=alias) if index not in ours)
    except NotFoundError:
        return []
    if not foreign:
        return []
    mappings = es.indices.get_mapping(index=",".join(foreign))
    return [index for index in foreign
            if mappings[index]["mappings"].get("_meta", {}).get("managed_by") == "esindexer"]


def refuse_second_generation(es: Elasticsearch, settings: Settings) -> None:
    """Refuse to put this prefix's indices behind an alias that serves another generation.

    Two generations behind one alias hold the same objects, so every search through it
    finds each object twice, and nothing says so. A service started on a generation that
    was never published (or an old one started again after a re-index) is stopped here,
    before anything is created, with the ways out."""
    others = other_generations(es, settings)
    if not others:
        return
    raise SetupError(
        f"the alias {settings.alias_name} serves {', '.join(others)}, indices of another generation: putting "
        f"{', '.join(settings.routed_indices)} (ESINDEXER_INDEX_PREFIX={settings.index_prefix}) next to them would "
        "make every search find each object twice. To serve this generation, publish it with `esindexer alias` "
        "(it checks that it is caught up; `esindexer reindex` does it all); to keep this one current without "
        "serving it, set ESINDEXER_ATTACH_ALIAS=false; or start with the prefix and client id of the generation "
        "the alias serves")


def mapping_mode(mapping: dict[str, Any]) -> str:
    """The ``state_mapping`` an existing index was created with, read from its mapping."""
    state = mapping.get("properties", {}).get("state", {})
    if state.get("type") in ("flattened", "flat_object"):  # Elasticsearch's, OpenSearch's
        return "flattened"
    if state.get("subobjects") is False:
        return "typed"
    # OpenSearch has no subobjects: its typed indices say so in the template's _meta only.
    if mapping.get("_meta", {}).get("state_mapping") == "typed":
        return "typed"
    return "dynamic"


def check_state_mapping(es: Elasticsearch, settings: Settings, indices: tuple[str, ...]) -> None:
    """Refuse to write one model's documents into an index mapped for another.

    A template change applies only to indices created afterwards, so after an upgrade
    (the default became ``typed``) the existing indices keep their mapping, and typed
    documents (with ``more``/``values`` fields) would be refused by a flattened index one
    by one, as dead letters. Stopping at start with the two ways out is kinder.
    """
    mappings = es.indices.get_mapping(index=",".join(indices))
    for index in indices:
        mapping = mappings[index]["mappings"]
        documents = "objects" if "path" in mapping.get("properties", {}) else "records"
        if documents != settings.documents:
            raise SetupError(
                f"the index {index} holds {documents} documents, but ESINDEXER_DOCUMENTS is {settings.documents}: "
                f"set ESINDEXER_DOCUMENTS={documents} to keep using it, or build a new generation with "
                "`esindexer reindex --to PREFIX` and switch the alias (docs/documents.md#objects)")
        have = mapping_mode(mapping)
        if have != settings.state_mapping:
            raise SetupError(
                f"the index {index} was created with state_mapping={have}, but ESINDEXER_STATE_MAPPING is "
                f"{settings.state_mapping}: set ESINDEXER_STATE_MAPPING={have} to keep using it, or build a new "
                f"generation with the new model and switch the alias (docs/documents.md#migration-from-a-flattened-index)")


def switch_alias(es: Elasticsearch, settings: Settings) -> tuple[list[str], list[str]]:
    """Point the alias at exactly this prefix's indices, atomically; returns (removed, added).

    The last step of a re-index without downtime: searches see the old generation until
    this one request, then the new one, never both and never neither.
    """
    alias = settings.alias_name
    indices = list(settings.routed_indices)
    # The template is installed again below with these settings' mapping: not over indices of another.
    check_state_mapping(es, settings, tuple(indices))
    current = sorted(es.indices.get_alias(name=alias)) if es.indices.exists_alias(name=alias) else []
    removed = [index for index in current if index not in indices]
    actions: list[dict[str, Any]] = [{"remove": {"index": index, "alias": alias}} for index in removed]
    actions += [{"add": {"index": index, "alias": alias}} for index in indices]
    # Searches right after the switch see at least what the readiness check waited for.
    es.indices.refresh(index=",".join(indices))
    es.indices.update_aliases(actions=actions)
    # From now on, indices this prefix creates join the alias too.
    es.indices.put_index_template(name=template_name(settings),
                                  **index_template(_attached(settings), engine_of(es)))
    _detach_other_templates(es, settings)
    return removed, [index for index in indices if index not in current]


#: What a composable template's body may hold when it is put back (what GET adds is left out).
_TEMPLATE_KEYS = ("index_patterns", "template", "priority", "_meta", "composed_of", "version",
                  "allow_auto_create", "data_stream", "ignore_missing_component_templates", "deprecated")


def _detach_other_templates(es: Elasticsearch, settings: Settings) -> None:
    """Other generations' templates stop naming the alias: an index one of them creates later
    (an old service writing to a deleted index, which Elasticsearch creates again) would
    otherwise join the alias beside this generation."""
    from elasticsearch import NotFoundError

    try:
        found = es.indices.get_index_template(name="*-esindexer")["index_templates"]
    except NotFoundError:
        return
    for entry in found:
        body = {key: value for key, value in entry["index_template"].items() if key in _TEMPLATE_KEYS}
        template = dict(body.get("template") or {})
        aliases = dict(template.get("aliases") or {})
        if (entry["name"] == template_name(settings) or settings.alias_name not in aliases
                or (body.get("_meta") or {}).get("managed_by") != "esindexer"):
            continue
        del aliases[settings.alias_name]
        template["aliases"] = aliases
        es.indices.put_index_template(name=entry["name"], **{**body, "template": template})


def _attached(settings: Settings) -> Settings:
    return dataclasses.replace(settings, attach_alias=True)

