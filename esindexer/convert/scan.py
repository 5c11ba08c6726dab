"""Pre-flight scan of a pickle's opcodes, before the C unpickler sees it.

Why this exists: CPython's C unpickler (``_pickle``) is fast but trusts two things a
hostile record controls. A ``LONG_BINPUT`` (or text ``PUT``) index makes it grow its memo
array to twice that index and zero every new slot, so ``LONG_BINPUT 0x10000000`` costs
4 GB of touched memory and seconds of CPU before anything fails. And shared structure
(``GET`` of a list or dict, ``DUP``) lets a few hundred bytes describe a graph whose JSON
expansion is exponential. Deep nesting is the third: C code recurses over nested values
without a limit (orjson corrupts memory on tuples nested a few thousand deep, tuple
hashing overflows the C stack further down), and a valid ZODB pickle can nest 20,000
tuples. This module walks the opcode stream once, in pure Python but with as little
work per opcode as possible, and answers:

- is every memo index small enough (bounded by the record's own size)? If not, or if the
  stream is truncated, has an unknown opcode, or pops more than the unpickler's stack
  holds, it raises :class:`UnsafePickle` and the C unpickler never runs;
- is the value nested at most :data:`MAX_DEPTH` levels deep? If not, it raises
  :class:`UnsafePickle` ("nesting deeper than 200 levels at offset N");
- is the decoded value a plain tree (no ``GET`` of a memoized container, no ``DUP``)? If
  so, the fast path (C unpickler + orjson) can serialize it without identity tracking;
  otherwise the caller uses the slower walker, which tracks sharing and cycles and
  enforces an output budget.

The scanner parses argument lengths exactly as ``_pickle.c`` does, so both agree on where
every opcode starts; it does not interpret values.

How nesting depth is counted, and what the bound guarantees: docs/json.md ("Nesting depth").

:func:`scan_py` below is the reference implementation. ``esindexer/convert/_scan_c.c`` is
a C port of it with identical results (tests/convert/test_scan.py checks this), about 20x
faster; it is an optional extension, built when a C compiler is available at install
time. :func:`scan` is the C version when it was built, else :func:`scan_py`.
"""

from __future__ import annotations

import struct

from esindexer.convert.opcodes import FIXED_PUSH, I32, SMALL, U32, U64, line_int, mixed, underflow
from esindexer.errors import UnsafePickle

__all__ = ["MAX_DEPTH", "UnsafePickle", "scan", "scan_py"]


#: Deepest nesting accepted, in levels of containers (see "Nesting" in the module
#: docstring). orjson corrupts memory instead of refusing tuples nested a few thousand
#: deep, and refuses lists and dicts beyond 254; 200 stays well below both and far above
#: what an application stores. The walker (esindexer.convert.walk) uses the same limit.
MAX_DEPTH = 200



def _too_deep(i: int) -> UnsafePickle:
    return UnsafePickle(f"nesting deeper than {MAX_DEPTH} levels at offset {i}")


