"""The opcode tables and small readers the pre-scan (:mod:`esindexer.convert.scan`) uses.

Kept apart from the scan's one long loop so that the loop reads as the rules; the C
twin (``_scan_c.c``) has the same tables.
"""

from __future__ import annotations

import struct

from esindexer.errors import UnsafePickle

U32 = struct.Struct("<I").unpack_from
I32 = struct.Struct("<i").unpack_from
U64 = struct.Struct("<Q").unpack_from


def _fixed_push() -> tuple[int, ...]:
    """Opcodes of a fixed size that just push a value: 2 * their total size (opcode byte
    + fixed argument) + the depth they push. Scalars (depth 0): NONE, NEWTRUE, NEWFALSE,
    NEXT_BUFFER, BININT1, BININT2, BININT, BINFLOAT and EXT1/2/4 (whose global is as
    flat as a scalar); empty containers (depth 1): EMPTY_TUPLE, EMPTY_LIST, EMPTY_DICT,
    EMPTY_SET. 0 = handled by the scan's loop."""
    table = [0] * 256
    for code in (ord("N"), 0x88, 0x89, 0x97):
        table[code] = 2
    for code in (ord("K"), 0x82):
        table[code] = 4
    for code in (ord("M"), 0x83):
        table[code] = 6
    for code in (ord("J"), 0x84):
        table[code] = 10
    table[ord("G")] = 18
    for code in (ord(")"), ord("]"), ord("}"), 0x8F):
        table[code] = 3
    return tuple(table)


FIXED_PUSH = _fixed_push()

#: Memo entries above this size are remembered, so repeated GETs of a big string count
#: fully against the expansion budget; smaller ones count as this many bytes.
SMALL = 64


def underflow(i: int) -> UnsafePickle:
    return UnsafePickle(f"stack underflow at offset {i}")


def mixed(i: int) -> UnsafePickle:
    return UnsafePickle(f"MEMOIZE after PUT opcodes at offset {i}")


def line_int(data: bytes, i: int, j: int) -> int:
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
