"""The C twin of the typed shaper (``esindexer/documents/_shape_c.c``) gives exactly what the
Python shaper gives, or nothing: differential, on decoded states of real pickles (the
direct path's input), with hypothesis-generated states aimed at its edges (dates, integer
bounds, identifiers, references, nesting, the text budget).

The whole-document differential (text path against direct path, with the C twin in use)
is tests/test_direct_documents.py; this file checks the twin itself, and that it is used.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from DateTime import DateTime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esindexer.convert.jsonifier import Decoded, Jsonifier
from esindexer.documents import fastshape
from esindexer.documents.typed import Shaped, shape
from tests.convert.records import PRef, Thing, record
from tests.test_direct_documents import STATES

pytest.importorskip("esindexer.documents._shape_c")

_JSONIFIER = Jsonifier()


def _decoded(state: dict[str, Any], protocol: int = 3) -> Any:
    """``state`` as the direct path receives it: pickled as a ZODB record, then decoded."""
    got = _JSONIFIER.decode(1, record(Thing, state, protocol=protocol))
    return got.state if type(got) is Decoded else None


def _facts(shaped: Shaped) -> tuple[Any, ...]:
    typed = [(path, type(v).__name__, v) for path, v in shaped.typed.items()]
    return typed, shaped.more, shaped.values, shaped.texts, shaped.refs


def same_or_nothing(state: Any, limit: int = 32_000) -> bool:
    """The twin's answer equals the Python shaper's, or is None; whether it answered."""
    fast = fastshape.c_shape(state, limit)
    try:
        slow = shape(state, limit, direct=True)
    except Exception:  # the Python shaper refuses (NotDirect...): the twin must not answer
        assert fast is None
        return False
    if fast is None:
        return False
    assert _facts(fast) == _facts(slow)
    return True


def test_the_converter_test_values():
    answered = 0
    for state in STATES:
        for protocol in (2, 3):
            try:
                decoded = _decoded(state, protocol)
            except Exception:
                continue
            if decoded is not None:
                answered += same_or_nothing(decoded)
    assert answered >= 6  # plain states are the twin's: it is exercised, not always declining


def test_plain_records_are_shaped_in_c():
    """What nearly every record is: the twin answers (the speed-up exists), and equally."""
    state = {"title": "A page", "count": 3, "ratio": 0.5, "public": True, "nothing": None,
             "created": datetime.datetime(2024, 2, 29, 12, 0, 1), "tags": ["a", "2020-01-01", 7],
             "owner": PRef(5, Thing), "meta": {"keyword": "k", "n": [1, [2, "x"]]}, "inst": Thing(a=1, b="y"),
             # what Plone's content has: tuples of strings, Zope DateTimes, dotted keys
             "subject": ("news", "2024-01-01", 3), "effective": DateTime("2024/05/06 07:08:09 GMT+2"),
             "_plone.uuid": "35476687445f4648815c40968979ac66", "": 1.5, "aware": datetime.datetime(
                 2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)}
    assert same_or_nothing(_decoded(state))
    assert same_or_nothing(_decoded(state), limit=7)  # the text budget cuts within a string


_DATES = st.one_of(
    st.datetimes(min_value=datetime.datetime(1, 1, 1)).map(datetime.datetime.isoformat),
    st.datetimes().map(lambda d: d.replace(microsecond=0).isoformat() + ".000000"),
    st.text(alphabet="0123456789-T:.", min_size=19, max_size=19),
    st.text(alphabet="0123456789-T:.", min_size=26, max_size=26),
    st.sampled_from(["2024-02-29T00:00:00", "2023-02-29T00:00:00", "0000-01-01T00:00:00", "2020-13-01T00:00:00",
                     "2020-01-01T24:00:00", "2020-01-01T23:60:00", "2020-01-01T23:59:60", "2020-04-31T00:00:00",
                     "1900-02-29T00:00:00", "2000-02-29T00:00:00.000001", "2020-01-01", "2020-01-01T00:00:00Z",
                     "9999-12-31T23:59:59.999999", "2020-01-01 00:00:00", "7", "1e5", "٣٣٣٣-01-01T00:00:00"]),
)
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**54), 2**54),
                  st.sampled_from([2**53 - 1, -(2**53) + 1, 2**53, -(2**53), 2**63]),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), _DATES,
                  st.builds(PRef, st.integers(0, 2**54), st.sampled_from([Thing, None])))
_keys = st.one_of(st.sampled_from(["a", "b", "keyword", "title", "_x", "x.y", "", "::x", "é", "a" * 65, "a" * 64]),
                  st.text(alphabet="abc_1", min_size=1, max_size=3))
_values = st.recursive(st.one_of(
    _leaf, st.builds(DateTime, st.floats(-2e9, 4e9)), st.datetimes(timezones=st.just(datetime.UTC)),
), lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(_keys, c, max_size=5), st.lists(_leaf, max_size=4).map(tuple),
    st.tuples(c, c),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), c, max_size=17),
    st.builds(lambda d: Thing(**d), st.dictionaries(st.sampled_from(["a", "b", "keyword", "_p"]), c, max_size=3)),
), max_leaves=25)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=8), st.sampled_from([0, 1, 5, 40, 32_000]))
def test_generated_states(state, limit):
    try:
        decoded = _decoded(state)
    except Exception:  # not picklable as a record: not what is tested here
        return
    if decoded is not None:
        same_or_nothing(decoded, limit)


@settings(max_examples=400, deadline=None)
@given(st.lists(_DATES, min_size=1, max_size=4))
def test_date_like_strings(texts):
    """The C reading of naive isoformat() text agrees with typed._date on every string."""
    assert same_or_nothing({"when": texts[0], "list": texts})


def test_a_deep_list_is_left_to_python():
    nested: Any = "x"
    for _ in range(80):
        nested = [nested]
    assert fastshape.c_shape({"deep": nested}, 100) is None
    assert not same_or_nothing({"deep": nested})
