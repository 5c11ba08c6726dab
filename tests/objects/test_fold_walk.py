"""The fold's walk returns a container none of whose values changes as it is (no copy):
its result must still be the fold of a walk that copies everything, the states it was
given must be left as they were, and the parts must be folded in the same order."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esindexer.objects.edges import ref_zoid
from esindexer.objects.fold import fold

PARTS = list(range(100, 106))


def ref(zoid: int) -> dict[str, Any]:
    return {"::": "persistent", "id": [zoid, "app.Part"], "::=>": zoid}


leaves = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=3),
                   st.binary(max_size=2))
refs = st.sampled_from(PARTS + [7, 8]).map(ref)  # parts and references to other objects
states = st.recursive(leaves | refs, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.lists(inner, max_size=3).map(tuple),
    st.dictionaries(st.text(max_size=2), inner, max_size=4)), max_leaves=25)


def copying_fold(state: Any, parts: dict[int, tuple[str, Any]], decoded: bool) -> tuple[Any, list[int], list[int]]:
    """The walk as it was before (every container copied), for the non-BTree parts used here."""
    used: list[int] = []
    other: list[int] = []

    def value(v: Any) -> Any:
        if isinstance(v, dict):
            target = ref_zoid(v)
            if target is not None:
                if target in parts and target not in used:
                    used.append(target)
                    class_name, part = parts[target]
                    folded = value(part)
                    if isinstance(folded, dict):
                        return folded if "::" in folded else {**folded, "::": class_name}
                    return {"::": class_name, "state": folded}
                other.append(target)
                return v
            return {k: value(x) for k, x in v.items()}
        if isinstance(v, list) or decoded and isinstance(v, tuple):
            return [value(x) for x in v]
        return v

    return value(state), used, sorted(set(other) - set(used))


@settings(max_examples=300, deadline=None)
@given(state=states, part_states=st.lists(states, min_size=len(PARTS), max_size=len(PARTS)), decoded=st.booleans())
def test_the_walk_without_copies_folds_as_the_copying_walk_did(state, part_states, decoded):
    parts = {zoid: ("app.Part", part) for zoid, part in zip(PARTS, part_states)}
    before = copy.deepcopy((state, parts))
    expected, used, refs = copying_fold(copy.deepcopy(state), copy.deepcopy(parts), decoded)
    got = fold(state, parts, decoded=decoded)
    assert got.state == expected and type(got.state) is type(expected)
    assert got.folded == used and got.refs == refs
    assert (state, parts) == before  # nothing given was changed


class _ListSub(list):  # type: ignore[type-arg]
    """A list subclass (a PersistentList's decoded stand-in is not one, but a state may hold any)."""


def _obj_with(state: dict[str, Any]) -> Any:
    from esindexer.convert.model import Obj

    obj = Obj("app.Thing", None)
    obj.__setstate__(state)
    return obj


class _BTreePart(tuple):  # type: ignore[type-arg]
    """(class name, state) of a BTrees part, told apart from a generated state."""


btree_parts = st.lists(st.tuples(st.text(max_size=2), leaves | refs), max_size=3).map(
    lambda items: _BTreePart(("BTrees.OOBTree.OOBucket", ((tuple(x for kv in items for x in kv)),))))
rich_states = st.recursive(leaves | refs, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.lists(inner, max_size=3).map(tuple), st.lists(inner, max_size=3).map(_ListSub),
    st.dictionaries(st.text(max_size=2), inner, max_size=4),
    st.dictionaries(st.text(max_size=2), inner, max_size=3).map(_obj_with)), max_leaves=25)


def _shape(value: Any) -> Any:
    """``value`` with every container's type written out (``==`` alone takes a tuple for a
    list and an ``Obj`` for a dict)."""
    if isinstance(value, dict):
        return (type(value).__name__, sorted(((str(k), _shape(v)) for k, v in value.items()), key=repr))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_shape(v) for v in value])
    return (type(value).__name__, value)


@settings(max_examples=400, deadline=None)
@given(state=rich_states, part_states=st.lists(st.one_of(rich_states, btree_parts), min_size=len(PARTS),
                                                 max_size=len(PARTS)), decoded=st.booleans())
def test_the_c_walk_folds_as_the_python_walk(state, part_states, decoded):
    """The C twin of the walk (``_edges_c.fold_value``) gives the Python walk's result: the
    same values and container types, the same parts folded in the same order, the same
    references left, and the container it was given back as it is where nothing changed."""
    pytest.importorskip("esindexer.objects._edges_c")
    parts = {zoid: (tuple(part) if isinstance(part, _BTreePart) else ("app.Part", part))
             for zoid, part in zip(PARTS, part_states)}
    before = _shape((state, parts))
    py = fold(state, parts, decoded=decoded, c_walk=False)
    c = fold(state, parts, decoded=decoded)
    assert _shape(c.state) == _shape(py.state)
    assert (c.state is state) == (py.state is state)
    assert c.folded == py.folded and c.refs == py.refs
    assert _shape((state, parts)) == before  # nothing given was changed


def test_the_c_walk_is_the_one_in_use_and_fails_as_python_does():
    """Where the extension is built the fold uses it; an error in a part's folding (a
    BTree key that is not a string, decoded) raises the same exception through it."""
    fold_module = pytest.importorskip("esindexer.objects.fold")
    pytest.importorskip("esindexer.objects._edges_c")
    assert fold_module._fold_value is not None
    parts = {100: ("BTrees.IOBTree.IOBucket", ((1, "a"),))}
    for c_walk in (True, False):
        with pytest.raises(fold_module.NotFoldable):
            fold({"x": [ref(100)]}, parts, decoded=True, c_walk=c_walk)
    deep: Any = ref(100)
    for _ in range(5000):
        deep = [deep]
    for c_walk in (True, False):
        with pytest.raises(RecursionError):
            fold(deep, {}, c_walk=c_walk)
