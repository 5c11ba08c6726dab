"""The typed document model, offline: dates of every kind, shaping rules, transforms.

Records are real pickles (ZODB's pickler, tests/convert/records.py) converted by the real
Jsonifier, so the builder is tested on exactly what the converter emits. Zope DateTime
values are written by the installed DateTime package in its current shape, and in the
older shapes (an attribute dict with ``_micros``, or only ``_t``; a tuple with float
seconds) through the same class reference, which DateTime itself still reads: each
conversion is compared with DateTime's own reading of the record.
"""

from __future__ import annotations

import copyreg
import pickle
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from DateTime import DateTime

from esindexer.config import load_settings, transform_style
from esindexer.convert.jsonifier import Jsonifier
from esindexer.documents import DocumentBuilder, ObjectRecord
from esindexer.documents.dates import date_string, zope_datetime
from esindexer.documents.typed import MAX_DEPTH, MAX_KEYS, shape
from esindexer.transforms.plone import review_state
from esindexer.transforms.plone import transform as plone_transform
from tests.convert.records import PRef, Thing, record

TID = 291972294502024669


def settings(**env):
    base = {"ESINDEXER_PG_DSN": "postgresql://x@localhost/x"}
    base.update({f"ESINDEXER_{k.upper()}": v for k, v in env.items()})
    return load_settings(env=base)


def converted(state) -> str:
    c = Jsonifier().convert(1, record(Thing, state))
    assert c.kind == "ok", c.error
    assert c.json_text is not None
    return c.json_text


def document(state, **env) -> dict:
    return orjson.loads(DocumentBuilder(settings(**env)).index_action(TID, 5, "m.Thing", converted(state)).source)


