"""What the unpickler's hooks return: stand-in types for the globals a pickle names, and
persistent references as JSON (the values themselves are in :mod:`esindexer.convert.model`).

Why: the C unpickler calls ``find_class(module, name)`` for every global and then calls
whatever it returned (REDUCE, NEWOBJ, INST, OBJ). Here ``find_class`` never imports: it
returns a *stand-in type* that only remembers the dotted name. Calling it (or its
``__new__``) runs this module's code, which builds plain data: a JSON-ready ``dict``
subclass describing the instance, an ISO string for a datetime, a sorted tuple for a set,
and so on. No code named in the pickle runs, ever — ``os.system`` becomes
``{"::": "posix.system", "::()": ["..."]}``.

The values are shaped so that orjson can serialize the result directly (``dict`` and
``list`` subclasses, tuples, str, numbers), which is what makes the fast path fast. Types
that orjson does not know (bytes, stand-in types used as values, sets from protocol 4)
go through :func:`fast_default`.
"""

from __future__ import annotations

from typing import Any

from esindexer.convert.constructors import SPECIAL, SPECIAL_META
from esindexer.convert.model import PY2_NAMES, Ref, StandInMeta, StandInType, bytes_json, global_json
from esindexer.convert.walk import sorted_items

__all__ = ["clear_cache", "fast_default", "hashable_persistent_ref", "persistent_ref", "standin"]


_CACHE: dict[tuple[str, str], type] = {}
_CACHE_MAX = 10_000


def standin(module: str, name: str) -> type:
    """The (cached) stand-in type for ``module.name``. Never imports anything."""
    t = _CACHE.get((module, name))
    if t is None:
        dotted = f"{module}.{name}"
        canonical = PY2_NAMES.get(dotted, dotted)
        special = SPECIAL.get(canonical)
        t = type.__new__(
            SPECIAL_META.get(canonical, StandInMeta), name if name.isidentifier() else "StandIn", (StandInType,),
            {"__slots__": (), "dotted": dotted, "special": special, "__module__": __name__},
        )
        if len(_CACHE) >= _CACHE_MAX:  # hostile streams of distinct names: stay bounded
            _CACHE.clear()
        _CACHE[(module, name)] = t
    return t


def clear_cache() -> None:
    """Forget cached stand-in types (tests; memory)."""
    _CACHE.clear()


# --------------------------------------------------------------------------------------
# Persistent references
# --------------------------------------------------------------------------------------


def _oid(value: Any) -> int:
    if isinstance(value, str):  # a py2 str oid
        value = value.encode("utf-8", "surrogateescape")
    if not isinstance(value, bytes) or len(value) != 8:
        raise ValueError(f"persistent reference with a bad oid: {value!r:.60}")
    return int.from_bytes(value, "big")


def _class_name(klass: Any) -> str:
    if isinstance(klass, StandInMeta):
        return klass.dotted
    if isinstance(klass, tuple) and len(klass) == 2 and all(isinstance(x, str) for x in klass):
        return f"{klass[0]}.{klass[1]}"
    raise ValueError(f"persistent reference with a bad class: {klass!r:.60}")


def persistent_ref(pid: Any) -> dict[str, Any]:
    """ZODB's persistent ids (newt-spec §4) as JSON (a plain dict: cheapest to build).

    ``(oid, class)`` and bare ``oid`` give newt.db's shapes. Weak (``['w', ...]``) and
    cross-database (``['m', ...]``, ``['n', ...]``) references, which newt.db cannot
    convert, get ``"weak": true`` and/or ``"database": name``; a cross-database one has
    no ``"::=>"`` because its zoid belongs to another database.
    """
    if type(pid) is tuple and len(pid) == 2:
        oid, klass = pid
        if type(oid) is str:  # a Python 2 str oid (ZODB 3), read with surrogateescape
            raw = oid.encode("utf-8", "surrogateescape")
            if len(raw) == 8:
                oid = raw
        if type(oid) is bytes and len(oid) == 8 and type(klass) is StandInMeta:  # the usual
            zoid = int.from_bytes(oid, "big")
            return {"::": "persistent", "id": [zoid, klass.dotted], "::=>": zoid}
        zoid = _oid(oid)
        return {"::": "persistent", "id": [zoid, _class_name(klass)], "::=>": zoid}
    if isinstance(pid, (bytes, str)):
        zoid = _oid(pid)
        return {"::": "persistent", "id": zoid, "::=>": zoid}
    if isinstance(pid, list) and len(pid) == 2 and isinstance(pid[1], tuple):
        kind, ref = pid
        if kind == "w" and 1 <= len(ref) <= 2:
            zoid = _oid(ref[0])
            if len(ref) == 1:
                return {"::": "persistent", "id": zoid, "::=>": zoid, "weak": True}
            return {"::": "persistent", "id": zoid, "database": _db(ref[1]), "weak": True}
        if kind == "m" and len(ref) == 3:
            zoid = _oid(ref[1])
            return {"::": "persistent", "id": [zoid, _class_name(ref[2])], "database": _db(ref[0])}
        if kind == "n" and len(ref) == 2:
            return {"::": "persistent", "id": _oid(ref[1]), "database": _db(ref[0])}
    raise ValueError(f"unsupported persistent reference: {pid!r:.80}")


def hashable_persistent_ref(pid: Any) -> Ref:
    """The same, as a hashable :class:`Ref`: for records that use persistent objects as
    dict keys or set members (the plain-dict version makes the C unpickler fail there)."""
    return Ref(persistent_ref(pid))


def _db(name: Any) -> str:
    if not isinstance(name, str):
        raise ValueError(f"persistent reference with a bad database name: {name!r:.60}")
    return name


# --------------------------------------------------------------------------------------
# Leaf conversions shared by the fast path and the walker
# --------------------------------------------------------------------------------------


def fast_default(value: Any) -> Any:
    """orjson's ``default`` on the fast path: only leaf types orjson does not know."""
    if isinstance(value, (bytes, bytearray)):
        return bytes_json(value)
    if isinstance(value, StandInMeta):
        return global_json(value)
    if isinstance(value, (set, frozenset)):
        return sorted_items(value)
    raise TypeError(f"unsupported type {type(value).__name__}")
