"""The kinds of record that once converted far slower than the typical one (issue 13):
their faster paths give exactly what the general path gave.

- Records with a cycle are marked in place (esindexer/convert/cyclic.py) instead of
  walked: for generated graphs (cycles, shared tuples, sets, non-string keys, sharing
  before the first cycle, big integers, surrogates) the text equals the walker's
  (:func:`walker_text`, the path every such record took before).
- Each per-kind corpus of bench/jsonify.py, written with real ZODB + RelStorage (the
  Python-2-era one assembled as ZODB 3 wrote it), converts as newt.db converts it, apart
  from the documented differences (docs/json.md 14, 15).
"""

from __future__ import annotations

import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esindexer.convert.cyclic import plan
from esindexer.convert.jsonifier import Jsonifier, _memo_ids, _new_unpickler
from esindexer.convert.scan import scan
from esindexer.convert.walk import walk
from tests.convert.kinds import ASSEMBLED, KINDS, py2_records, write_kinds
from tests.convert.py2records import Inst, Ref2, Str, py2_record
from tests.convert.records import PRef, Thing, newt_jsonifier, newt_loads, record, same_json, strict_loads


def walker_text(data: bytes) -> str | None:
    """The state converted by the walker alone (``None`` where the walker fails)."""
    kinds: dict[int, int] = {}
    state = [0, 0, 0]
    scan(data, scan(data, 0, kinds, state), kinds, state)
    unpickler, source = _new_unpickler()
    source.data = data
    unpickler.load()
    value = unpickler.load()
    try:
        return walk(value, 250_000 + 16 * len(data), lambda: _memo_ids(unpickler)).decode()
    except Exception:
        return None


def _cyclic(tag: str) -> list:
    loop: list = [tag]
    loop.append(loop)
    return loop


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                  st.text(max_size=5), st.binary(max_size=4), st.datetimes(), st.dates(),
                  st.builds(PRef, st.integers(0, 2**40), st.sampled_from([Thing, None])))
_values = st.recursive(_leaf, lambda c: st.one_of(
    st.lists(c, max_size=3), st.tuples(c, c), st.dictionaries(st.text(max_size=3), c, max_size=3),
    st.dictionaries(st.integers(0, 9), c, max_size=2), st.frozensets(st.integers(0, 9), max_size=3),
    st.builds(lambda d: Thing(**d), st.dictionaries(st.sampled_from(["a", "b"]), c, max_size=2)),
), max_leaves=12)


@st.composite
def _graphs(draw):
    """A state with at least one cycle, and shared parts placed before or after it."""
    state: dict = {}
    shared = draw(st.one_of(st.lists(_values, min_size=1, max_size=2), st.tuples(_values),
                            st.builds(lambda d: Thing(**d), st.dictionaries(st.sampled_from(["x"]), _values))))
    where = draw(st.sampled_from(["before", "after", "inside", "none"]))
    if where == "before":
        state["s1"], state["s2"] = shared, [shared]
    state["v"] = draw(_values)
    loop = _cyclic("loop")
    loop.append(draw(_values))
    shape = draw(st.sampled_from(["list", "thing", "tuple", "set-key"]))
    if shape == "list":
        state["loop"] = loop
    elif shape == "thing":
        node = Thing(name="n", extra=draw(_values))
        node.me = node
        node.parent = Thing(child=node, loop=loop)
        state["node"] = node
    elif shape == "tuple":
        holder: list = []
        holder.append((holder, draw(_values)))
        state["tuple"] = holder
    else:
        state["loop"] = loop
        state["keyed"] = {(1, 2): loop}
    if where == "inside":
        loop.append(shared)
        loop.append({"again": shared})
    elif where == "after":
        state["s3"], state["s4"] = shared, {"k": shared}
    return state


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_graphs(), st.sampled_from([1, 2, 3]))
def test_cyclic_records_convert_as_the_walker_converts_them(state, protocol):
    data = record(Thing, state, protocol=protocol)
    got = Jsonifier().convert("g", data)
    expected = walker_text(data)
    if expected is None:
        assert got.kind == "error", got
    else:
        assert got.kind == "ok", got
        assert got.json_text == expected


def test_the_marking_path_is_taken_for_plain_cycles_and_not_for_unsure_shapes():
    def decoded(state):
        data = record(Thing, state)
        unpickler, source = _new_unpickler()
        source.data = data
        unpickler.load()
        return unpickler.load()

    loop = _cyclic("x")
    assert plan(decoded({"loop": loop, "n": 1})) is not None
    assert plan(decoded({"shared": [1], "again": None})) is None  # no cycle
    shared = [1]
    assert plan(decoded({"a": shared, "b": shared, "loop": loop})) is None  # shared before the cycle
    assert plan(decoded({"loop": loop, "a": shared, "b": shared})) is not None  # after it
    t = (1, 2)
    assert plan(decoded({"loop": loop, "t1": t, "t2": t})) is None  # a tuple written twice
    assert plan(decoded({"loop": loop, 3: "int key"})) is None


def test_cycles_with_big_integers_and_surrogates_fall_back_to_the_walker():
    for extra in (2**64, "a\ud800b", float("inf")):
        data = record(Thing, {"loop": _cyclic("x"), "extra": extra})
        got = Jsonifier().convert("l", data)
        assert got.kind == "ok" and got.json_text == walker_text(data)


