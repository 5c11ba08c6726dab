"""Python-2-era ZODB records, assembled opcode by opcode the way ZODB 3 on Python 2 wrote
them (cPickle, protocol 1): no Python 2 is needed, and nothing Python 3 would change
(``_codecs.encode`` for bytes, ``builtins`` names) creeps in.

What the assembler writes, as Python 2's cPickle did at protocol 1:

- a py2 ``str`` (:class:`Str`) as SHORT_BINSTRING/BINSTRING, ``unicode`` (Python 3
  ``str``) as BINUNICODE, each followed by BINPUT; equal ``Str`` objects that Python 2
  would have interned (attribute names) are written once and fetched with BINGET;
- ints as BININT1/BININT2/BININT, longs in the text LONG form, bools as ``I01``/``I00``,
  floats as BINFLOAT, ``None`` as NONE;
- tuples as MARK ... TUPLE, lists and dicts as EMPTY_LIST/EMPTY_DICT then MARK ...
  APPENDS/SETITEMS in batches of 1,000, every container memoized with BINPUT;
- a datetime/date as REDUCE of ``datetime.datetime`` on a one-string tuple (the state
  bytes as a py2 ``str``), sets as REDUCE of ``__builtin__.set`` on a list;
- a non-persistent instance (:class:`Inst`) as ``copy_reg._reconstructor(cls,
  __builtin__.object, None)`` then its ``__dict__`` and BUILD;
- a persistent reference (:class:`Ref2`) as ``(oid str, class)`` and BINPERSID;
- the class record either as ZODB 3.2's ``((module, name), None)`` or as ``(class,
  None)``; globals are memoized and fetched with BINGET when repeated.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

__all__ = ["Inst", "Ref2", "Str", "py2_record"]


class Str(bytes):
    """A Python 2 ``str``."""


class Inst:
    """A non-persistent instance of ``module.name`` with attributes ``state``."""

    def __init__(self, module: str, name: str, state: dict[Any, Any]) -> None:
        self.module, self.name, self.state = module, name, state


class Ref2:
    """A persistent reference ``(oid, class)`` as ZODB 3's ``persistent_id`` made it."""

    def __init__(self, oid: int, module: str, name: str) -> None:
        self.oid, self.module, self.name = oid, module, name


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()
        self.memo: dict[Any, int] = {}

    def put(self, key: Any = None) -> None:
        idx = len(self.memo) if key is None or key not in self.memo else self.memo[key]
        if key is None:
            key = ("anon", idx)
        self.memo[key] = idx
        self.out += b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx)

    def get(self, key: Any) -> bool:
        idx = self.memo.get(key)
        if idx is None:
            return False
        self.out += b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx)
        return True

    def glob(self, module: str, name: str) -> None:
        if not self.get(("global", module, name)):
            self.out += f"c{module}\n{name}\n".encode()
            self.put(("global", module, name))

    def save(self, v: Any) -> None:  # noqa: C901 - one branch per type, like cPickle's save()
        out = self.out
        if v is None:
            out += b"N"
        elif v is True or v is False:
            out += b"I01\n" if v else b"I00\n"
        elif type(v) is int:
            if 0 <= v < 256:
                out += b"K" + bytes([v])
            elif 0 <= v < 65536:
                out += b"M" + struct.pack("<H", v)
            elif -(2**31) <= v < 2**31:
                out += b"J" + struct.pack("<i", v)
            else:
                out += b"L%dL\n" % v
        elif type(v) is float:
            out += b"G" + struct.pack(">d", v)
        elif type(v) is Str:
            if len(v) < 32 and self.get(("str", bytes(v))):  # interned names
                return
            out += (b"U" + bytes([len(v)]) if len(v) < 256 else b"T" + struct.pack("<i", len(v))) + v
            self.put(("str", bytes(v)) if len(v) < 32 else None)
        elif type(v) is str:
            raw = v.encode("utf-8", "surrogatepass")
            out += b"X" + struct.pack("<I", len(raw)) + raw
            self.put()
        elif type(v) is tuple:
            out += b"("
            for x in v:
                self.save(x)
            out += b"t"
            self.put()
        elif type(v) is list:
            out += b"]"
            self.put()
            for i in range(0, len(v), 1000):
                out += b"("
                for x in v[i : i + 1000]:
                    self.save(x)
                out += b"e"
        elif type(v) is dict:
            out += b"}"
            self.put()
            items = list(v.items())
            for i in range(0, len(items), 1000):
                out += b"("
                for k, x in items[i : i + 1000]:
                    self.save(k)
                    self.save(x)
                out += b"u"
        elif type(v) is datetime.datetime or type(v) is datetime.date:
            self.glob("datetime", type(v).__name__)
            state = v.__reduce__()[1][0]  # the stdlib's state bytes: what py2 wrote as str
            self.save((Str(state),))
            out += b"R"
            self.put()
        elif type(v) is set:
            self.glob("__builtin__", "set")
            self.save((sorted(v, key=lambda x: (type(x).__name__, repr(x))),))
            out += b"R"
            self.put()
        elif type(v) is Inst:
            self.glob("copy_reg", "_reconstructor")
            out += b"("
            self.glob(v.module, v.name)
            self.glob("__builtin__", "object")
            out += b"Nt"
            self.put()
            out += b"R"
            self.put()
            self.save(v.state)
            out += b"b"
        elif type(v) is Ref2:
            out += b"("
            self.save(Str(v.oid.to_bytes(8, "big")))
            self.glob(v.module, v.name)
            out += b"t"
            self.put()
            out += b"Q"
        else:
            raise TypeError(f"no Python 2 form for {type(v).__name__}")


def py2_record(module: str, name: str, state: Any, old_meta: bool = True) -> bytes:
    """A ZODB 3 record of class ``module.name`` (one memo for both pickles)."""
    w = _Writer()
    if old_meta:  # ((module, name), None): ZODB 3.2's class metadata
        w.save(((Str(module.encode()), Str(name.encode())), None))
    else:
        w.out += b"("
        w.glob(module, name)
        w.out += b"Nt"
        w.put()
    w.out += b"."
    w.save(state)
    w.out += b"."
    return bytes(w.out)
