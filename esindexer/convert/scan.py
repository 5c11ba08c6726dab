"""Pre-flight scan of a pickle's opcodes, before the C unpickler sees it.

Why this exists: CPython's C unpickler (``_pickle``) is fast but trusts two things a
hostile record controls. A ``LONG_BINPUT`` (or text ``PUT``) index makes it grow its memo
array to twice that index and zero every new slot, so ``LONG_BINPUT 0x10000000`` costs
4 GB of touched memory and seconds of CPU before anything fails. And shared structure
(``GET`` of a list or dict, ``DUP``) lets a few hundred bytes describe a graph whose JSON
expansion is exponential. This module walks the opcode stream once, in pure Python but
with as little work per opcode as possible, and answers:

- is every memo index small enough (bounded by the record's own size)? If not, or if the
  stream is truncated or has an unknown opcode, it raises :class:`UnsafePickle` and the
  C unpickler never runs;
- is the decoded value a plain tree (no ``GET`` of a memoized container, no ``DUP``)? If
  so, the fast path (C unpickler + orjson) can serialize it without identity tracking;
  otherwise the caller uses the slower walker, which tracks sharing and cycles and
  enforces an output budget.

The scanner parses argument lengths exactly as ``_pickle.c`` does, so both agree on where
every opcode starts; it does not interpret values.

:func:`scan_py` below is the reference implementation. ``esindexer/convert/_scan_c.c`` is
a C port of it with identical results (tests/convert/test_scan.py checks this), about 20x
faster; it is an optional extension, built when a C compiler is available at install
time. :func:`scan` is the C version when it was built, else :func:`scan_py`.
"""

from __future__ import annotations

import struct

__all__ = ["UnsafePickle", "scan", "scan_py"]


class UnsafePickle(ValueError):
    """The record is malformed or asks for resources far beyond its own size."""


_U32 = struct.Struct("<I").unpack_from
_I32 = struct.Struct("<i").unpack_from
_U64 = struct.Struct("<Q").unpack_from

# Total size (opcode byte + fixed argument) of opcodes that need no attention: they
# neither touch the memo nor carry a variable-length argument. 0 = handled below.
_SKIP = [0] * 256
for _ch in "(01NRQabdelostu)]}":
    _SKIP[ord(_ch)] = 1
for _code in (0x81, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8F, 0x90, 0x91, 0x92, 0x93, 0x97, 0x98):
    _SKIP[_code] = 1
for _code in (ord("K"), 0x80, 0x82):
    _SKIP[_code] = 2
for _code in (ord("M"), 0x83):
    _SKIP[_code] = 3
for _code in (ord("J"), 0x84):
    _SKIP[_code] = 5
for _code in (ord("G"), 0x95):
    _SKIP[_code] = 9
_SKIP_T = tuple(_SKIP)
del _SKIP, _ch, _code

# Memo entries above this size are remembered, so repeated GETs of a big string count
# fully against the expansion budget; smaller ones count as this many bytes.
_SMALL = 64


