"""The Kibana saved objects fit the indices esindexer really creates.

deploy/kibana/objects.ndjson is written by hand. tests/test_deploy.py checks its shape
offline; this test checks it against a real Elasticsearch node after esindexer has
indexed real ZODB objects: every field the data view, the saved search and the
visualizations use must exist in the alias, with one type across all routed indices (a
conflict makes Kibana refuse to aggregate), and be searchable or aggregatable as the
object's use of it requires. Then the queries Kibana would send for those objects are
run, so that "the field exists" also means "the panel shows something".

The data view's ``title`` is the alias, which is the default index prefix ``zodb``; the
test checks that, then queries its own prefix's alias in its place (the shared node must
not be touched outside the test's prefix).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import transaction
from persistent import Persistent
from persistent.mapping import PersistentMapping

from esindexer.config_table import SETTINGS_BY_NAME
from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from tests.indexing import dead_letters, make_settings

OBJECTS = Path(__file__).resolve().parents[2] / "deploy" / "kibana" / "objects.ndjson"

#: The types the saved objects are designed for (their labels, sorting and aggregations
#: assume them); see the mapping in esindexer.documents.index_template.
EXPECTED_TYPES = {"class": "keyword", "zoid": "long", "committed_at": "date"}
#: ... and with the typed model (the default), the typed fields the saved objects show.
TYPED_TYPES = {"state.title": "text"}


class Article(Persistent):
    """Content routed to the default index."""

    def __init__(self, title: str, body: str):
        self.title = title
        self.body = body


class Folder(Persistent):
    """Content routed to a second index, so the alias spans two indices like real setups."""

    def __init__(self, title: str):
        self.title = title
        self.items = PersistentMapping()


def saved_objects() -> list[dict[str, Any]]:
    return [json.loads(line) for line in OBJECTS.read_text().splitlines() if line.strip()]


def field_uses() -> tuple[dict[str, Any], dict[str, set[str]]]:
    """The data view, and every field the saved objects use → the uses (``time``,
    ``label``, ``column``, ``sort``, ``terms``, ``date_histogram``, ...)."""
    objects = saved_objects()
    view = next(o for o in objects if o["type"] == "index-pattern")["attributes"]
    uses: dict[str, set[str]] = {}

    def use(field: str, how: str) -> None:
        uses.setdefault(field, set()).add(how)

    use(view["timeFieldName"], "time")
    for field in json.loads(view["fieldAttrs"]):
        use(field, "label")
    for obj in objects:
        attributes = obj["attributes"]
        if obj["type"] == "search":
            for column in attributes.get("columns", []):
                use(column, "column")
            for field, _direction in attributes.get("sort", []):
                use(field, "sort")
        if obj["type"] == "visualization":
            for agg in json.loads(attributes["visState"])["aggs"]:
                if field := agg.get("params", {}).get("field"):
                    use(field, agg["type"])
    return view, uses


def test_saved_objects_use_the_fields_this_test_knows() -> None:
    """Guard for the parser below: a new panel or column must show up in ``field_uses``."""
    view, uses = field_uses()
    assert view["title"] == SETTINGS_BY_NAME["index_prefix"].default == "zodb"
    assert set(uses) >= set(EXPECTED_TYPES)
    assert {"time", "sort", "date_histogram"} <= uses["committed_at"]
    assert {"column", "terms"} <= uses["class"]


@pytest.mark.parametrize("state_mapping", ["typed", "flattened", "dynamic"])
def test_kibana_objects_match_the_real_indices(zodb, db_dsn, es, es_url, es_prefix, state_mapping) -> None:
    conn = zodb.open()
    root = conn.root()
    for n in range(4):
        root[f"article{n}"] = Article(f"article {n}", "river valley summit")
    root["folder"] = folder = Folder("news")
    folder.items["first"] = Article("inside", "granite")
    transaction.commit()
    conn.close()
    settings = make_settings(db_dsn, es_url, es_prefix, state_mapping=state_mapping,
                             class_routes=f"{__name__}.Folder=folders")
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK

    view, uses = field_uses()
    assert view["title"] == "zodb"  # the default prefix; this test's alias stands in for it
    alias = settings.index_prefix
    indices = set(es.indices.get_alias(name=alias))
    assert indices == {f"{alias}-objects", f"{alias}-folders"}
    es.indices.refresh(index=alias)

    caps = es.field_caps(index=alias, fields=sorted(uses))["fields"]
    for field, how in sorted(uses.items()):
        if state_mapping == "flattened" and field in TYPED_TYPES:
            # keys of a flattened field are not fields of their own: Discover shows the column
            # from _source, and a query on it still finds the objects
            assert es.count(index=alias, query={"exists": {"field": field}})["count"] > 0, field
            continue
        assert field in caps, f"{field} (used as {sorted(how)}) does not exist in {alias}"
        types = caps[field]
        assert len(types) == 1, f"{field} has conflicting types across indices: {sorted(types)}"
        (kind, cap), = types.items()
        assert "indices" not in cap, f"{field} missing or different in some indices: {cap}"
        if field in EXPECTED_TYPES:
            assert kind == EXPECTED_TYPES[field], f"{field} is {kind}, not {EXPECTED_TYPES[field]}"
        if state_mapping == "typed" and field in TYPED_TYPES:
            assert kind == TYPED_TYPES[field], f"{field} is {kind}, not {TYPED_TYPES[field]}"
        assert cap["searchable"], f"{field} is not searchable"
        if how & {"time", "sort", "terms", "date_histogram"}:
            assert cap["aggregatable"], f"{field} (used as {sorted(how)}) is not aggregatable"
        if how & {"time", "date_histogram"}:
            assert kind == "date", f"{field} (used as {sorted(how)}) is {kind}, not date"

    # Every object must be there to be seen in Kibana at all.
    letters = dead_letters(db_dsn)
    # (dynamic mapping once dead-lettered every object holding a persistent reference)
    assert letters == []

    # What Discover and the two visualizations ask for, on the data they will see.
    time_field = view["timeFieldName"]
    answer = es.search(
        index=alias, size=10, sort=[{time_field: "desc"}],
        query={"range": {time_field: {"gte": "now-7d", "lte": "now"}}},  # the dashboard's time range
        aggs={
            "by_class": {"terms": {"field": "class", "size": 10}},
            "over_time": {"date_histogram": {"field": time_field, "fixed_interval": "1h"},
                          "aggs": {"by_class": {"terms": {"field": "class", "size": 5}}}},
        },
    )
    total = answer["hits"]["total"]["value"]
    assert total == 8  # root, 4 articles, the folder, its items mapping, the article inside
    by_class = {b["key"]: b["doc_count"] for b in answer["aggregations"]["by_class"]["buckets"]}
    assert by_class == {f"{__name__}.Article": 5, f"{__name__}.Folder": 1,
                        "persistent.mapping.PersistentMapping": 2}
    assert sum(b["doc_count"] for b in answer["aggregations"]["over_time"]["buckets"]) == total
    first = answer["hits"]["hits"][0]["_source"]
    assert isinstance(first["zoid"], int) and first["committed_at"].endswith("Z")
