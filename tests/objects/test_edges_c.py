"""The C walk for a record's references (esindexer/objects/_edges_c.c) gives exactly the
Python walk's list (``edges.walk_py``): the same references, keys and order, on generated
values of every shape a converted or decoded state has."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esindexer.convert.model import Obj, Ref
from esindexer.objects import edges

_edges_c = pytest.importorskip("esindexer.objects._edges_c")

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                     st.text(max_size=6), st.binary(max_size=4))
_keys = st.one_of(st.sampled_from(["id", "title", "::", "::()", "::data", "::x", "data", "_tree", ""]),
                  st.text(max_size=4), st.integers(-5, 5), st.tuples(st.integers(0, 3), st.text(max_size=2)))
_targets = st.one_of(st.integers(0, 2**64), st.booleans(), st.none(), st.text(max_size=3), st.floats(allow_nan=False))


def _reference(target: Any, marker: Any = "persistent", as_ref: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = Ref() if as_ref else {}
    ref.update({"::": marker, "id": [target, "app.Item"], "::=>": target})
    return ref


_references = st.builds(_reference, _targets, st.sampled_from(["persistent", "app.Item", None, 1]), st.booleans())


def _obj(name: str, state: dict[Any, Any]) -> Obj:
    obj = Obj(name, None)
    obj.__setstate__(state)
    return obj


_values = st.recursive(
    st.one_of(_scalars, _references),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(_keys, children, max_size=4),
        st.builds(_obj, st.sampled_from(["app.Thing", "persistent.mapping.PersistentMapping"]),
                  st.dictionaries(st.text(max_size=3), children, max_size=3)),
    ),
    max_leaves=30,
)


def _both(value: Any, key: str | None) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
    py: list[tuple[int, str | None]] = []
    c: list[tuple[int, str | None]] = []
    edges.walk_py(value, key, py)
    _edges_c.walk(value, key, c)
    return py, c


@settings(max_examples=600, deadline=None)
@given(_values, st.one_of(st.none(), st.text(max_size=3)))
def test_the_c_walk_gives_the_python_walks_list(value, key):
    py, c = _both(value, key)
    assert c == py
    assert [(type(z), type(k)) for z, k in c] == [(type(z), type(k)) for z, k in py]


def test_a_reference_under_each_kind_of_key():
    state = {"a": _reference(5), "b": [_reference(6), (_reference(7),)], 3: {"x": _reference(8)},
             "::()": (_reference(9),), (1, "k"): [_reference(10)], "n": _reference(True), "m": _reference("12")}
    py, c = _both(state, None)
    assert c == py
    assert sorted(c) == [(5, "a"), (6, "b"), (7, "b"), (8, "x"), (9, None), (10, "(1, 'k')")]


def test_what_is_not_walked_is_not_read():
    """The walk is the module's in use where the extension is built."""
    assert edges.walk is _edges_c.walk
    out: list[tuple[int, str | None]] = []
    _edges_c.walk("text", None, out)
    _edges_c.walk(b"bytes", "k", out)
    assert out == []
    with pytest.raises(TypeError):
        _edges_c.walk({}, None, ())  # out must be a list


class _BadKey:
    def __str__(self) -> str:
        raise ValueError("no text")

    def __hash__(self) -> int:
        return 1


def test_an_error_in_a_key_is_raised_by_both():
    state = {_BadKey(): [_reference(5)]}
    with pytest.raises(ValueError, match="no text"):
        edges.walk_py(state, None, [])
    with pytest.raises(ValueError, match="no text"):
        _edges_c.walk(state, None, [])


_names = st.one_of(st.none(), st.text(max_size=3), st.integers(0, 3), _references)
_class_names = st.one_of(st.none(), st.sampled_from(["app.Item", "persistent.mapping.PersistentMapping",
                                                     "BTrees.OOBTree.OOBucket", "BTrees.IOBTree.IOBTree",
                                                     "BTrees.Length.Length", "BTreesX.Item", ""]), st.text(max_size=8))


