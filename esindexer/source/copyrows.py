"""Rows read as PostgreSQL's binary COPY stream, not as query results.

Why: a ``bytea`` column comes back from a query as hex text. PostgreSQL writes two
characters per byte, the socket carries twice the state, and psycopg2 parses the hex
back into a buffer that is then copied into ``bytes``. Read with ``COPY (query) TO STDOUT
(FORMAT binary)``, each state travels as its own bytes. On the benchmark corpus (105,519
records, 82 MB of state) that took the follower's reads from 0.42-0.44 s of Python and
0.58-0.59 s of PostgreSQL CPU to 0.22 s and 0.38-0.41 s (docs/performance.md, *The
unpickler's calls per value in C, and the follower's reads as binary COPY*): CPU that
the search node, on the same machine, can use.

The stream (PostgreSQL's documentation, *COPY*, "Binary Format"): an 11-byte
signature, a 32-bit flags field, a 32-bit header-extension length and that many bytes;
then per row a 16-bit field count and, per field, a 32-bit length (-1 for NULL) and the
value's bytes in its binary send format (an ``int8`` is 8 bytes, big-endian); a field
count of -1 ends it. :func:`parse` reads exactly that and refuses anything else.
"""

from __future__ import annotations

import io
import struct
from typing import Any

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"

_HEADER = struct.Struct(">Ii")  # flags (unsigned), the header extension's length
_COUNT = struct.Struct(">h")
_LENGTH = struct.Struct(">i")
_FIXED = struct.Struct(">hiqiq")  # count, tid's length and value, zoid's length and value
_INT8 = struct.Struct(">q")

try:
    from esindexer.source import _copy_c
except ImportError:  # optional extension, not built here: the Python parser
    _copy_c = None  # type: ignore[assignment]


class CopyFormatError(ValueError):
    """The stream is not what :func:`parse` reads (a bug, never the data's fault)."""


def fetch(cur: Any, query: str, prefix: str = "") -> list[tuple[int, int, bytes | None, int | None]]:
    """``(tid, zoid, state, state_size)`` rows of ``query`` (a complete SELECT of those four
    columns, ``tid`` and ``zoid`` bigint, ``state`` bytea, ``state_size`` bigint), read as one
    binary COPY. ``prefix`` holds statements run before it in the same implicit transaction
    (``SET LOCAL``...): libpq's simple query protocol runs the whole string as one."""
    buffer = io.BytesIO()
    cur.copy_expert(f"{prefix}COPY ({query}) TO STDOUT (FORMAT binary)", buffer)
    return parse(buffer.getbuffer())


def parse(data: Any) -> list[tuple[int, int, bytes | None, int | None]]:
    """The rows of a binary COPY stream of ``(int8, int8, bytea, int8)`` rows: by the C
    twin (``_copy_c``, an optional extension) where it is sure, else by :func:`parse_py`."""
    if _copy_c is not None:
        rows = _copy_c.parse(data)
        if rows is not None:
            return rows
    return parse_py(data)


def parse_py(data: Any) -> list[tuple[int, int, bytes | None, int | None]]:
    """:func:`parse` in Python: the reference, and what says why a stream is refused."""
    view = memoryview(data)
    size = len(view)
    if bytes(view[:11]) != SIGNATURE or size < 19:
        raise CopyFormatError("not a binary COPY stream (no PGCOPY signature)")
    flags, extension = _HEADER.unpack_from(view, 11)
    # Bits 0-15 are critical (a reader must stop on one it does not know) and bit 16 says
    # every row carries an OID first: neither is ours. Bits 17-31 may be ignored.
    if flags & 0x1FFFF or extension < 0:
        raise CopyFormatError(f"binary COPY header with flags {flags:#x}")
    pos = 19 + extension
    rows: list[tuple[int, int, bytes | None, int | None]] = []
    append = rows.append
    fixed, length, int8 = _FIXED.unpack_from, _LENGTH.unpack_from, _INT8.unpack_from
    try:
        while True:
            if _COUNT.unpack_from(view, pos)[0] == -1:
                pos += 2
                break
            count, tid_len, tid, zoid_len, zoid = fixed(view, pos)
            if count != 4 or tid_len != 8 or zoid_len != 8:
                raise CopyFormatError(f"binary COPY row of {count} fields, tid/zoid lengths {tid_len}/{zoid_len}")
            pos += 26
            n = length(view, pos)[0]
            pos += 4
            if n < 0:
                state = None
            else:
                state = bytes(view[pos:pos + n])
                pos += n
                if len(state) != n:
                    raise CopyFormatError("binary COPY stream ends inside a value")
            n = length(view, pos)[0]
            pos += 4
            if n < 0:
                state_size = None
            elif n == 8:
                state_size = int8(view, pos)[0]
                pos += 8
            else:
                raise CopyFormatError(f"binary COPY state_size of {n} bytes")
            append((tid, zoid, state, state_size))
    except struct.error as exc:
        raise CopyFormatError(f"binary COPY stream cut short: {exc}") from None
    if pos != size:
        raise CopyFormatError(f"{size - pos} bytes after the end of a binary COPY stream")
    return rows