def test_python2_records_are_assembled_as_zodb3_wrote_them():
    data = py2_record("m", "C", {Str(b"id"): Str(b"x"), Str(b"when"): datetime.datetime(2004, 5, 6, 7, 8, 9),
                                 Str(b"o"): Inst("m", "D", {Str(b"a"): 1}), Str(b"r"): Ref2(7, "m", "E"),
                                 Str(b"s"): {Str(b"b"), Str(b"a")}, Str(b"big"): 2**40, Str(b"t"): True})
    assert data.startswith(b"((U\x01mq\x00U\x01Cq\x01tq\x02Nt") and b"ccopy_reg\n_reconstructor\n" in data
    got = strict_loads(Jsonifier().convert("l", data).json_text)
    assert got == {"id": "x", "when": "2004-05-06T07:08:09", "o": {"a": 1, "::": "m.D"},
                   "r": {"::": "persistent", "id": [7, "m.E"], "::=>": 7}, "s": ["a", "b"], "big": 2**40, "t": True}
    assert newt_loads(newt_jsonifier()("l", data)[2]) == got


def test_each_kind_converts_as_newt_db_does(zodb, pg_conn):
    zoids = write_kinds(zodb, 40)
    with pg_conn.cursor() as cur:
        cur.execute("select zoid, state from object_state")
        rows = {zoid: bytes(state) for zoid, state in cur}
    corpora = {kind: [rows[z] for z in zoids[kind]] for kind in KINDS if kind not in ASSEMBLED}
    corpora.update({kind: [data for _, data in py2_records(40, latin1=latin1)] for kind, latin1 in ASSEMBLED.items()})
    mine, newt = Jsonifier(), newt_jsonifier()
    for kind, records in corpora.items():
        assert len(records) == 40
        for data in records:
            expected, got = newt("k", data), mine.convert("k", data)
            assert got.kind == "ok" and expected[2] is not None, (kind, got)
            a, b = strict_loads(got.json_text), newt_loads(expected[2])
            if kind == "dates":  # docs/json.md 14 (time) and 15 (aware datetimes' offsets)
                assert isinstance(a.pop("opens"), str) and b.pop("opens")["::"] == "datetime.time"
                for key in ("effective", "expires"):
                    assert a[key]["value"].startswith(b[key]["value"]) and a.pop(key)["tz"] == b.pop(key)["tz"]
            assert got.class_name == expected[0] and same_json(a, b), (kind, a, b)


_py2_key = st.one_of(st.text("abcd", max_size=3).map(lambda s: Str(s.encode())), st.text("ab", max_size=2),
                     st.binary(max_size=2).map(Str), st.integers(0, 5))
_py2_leaf = st.one_of(st.binary(max_size=6).map(Str), st.text(max_size=4), st.integers(-(2**70), 2**70),
                      st.none(), st.floats(allow_nan=False))
_py2_values = st.recursive(_py2_leaf, lambda c: st.one_of(
    st.lists(c, max_size=3), st.lists(c, max_size=3).map(tuple),
    st.dictionaries(_py2_key, c, max_size=3),
    st.sets(st.one_of(st.binary(max_size=3).map(Str), st.integers(0, 9)), max_size=3),
    st.dictionaries(st.text("xyz", max_size=2).map(lambda s: Str(s.encode())), c, max_size=2)
    .map(lambda d: Inst("m", "I", d)),
), max_leaves=15)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text("abcdef", max_size=3).map(lambda s: Str(s.encode())), _py2_values, max_size=5))
def test_python2_text_that_is_not_utf8_converts_as_the_walker_converts_it(state):
    # Latin-1 bytes in py2 str become surrogates: fixed in place (surrogates.py), else the walker
    data = py2_record("m", "C", state)
    got = Jsonifier().convert("p", data)
    expected = walker_text(data)
    if expected is None:
        assert got.kind == "error", got
    else:
        assert got.kind == "ok", got
        assert got.json_text == expected


def test_latin1_text_in_a_plain_record_is_fixed_without_the_walker(monkeypatch):
    import esindexer.convert.jsonifier as jsonifier

    def no_walker(*args, **kwargs):
        raise AssertionError("walker used")

    monkeypatch.setattr(jsonifier, "walk", no_walker)
    data = py2_record("m", "C", {Str(b"title"): Str("caf\xe9 cr\xe8me".encode("latin-1")),
                                 Str(b"tags"): (Str(b"a"), Str(b"\xff")), Str(b"n"): [{Str(b"k"): Str(b"ok")}]})
    got = strict_loads(Jsonifier().convert("p", data).json_text)
    assert got == {"title": "café crème", "tags": ["a", "ÿ"], "n": [{"k": "ok"}]}


def test_a_non_string_key_after_a_non_ascii_key_goes_to_the_walker():
    # Found by hypothesis in CI: {'\x80': ..., 0: ...} inside a record with Latin-1 text
    # raised TypeError in the in-place fix, and the record was dead-lettered.
    data = py2_record("m", "C", {Str(b""): {Str(b"\xc2\x80"): Str(b"\x80"), 0: None}})
    got = Jsonifier().convert("p", data)
    assert got.kind == "ok", got
    assert got.json_text == walker_text(data)
