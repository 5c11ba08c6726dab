"""The unpickler's source and global lookup: the C twins (``_reader_c``) behave exactly
as the Python versions in esindexer/convert/reader.py, and the C ones are in use when
the extension was built."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esindexer.convert import reader
from esindexer.convert.reader import PySource
from esindexer.convert.values import standin

_reader_c = pytest.importorskip("esindexer.convert._reader_c")

_ops = st.lists(st.one_of(
    st.tuples(st.just("peek"), st.integers(0, 20)),
    st.tuples(st.just("read"), st.one_of(st.none(), st.integers(-2, 20))),
    st.tuples(st.just("readinto"), st.integers(0, 20)),
    st.tuples(st.just("readline"), st.just(-1)),
    st.tuples(st.just("seek"), st.integers(0, 30)),
), max_size=12)


def _run(source, data: bytes, ops) -> list:
    source.data = data
    source.pos = 0
    out: list = []
    for op, arg in ops:
        if op == "seek":
            source.pos = arg
            continue
        if op == "readinto":
            buffer = bytearray(arg)
            out.append((source.readinto(buffer), bytes(buffer)))
        else:
            out.append(getattr(source, op)(arg))
        out.append(source.pos)
    return out


@given(st.binary(max_size=25).map(lambda b: b.replace(b"x", b"\n")), _ops)
def test_c_source_reads_as_the_python_one(data, ops):
    assert _run(_reader_c.Source(), data, ops) == _run(PySource(), data, ops)


def test_c_source_refuses_what_the_unpickler_never_gives():
    source = _reader_c.Source()
    with pytest.raises(TypeError):
        source.data = "text"
    with pytest.raises(ValueError):
        source.pos = -1
    assert source.peek() == b"" and source.read() == b""


def test_c_find_class_gives_the_cached_stand_in():
    first = _reader_c.find_class("some.module", "Gone")
    assert first is standin("some.module", "Gone") is _reader_c.find_class("some.module", "Gone")
    assert first.dotted == "some.module.Gone"


def test_the_c_versions_are_in_use():
    assert reader.Source is _reader_c.Source and reader.find_class is _reader_c.find_class


# -- persistent references and the datetime and date stand-ins (issue 25) --------------

def _outcome(call, *args, **kwargs):
    """What a call gives, comparable between twins: the value with its dicts' key order
    (the document's field order follows it), or the exception's type and text."""
    try:
        value = call(*args, **kwargs)
    except Exception as exc:  # the twins must fail alike, too
        return ("raised", type(exc).__name__, str(exc))
    return ("gave", repr(value), type(value).__name__)


_classes = st.one_of(
    st.sampled_from(["BTrees.OOBTree.OOBTree", "myapp.content.Page", "persistent.mapping.PersistentMapping"])
    .map(lambda d: standin(*d.rsplit(".", 1))),
    st.tuples(st.text(max_size=5), st.text(max_size=5)),
    st.none(), st.integers(), st.text(max_size=5),
)
_oids = st.one_of(st.binary(min_size=7, max_size=9), st.binary(max_size=12), st.text(max_size=9), st.integers())
_usual = st.tuples(st.binary(min_size=8, max_size=8), _classes.filter(lambda c: not isinstance(c, (tuple, str, int))))
_pids = st.one_of(
    _usual,
    st.tuples(_oids, _classes),
    _oids,
    st.tuples(st.sampled_from(["w", "m", "n", "x"]), st.tuples(_oids, _classes)).map(list),
    st.tuples(_oids, _classes, st.none()),
    st.lists(_oids, max_size=3),
)


@given(_pids)
def test_c_persistent_ref_gives_what_the_python_one_gives(pid):
    from esindexer.convert.values import persistent_ref

    assert _outcome(_reader_c.persistent_ref, pid) == _outcome(persistent_ref, pid)


def test_c_persistent_ref_builds_the_usual_reference_itself():
    page = standin("myapp.content", "Page")
    ref = _reader_c.persistent_ref(((2**64 - 1).to_bytes(8, "big"), page))
    assert list(ref.items()) == [("::", "persistent"), ("id", [2**64 - 1, "myapp.content.Page"]),
                                 ("::=>", 2**64 - 1)]


_dt_states = st.one_of(
    st.binary(min_size=10, max_size=10),  # anything: fold bits, months 0-255, days past the month...
    st.datetimes(min_value=__import__("datetime").datetime(1, 1, 1)).map(lambda d: d.__reduce__()[1][0]),
    st.datetimes().map(lambda d: d.replace(fold=1).__reduce__()[1][0]),
)
_date_states = st.one_of(
    st.binary(min_size=4, max_size=4),
    st.dates().map(lambda d: d.__reduce__()[1][0]),
)


@given(_dt_states)
def test_the_datetime_stand_in_decodes_as_the_python_call(state):
    import datetime

    from esindexer.convert import constructors

    cls = standin("datetime", "datetime")
    got = _outcome(cls, state)
    assert got == _outcome(constructors._datetime_call, cls, state)
    month = state[2] & 0x7F
    if 1 <= month <= 12:  # datetime reads its pickled state: so must the stand-in
        try:
            expected = datetime.datetime(state).isoformat()
        except Exception:
            return
        assert got == ("gave", repr(expected), "str")


@given(_date_states)
def test_the_date_stand_in_decodes_as_the_python_call(state):
    import datetime

    from esindexer.convert import constructors

    cls = standin("datetime", "date")
    got = _outcome(cls, state)
    assert got == _outcome(constructors._date_call, cls, state)
    if 1 <= state[2] <= 12:
        assert got == ("gave", repr(datetime.date(state).isoformat()), "str")


@pytest.mark.parametrize("args, kwargs", [
    ((b"\x07\xe8\x02\x1d\x0d\x05\x07\x00\x00\x7b", None), {}),  # aware, no zone: the generic stand-in
    ((b"\x07\xe8\x02\x1d\x0d\x05\x07\x00\x00\x7b".decode("latin-1"),), {}),  # a Python 2 str
    ((2024, 2, 29), {}), ((), {"year": 2024}), ((b"\x07\xe8\x02\x1d\x0d\x05\x07\x00\x00",), {}), ((), {}),
])
def test_other_datetime_calls_go_to_the_python_call(args, kwargs):
    from esindexer.convert import constructors

    cls = standin("datetime", "datetime")
    assert _outcome(cls, *args, **kwargs) == _outcome(constructors._datetime_call, cls, *args, **kwargs)


def test_the_c_calls_are_in_use():
    from esindexer.convert import constructors, jsonifier

    assert reader.persistent_load is _reader_c.persistent_ref
    assert jsonifier._Unpickler.persistent_load is _reader_c.persistent_ref
    for meta in (constructors._DatetimeMeta, constructors._DateMeta):
        assert type(meta.__dict__["__call__"]).__name__ == "method_descriptor"