class _OldDateTime:
    """Pickles as DateTime.DateTime.DateTime with an older release's state (a dict, or a float tuple)."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return copyreg._reconstructor, (DateTime, object, None), self.state


def _zope_reading(value) -> datetime:
    """What the DateTime package itself reads back from the pickled value, as a UTC datetime."""
    dt = pickle.loads(pickle.dumps(value, 3))
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=dt.micros())


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


MICROS = 1780309800500000  # 2026-06-01T10:30:00.5Z


@pytest.mark.parametrize("value", [
    DateTime("2026/06/01 12:30:00.5 GMT+2"),                  # current: (micros, naive, tz)
    DateTime("2026-06-01T12:30:00"),                          # timezone-naive (read as GMT+0)
    DateTime("1901/01/01 00:00:00 US/Eastern"),
    _OldDateTime({"_micros": MICROS, "_tz": "GMT+2", "_timezone_naive": False, "_year": 2026}),
    _OldDateTime({"_t": MICROS / 1e6, "_tz": "GMT+2", "_year": 2026, "_aday": "Mon"}),  # very old
    _OldDateTime((MICROS / 1e6, False, "GMT+2")),             # a release that pickled float seconds
], ids=["tuple", "naive", "old-zone", "dict-micros", "dict-t", "tuple-float"])
def test_zope_datetime_every_shape_as_datetime_reads_it(value):
    expected = _iso(_zope_reading(value))
    doc = document({"modified": value})
    assert doc["state"]["modified"] == expected
    assert "more" not in doc


def test_python_dates():
    aware = datetime(2026, 6, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    doc = document({
        "naive": datetime(2026, 6, 1, 12, 30, 0, 5),
        "naive0": datetime(2026, 6, 1, 12, 30),
        "aware": aware,
        "utc": datetime(2026, 6, 1, tzinfo=UTC),
        "day": date(2026, 6, 1),
    })["state"]
    assert doc["naive"] == "2026-06-01T12:30:00.000005Z"      # naive = UTC
    assert doc["naive0"] == "2026-06-01T12:30:00.000000Z"
    assert doc["aware"] == "2026-06-01T12:30:00.000000+02:00"  # offset kept; ES converts
    assert doc["utc"] == "2026-06-01T00:00:00.000000Z"
    assert doc["day"] == "2026-06-01T00:00:00.000000Z"


@pytest.mark.parametrize("text", ["2026-02-30", "2026-06-01T25:00:00", "June 1", "20260601", "2026-06-01 x",
                                  "12:30", "2026", "-2026-06-01"])
def test_strings_that_are_not_dates_stay_strings(text):
    assert date_string(text) is None


def test_unreadable_zope_state_is_not_a_date():
    assert zope_datetime({"state": ["x"]}) is None
    assert zope_datetime({"_tz": "GMT"}) is None
    assert zope_datetime({"state": [10**30, False, "GMT"]}) is None


def test_numbers_are_numbers_and_never_break_a_document():
    doc = document({"i": 3, "f": 3.5, "d": Decimal("3.50"), "big": 2**70, "nan": float("nan"),
                    "inf": float("inf"), "neg": -(2**64), "t": True, "td": timedelta(days=1, seconds=1)})
    state = doc["state"]
    assert state["i"] == 3 and state["f"] == 3.5 and state["d"] == 3.5
    assert state["big"] == str(2**70)                          # the converter's decimal string
    assert "nan" not in state and "inf" not in state           # null: no value
    assert state["t"] is True and state["td"] == 86401.0


def test_paths_are_flat_and_references_readable():
    doc = document({"author": PRef(7, Thing), "site": {"lang": "en", "nav": {"depth": 2}},
                    "items": [Thing(name="a", n=1), Thing(name="b", n=2)]})
    state = doc["state"]
    assert state["author._ref"] == 7 and state["author._class"] == "tests.convert.records.Thing"
    assert state["site.lang"] == "en" and state["site.nav.depth"] == 2
    assert state["items.name"] == ["a", "b"] and state["items.n"] == [1, 2]
    assert state["items._class"] == ["tests.convert.records.Thing"] * 2
    assert doc["refs"] == [7]


def test_mixed_kinds_in_one_document_go_to_more():
    doc = document({"pair": ("en", 1), "when": ["2026-06-01", "soon"], "ok": [1, 2.5]})
    assert doc["more"] == {"pair": ["en", 1], "when": ["2026-06-01T00:00:00.000000Z", "soon"]}
    assert doc["state"] == {"ok": [1, 2.5]}


def test_wide_deep_and_odd_keyed_mappings_go_to_more():
    wide = {f"key{n}": n for n in range(MAX_KEYS + 1)}
    deep = {"a": {"b": {"c": {"d": {"e": 1}}}}}
    doc = document({"data": wide, "deep": deep, "odd": {"with space": 1, "ok": 2}, "small": {"k": 1}})
    assert doc["more"]["data"] == wide
    assert doc["more"]["odd"] == {"with space": 1, "ok": 2}
    assert doc["state"]["small.k"] == 1
    assert doc["more"]["deep.a.b.c"] == {"d": {"e": 1}} and MAX_DEPTH == 4
    assert "deep.a.b.c.d.e" not in doc["state"]


def test_typed_paths_per_document_are_bounded():
    """However many keys a state has, it adds at most MAX_KEYS-bounded typed paths per dict."""
    shaped = shape({"data": {str(n): n for n in range(5000)}})
    assert shaped.typed == {} and len(shaped.more["data"]) == 5000
    shaped = shape({f"a{n}": n for n in range(5000)})  # an instance with 5000 attributes
    assert shaped.typed == {} and len(shaped.more) == 5000


def test_text_and_refs_as_before():
    doc = document({"title": "Minutes of June", "body": ["a", {"deep": "text"}]})
    assert set(doc["text"].split()) == {"Minutes", "of", "June", "a", "text"}


def test_transform_style():
    assert transform_style(lambda obj: None) == "object"
    assert transform_style(lambda class_name, text: None) == "text"
    with pytest.raises(ValueError, match="3 required"):
        transform_style(lambda a, b, c: None)


def add_fields(obj: ObjectRecord):
    """An object transform for the test: fields from the state, and a state trimmed in place."""
    obj.state.pop("secret", None)
    return {"upper": obj.state["title"].upper(), "zoid_seen": obj.zoid, "when": datetime(2026, 1, 2)}


def test_object_transform_adds_fields_and_sees_python_data():
    builder = DocumentBuilder(settings(transform=f"{__name__}.add_fields"))
    doc = orjson.loads(builder.index_action(TID, 9, "m.T", converted({"title": "hi", "secret": "x"})).source)
    assert doc["fields"] == {"upper": "HI", "zoid_seen": 9, "when": "2026-01-02T00:00:00.000000Z"}
    assert "secret" not in doc["state"] and "x" not in doc["text"].split()


def old_style(class_name: str, text: str) -> str | None:
    state = orjson.loads(text)
    state["added"] = class_name
    return orjson.dumps(state).decode()


def test_text_transform_still_runs_in_the_converter():
    from esindexer.convert.configure import build_jsonifier

    s = settings(transform=f"{__name__}.old_style")
    c = build_jsonifier(s).convert(1, record(Thing, {"a": 1}))
    assert orjson.loads(c.json_text or "") == {"a": 1, "added": "tests.convert.records.Thing"}
    assert build_jsonifier(settings(transform=f"{__name__}.add_fields")).transform is None


def test_plone_transform_on_dexterity_like_state():
    history = {"plone_workflow": [
        {"action": None, "review_state": "private", "time": DateTime("2026/01/01 10:00 GMT+1")},
        {"action": "publish", "review_state": "published", "time": DateTime("2026/03/01 10:00 GMT+1")},
    ], "other_workflow": [{"review_state": "draft", "time": DateTime("2025/01/01 GMT")}]}
    state = {"portal_type": "Document", "id": "minutes", "title": "Minutes of June",
             "workflow_history": history, "effective_date": DateTime("2026/06/01 GMT"),
             "expiration_date": None, "modification_date": DateTime("2026/06/02 08:00 GMT+2"),
             "creation_date": DateTime("2026/05/30 GMT")}
    builder = DocumentBuilder(settings(transform="esindexer.transforms.plone.transform"))
    doc = orjson.loads(builder.index_action(TID, 9, "plone.app.contenttypes.content.Document",
                                            converted(state)).source)
    assert doc["fields"] == {"portal_type": "Document", "id": "minutes", "title": "Minutes of June",
                             "review_state": "published", "effective": "2026-06-01T00:00:00.000000Z",
                             "modified": "2026-06-02T06:00:00.000000Z", "created": "2026-05-30T00:00:00.000000Z"}
    assert doc["state"]["workflow_history.plone_workflow.review_state"] == ["private", "published"]
    assert plone_transform(ObjectRecord("x.Y", 1, 1, {"title": "no portal_type"})) is None
    assert review_state(None) is None and review_state({"wf": "junk"}) is None


def failing(obj: ObjectRecord):
    obj.state["title"] = "changed before failing"
    raise KeyError("portal_type")


def odd_numbers(obj: ObjectRecord):
    return {"big": 2**70, "nan": float("nan"), "ok": Decimal("2.5")}


def test_a_failing_transform_logs_and_indexes_the_object_as_converted(caplog):
    builder = DocumentBuilder(settings(transform=f"{__name__}.failing"))
    with caplog.at_level("ERROR", logger="esindexer.documents.builder"):
        doc = orjson.loads(builder.index_action(TID, 9, "m.T", converted({"title": "hi"})).source)
    assert doc["state"] == {"title": "hi"} and "fields" not in doc
    (line,) = caplog.records
    assert line.getMessage() == ("transform failed for m.T (zoid 9, tid %d): KeyError: 'portal_type'; "
                                 "indexed without its fields" % TID)


@pytest.mark.parametrize("mode", ["typed", "flattened", "dynamic"])
def test_transform_fields_beyond_json_never_break_the_document(mode):
    builder = DocumentBuilder(settings(transform=f"{__name__}.odd_numbers", state_mapping=mode))
    doc = orjson.loads(builder.index_action(TID, 9, "m.T", converted({"a": 1})).source)
    assert doc["fields"]["big"] == str(2**70) and doc["fields"]["ok"] == 2.5
    assert doc["fields"].get("nan") is None


def three(a, b, c):
    return None


def test_a_transform_of_another_shape_is_a_configuration_error():
    with pytest.raises(Exception, match=r"ESINDEXER_TRANSFORM: cannot load .*takes 3 required arguments"):
        settings(transform=f"{__name__}.three")
