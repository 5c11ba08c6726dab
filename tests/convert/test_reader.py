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
