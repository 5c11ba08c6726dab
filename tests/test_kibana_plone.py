"""deploy/kibana/plone.ndjson: the Kibana saved objects of a Plone site (ESINDEXER_PROFILE=plone).

Checked offline: the objects are well formed (JSON-string attributes parse, references
resolve), and every field they use exists in the profile's explicit mapping of ``fields.*``
with a type that fits its use (terms on keywords, the time field and date histograms on
dates), so the data view, the saved search and the dashboard work on the first index the
profile creates, before any document has been seen. (tests/es/test_plone_profile_mapping.py
checks that mapping on a real node.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from esindexer.config_table import SETTINGS_BY_NAME
from esindexer.transforms.plone import FIELD_MAPPING

PLONE_OBJECTS = Path(__file__).resolve().parents[1] / "deploy" / "kibana" / "plone.ndjson"
JSON_STRINGS = {"index-pattern": ("fieldAttrs", "fieldFormatMap", "fields", "runtimeFieldMap", "sourceFilters"),
                "visualization": ("visState", "uiStateJSON"), "dashboard": ("panelsJSON", "optionsJSON")}


def objects() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PLONE_OBJECTS.read_text().splitlines() if line.strip()]


def field_type(name: str) -> str:
    """The mapped type of a ``fields.*`` name of the profile (``fields.title.keyword`` too)."""
    assert name.startswith("fields."), name
    base = name.removeprefix("fields.")
    if base.endswith(".keyword") and base.removesuffix(".keyword") in FIELD_MAPPING:
        return FIELD_MAPPING[base.removesuffix(".keyword")]["fields"]["keyword"]["type"]
    assert base in FIELD_MAPPING, f"{name} is not in the Plone profile's mapping"
    return str(FIELD_MAPPING[base]["type"])


def test_plone_objects_are_well_formed_and_resolve() -> None:
    found = objects()
    keys = [(o["type"], o["id"]) for o in found]
    assert len(keys) == len(set(keys))
    assert sorted(t for t, _ in keys) == ["dashboard", "index-pattern", "search", "visualization", "visualization"]
    for obj in found:
        for name in JSON_STRINGS.get(obj["type"], ()):
            json.loads(obj["attributes"][name])
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in keys, f"{obj['id']}: dangling {ref}"
        meta = obj["attributes"].get("kibanaSavedObjectMeta")
        if meta and "indexRefName" in meta["searchSourceJSON"]:
            assert json.loads(meta["searchSourceJSON"])["indexRefName"] in {r["name"] for r in obj["references"]}
    dashboard = next(o for o in found if o["type"] == "dashboard")
    refs = {r["name"]: r for r in dashboard["references"]}
    for panel in json.loads(dashboard["attributes"]["panelsJSON"]):
        assert refs[f"{panel['panelIndex']}:{panel['panelRefName']}"]["type"] == panel["type"]


def test_every_field_referenced_is_in_the_profile_mapping_with_a_fitting_type() -> None:
    found = objects()
    view = next(o for o in found if o["type"] == "index-pattern")["attributes"]
    assert view["title"] == SETTINGS_BY_NAME["index_prefix"].default  # the alias
    assert field_type(view["timeFieldName"]) == "date" and view["timeFieldName"] == "fields.modified"
    for name in json.loads(view["fieldAttrs"]):
        field_type(name)
    search = next(o for o in found if o["type"] == "search")["attributes"]
    assert search["columns"] == ["fields.title", "fields.portal_type", "fields.review_state", "fields.path",
                                 "fields.modified"]
    for name in search["columns"]:
        field_type(name)
    assert search["sort"] == [["fields.modified", "desc"]]
    used = []
    for vis in (o for o in found if o["type"] == "visualization"):
        for agg in json.loads(vis["attributes"]["visState"])["aggs"]:
            field = agg["params"].get("field")
            if field:
                used.append((agg["type"], field))
                want = {"terms": "keyword", "date_histogram": "date"}[agg["type"]]
                assert field_type(field) == want, (vis["id"], field)
    assert sorted(used) == [("date_histogram", "fields.modified"), ("terms", "fields.portal_type"),
                            ("terms", "fields.review_state")]
