"""Document shape, routing and the index template (unit), and the template on a real node."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from esindexer.config import load_settings
from esindexer.documents import DocumentBuilder, commit_time_iso
from esindexer.es.admin import ensure_indices, index_template
from esindexer.es.bulk import BulkSender, metadata_line
from esindexer.source.tid import datetime_to_tid

TID = 291972294502024669  # 2026-11-27 09:37:15.480215 UTC (newt-spec §6)


def settings(**env):
    base = {"ESINDEXER_PG_DSN": "postgresql://x@localhost/x"}
    base.update({f"ESINDEXER_{k.upper()}": v for k, v in env.items()})
    return load_settings(env=base)


def test_commit_time_from_tid():
    assert commit_time_iso(TID) == "2026-11-27T09:37:15.480215Z"


def test_index_action_shape_and_version():
    builder = DocumentBuilder(settings())
    state = '{"title": "Hello", "body": ["a", {"deep": "text"}], "author": {"::": "persistent", ' \
            '"id": [7, "myapp.User"], "::=>": 7}, "count": 3}'
    action = builder.index_action(TID, 42, "myapp.content.Document", state)
    assert action.op == "index" and action.index == "zodb-objects" and action.version == TID
    meta = orjson.loads(metadata_line(action))
    assert meta == {"index": {"_index": "zodb-objects", "_id": "42", "version": TID,
                              "version_type": "external_gte"}}
    doc = orjson.loads(action.source)
    assert doc["class"] == "myapp.content.Document"
    assert doc["zoid"] == 42 and doc["oid"] == "0x2a" and doc["tid"] == TID
    assert doc["committed_at"] == "2026-11-27T09:37:15.480215Z"
    assert doc["state"]["title"] == "Hello"
    assert doc["refs"] == [7]
    assert set(doc["text"].split()) == {"Hello", "a", "text"}


def test_non_object_state_is_wrapped():
    doc = orjson.loads(DocumentBuilder(settings()).index_action(TID, 1, "x.Y", "[1, 2]").source)
    assert doc["state"] == {"value": [1, 2]}


def test_routing_first_match_wins_and_deletes_go_everywhere():
    builder = DocumentBuilder(settings(class_routes="myapp.content.*=content,myapp.*=app"))
    assert builder.index_for_class("myapp.content.Document") == "zodb-content"
    assert builder.index_for_class("myapp.User") == "zodb-app"
    assert builder.index_for_class("persistent.mapping.PersistentMapping") == "zodb-objects"
    deletes = builder.delete_actions(TID, 5)
    assert sorted(a.index for a in deletes) == ["zodb-app", "zodb-content", "zodb-objects"]
    assert all(a.op == "delete" and a.version == TID and a.source is None for a in deletes)
    assert {a.version for a in builder.delete_actions(TID, 5, version=TID + 1)} == {TID + 1}


def test_text_is_bounded():
    big = orjson.dumps({"a": "x" * 100_000}).decode()
    doc = orjson.loads(DocumentBuilder(settings()).index_action(TID, 1, "x.Y", big).source)
    assert len(doc["text"]) <= 32_000


def test_template_covers_routes_and_alias():
    tpl = index_template(settings(index_prefix="app1"))
    assert tpl["index_patterns"] == ["app1-*"]
    assert tpl["template"]["aliases"] == {"app1": {}}
    props = tpl["template"]["mappings"]["properties"]
    assert props["committed_at"] == {"type": "date"}
    # the default is the typed model (docs/documents.md): flat typed paths, the rest in `more`
    assert props["state"] == {"type": "object", "dynamic": True, "subobjects": False}
    assert props["more"]["type"] == "flattened" and props["values"]["type"] == "keyword"
    assert tpl["template"]["mappings"]["dynamic_date_formats"] == ["strict_date_time"]
    flat = index_template(settings(index_prefix="app1", state_mapping="flattened"))["template"]["mappings"]
    assert flat["properties"]["state"]["type"] == "flattened"
    assert flat["date_detection"] is False


@pytest.mark.parametrize("mapping", ["typed", "flattened", "dynamic"])
def test_conflicting_shapes_never_stall_indexing(es, es_prefix, mapping):
    """The same attribute as a string in one class and an object in another."""
    prefix = es_prefix.rstrip("-")
    s = settings(index_prefix=prefix, index_replicas="0", state_mapping=mapping)
    indices = ensure_indices(es, s)
    assert indices == (f"{prefix}-objects",)
    builder = DocumentBuilder(s)
    t1, t2 = datetime_to_tid(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)), TID
    actions = [
        builder.index_action(t1, 1, "a.A", '{"title": "plain", "when": "2026-01-01"}'),
        builder.index_action(t1, 2, "b.B", '{"title": {"nested": "object"}, "when": "not a date"}'),
        builder.index_action(t2, 3, "c.C", '{"title": 12, "n": 18446744073709551616}'),
    ]
    result = BulkSender(es).send(actions)
    es.indices.refresh(index=prefix)
    count = es.count(index=prefix)["count"]
    if mapping in ("typed", "flattened"):
        assert not result.rejected and count == 3
    else:
        # dynamic: a leaf of the wrong type is ignored (ignore_malformed); an object where a
        # string was mapped is refused for that document only, never for the others.
        assert count + len(result.rejected) == 3 and count >= 2
        for rejected in result.rejected:
            assert rejected.status == 400 and "exception" in rejected.reason
    hits = es.search(index=prefix, query={"match": {"text": "plain"}})["hits"]["hits"]
    assert [h["_source"]["zoid"] for h in hits] == [1]
    caps = es.field_caps(index=prefix, fields="committed_at")["fields"]["committed_at"]
    assert list(caps) == ["date"]


def test_template_is_idempotent_and_alias_spans_routes(es, es_prefix):
    prefix = es_prefix.rstrip("-")
    s = settings(index_prefix=prefix, index_replicas="0", class_routes="a.*=alpha")
    ensure_indices(es, s)
    ensure_indices(es, s)
    aliases = es.indices.get_alias(name=prefix)
    assert sorted(aliases) == [f"{prefix}-alpha", f"{prefix}-objects"]


def test_dynamic_mapping_harmonises_mixed_lists():
    builder = DocumentBuilder(settings(state_mapping="dynamic"))
    state = '{"ref": {"::": "persistent", "id": [7, "m.User"], "::=>": 7}, "pair": ["en", 1, null], "n": [1, 2]}'
    doc = orjson.loads(builder.index_action(TID, 1, "x.Y", state).source)
    assert doc["state"]["ref"]["id"] == ["7", "m.User"]
    assert doc["state"]["pair"] == ["en", "1", None]
    assert doc["state"]["n"] == [1, 2]
    assert doc["refs"] == [7]
    flat = orjson.loads(DocumentBuilder(settings(state_mapping="flattened")).index_action(TID, 1, "x.Y", state).source)
    assert flat["state"]["ref"]["id"] == [7, "m.User"]  # flattened keeps the JSON as converted


def test_refresh_interval_setting_reaches_the_template():
    tpl = index_template(settings(index_refresh_interval="250ms"))
    assert tpl["template"]["settings"]["index.refresh_interval"] == "250ms"
    assert "index.refresh_interval" not in index_template(settings())["template"]["settings"]
    with pytest.raises(Exception, match="ESINDEXER_INDEX_REFRESH_INTERVAL: expected a time"):
        settings(index_refresh_interval="fast")


def test_a_bad_index_setting_is_an_error_not_ignored(es, es_prefix):
    from elasticsearch import BadRequestError

    prefix = es_prefix.rstrip("-")
    with pytest.raises(BadRequestError):
        ensure_indices(es, settings(index_prefix=prefix, index_replicas="0", index_shards="2000"))


def test_one_rule_decides_what_each_kind_of_conversion_asks_of_the_index():
    """DocumentBuilder.actions_for, shared by the service, verify and --redeliver."""
    from esindexer.convert.jsonifier import Conversion, Kind

    settings = load_settings(env={"ESINDEXER_PG_DSN": "postgresql://x@y/z", "ESINDEXER_INDEX_PREFIX": "p",
                                  "ESINDEXER_CLASS_ROUTES": "app.Doc=docs"})
    builder = DocumentBuilder(settings)
    ok = builder.actions_for(7, 42, Conversion(Kind.OK, "app.Doc", '{"title": "t"}'))
    assert [(a.op, a.index, a.zoid, a.version) for a in ok] == [("index", "p-docs", 42, 7)]
    for kind in (Kind.DELETED, Kind.SKIPPED):  # the class may be unknown: every routed index
        gone = builder.actions_for(7, 42, Conversion(kind, None))
        assert sorted((a.op, a.index, a.version) for a in gone) == [("delete", "p-docs", 7), ("delete", "p-objects", 7)]
    for kind in (Kind.ERROR, Kind.CRASHED):  # nothing to write: the caller keeps a dead letter
        assert builder.actions_for(7, 42, Conversion(kind, None, error="bad")) == []