def scan_py(data: bytes, start: int, kinds: dict[int, int], state: list[int]) -> int:
    """Scan one pickle of ``data`` from ``start`` to its STOP; return the offset after it.

    ``kinds`` maps memo index -> -1 for a memoized container (or anything not known to
    be a scalar) or the byte size of a big scalar; it carries over between the class
    pickle and the state pickle, as the memo does. ``state`` is ``[flags, expansion]``:
    flags bit 1 means "not a plain tree" (shared container, DUP, or an expansion larger
    than the record allows), expansion sums the bytes that GETs of scalars repeat.
    Raises :class:`UnsafePickle` for malformed input or an oversized memo index.
    """
    n = len(data)
    limit = n + 256  # a pickle cannot hold more memo entries than it has bytes
    skip = _SKIP_T
    u32 = _U32
    i = start
    flags, expansion = state
    try:
        while True:
            op = data[i]
            s = skip[op]
            if s:
                i += s
                continue
            if op == 0x71:  # BINPUT not right after a scalar: assume a container
                kinds[data[i + 1]] = -1
                i += 2
                continue
            if op == 0x58:  # BINUNICODE: 4-byte length (the most common scalar)
                size = u32(data, i + 1)[0]
                i += 5 + size
                if data[i] == 0x71:  # ... memoized right away (the usual case)
                    if size > _SMALL:
                        kinds[data[i + 1]] = size
                    i += 2
                    continue
            elif op == 0x43 or op == 0x8C or op == 0x55 or op == 0x8A:
                # SHORT_BINBYTES, SHORT_BINUNICODE, SHORT_BINSTRING, LONG1: 1-byte length
                size = data[i + 1]
                i += 2 + size
                if data[i] == 0x71:
                    if size > _SMALL:
                        kinds[data[i + 1]] = size
                    i += 2
                    continue
            elif op == 0x68:  # BINGET
                k = kinds.get(data[i + 1], _SMALL)
                if k < 0 or flags & 2:
                    flags |= 1
                else:
                    expansion += k
                i += 2
                continue
            elif op == 0x63:  # GLOBAL: two lines
                j = data.index(b"\n", data.index(b"\n", i + 1) + 1) + 1
                size = j - i
                i = j
            elif op == 0x42:  # BINBYTES: 4-byte length
                size = u32(data, i + 1)[0]
                i += 5 + size
            elif op == 0x54 or op == 0x8B:  # BINSTRING, LONG4: signed 4-byte length
                size = _I32(data, i + 1)[0]
                if size < 0:
                    raise UnsafePickle(f"negative length at offset {i}")
                i += 5 + size
            elif op == 0x8D or op == 0x8E or op == 0x96:  # BINUNICODE8, BINBYTES8, BYTEARRAY8
                size = _U64(data, i + 1)[0]
                i += 9 + size
            elif op == 0x46 or op == 0x49 or op == 0x4C or op == 0x53 or op == 0x56 or op == 0x50:
                # FLOAT, INT, LONG, STRING, UNICODE, PERSID: one line
                j = data.index(b"\n", i + 1) + 1
                size = j - i
                i = j
            elif op == 0x69:  # INST: two lines, builds an instance (not a scalar)
                i = data.index(b"\n", data.index(b"\n", i + 1) + 1) + 1
                continue
            elif op == 0x72:  # LONG_BINPUT not right after a scalar
                idx = u32(data, i + 1)[0]
                if idx > limit:
                    raise UnsafePickle(f"memo index {idx} at offset {i} exceeds the record size")
                kinds[idx] = -1
                i += 5
                continue
            elif op == 0x70:  # PUT (text)
                j = data.index(b"\n", i + 1) + 1
                idx = _line_int(data, i, j)
                if idx > limit:
                    raise UnsafePickle(f"memo index {idx} at offset {i} exceeds the record size")
                kinds[idx] = -1
                i = j
                continue
            elif op == 0x94:  # MEMOIZE not right after a scalar: index unknown here
                flags |= 2
                i += 1
                continue
            elif op == 0x6A or op == 0x67:  # LONG_BINGET, GET
                if op == 0x6A:
                    idx = u32(data, i + 1)[0]
                    i += 5
                else:
                    j = data.index(b"\n", i + 1) + 1
                    idx = _line_int(data, i, j)
                    i = j
                k = kinds.get(idx, _SMALL)
                if k < 0 or flags & 2:
                    flags |= 1
                else:
                    expansion += k
                continue
            elif op == 0x32:  # DUP
                flags |= 1
                i += 1
                continue
            elif op == 0x2E:  # STOP
                state[0], state[1] = flags, expansion
                return i + 1
            else:
                raise UnsafePickle(f"invalid pickle opcode 0x{op:02x} at offset {i}")
            # A scalar of `size` bytes ended at i. ZODB's pickler memoizes most scalars
            # right away; remember big ones so their repetition is counted.
            nxt = data[i]
            if nxt == 0x71:
                if size > _SMALL:
                    kinds[data[i + 1]] = size
                i += 2
            elif nxt == 0x72:
                idx = u32(data, i + 1)[0]
                if idx > limit:
                    raise UnsafePickle(f"memo index {idx} at offset {i} exceeds the record size")
                if size > _SMALL:
                    kinds[idx] = size
                i += 5
            elif nxt == 0x94:
                if size > _SMALL:
                    flags |= 2  # index not tracked: treat later GETs conservatively
                i += 1
    except (IndexError, struct.error):
        raise UnsafePickle("pickle data was truncated") from None
    except ValueError as exc:  # bytes.index found no newline, or a bad PUT/GET line
        if isinstance(exc, UnsafePickle):
            raise
        raise UnsafePickle(f"pickle data was truncated or malformed ({exc})") from None


def _line_int(data: bytes, i: int, j: int) -> int:
    """The integer on a text opcode's line; the C unpickler accepts the same syntax."""
    line = data[i + 1 : j]
    if len(line) > 24:
        raise UnsafePickle(f"memo index line too long at offset {i}")
    try:
        value = int(line)
    except ValueError:
        raise UnsafePickle(f"bad memo index at offset {i}") from None
    if value < 0:
        raise UnsafePickle(f"negative memo index at offset {i}")
    return value


# The C version of scan_py, when the optional extension was built (setup.py). It takes the
# exception class to raise and scan_py itself, to which it hands the rare cases it does
# not port (text PUT/GET of protocols 0-1, arguments of unexpected types).
try:
    from esindexer.convert import _scan_c
except ImportError:  # no compiler at install time: the pure-Python scan
    _scan_c = None
    scan = scan_py
else:
    _scan_c.configure(UnsafePickle, scan_py)
    scan = _scan_c.scan
