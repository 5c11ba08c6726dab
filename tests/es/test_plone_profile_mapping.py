"""The Plone profile's explicit ``fields.*`` mapping on a real node: the types the catalog
comparisons rely on, whatever the index saw first, and the queries of docs/plone.md.

The documents are the real records of tests/transforms/plone_items.json (one item of each
default type and the site root of a real Plone 6.2 site), shaped by the builder's typed
model and the profile's transform.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import orjson

from esindexer.documents.builder import DocumentBuilder
from esindexer.documents.typed import shape
from esindexer.es.admin import ensure_indices, index_template
from esindexer.transforms.plone import FIELD_MAPPING, object_transform
from tests.indexing import make_settings

ITEMS = json.loads((Path(__file__).parents[1] / "transforms" / "plone_items.json").read_text())


def _document(builder: DocumentBuilder, item: dict) -> dict:
    """The document of ``item`` as the builder writes it, with the profile's fields of its path."""
    doc = orjson.loads(builder.source(item["tid"], item["zoid"], item["class"], json.dumps(item["state"])))
    record = SimpleNamespace(class_name=item["class"], zoid=item["zoid"], tid=item["tid"],
                             state=item["state"], path=item["path"], parts=[])
    doc["fields"] = shape(object_transform(record), 0).typed
    return doc


def test_the_template_maps_every_profile_field_explicitly():
    settings = make_settings("postgresql://u@h/db", "http://127.0.0.1:9200", "t-plone-", profile="plone")
    fields = index_template(settings)["template"]["mappings"]["properties"]["fields"]
    assert fields["properties"] == FIELD_MAPPING and fields["subobjects"] is False
    plain = make_settings("postgresql://u@h/db", "http://127.0.0.1:9200", "t-plone-")
    assert "properties" not in index_template(plain)["template"]["mappings"]["properties"]["fields"]


def test_profile_fields_have_their_types_and_answer_the_guide_s_queries(es, es_url, es_prefix):
    settings = make_settings("postgresql://u@h/db", es_url, es_prefix, profile="plone", transform="")
    [index] = ensure_indices(es, settings)
    builder = DocumentBuilder(settings)
    for item in ITEMS:
        es.index(index=index, id=str(item["zoid"]), document=_document(builder, item))
    es.indices.refresh(index=index)

    if hasattr(es, "field_caps"):
        caps = es.field_caps(index=index, fields="fields.*")["fields"]
    else:  # esindexer's OpenSearch client (the OpenSearch run): the same request
        caps = es.request("GET", f"/{index}/_field_caps", params={"fields": "fields.*"})["fields"]
    types = {name: next(iter(kinds)) for name, kinds in caps.items()}
    for name, mapping in FIELD_MAPPING.items():
        assert types[f"fields.{name}"] == mapping["type"], name
    assert types["fields.title.keyword"] == "keyword"

    def uids(query: dict) -> set[str]:
        hits = es.search(index=index, query=query, size=100, source=["fields.uid"])["hits"]["hits"]
        return {hit["_source"]["fields"]["uid"] for hit in hits}

    def catalog(test) -> set[str]:
        return {i["catalog"]["uid"] for i in ITEMS if test(i["catalog"])}

    assert uids({"term": {"fields.portal_type": "News Item"}}) == catalog(lambda b: b["portal_type"] == "News Item")
    assert uids({"term": {"fields.review_state": "published"}}) == catalog(lambda b: b["review_state"] == "published")
    assert uids({"term": {"fields.subject": "meeting"}}) == catalog(lambda b: "meeting" in b["subject"])
    assert uids({"term": {"fields.is_folderish": True}}) == catalog(lambda b: b["is_folderish"])
    assert uids({"prefix": {"fields.path": "/Plone/folder-0/"}}) == catalog(lambda b: b["path"].startswith("/Plone/folder-0/"))
    assert uids({"range": {"fields.effective": {"gte": "2025-01-01", "lt": "2026-01-01"}}}) == catalog(
        lambda b: "2025-01-01" <= b["effective"] < "2026-01-01")
    assert uids({"range": {"fields.effective": {"lt": "1970-01-01"}}}) == catalog(lambda b: b["effective"] < "1970")
    assert uids({"match": {"fields.body": "body0"}}) == {next(i["catalog"]["uid"] for i in ITEMS
                                                          if "body0" in json.dumps(i["state"].get("text")))}
    assert uids({"match": {"fields.title": "granite"}}) == catalog(lambda b: "granite" in b["title"].lower().split())
    ignored = es.search(index=index, query={"exists": {"field": "_ignored"}}, size=0)["hits"]["total"]["value"]
    assert ignored == 0
