"""Documents built straight from the unpickled state (issue 25) equal those built from the
record's JSON text, the path every record took before and the one that stays for the rest.

Differential: each record is built both ways (:meth:`DocumentBuilder.index_action` on
:meth:`Jsonifier.convert`'s text, and :meth:`DocumentBuilder.record`, which decodes and
shapes the state directly where it can), and the two documents must be equal as parsed
JSON, with the same index, id and version. The corpora are the converter's test corpora
(the values of its tests, Python-2-era records with UTF-8 and Latin-1 text, the per-kind
corpus written with real ZODB) and hypothesis-generated states, in every mapping mode and
with an object transform.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import math
from typing import Any

import orjson
import pytest
from DateTime import DateTime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esindexer.config import load_settings
from esindexer.convert.jsonifier import Decoded, Jsonifier
from esindexer.documents import DocumentBuilder
from tests.convert.kinds import py2_records, write_kinds
from tests.convert.records import MyDict, MyList, PRef, Slotted, Thing, record

TID = 291972294502024669
MODES = ("typed", "flattened", "dynamic")


def _settings(mode: str, transform: str | None = None):
    env = {"ESINDEXER_PG_DSN": "postgresql://x@localhost/x", "ESINDEXER_STATE_MAPPING": mode}
    if transform:
        env["ESINDEXER_TRANSFORM"] = transform
    return load_settings(env=env)


_BUILDERS = {mode: DocumentBuilder(_settings(mode)) for mode in MODES}
_JSONIFIER = Jsonifier()


def both_ways(data: bytes, builder: DocumentBuilder, zoid: int = 42) -> tuple[Any, Any, bool]:
    """(document from the text, document from ``record``, whether the direct path made it)."""
    old = _JSONIFIER.convert((TID, zoid), data)
    conversion, action = builder.record(_JSONIFIER, TID, zoid, data)
    assert conversion.kind == old.kind and conversion.class_name == old.class_name
    if old.kind != "ok":
        assert action is None and conversion.error == old.error
        return None, None, False
    assert action is not None and old.class_name is not None and old.json_text is not None
    expected = builder.index_action(TID, zoid, old.class_name, old.json_text)
    assert (action.op, action.index, action.zoid, action.version) == \
        (expected.op, expected.index, expected.zoid, expected.version)
    assert action.source is not None and expected.source is not None
    direct = conversion.json_text is None  # a direct build carries no text
    return orjson.loads(expected.source), orjson.loads(action.source), direct


def assert_same(data: bytes, modes: tuple[str, ...] = MODES) -> bool:
    """Equal documents in every mode; whether the typed one came from the direct path."""
    direct = False
    for mode in modes:
        old, new, took = both_ways(data, _BUILDERS[mode])
        assert new == old, mode
        direct = direct or (took and mode == "typed")
    return direct


class Named:
    """A class with a ``__dict__`` whose instances are nested values of a record."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


UTC2 = datetime.timezone(datetime.timedelta(hours=2))
STATES: list[Any] = [
    {"title": "Hello", "n": 3, "f": 1.5, "yes": True, "none": None, "tags": ["a", "b"]},
    {"created": datetime.datetime(2026, 1, 2, 3, 4, 5), "micro": datetime.datetime(2026, 1, 2, 3, 4, 5, 6),
     "day": datetime.date(2026, 2, 3), "at": datetime.time(4, 5, 6), "aware": datetime.datetime(2026, 1, 1, tzinfo=UTC2),
     "utc": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), "span": datetime.timedelta(days=2, seconds=3, microseconds=4)},
    {"zope": DateTime("2026/06/01 12:30:00 GMT+2"), "zopes": [DateTime("2001/01/01"), DateTime(0)]},
    {"author": PRef(7, Thing), "bare": PRef(8), "weak": PRef(9, kind="weak"), "other": PRef(10, Thing, "m", "db2"),
     "name_only": PRef(11, kind="n", db="db3"), "refs": [PRef(12, Thing), PRef(13)]},
    {"inst": Thing(a=1, b="x", c=Thing(d=[1, 2])), "slotted": Slotted(1, "two"), "md": MyDict(a=1), "ml": MyList([1, 2])},
    {"tuple": (1, "a", (2.5, None)), "set": {3, 1, 2}, "fs": frozenset({"b", "a"}), "bytes": b"ascii", "bin": b"\xff\x00",
     "dec": decimal.Decimal("1.50"), "dec_int": decimal.Decimal("100"), "dec_exp": decimal.Decimal("1E+2"),
     "dec_nan": decimal.Decimal("NaN"), "dec_big": decimal.Decimal("1E+400"), "cls": Thing, "fn": len},
    {"big": 2**53, "bigger": 2**63, "huge": 2**70, "neg": -(2**53) + 1, "max": 2**53 - 1},
    {"nan": math.nan, "inf": math.inf, "list": [math.nan, 1.0, -math.inf], "negzero": -0.0},
    {1: "int key", "a": {2: "nested int key"}},
    {"a": {(1, 2): "tuple key"}},
    {"weird key": 1, "a.b": 2, "keyword": "k", "sub": {"keyword": "k2", "é": 3}, "": "empty", "::x": "marker-ish"},
    {"wide": {f"k{i}": i for i in range(40)}, "deep": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}},
    {"mixed": [1, "a", True, None, 2.5], "mixed2": ["2026-01-01", 3]},
    {"dates": ["2026-01-01", "2026-01-01T00:00:00", "2026-02-30", "2026-01-01T00:00:00+02:00", "12345"]},
    {"text": "x" * 40_000, "more": "y" * 10},
    {"lone": "a\udc80b", "ok": "fine"},
    {"py2": b"caf\xe9".decode("utf-8", "surrogateescape")},
    {"shared": [[1, 2]] * 1, "looks_shared": {"::": "shared", "id": 1}, "looks_ref": {"::": "persistent", "id": (1, "x")},
     "looks_ref2": {"::": "persistent", "id": [2**60, "x"], "::=>": 2**60}, "looks_date": {"::": "datetime", "value": 5},
     "looks_td": {"::": "datetime.timedelta", "::()": [1, 2, 3]}, "looks_global": {"::": "global", "name": "a.b"}},
    {"od": collections.OrderedDict(a=1, b=2), "dd": collections.defaultdict(list, {"x": [1]})},
    {"inst_items": Named(data={"x": 1}, title="t"), "nested": [Named(a=[Named(b=1)])]},
    [1, 2, 3],
    "just a string",
    {f"a{i}": i for i in range(250)},
]


