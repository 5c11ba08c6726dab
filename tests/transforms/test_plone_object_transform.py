"""The Plone profile's object transform, on real records of a real Plone 6.2 site.

``plone_items.json`` holds one content item of every default type (two Documents: one
private, one published and versioned) and the site root, from a site built by
``tests/plone/site_script.py build 4 28 23``: what the service handed the transform with
``ESINDEXER_PROFILE=plone`` (the state as esindexer's converter wrote it, folded by the
object model: the workflow history mapping, the rich text's ``RawValueHolder``, the blob
file values and the annotations inside the item), captured by
``tests/transforms/capture_plone_items.py``, with the metadata ``portal_catalog`` stored
for the item (the ``brains`` step). Attributes over 2,000 characters of JSON are replaced
by ``"(trimmed)"`` where an item's ``trimmed`` lists them (the site root's folded tools,
a folder's listing). The catalog is the truth the fields are compared with.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from esindexer.transforms.html import html_to_text
from esindexer.transforms.plone import CEILING_DATE, FLOOR_DATE, current_workflow, object_transform

ITEMS = json.loads((Path(__file__).parent / "plone_items.json").read_text())


def record(item: dict[str, Any], **changes: Any) -> Any:
    """What the builder hands an object transform: class, zoid, tid, the folded state and the path."""
    state = json.loads(json.dumps(item["state"]))
    state.update(changes)
    return SimpleNamespace(class_name=item["class"], zoid=item["zoid"], tid=item["tid"], state=state,
                           path=item["path"], parts=[], fields={})


def by_type(portal_type: str, review_state: str | None = None) -> dict[str, Any]:
    return next(i for i in ITEMS if i["catalog"]["portal_type"] == portal_type
                and (review_state is None or i["catalog"]["review_state"] == review_state))


def seconds(iso: str) -> str:
    """An ISO instant to the second, as the catalog's metadata keeps it (``...+00:00`` or ``...Z``)."""
    return iso[:19]


def test_the_fixture_is_every_default_type_and_the_site_root() -> None:
    assert {i["catalog"]["portal_type"] for i in ITEMS} == {
        "Plone Site", "Folder", "Document", "News Item", "Event", "Link", "File", "Image", "Collection"}


@pytest.mark.parametrize("item", ITEMS, ids=lambda i: f"{i['catalog']['portal_type']}:{i['path']}")
def test_fields_equal_what_the_catalog_stored(item: dict[str, Any]) -> None:
    fields = object_transform(record(item))
    brain = item["catalog"]
    assert fields is not None
    assert fields["uid"] == brain["uid"]
    assert fields["portal_type"] == brain["portal_type"]
    assert fields["path"] == brain["path"]
    assert fields["parent"] == (brain["path"].rsplit("/", 1)[0] or "/")
    assert fields["id"] == brain["id"]
    assert fields["title"] == brain["title"]
    assert fields["description"] == brain["description"]
    assert fields["subject"] == brain["subject"]
    assert fields["creators"] == brain["creators"]
    assert fields.get("review_state") == brain["review_state"]
    assert fields["is_folderish"] is brain["is_folderish"]
    for name in ("effective", "expires", "created", "modified"):
        assert seconds(fields[name]) == seconds(brain[name]), name
    for name in ("start", "end"):
        assert (seconds(fields[name]) if name in fields else None) == (brain[name] and seconds(brain[name])), name


def test_missing_dates_are_the_catalog_s_floor_and_ceiling() -> None:
    folder = by_type("Folder")
    assert "effective_date" not in folder["state"] or folder["state"]["effective_date"] is None
    fields = object_transform(record(folder))
    assert fields is not None
    assert fields["effective"] == FLOOR_DATE == "1969-12-31T00:00:00.000000Z"
    assert fields["expires"] == CEILING_DATE == "2499-12-31T00:00:00.000000Z"
    # an explicit None (Dexterity's class default) is missing too
    fields = object_transform(record(folder, effective_date=None, expiration_date=None))
    assert fields is not None and (fields["effective"], fields["expires"]) == (FLOOR_DATE, CEILING_DATE)


