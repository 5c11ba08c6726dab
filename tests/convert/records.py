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
    "newt_jsonifier", "newt_loads", "same_json", "Doc", "Folder",
]


import persistent as _persistent  # noqa: E402  (kept apart: only the ZODB tests need it)


class Doc(_persistent.Persistent):
    """A persistent class with an importable name, for records written by real ZODB."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


class Folder(_persistent.Persistent):
    def __init__(self) -> None:
        self.items: list = []
