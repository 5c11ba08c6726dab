"""The typed model on the real node: conflicts never reject, mappings stay bounded.

Documents are built by the real DocumentBuilder from the converter's JSON and sent with
the service's BulkSender into indices created by ``ensure_indices`` (the template the
service installs). Each conflict is tried in both orders, in a fresh index per order,
because Elasticsearch maps a field from the first value it sees.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from esindexer.config import load_settings
from esindexer.documents import DocumentBuilder
from esindexer.es.admin import TYPED_FIELDS_LIMIT, ensure_indices
from esindexer.es.bulk import BulkSender

TID = 291972294502024669


def settings(prefix: str, **env: str):
    base = {"ESINDEXER_PG_DSN": "postgresql://x@localhost/x", "ESINDEXER_INDEX_PREFIX": prefix,
            "ESINDEXER_INDEX_REPLICAS": "0"}
    base.update({f"ESINDEXER_{k.upper()}": v for k, v in env.items()})
    return load_settings(env=base)


def index_states(es, prefix: str, states: list[Any]) -> list:
    """Index one document per state (zoid 1, 2, ...) in order; return the rejected items."""
    s = settings(prefix)
    ensure_indices(es, s)
    builder = DocumentBuilder(s)
    rejected = []
    for zoid, state in enumerate(states, 1):  # one request each: the first one sets the mapping
        action = builder.index_action(TID, zoid, "m.C", orjson.dumps(state).decode())
        rejected += BulkSender(es).send([action]).rejected
    es.indices.refresh(index=prefix)
    return rejected


def found(es, prefix: str, value: Any, path: str = "a") -> list[int]:
    """Zoids a Kibana user finds for ``value`` with ``state.<path> : v or values : v or text : v``."""
    should: list[dict[str, Any]] = [{"term": {"values": str(value).lower() if isinstance(value, bool) else value}},
                                    {"match": {"text": value}} if isinstance(value, str) else {"match_none": {}}]
    should.append({"query_string": {"query": f'"{value}"' if isinstance(value, str) else str(value).lower(),
                                    "fields": [f"state.{path}"], "lenient": True}})
    hits = es.search(index=prefix, query={"bool": {"should": should}}, size=10)["hits"]["hits"]
    return sorted(int(h["_id"]) for h in hits)


#: (first state, second state, how each is found: (value, path)).
CONFLICTS = {
    "string-int": ({"a": "hello"}, {"a": 42}, [("hello", "a"), (42, "a")]),
    "dict-list": ({"a": {"x": 7}}, {"a": [8, 9]}, [(7, "a.x"), (8, "a")]),
    "date-freetext": ({"a": "2026-06-01T10:00:00"}, {"a": "tomorrow maybe"},
                      [("2026-06-01T10:00:00.000000Z", "a"), ("tomorrow", "a")]),
    "dict-string": ({"a": {"x": "inner"}}, {"a": "outer"}, [("inner", "a.x"), ("outer", "a")]),
    "bool-number": ({"a": True}, {"a": 2.5}, [(True, "a"), (2.5, "a")]),
    "number-date": ({"a": 5}, {"a": "2026-06-01"}, [(5, "a"), ("2026-06-01T00:00:00.000000Z", "a")]),
    # 2**64 as the converter writes it (a decimal string: docs/json.md #16)
    # a key named like the strings' sub-field: written as keyword_ (else "defined more than once")
    "keyword-key": ({"a": {"keyword": 5}}, {"a": "some text"}, [(5, "a.keyword_"), ("some", "a")]),
    "bigint-int": ({"a": "18446744073709551616"}, {"a": 1}, [("18446744073709551616", "a"), (1, "a")]),
}


@pytest.mark.parametrize("order", ["forward", "reverse"])
@pytest.mark.parametrize("case", sorted(CONFLICTS))
def test_conflicting_kinds_never_reject_and_stay_findable(es, es_prefix, case, order):
    first, second, finds = CONFLICTS[case]
    states = [first, second]
    if order == "reverse":
        states.reverse()
        finds = list(reversed(finds))
    prefix = es_prefix.rstrip("-")
    assert index_states(es, prefix, states) == []
    assert es.count(index=prefix)["count"] == 2
    for zoid, (value, path) in enumerate(finds, 1):
        assert zoid in found(es, prefix, value, path), f"{case}/{order}: {value!r} not found"


def test_mixed_kinds_within_one_document(es, es_prefix):
    """A tuple ("en", 1) and a list of a date and a word: one document, no rejection, in ``more``."""
    prefix = es_prefix.rstrip("-")
    assert index_states(es, prefix, [{"pair": ["en", 1], "when": ["2026-06-01", "soon"]}]) == []
    assert es.count(index=prefix, query={"term": {"more.pair": "en"}})["count"] == 1
    assert es.count(index=prefix, query={"term": {"more.when": "soon"}})["count"] == 1


def mapped_fields(es, index: str) -> int:
    """Fields the index maps, counted as Elasticsearch counts them against total_fields.limit."""
    def count(props: dict[str, Any]) -> int:
        n = 0
        for field in props.values():
            n += 1 + count(field.get("properties", {})) + len(field.get("fields", {}))
        return n
    mapping = es.indices.get_mapping(index=index)[index]["mappings"]
    return count(mapping["properties"])


def test_field_count_stays_bounded(es, es_prefix):
    """A 5,000-key mapping, an OOBTree-like dict, and 400 classes x 5 distinct attributes."""
    prefix = es_prefix.rstrip("-")
    s = settings(prefix)
    (index,) = ensure_indices(es, s)
    builder = DocumentBuilder(s)
    actions = [
        builder.index_action(TID, 1, "persistent.mapping.PersistentMapping",
                             orjson.dumps({"data": {f"doc-{n}": {"title": f"t{n}"} for n in range(5000)}}).decode()),
        builder.index_action(TID, 2, "m.Tree",
                             orjson.dumps({"_data": {str(n): n for n in range(5000)}}).decode()),
    ]
    for c in range(400):
        state = {f"attr_{c}_{k}": (f"v{c}" if k % 2 else c + k) for k in range(5)}
        actions.append(builder.index_action(TID, 100 + c, f"m.C{c}", orjson.dumps(state).decode()))
    sender = BulkSender(es)
    rejected = []
    for start in range(0, len(actions), 50):
        rejected += sender.send(actions[start:start + 50]).rejected
    assert rejected == []
    es.indices.refresh(index=prefix)
    assert es.count(index=prefix)["count"] == 402
    assert mapped_fields(es, index) <= TYPED_FIELDS_LIMIT
    caps = es.field_caps(index=prefix, fields="*")["fields"]
    assert len(caps) <= TYPED_FIELDS_LIMIT + 20  # + metadata fields (_id, _source, ...)
    assert not any(name.startswith("state.data.") or name.startswith("state._data.") for name in caps)
    # the big mappings are one field each, searchable by key
    assert es.count(index=prefix, query={"term": {"more.data.doc-4999.title": "t4999"}})["count"] == 1
    assert es.count(index=prefix, query={"term": {"more._data.17": "17"}})["count"] == 1
    # past the limit a class's attributes are kept, unindexed but in _source and text
    assert es.count(index=prefix, query={"match": {"text": "v399"}})["count"] == 1


def test_the_kql_of_the_docs_for_dropped_values_and_big_mappings(es, es_prefix):
    """docs/documents.md: `_ignored : state.rating` finds what a typed field dropped, and
    `more.data.doc-17 : *` (an exists query on a key of the flattened rest) works."""
    prefix = es_prefix.rstrip("-")
    states = [{"rating": 3.5}, {"rating": "n/a"},
              {"data": {f"doc-{n}": n for n in range(40)}}]
    assert index_states(es, prefix, states) == []
    hits = es.search(index=prefix, query={"term": {"_ignored": "state.rating"}})["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["2"]
    assert es.count(index=prefix, query={"exists": {"field": "more.data.doc-17"}})["count"] == 1
    assert es.count(index=prefix, query={"range": {"state.rating": {"gte": 3}}})["count"] == 1


def test_odd_shapes_never_reject(es, es_prefix):
    """Deep nesting (the flattened rest allows 30 levels, the converter 200), odd and empty
    keys, a key named like the strings' sub-field, a huge int and a non-dict state."""
    deep: Any = {"x": "bottom"}
    for _ in range(60):
        deep = {"k": deep}
    nested: Any = 1
    for _ in range(60):
        nested = [nested]
    wide = {f"k{n}": n for n in range(20)} | {"": "empty", ".": "dot", "a..b": 1, " ": "space"}
    prefix = es_prefix.rstrip("-")
    states = [{"deep": deep}, {"nested": nested}, {"data": wide, "": 1, ".": 2},
              {"a": {"keyword": {"keyword": "x"}}}, {"n": "1" + "0" * 40}, ["a", "list", "state"]]
    assert index_states(es, prefix, states) == []
    assert es.count(index=prefix)["count"] == len(states)
    assert es.count(index=prefix, query={"match": {"text": "bottom"}})["count"] == 1