def test_review_state_and_history_come_from_the_folded_mapping() -> None:
    news = by_type("News Item")
    history = news["state"]["workflow_history"]
    assert history["::"] == "Persistence.mapping.PersistentMapping"  # a record of its own, folded in
    fields = object_transform(record(news))
    assert fields is not None
    assert fields["review_state"] == "pending"
    assert [(e["workflow"], e.get("action"), e["review_state"]) for e in fields["workflow_history"]] == [
        ("simple_publication_workflow", "", "private"), ("simple_publication_workflow", "submit", "pending")]
    assert all(e["actor"] == "admin" and e["time"].endswith("Z") for e in fields["workflow_history"])


def test_the_current_workflow_is_the_one_whose_last_entry_is_newest() -> None:
    def entry(state: str, micros: int) -> dict[str, Any]:
        return {"review_state": state, "time": {"::": "DateTime.DateTime.DateTime", "state": [micros, False, "UTC"]}}

    history = {"data": {"old_workflow": [entry("visible", 1), entry("published", 5)],
                        "intranet_workflow": [entry("internal", 9)]}}
    assert current_workflow(history) == ("intranet_workflow", [entry("internal", 9)])
    # the folded mapping with its class marker, and an unfolded reference (over the budget)
    assert current_workflow({"::": "Persistence.mapping.PersistentMapping", **history})[0] == "intranet_workflow"
    assert current_workflow({"::": "persistent", "id": [7, "Persistence.mapping.PersistentMapping"]}) is None


def test_body_is_the_rich_text_without_html() -> None:
    doc = by_type("Document", "published")
    raw = doc["state"]["text"]["_raw_holder"]["value"]
    assert raw.startswith("<p>") and "<strong>" in raw
    fields = object_transform(record(doc))
    assert fields is not None
    assert fields["body"] == html_to_text(raw)
    assert "<" not in fields["body"] and "body0" in fields["body"].split()
    assert fields["body"].endswith("Summit end.")  # <p>..</p><p><strong>Summit</strong> end.</p>: words kept apart


def test_items_without_rich_text_have_no_body() -> None:
    for portal_type in ("Folder", "Link", "File", "Image", "Collection"):
        fields = object_transform(record(by_type(portal_type)))
        assert fields is not None and "body" not in fields, portal_type


def test_file_and_image_metadata_without_blob_bytes() -> None:
    file = object_transform(record(by_type("File")))
    image = object_transform(record(by_type("Image")))
    assert file is not None and image is not None
    assert file["file_name"].startswith("notes-") and file["content_type"] == "text/plain"
    assert "size" not in file  # a blob file's size is in the blob storage, not in any record
    assert image["file_name"].startswith("pixel-") and image["content_type"] == "image/png"
    assert (image["width"], image["height"], image["size"]) == (1, 1, 66)  # the 1x1 PNG the site script uploads
    assert image["content_type"] == by_type("Image")["catalog"]["mime_type"]


def test_the_site_root_has_its_portal_type_from_its_class() -> None:
    site = by_type("Plone Site")
    assert "portal_type" not in site["state"]
    fields = object_transform(record(site))
    assert fields is not None
    assert (fields["portal_type"], fields["path"], fields["parent"], fields["language"]) == ("Plone Site", "/Plone", "/", "en")
    assert "review_state" not in fields  # the site root has no workflow in Plone 6


def test_other_objects_are_left_alone() -> None:
    for state in ({"id": "portal_catalog", "title": "Indexes"}, [1, 2], None):
        assert object_transform(SimpleNamespace(class_name="Products.CMFPlone.CatalogTool.CatalogTool", zoid=9,
                                                tid=1, state=state, path="/Plone/portal_catalog")) is None


def test_html_to_text() -> None:
    assert html_to_text("<p>one</p><p>two&nbsp;&amp; three</p>") == "one two & three"  # nbsp is whitespace too
    assert html_to_text("<h1>Title</h1><script>var x = 1;</script><ul><li>a</li><li>b</li></ul>") == "Title a b"
    assert html_to_text("plain  text\n") == "plain text"
    assert html_to_text("<p>unclosed <b>bold") == "unclosed bold"
    assert html_to_text("a<br>b<br/>c") == "a b c"