def scan_py(
    data: bytes,
    start: int,
    kinds: dict[int, int],
    state: list[int],
    stack: list[int] | None = None,
    marks: list[int] | None = None,
) -> int:
    """Scan one pickle of ``data`` from ``start`` to its STOP; return the offset after it.

    ``kinds`` maps memo index -> ``-1 - depth`` for a memoized container (or anything
    not known to be a scalar) of that nesting depth, or the byte size of a big scalar;
    it carries over between the class pickle and the state pickle, as the memo does.
    ``state`` is ``[flags, expansion, memos]``: flags bit 1 means "not a plain tree"
    (shared container, DUP, or an expansion larger than the record allows), expansion
    sums the bytes that GETs of scalars repeat, memos counts the MEMOIZE opcodes so far
    (the index the next one writes) or is -1 once a PUT opcode was seen. ``stack`` and
    ``marks`` (the depth of each stack slot, the stack length at each MARK) are only
    given when the C version hands over in the middle of a pickle.
    Raises :class:`UnsafePickle` for malformed input, an oversized memo index or nesting
    deeper than :data:`MAX_DEPTH`.
    """
    n = len(data)
    limit = n + 256  # a pickle cannot hold more memo entries than it has bytes
    fixed = FIXED_PUSH
    u32 = U32
    i = start
    flags, expansion, memos = state
    if stack is None:
        stack = []
    if marks is None:
        marks = []
    fence = marks[-1] if marks else 0  # the C unpickler never pops below the last MARK
    push = stack.append
    try:
        while True:
            op = data[i]
            s = fixed[op]
            if s:
                push(s & 1)
                i += s >> 1
                continue
            if op == 0x71:  # BINPUT not right after a scalar: assume a container
                idx = data[i + 1]
                if len(stack) <= fence:
                    raise underflow(i)
                kinds[idx] = -1 - stack[-1]
                memos = -1
                i += 2
                continue
            if op == 0x58:  # BINUNICODE: 4-byte length (the most common scalar)
                size = u32(data, i + 1)[0]
                i += 5 + size
                if data[i] == 0x71:  # ... memoized right away (the usual case)
                    push(0)
                    if size > SMALL:
                        kinds[data[i + 1]] = size
                    memos = -1
                    i += 2
                    continue
            elif op == 0x43 or op == 0x8C or op == 0x55 or op == 0x8A:
                # SHORT_BINBYTES, SHORT_BINUNICODE, SHORT_BINSTRING, LONG1: 1-byte length
                size = data[i + 1]
                i += 2 + size
                if data[i] == 0x71:
                    push(0)
                    if size > SMALL:
                        kinds[data[i + 1]] = size
                    memos = -1
                    i += 2
                    continue
            elif op == 0x86 or op == 0x85 or op == 0x87:  # TUPLE2, TUPLE1, TUPLE3
                if op == 0x86:
                    if len(stack) - 2 < fence:
                        raise underflow(i)
                    a = stack.pop()
                    d = stack[-1]
                    d = (a if a > d else d) + 1
                elif op == 0x85:
                    if len(stack) <= fence:
                        raise underflow(i)
                    d = stack[-1] + 1
                else:
                    if len(stack) - 3 < fence:
                        raise underflow(i)
                    d = max(stack.pop(), stack.pop(), stack[-1]) + 1
                if d > MAX_DEPTH:
                    raise _too_deep(i)
                stack[-1] = d
                i += 1
                continue
            elif op == 0x51:  # BINPERSID: the reference describes its id one level down
                if len(stack) <= fence:
                    raise underflow(i)
                d = stack[-1] + 1
                if d > MAX_DEPTH:
                    raise _too_deep(i)
                stack[-1] = d
                i += 1
                continue
            elif op == 0x63:  # GLOBAL: two lines
                j = data.index(b"\n", data.index(b"\n", i + 1) + 1) + 1
                size = j - i
                i = j
            elif op == 0x28:  # MARK
                fence = len(stack)
                marks.append(fence)
                i += 1
                continue
            elif op == 0x68:  # BINGET
                k = kinds.get(data[i + 1], SMALL)
                if k < 0 or flags & 2:
                    flags |= 1
                else:
                    expansion += k
                if k < 0:
                    if -1 - k > MAX_DEPTH:
                        raise _too_deep(i)
                    push(-1 - k)
                else:
                    push(0)
                i += 2
                continue
            elif op == 0x75 or op == 0x65 or op == 0x90:
                # SETITEMS, APPENDS, ADDITEMS: the items above the MARK go into the
                # container below it, which becomes one level deeper than the deepest
                if not marks:
                    raise underflow(i)
                mark = marks.pop()
                fence = marks[-1] if marks else 0
                if mark <= fence:
                    raise underflow(i)
                if len(stack) > mark:
                    d = max(stack[mark:]) + 1
                    del stack[mark:]
                    if d > stack[-1]:
                        if d > MAX_DEPTH:
                            raise _too_deep(i)
                        stack[-1] = d
                i += 1
                continue
            elif op == 0x52 or op == 0x81:
                # REDUCE, NEWOBJ: callable/class and argument tuple -> one level above both
                if len(stack) - 2 < fence:
                    raise underflow(i)
                a = stack.pop()
                c = stack[-1]
                d = (a if a > c else c) + 1
                if d > MAX_DEPTH:
                    raise _too_deep(i)
                stack[-1] = d
                i += 1
                continue
            elif op == 0x80:  # PROTO
                i += 2
                continue
            elif op == 0x2E:  # STOP
                if len(stack) <= fence:
                    raise underflow(i)
                state[0], state[1], state[2] = flags, expansion, memos
                return i + 1
            elif op == 0x72:  # LONG_BINPUT not right after a scalar
                idx = u32(data, i + 1)[0]
                if idx > limit:
                    raise UnsafePickle(f"memo index {idx} at offset {i} exceeds the record size")
                if len(stack) <= fence:
                    raise underflow(i)
                kinds[idx] = -1 - stack[-1]
                memos = -1
                i += 5
                continue
            elif op == 0x62:  # BUILD: the state goes into the instance below it
                if len(stack) - 2 < fence:
                    raise underflow(i)
                d = stack.pop() + 1
                if d > stack[-1]:
                    if d > MAX_DEPTH:
                        raise _too_deep(i)
                    stack[-1] = d
                i += 1
                continue
            elif op == 0x73:  # SETITEM: key and value into the container below them
                if len(stack) - 2 <= fence:
                    raise underflow(i)
                v = stack.pop()
                k = stack.pop()
                d = (k if k > v else v) + 1
                if d > stack[-1]:
                    if d > MAX_DEPTH:
                        raise _too_deep(i)
                    stack[-1] = d
                i += 1
                continue
            elif op == 0x61:  # APPEND
                if len(stack) - 1 <= fence:
                    raise underflow(i)
                d = stack.pop() + 1
                if d > stack[-1]:
                    if d > MAX_DEPTH:
                        raise _too_deep(i)
                    stack[-1] = d
                i += 1
                continue
            elif op == 0x74 or op == 0x6C or op == 0x64 or op == 0x91:
                # TUPLE, LIST, DICT, FROZENSET: a container of the items above the MARK
                if not marks:
                    raise underflow(i)
                mark = marks.pop()
                fence = marks[-1] if marks else 0
                d = max(stack[mark:], default=0) + 1
                if d > MAX_DEPTH:
                    raise _too_deep(i)
                del stack[mark:]
                push(d)
                i += 1
                continue
            elif op == 0x42:  # BINBYTES: 4-byte length
                size = u32(data, i + 1)[0]
                i += 5 + size
            elif op == 0x54 or op == 0x8B:  # BINSTRING, LONG4: signed 4-byte length
                size = I32(data, i + 1)[0]
                if size < 0:
                    raise UnsafePickle(f"negative length at offset {i}")
                i += 5 + size
            elif op == 0x8D or op == 0x8E or op == 0x96:  # BINUNICODE8, BINBYTES8, BYTEARRAY8
                size = U64(data, i + 1)[0]
                i += 9 + size
            elif op == 0x46 or op == 0x49 or op == 0x4C or op == 0x53 or op == 0x56:
                # FLOAT, INT, LONG, STRING, UNICODE: one line
                j = data.index(b"\n", i + 1) + 1
                size = j - i
                i = j
            elif op == 0x95:  # FRAME
                i += 9
                continue
            elif op == 0x50:  # PERSID: one line, a reference (one level, like BINPERSID's)
                i = data.index(b"\n", i + 1) + 1
                push(1)
                continue
            elif op == 0x69 or op == 0x6F:
                # INST (class in two lines), OBJ (class first above the MARK): an instance
                # is one level above its class and its argument tuple, which is one
                # level above the arguments
                j = i + 1
                if op == 0x69:
                    j = data.index(b"\n", data.index(b"\n", j) + 1) + 1
                if not marks:
                    raise underflow(i)
                mark = marks.pop()
                fence = marks[-1] if marks else 0
                if op == 0x69:
                    d = max(stack[mark:], default=0) + 2
                else:
                    if len(stack) <= mark:
                        raise underflow(i)
                    c = stack[mark]
                    d = max(stack[mark + 1:], default=0) + 1
                    d = (c if c > d else d) + 1
                if d > MAX_DEPTH:
                    raise _too_deep(i)
                del stack[mark:]
                push(d)
                i = j
                continue
            elif op == 0x92:  # NEWOBJ_EX: class, args, kwargs; (args, kwargs) is a level
                if len(stack) - 3 < fence:
                    raise underflow(i)
                kw = stack.pop()
                a = stack.pop()
                c = stack[-1]
                d = (a if a > kw else kw) + 1
                d = (c if c > d else d) + 1
                if d > MAX_DEPTH:
                    raise _too_deep(i)
                stack[-1] = d
                i += 1
                continue
            elif op == 0x93:  # STACK_GLOBAL: module and name -> a global
                if len(stack) - 2 < fence:
                    raise underflow(i)
                stack.pop()
                stack[-1] = 0
                i += 1
                continue
            elif op == 0x70:  # PUT (text)
                j = data.index(b"\n", i + 1) + 1
                idx = line_int(data, i, j)
                if idx > limit:
                    raise UnsafePickle(f"memo index {idx} at offset {i} exceeds the record size")
                if len(stack) <= fence:
                    raise underflow(i)
                kinds[idx] = -1 - stack[-1]
                memos = -1
                i = j
                continue
            elif op == 0x94:  # MEMOIZE not right after a scalar: the next index
                if len(stack) <= fence:
                    raise underflow(i)
                if memos < 0:
                    raise mixed(i)
                kinds[memos] = -1 - stack[-1]
                memos += 1
                flags |= 2
                i += 1
                continue
            elif op == 0x6A or op == 0x67:  # LONG_BINGET, GET
                at = i
                if op == 0x6A:
                    idx = u32(data, i + 1)[0]
                    i += 5
                else:
                    j = data.index(b"\n", i + 1) + 1
                    idx = line_int(data, i, j)
                    i = j
                k = kinds.get(idx, SMALL)
                if k < 0 or flags & 2:
                    flags |= 1
                else:
                    expansion += k
                if k < 0:
                    if -1 - k > MAX_DEPTH:
                        raise _too_deep(at)
                    push(-1 - k)
                else:
                    push(0)
                continue
            elif op == 0x30:  # POP: the top item, or the MARK right above it
                if marks and marks[-1] == len(stack):
                    marks.pop()
                    fence = marks[-1] if marks else 0
                elif len(stack) <= fence:
                    raise underflow(i)
                else:
                    stack.pop()
                i += 1
                continue
            elif op == 0x31:  # POP_MARK
                if not marks:
                    raise underflow(i)
                del stack[marks.pop():]
                fence = marks[-1] if marks else 0
                i += 1
                continue
            elif op == 0x32:  # DUP
                if len(stack) <= fence:
                    raise underflow(i)
                push(stack[-1])
                flags |= 1
                i += 1
                continue
            elif op == 0x98:  # READONLY_BUFFER
                if len(stack) <= fence:
                    raise underflow(i)
                i += 1
                continue
            else:
                raise UnsafePickle(f"invalid pickle opcode 0x{op:02x} at offset {i}")
            # A scalar of `size` bytes ended at i. ZODB's pickler memoizes most scalars
            # right away; remember big ones so their repetition is counted.
            push(0)
            nxt = data[i]
            if nxt == 0x71:
                if size > SMALL:
                    kinds[data[i + 1]] = size
                memos = -1
                i += 2
            elif nxt == 0x72:
                idx = u32(data, i + 1)[0]
                if idx > limit:
                    raise UnsafePickle(f"memo index {idx} at offset {i} exceeds the record size")
                if size > SMALL:
                    kinds[idx] = size
                memos = -1
                i += 5
            elif nxt == 0x94:
                if memos < 0:
                    raise mixed(i)
                if size > SMALL:
                    flags |= 2  # index not tracked: treat later GETs conservatively
                memos += 1
                i += 1
    except (IndexError, struct.error):
        raise UnsafePickle("pickle data was truncated") from None
    except ValueError as exc:  # bytes.index found no newline, or a bad PUT/GET line
        if isinstance(exc, UnsafePickle):
            raise
        raise UnsafePickle(f"pickle data was truncated or malformed ({exc})") from None


# The C version of scan_py, when the optional extension was built (setup.py). It takes the
# exception class to raise, scan_py itself, to which it hands the rare cases it does not
# port (text PUT/GET of protocols 0-1, arguments of unexpected types), and MAX_DEPTH.
try:
    from esindexer.convert import _scan_c
except ImportError:  # no compiler at install time: the pure-Python scan
    _scan_c = None  # type: ignore[assignment]  # optional extension: None when it was not built
    scan = scan_py
else:
    _scan_c.configure(UnsafePickle, scan_py, MAX_DEPTH)
    scan = _scan_c.scan