def _state_with_names(state: Any, id_: Any, name: Any, objects: Any) -> Any:
    if isinstance(state, dict):
        state = dict(state)  # (an Obj stays one where it was drawn: the plain dict is the usual state)
        for key, value in (("id", id_), ("__name__", name), ("_objects", objects)):
            if value is not None:
                state[key] = value
    return state


_states = st.builds(_state_with_names, st.one_of(st.dictionaries(_keys, _values, max_size=6), _values),
                    _names, _names, st.one_of(st.none(), st.just(({"id": "a", "meta_type": "M"},))))


@settings(max_examples=800, deadline=None)
@given(st.sampled_from([0, 1, 5, 2**63, 2**70]), st.integers(0, 2**64), _class_names, _states)
def test_the_c_facts_are_the_python_functions_facts(zoid, tid, class_name, state):
    """Where the C twin answers, its facts are record_name's and record_edges' (keys,
    order and types too); where it does not (None), the Python functions are used."""
    py = edges.record_facts_py(zoid, tid, class_name, state)
    c = _edges_c.facts(zoid, tid, class_name, state)
    if c is not None:
        assert type(c) is edges.RecordFacts
        assert c == py
        assert [tuple(map(type, e)) for e in c.edges] == [tuple(map(type, e)) for e in py.edges]
        assert type(c.name) is type(py.name)
    assert edges.record_facts(zoid, tid, class_name, state) == py


def test_the_c_facts_take_the_usual_states_and_leave_the_rest():
    usual = {"id": "doc-1", "title": "T", "meta": _reference(7), "refs": [_reference(8), _reference(7)]}
    got = _edges_c.facts(5, 9, "app.Item", usual)
    assert got == edges.RecordFacts(5, 9, "app.Item", "doc-1", [(7, "refs", False), (8, "refs", False),
                                                                 (7, "meta", False)])
    assert _edges_c.facts(0, 9, "persistent.mapping.PersistentMapping", {"data": {}}).name == ""
    # left to the Python functions: BTrees records, OFS containers, states that are not plain dicts
    assert _edges_c.facts(5, 9, "BTrees.OOBTree.OOBucket", usual) is None
    assert _edges_c.facts(5, 9, "app.Folder", {**usual, "_objects": ({"id": "doc-1"},)}) is None
    assert _edges_c.facts(5, 9, "app.Item", [usual]) is None
    assert _edges_c.facts(5, 9, "app.Item", _obj("app.Item", usual)) is None
    assert edges.record_facts is not edges.record_facts_py


_texts = st.one_of(st.none(), st.text(max_size=6), st.sampled_from(['a"b', '"', 'x\x00y', "", "é,\n", "\ud800"]))
_edge_lists = st.lists(st.tuples(st.integers(-2, 2**64), _texts, st.booleans()), max_size=5).map(
    lambda edges: edges + edges[:1])  # (a record's same edge twice)
_records = st.lists(st.builds(edges.RecordFacts, st.integers(-1, 2**64), st.integers(0, 2**64), _texts, _texts,
                              _edge_lists), max_size=5)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.sampled_from(["c1", 'a"b', "é"]), st.text(max_size=4)), _records)
def test_the_c_copy_text_is_the_python_formatting(client_id, records):
    """A backfill batch's COPY text by the C twin is the Python formatting's, byte for byte;
    where the C twin gives up (None: an int beyond 64 bits, a lone surrogate), the Python
    formatting is used, which raises where it cannot write a value either."""
    from esindexer.objects import unresolved

    try:
        py: Any = unresolved.copy_rows_py(client_id, records)
    except UnicodeEncodeError:
        py = UnicodeEncodeError
    c = _edges_c.copy_rows(client_id, records)
    if c is not None:
        assert c == py
    if py is UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            unresolved.copy_rows(client_id, records)
    else:
        assert unresolved.copy_rows(client_id, records) == py
