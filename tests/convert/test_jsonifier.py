"""The Jsonifier's contract (seed + Conversion) and every documented deviation from newt.db.

Pure unit tests: records are built with zodbpickle's pickler the way ZODB writes them
(tests/convert/records.py). Differential tests against newt.db on real ZODB +
RelStorage records are in tests/convert/test_jsonifier_newt.py; hostile input in
tests/convert/test_jsonifier_security.py.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import logging
import struct

import pytest
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping

from esindexer.convert.jsonifier import Conversion, Jsonifier
from tests.convert.records import (
    MyDict,
    MyList,
    PRef,
    Slotted,
    Thing,
    newt_jsonifier,
    newt_loads,
    record,
    strict_loads,
)

THING = "tests.convert.records.Thing"


def ok(state, klass=Thing, **kw):
    """Convert a record holding ``state``; assert success; return the parsed JSON."""
    c = Jsonifier(**kw).convert("t", record(klass, state))
    assert c.kind == "ok", c
    return strict_loads(c.json_text)


# --------------------------------------------------------------------------------------
# contract
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [None, b"", memoryview(b""), bytearray()])
def test_empty_data_is_a_deletion(data):
    j = Jsonifier()
    assert j("label", data) == (None, None, None)
    assert j.convert("label", data) == Conversion("deleted")


def test_ok_triple_matches_conversion_and_ghost_is_the_class_pickle():
    data = record(PersistentMapping, {"data": {"x": 1}})
    j = Jsonifier()
    class_name, ghost, text = j("label", data)
    assert class_name == "persistent.mapping.PersistentMapping"
    assert strict_loads(text) == {"data": {"x": 1}}
    assert data.startswith(ghost) and ghost.endswith(b".")
    c = j.convert("label", memoryview(data))
    assert (c.kind, c.class_name, c.json_text, c.ghost_pickle, c.error) == (
        "ok", class_name, text, ghost, None)
    assert type(c.ghost_pickle) is bytes


@pytest.mark.parametrize("name", ["BTrees.OOBTree.OOBTree", "BTrees.Length.Length", "ZODB.blob.Blob"])
def test_default_skip_class(name):
    module, _, cls = name.rpartition(".")
    data = record(None, {"x": 1}, class_record=((module, cls), None))
    j = Jsonifier()
    assert j("l", data) == (None, None, None)
    c = j.convert("l", data)
    assert (c.kind, c.class_name, c.json_text, c.error) == ("skipped", name, None, None)


def test_real_btree_record_is_skipped():
    from BTrees.OOBTree import OOBTree

    tree = OOBTree({"a": 1})
    data = record(OOBTree, tree.__getstate__())
    assert Jsonifier().convert("l", data).kind == "skipped"


def test_custom_skip_class_sees_the_class_name():
    seen = []
    j = Jsonifier(skip_class=lambda name: seen.append(name) or name.endswith("Thing"))
    assert j.convert("l", record(Thing, {"a": 1})).kind == "skipped"
    assert j.convert("l", record(PersistentList, {"data": [1]})).kind == "ok"
    assert seen == [THING, "persistent.list.PersistentList"]
    # BTrees are no longer skipped once skip_class is replaced
    assert Jsonifier(skip_class=lambda n: False).convert(
        "l", record(None, {}, class_record=(("BTrees.OOBTree", "OOBucket"), None))).kind == "ok"


def test_transform_none_keeps_empty_skips_text_replaces():
    data = record(Thing, {"a": 1})
    assert strict_loads(Jsonifier(transform=lambda c, s: None).convert("l", data).json_text) == {"a": 1}
    c = Jsonifier(transform=lambda c, s: "").convert("l", data)
    assert (c.kind, c.class_name, c.json_text) == ("skipped", THING, None)
    c = Jsonifier(transform=lambda c, s: '{"class": "%s"}' % c).convert("l", data)
    assert strict_loads(c.json_text) == {"class": THING}


def test_transform_errors_and_non_json_output_are_errors():
    data = record(Thing, {"a": 1})

    def boom(c, s):
        raise RuntimeError("transform broke")

    c = Jsonifier(transform=boom).convert("l", data)
    assert (c.kind, c.class_name) == ("error", THING)
    assert c.error == "RuntimeError: transform broke"
    c = Jsonifier(transform=lambda c, s: '{"x": NaN}').convert("l", data)
    assert c.kind == "error" and c.error.startswith("JSONDecodeError")


def test_errors_are_reported_not_raised_and_logged_once_by_the_call(caplog):
    j = Jsonifier()
    garbage = b"\x80\x03cfoo\nBar\nq\x00.\x80\x03}q\x01(X\x01\x00\x00"  # truncated state
    with caplog.at_level(logging.DEBUG, logger="esindexer.convert.jsonifier"):
        c = j.convert(("tid", 7), garbage)
        assert caplog.records == []  # convert does not log
        assert j(("tid", 7), garbage) == (None, None, None)
    assert c.kind == "error" and c.class_name == "foo.Bar" and c.json_text is None
    assert c.error.startswith("UnsafePickle: ") and "\n" not in c.error
    [rec] = caplog.records
    assert rec.levelno == logging.ERROR
    assert "('tid', 7)" in rec.getMessage() and c.error in rec.getMessage()
    assert rec.class_name == "foo.Bar"


def test_error_before_the_class_is_known():
    c = Jsonifier().convert("l", b"not a pickle")
    assert c.kind == "error" and c.class_name is None and c.error


def test_unsupported_class_record_is_an_error():
    c = Jsonifier().convert("l", record(None, {}, class_record=42))
    assert c.kind == "error" and "class record" in c.error


def test_data_after_the_second_stop_is_ignored():
    data = record(Thing, {"a": 1}) + b"trailing junk"
    assert strict_loads(Jsonifier().convert("l", data).json_text) == {"a": 1}
    # and the reused unpickler is not confused by it
    j = Jsonifier()
    for _ in range(3):
        assert strict_loads(j.convert("l", data).json_text) == {"a": 1}
        assert strict_loads(j.convert("l", record(Thing, {"b": 2})).json_text) == {"b": 2}


# --------------------------------------------------------------------------------------
# newt.db's shape (values where newt.db is right)
# --------------------------------------------------------------------------------------


def test_values_in_newt_shape():
    state = {
        "none": None, "t": True, "f": False, "i": -5, "big": 2**62, "fl": 1.5, "neg0": -0.0,
        "s": "héllo", "ascii_bytes": b"hello", "bin": b"\xff\x00", "tuple": (1, "a"),
        "list": [1, [2]], "nested": {"k": {"j": 1}}, "keys": {2: "a", 1.5: "b", True: "c", None: "d"},
        "set": {3, 1, 2}, "frozen": frozenset({"b", "a"}),
        "dt": datetime.datetime(2020, 1, 2, 3, 4, 5, 6), "d": datetime.date(2021, 12, 31),
        "td": datetime.timedelta(1, 2, 3), "cx": complex(1, 2), "ba": bytearray(b"ab"),
        "obj": Thing(x=1), "slots": Slotted(1, 2), "cls": Thing, "fn": len,
        "ref": PRef(5, PersistentMapping), "bare": PRef(6),
    }
    got = ok(state)
    assert got == {
        "none": None, "t": True, "f": False, "i": -5, "big": 2**62, "fl": 1.5, "neg0": -0.0,
        "s": "héllo", "ascii_bytes": "hello", "bin": {"::": "hex", "hex": "ff00"},
        "tuple": [1, "a"], "list": [1, [2]], "nested": {"k": {"j": 1}},
        "keys": {"2": "a", "1.5": "b", "true": "c", "null": "d"},
        "set": [1, 2, 3], "frozen": ["a", "b"],
        "dt": "2020-01-02T03:04:05.000006", "d": "2021-12-31",
        "td": {"::": "datetime.timedelta", "::()": [1, 2, 3]},
        "cx": {"::": "builtins.complex", "::()": [1.0, 2.0]},
        "ba": {"::": "builtins.bytearray", "::()": ["ab"]},
        "obj": {"x": 1, "::": THING},
        "slots": {"state": [None, {"a": 1, "b": 2}], "::": "tests.convert.records.Slotted"},
        "cls": {"::": "global", "name": THING}, "fn": {"::": "global", "name": "builtins.len"},
        "ref": {"::": "persistent", "id": [5, "persistent.mapping.PersistentMapping"], "::=>": 5},
        "bare": {"::": "persistent", "id": 6, "::=>": 6},
    }
    newt = newt_jsonifier()("l", record(Thing, state))
    assert newt[2] is not None and newt_loads(newt[2]) == got


def test_shared_structure_is_repeated_and_cycles_use_ids_like_newt():
    shared = [1, 2]
    state = {"a": shared, "b": shared}
    assert ok(state) == {"a": [1, 2], "b": [1, 2]}
    cyc: list = [1]
    cyc.append(cyc)
    inst = Thing(name="n")
    inst.me = inst
    for st in ({"c": cyc}, {"i": inst}, {"x": shared, "y": shared, "c": cyc}):
        data = record(Thing, st)
        mine = strict_loads(Jsonifier().convert("l", data).json_text)
        assert mine == newt_loads(newt_jsonifier()("l", data)[2])
    assert ok({"c": cyc}) == {"c": {"::": "shared", "::id": 4, "value": [1, {"::->": 4}]}}


# --------------------------------------------------------------------------------------
# deliberate deviations (docs/json.md lists each one)
# --------------------------------------------------------------------------------------


def test_nan_and_infinity_become_null():
    got = ok({"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "k": {float("nan"): 1}})
    assert got == {"nan": None, "inf": None, "ninf": None, "k": {"NaN": 1}}


def test_emoji_nul_and_backslashes_survive():
    text = "smile 😀 nul \x00 and a backslash \\u0000 \\ud83d"
    got = ok({"s": text, "b": b"a\x00b"})
    assert got == {"s": text, "b": "a\x00b"}


def test_lone_surrogates_become_replacement_characters():
    assert ok({"s": "a\ud800b"}) == {"s": "a\ufffdb"}


def test_dict_and_list_subclasses_ordereddict_defaultdict():
    d = MyDict(a=1)
    d.attr = "x"
    lst = MyList([1, 2])
    od = collections.OrderedDict([("z", 1), ("a", 2)])
    dd = collections.defaultdict(list, {"k": [1]})
    got = ok({"d": d, "l": lst, "od": od, "dd": dd})
    assert got == {
        "d": {"::": "tests.convert.records.MyDict", "data": {"a": 1}, "attr": "x"},
        "l": {"::": "tests.convert.records.MyList", "data": [1, 2]},
        "od": {"::": "collections.OrderedDict", "data": {"z": 1, "a": 2}},
        "dd": {"::": "collections.defaultdict", "::()": [{"::": "global", "name": "builtins.list"}],
               "data": {"k": [1]}},
    }
    assert newt_jsonifier()("l", record(Thing, {"od": od})) == (None, None, None)


def test_items_and_a_data_attribute_do_not_collide():
    d = MyDict(a=1)
    d.data = "attribute"
    assert ok({"d": d})["d"] == {"::": "tests.convert.records.MyDict", "::data": {"a": 1},
                                 "data": "attribute"}


def test_non_string_keys():
    got = ok({"k": {(1, "a"): 1, b"raw": 2, b"\xff": 3, frozenset({2, 1}): 4, Thing: 5}})
    assert got == {"k": {'[1,"a"]': 1, "raw": 2, "ff": 3, "[1,2]": 4,
                         '{"::":"global","name":"%s"}' % THING: 5}}


def test_persistent_objects_as_keys():
    got = ok({"k": {PRef(3, PersistentMapping): "v"}})
    assert got == {"k": {'{"::":"persistent","id":[3,"persistent.mapping.PersistentMapping"],"::=>":3}': "v"}}


def test_mixed_type_sets_sort_by_json_text():
    got = ok({"s": {1, "a", (2, 3)}})["s"]
    assert sorted(map(str, got)) == sorted(map(str, [1, "a", [2, 3]]))
    assert got == ok({"s": {(2, 3), "a", 1}})["s"]  # deterministic


@pytest.mark.parametrize("kind,pid,expected", [
    ("weak", PRef(7, kind="weak"), {"::": "persistent", "id": 7, "::=>": 7, "weak": True}),
    ("weak-db", PRef(7, kind="weak", db="other"),
     {"::": "persistent", "id": 7, "database": "other", "weak": True}),
    ("m", PRef(8, PersistentMapping, kind="m", db="other"),
     {"::": "persistent", "id": [8, "persistent.mapping.PersistentMapping"], "database": "other"}),
    ("n", PRef(9, kind="n", db="other"), {"::": "persistent", "id": 9, "database": "other"}),
])
def test_weak_and_cross_database_references(kind, pid, expected):
    assert ok({"r": pid}) == {"r": expected}


def test_decimal_is_exact():
    c = Jsonifier().convert("l", record(Thing, {
        "d": decimal.Decimal("1.10"), "big": decimal.Decimal("123456789012345678901234567890.123456789"),
        "nan": decimal.Decimal("NaN"), "huge": decimal.Decimal("1E+400")}))
    assert '"d":1.10' in c.json_text
    assert '"big":123456789012345678901234567890.123456789' in c.json_text
    got = strict_loads(c.json_text)
    assert got["nan"] is None and got["huge"] == "1E+400"


def test_time_is_readable():
    assert ok({"t": datetime.time(13, 14, 15, 16)}) == {"t": "13:14:15.000016"}
    assert ok({"t": datetime.time(0, 0)}) == {"t": "00:00:00"}
    got = ok({"t": datetime.time(1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))})
    assert got["t"]["value"] == "01:02:00+02:00" and got["t"]["::"] == "time"


def test_aware_datetimes_carry_their_offset():
    tz = datetime.timezone(datetime.timedelta(hours=-5))
    got = ok({"dt": datetime.datetime(2020, 6, 1, 12, 0, tzinfo=tz),
              "utc": datetime.datetime(2020, 6, 1, tzinfo=datetime.UTC)})
    assert got["dt"] == {"value": "2020-06-01T12:00:00-05:00", "::": "datetime",
                         "tz": {"::": "datetime.timezone",
                                "::()": [{"::": "datetime.timedelta", "::()": [-1, 68400, 0]}]}}
    assert got["utc"]["value"] == "2020-06-01T00:00:00+00:00"


def test_pytz_offsets():
    # what pytz writes, built by hand (pytz is not installed): datetime(state, tz) with
    # tz = pytz._p('America/New_York', -14400, 3600, 'EDT') or pytz._UTC()
    state10 = datetime.datetime(2020, 6, 1, 12).__reduce__()[1][0]
    ny = (b"cpytz\n_p\n(X\x10\x00\x00\x00America/New_YorkJ" + struct.pack("<i", -14400)
          + b"M" + struct.pack("<H", 3600) + b"X\x03\x00\x00\x00EDTtR")
    utc = b"cpytz\n_UTC\n)R"
    for tz, value, tz_json in (
        (ny, "2020-06-01T12:00:00-04:00", {"::": "pytz._p", "::()": ["America/New_York", -14400, 3600, "EDT"]}),
        (utc, "2020-06-01T12:00:00+00:00", {"::": "pytz._UTC"}),
    ):
        empty = record(Thing, {})
        class_pickle = empty[: empty.index(b"\x80\x03", 2)]
        data = (class_pickle + b"\x80\x03}q\x02X\x02\x00\x00\x00dtcdatetime\ndatetime\nC\n"
                + state10 + tz + b"\x86Rs.")
        got = strict_loads(Jsonifier().convert("l", data).json_text)
        assert got == {"dt": {"value": value, "tz": tz_json, "::": "datetime"}}
        newt = newt_loads(newt_jsonifier()("l", data)[2])
        assert newt["dt"]["tz"] == tz_json and newt["dt"]["value"] == "2020-06-01T12:00:00"


def test_integers_beyond_64_bits_become_strings():
    got = ok({"a": 2**63, "b": -(2**63) - 1, "c": 2**63 - 1, "d": 2**200, "e": 2**60})
    assert got == {"a": str(2**63), "b": str(-(2**63) - 1), "c": 2**63 - 1, "d": str(2**200), "e": 2**60}


# --------------------------------------------------------------------------------------
# Python 2 era records
# --------------------------------------------------------------------------------------


def _py2_record(state_ops: bytes) -> bytes:
    """Protocol-1 class record for ``foo.Bar`` (tuple form) and a hand-written state."""
    return b"((U\x03fooq\x00U\x03Barq\x01tq\x02Nt." + state_ops


def test_python2_str_set_and_reconstructor():
    # state: {'s': py2 str 'café' (UTF-8), 'b': py2 str '\xff\xfe', 'set': __builtin__.set(['b','a']),
    #         'o': copy_reg._reconstructor(foo.Baz, __builtin__.object, None) with state {'x': 1}}
    state = (
        b"}q\x03(U\x01sU\x05caf\xc3\xa9"
        b"U\x01bU\x02\xff\xfe"
        b"U\x03setc__builtin__\nset\n(]q\x04(U\x01bU\x01aetRq\x05"
        b"U\x01occopy_reg\n_reconstructor\n(cfoo\nBaz\nc__builtin__\nobject\nNtR}U\x01xK\x01sb"
        b"u."
    )
    c = Jsonifier().convert("l", _py2_record(state))
    assert c.kind == "ok" and c.class_name == "foo.Bar"
    got = strict_loads(c.json_text)
    assert got == {"s": "café", "b": "ÿþ", "set": ["a", "b"], "o": {"x": 1, "::": "foo.Baz"}}
    newt = newt_loads(newt_jsonifier()("l", _py2_record(state))[2])
    assert newt["b"] == got["b"] and newt["set"] == got["set"] and newt["o"] == got["o"]
    assert newt["s"] == "cafÃ©"  # newt.db decodes py2 str as Latin-1


def test_python2_datetime():
    import pickle

    state = pickle.dumps({"d": datetime.datetime(2001, 2, 3, 4, 5, 6)}, protocol=1)
    # Python 3 writes bytes via _codecs.encode at protocol 1; a py2 pickle had a py2 str:
    py2 = b"}q\x00U\x01dcdatetime\ndatetime\nU\n" + struct.pack(">HBBBBBI", 2001, 2, 3, 4, 5, 6, 0)[:10] + b"\x85Rs."
    for st in (state, py2):
        c = Jsonifier().convert("l", _py2_record(st))
        assert strict_loads(c.json_text) == {"d": "2001-02-03T04:05:06"}, c


def test_without_prescan_the_output_is_the_same():
    cyc: list = [1]
    cyc.append(cyc)
    states = [
        {"a": [1, 2.5, "s", b"\xff"], "r": PRef(3, Thing), "dt": datetime.datetime(2020, 1, 1)},
        {"big": 2**70, "k": {(1, 2): 3}, "cyc": cyc, "nan": float("nan")},
    ]
    fast, safe = Jsonifier(prescan=False), Jsonifier()
    for st in states:
        data = record(Thing, st) + b"tail"
        assert fast.convert("l", data) == safe.convert("l", data)
    assert fast.convert("l", b"\x80\x03}q\x00.").kind == "error"  # truncated: no state pickle


def test_transform_must_return_text():
    c = Jsonifier(transform=lambda c, s: b"{}").convert("l", record(Thing, {"a": 1}))
    assert c.kind == "error" and "not str" in c.error


def test_python2_persistent_reference_with_str_oid():
    # (oid as py2 str, class): SHORT_BINSTRING oid, GLOBAL class, TUPLE2, BINPERSID
    state = b"}q\x03U\x01rU\x08\x00\x00\x00\x00\x00\x00\x00\x2ac__main__\nX\n\x86Qs."
    c = Jsonifier().convert("l", _py2_record(state))
    assert strict_loads(c.json_text) == {"r": {"::": "persistent", "id": [42, "__main__.X"], "::=>": 42}}


def test_one_jsonifier_shared_by_threads():
    import concurrent.futures

    j = Jsonifier()
    records = [record(Thing, {"i": i, "s": "x" * i, "l": list(range(i % 7))}) for i in range(200)]
    expected = [j.convert("l", r) for r in records]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda r: j.convert("l", r), records)) == expected


def test_large_values_beyond_the_unpicklers_prefetch_size():
    # strings/bytes over 128 KiB make the C unpickler read(n) from the file directly
    state = {"b": b"\xfe" * 300_000, "s": "x" * 300_000, "a": b"a" * 200_000}
    for prescan in (True, False):
        got = strict_loads(Jsonifier(prescan=prescan).convert("l", record(Thing, state)).json_text)
        assert got == {"b": {"::": "hex", "hex": "fe" * 300_000}, "s": "x" * 300_000, "a": "a" * 200_000}
