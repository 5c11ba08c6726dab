"""The fold's walk returns a container none of whose values changes as it is (no copy):
its result must still be the fold of a walk that copies everything, the states it was
given must be left as they were, and the parts must be folded in the same order."""

from __future__ import annotations

import copy
from typing import Any

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
