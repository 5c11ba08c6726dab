"""Helpers (no tests) for the Jsonifier tests: build ZODB-style records without a database.

A ZODB record is the class record and the state, dumped by one pickler so that the memo
is shared (newt-spec §4); ``record()`` does exactly that with zodbpickle's pickler (the
one ZODB uses) and a ``persistent_id`` that turns :class:`PRef` into ZODB's reference
forms. Classes used in records live here so that they have importable names.
"""

from __future__ import annotations

import io
import json
import math
import pickle as stdpickle
from typing import Any

from zodbpickle import pickle as zpickle


class Thing:
    """A plain class with a ``__dict__`` (ZODB's usual non-persistent sub-object)."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a: Any = None, b: Any = None) -> None:
        self.a = a
        self.b = b


class MyDict(dict):
    pass


class MyList(list):
    pass


class PRef:
    """Stands for a persistent object inside a test record (``persistent_id`` → ref)."""

    def __init__(self, oid: int, klass: Any = None, kind: str = "normal", db: str | None = None):
        self.oid = oid
        self.klass = klass
        self.kind = kind
        self.db = db

    def pid(self) -> Any:
        oid = self.oid.to_bytes(8, "big")
        if self.kind == "normal":
            return (oid, self.klass) if self.klass is not None else oid
        if self.kind == "weak":
            return ["w", (oid,) if self.db is None else (oid, self.db)]
        if self.kind == "m":
            return ["m", (self.db, oid, self.klass)]
        if self.kind == "n":
            return ["n", (self.db, oid)]
        raise ValueError(self.kind)


def _persistent_id(obj: Any) -> Any:
    return obj.pid() if isinstance(obj, PRef) else None


class _Pickler(zpickle.Pickler):  # ZODB's pickler (protocols 0-3)
    persistent_id = staticmethod(_persistent_id)


class _StdPickler(stdpickle.Pickler):  # protocols 4 and 5, which ZODB never writes
    persistent_id = staticmethod(_persistent_id)


def record(klass: Any, state: Any, protocol: int = 3, class_record: Any = None) -> bytes:
    """Class record ``(klass, None)`` (or ``class_record``) then ``state``, one memo."""
    f = io.BytesIO()
    p = (_Pickler if protocol <= 3 else _StdPickler)(f, protocol)
    p.dump((klass, None) if class_record is None else class_record)
    p.dump(state)
    return f.getvalue()


#: The container kinds of :func:`deep_value`.
DEEP_KINDS = ("tuple", "list", "dict", "set", "frozenset", "instance", "mixed")


def deep_value(kind: str, depth: int) -> Any:
    """A value nested ``depth`` containers deep (built without recursion).

    ``set`` is a set of frozensets of frozensets ...; ``instance`` is a chain of
    :class:`Thing` whose attribute ``next`` holds the next level; ``mixed`` cycles through
    list, dict, instance, tuple and frozenset (whose member, a tuple of an instance, is
    hashable).
    """
    v: Any = 0
    for level in range(depth):
        k = kind if kind != "mixed" else ("list", "dict", "instance", "tuple", "frozenset")[level % 5]
        if k == "tuple":
            v = (v,)
        elif k == "list":
            v = [v]
        elif k == "dict":
            v = {"k": v}
        elif k == "frozenset" or (k == "set" and level < depth - 1):
            v = frozenset([v])
        elif k == "set":
            v = {v}
        elif k == "instance":
            v = Thing(next=v)
        else:
            raise ValueError(kind)
    return v


def deep_record(kind: str, depth: int, protocol: int) -> bytes:
    """``record(Thing, deep_value(kind, depth), protocol)``, pickled in a thread with a
    big stack and a high recursion limit: the picklers recurse (in C) once per level."""
    import sys
    import threading

    out: list = []
    limit = sys.getrecursionlimit()
    size = threading.stack_size(1 << 30)
    sys.setrecursionlimit(max(limit, 10 * depth + 1000))
    try:
        worker = threading.Thread(target=lambda: out.append(record(Thing, deep_value(kind, depth), protocol)))
        worker.start()
        worker.join()
    finally:
        threading.stack_size(size)
        sys.setrecursionlimit(limit)
    if not out:
        raise RuntimeError(f"could not pickle {kind} nested {depth} deep at protocol {protocol}")
    return out[0]


def deep_json(kind: str, depth: int) -> Any:
    """What the Jsonifier makes of ``deep_value(kind, depth)`` as the state (parsed)."""
    v: Any = 0
    for level in range(depth):
        k = kind if kind != "mixed" else ("list", "dict", "instance", "tuple", "frozenset")[level % 5]
        if k == "dict":
            v = {"k": v}
        elif k == "instance":
            v = {"next": v, "::": "tests.convert.records.Thing"}
        else:  # tuples, lists, sets, frozensets: arrays
            v = [v]
    return v


def scan_depth(value: Any, protocol: int) -> int:
    """The nesting depth the pre-scan counts for ``value`` as the pickler writes it.

    The rules of esindexer/convert/scan.py ("Nesting") applied to a Python value: a
    scalar 0; a tuple, list or dict one more than its deepest item (or key); a set or
    frozenset one more, but three more below protocol 4, which writes
    ``REDUCE(set, ([items],))``; a :class:`Thing` two (class and argument tuple, then
    one more) or one more than its ``__dict__``, whichever is deeper.
    """
    t = type(value)
    if t is tuple or t is list:
        return 1 + max((scan_depth(x, protocol) for x in value), default=0)
    if t is dict:
        return 1 + max((max(scan_depth(k, protocol), scan_depth(x, protocol))
                        for k, x in value.items()), default=0)
    if t is set or t is frozenset:
        inner = max((scan_depth(x, protocol) for x in value), default=0)
        return inner + (1 if protocol >= 4 else 3)
    if t is Thing:
        return max(2, 1 + scan_depth(vars(value), protocol))
    if value is None or t in (bool, int, float, str):
        return 0
    raise TypeError(f"no scan depth rule for {t.__name__}")


def strict_loads(text: str) -> Any:
    """Parse JSON, refusing NaN/Infinity tokens (the stdlib parser accepts them)."""

    def bad_constant(name: str) -> Any:
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=bad_constant)


def newt_jsonifier():
    from newt.db.jsonpickle import Jsonifier

    return Jsonifier()


def newt_loads(text: str) -> Any:
    """newt.db's JSON text parsed (it may contain NaN tokens)."""
    return json.loads(text)


def same_json(a: Any, b: Any) -> bool:
    """Equality of parsed JSON where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


__all__ = [
    "Thing", "Slotted", "MyDict", "MyList", "PRef", "record", "strict_loads",
    "newt_jsonifier", "newt_loads", "same_json", "Doc", "Folder", "DEEP_KINDS", "deep_value",
    "deep_record", "deep_json", "scan_depth",
]


import persistent as _persistent  # noqa: E402  (kept apart: only the ZODB tests need it)


class Doc(_persistent.Persistent):
    """A persistent class with an importable name, for records written by real ZODB."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


class Folder(_persistent.Persistent):
    def __init__(self) -> None:
        self.items: list = []