@pytest.mark.parametrize("protocol", [1, 2, 3, 4])
def test_the_converter_test_values_give_the_same_documents(protocol):
    direct = 0
    for state in STATES:
        try:
            data = record(Thing, state, protocol=protocol)
        except Exception:  # not picklable at this protocol (not what is tested here)
            continue
        direct += assert_same(data)
    if protocol <= 3:  # what ZODB writes; protocol 4's memo marks may share, so it takes the text path
        assert direct >= len(STATES) // 2  # most take the direct path: it is exercised


def test_shared_and_cyclic_states_take_the_text_path():
    shared = [1, 2]
    loop: list = ["x"]
    loop.append(loop)
    for state in ({"a": shared, "b": shared}, {"loop": loop}):
        data = record(Thing, state)
        assert type(_JSONIFIER.decode(1, data)) is not Decoded
        assert_same(data)


def test_a_text_transform_takes_the_text_path():
    jsonifier = Jsonifier(transform=lambda c, text: text.replace("Hello", "Bye"))
    data = record(Thing, STATES[0])
    assert type(jsonifier.decode(1, data)) is not Decoded
    conversion, action = _BUILDERS["typed"].record(jsonifier, TID, 1, data)
    assert conversion.json_text is not None and action is not None and b"Bye" in (action.source or b"")


@pytest.mark.parametrize("latin1", [False, True])
def test_python2_era_records_give_the_same_documents(latin1):
    direct = sum(assert_same(data) for _zoid, data in py2_records(60, latin1=latin1))
    if not latin1:
        assert direct > 0


@pytest.mark.parametrize("name", ["tests.test_direct_documents.object_transform",
                                  "tests.test_direct_documents.failing_transform"])
def test_with_an_object_transform(name, caplog):
    builder = DocumentBuilder(_settings("typed", name))
    for state in STATES[:8]:
        old, new, _ = both_ways(record(Thing, state), builder)
        assert new == old


def object_transform(record):
    record.state["seen"] = len(record.state) if isinstance(record.state, dict) else 0
    return {"class_tail": record.class_name.rsplit(".", 1)[-1]}


def failing_transform(record):
    record.state.clear()
    raise ValueError("no")


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                  st.text(max_size=6), st.binary(max_size=4), st.datetimes(), st.dates(),
                  st.datetimes(timezones=st.just(UTC2)), st.timedeltas(), st.decimals(places=2, allow_nan=False),
                  st.sampled_from(["2026-01-01", "2026-01-01T10:00:00", "1999-12-31T23:59:59.5", "7"]),
                  st.builds(PRef, st.integers(0, 2**40), st.sampled_from([Thing, None])))
_keys = st.one_of(st.sampled_from(["a", "b", "keyword", "title", "x.y", "", "::", "é"]), st.text(max_size=3))
_values = st.recursive(_leaf, lambda c: st.one_of(
    st.lists(c, max_size=4), st.tuples(c, c), st.dictionaries(_keys, c, max_size=4),
    st.dictionaries(st.integers(0, 9), c, max_size=2), st.frozensets(st.integers(0, 9), max_size=3),
    st.builds(lambda d: Thing(**d), st.dictionaries(st.sampled_from(["a", "b", "keyword"]), c, max_size=3)),
), max_leaves=20)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=6), st.sampled_from([2, 3]))
def test_generated_states_give_the_same_documents(state, protocol):
    assert_same(record(Thing, state, protocol=protocol))


def test_each_kind_gives_the_same_documents(zodb, pg_conn):
    """The per-kind corpus (dates, instances, removed classes, cyclic) written with real ZODB."""
    zoids = write_kinds(zodb, 30)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT zoid, state FROM object_state WHERE zoid = ANY(%s)",
                    ([z for zs in zoids.values() for z in zs],))
        rows = cur.fetchall()
    assert rows
    direct = sum(assert_same(bytes(state)) for _zoid, state in rows)
    assert direct > 0
