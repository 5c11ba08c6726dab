"""The follower's rows read as binary COPY (esindexer/source/copyrows.py): the C parser
gives exactly the Python parser's rows or nothing, the Python parser refuses what is not
the format, and a real PostgreSQL's stream reads back as its query's rows."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esindexer.source import copyrows

_copy_c = pytest.importorskip("esindexer.source._copy_c")

_int8 = st.integers(-(2**63), 2**63 - 1)
_rows = st.lists(st.tuples(_int8, _int8, st.one_of(st.none(), st.binary(max_size=40)),
                           st.one_of(st.none(), _int8)), max_size=8)


def _stream(rows, *, flags: int = 0, extension: bytes = b"") -> bytes:
    """A binary COPY stream of ``rows``, written from the format's description."""
    out = [copyrows.SIGNATURE, struct.pack(">Ii", flags, len(extension)), extension]
    for tid, zoid, state, size in rows:
        out.append(struct.pack(">hiqiq", 4, 8, tid, 8, zoid))
        out.append(struct.pack(">i", -1) if state is None else struct.pack(">i", len(state)) + state)
        out.append(struct.pack(">i", -1) if size is None else struct.pack(">iq", 8, size))
    out.append(struct.pack(">h", -1))
    return b"".join(out)


def _python(data: bytes):
    try:
        return ("rows", copyrows.parse_py(data))
    except copyrows.CopyFormatError as exc:
        return ("refused", str(exc))


@given(_rows, st.binary(max_size=6), st.sampled_from([0, 1 << 17, 1 << 31]))
def test_both_parsers_read_a_stream_as_written(rows, extension, flags):
    data = _stream(rows, flags=flags, extension=extension)
    assert copyrows.parse_py(data) == rows
    assert _copy_c.parse(data) == rows
    assert copyrows.parse(memoryview(data)) == rows


@given(_rows, st.data())
def test_a_damaged_stream_is_refused_or_read_alike(rows, data):
    stream = bytearray(_stream(rows))
    how = data.draw(st.sampled_from(["cut", "flip", "append", "flags"]))
    if how == "cut":
        del stream[data.draw(st.integers(0, len(stream) - 1)):]
    elif how == "flip":
        at = data.draw(st.integers(0, len(stream) - 1))
        stream[at] ^= data.draw(st.integers(1, 255))
    elif how == "append":
        stream += data.draw(st.binary(min_size=1, max_size=5))
    else:
        stream[11:15] = struct.pack(">i", data.draw(st.sampled_from([1, 1 << 16, 0xFFFF])))
    python = _python(bytes(stream))
    c = _copy_c.parse(bytes(stream))
    assert c is None or python == ("rows", c)  # the C parser never reads what Python would not
    if how in ("cut", "append", "flags"):
        assert python[0] == "refused"  # nothing is read from a stream that is not whole
    assert _python(bytes(stream)) == (("rows", copyrows.parse(bytes(stream)))
                                      if python[0] == "rows" else python)


def test_streams_of_other_columns_are_refused():
    for bad in (
        _stream([(1, 2, b"x", 3)]).replace(struct.pack(">hiq", 4, 8, 1), struct.pack(">hiq", 3, 8, 1)),
        b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0) + struct.pack(">hii", 4, 4, 7),
        b"not a stream at all",
    ):
        assert _copy_c.parse(bad) is None
        with pytest.raises(copyrows.CopyFormatError):
            copyrows.parse(bad)


def test_a_real_servers_stream_reads_as_its_query(pg_conn):
    with pg_conn.cursor() as cur:
        cur.execute("CREATE TABLE t (tid bigint, zoid bigint, state bytea, state_size bigint)")
        values = [(2**62 + 5, 0, b"", 0), (-1, 2**63 - 1, None, None), (7, 8, bytes(range(256)) * 300, 76800),
                  (9, 10, b"\x00\xff\r\n", None)]
        cur.executemany("INSERT INTO t VALUES (%s, %s, %s, %s)", values)
        query = "SELECT tid, zoid, state, state_size FROM t ORDER BY zoid"
        cur.execute(query)
        expected = [(tid, zoid, None if state is None else bytes(state), size) for tid, zoid, state, size in cur.fetchall()]
        got = copyrows.fetch(cur, query, "SET LOCAL enable_seqscan = off; ")
    assert got == expected and len(got) == 4
    assert all(type(state) is bytes for _, _, state, _ in got if state is not None)
