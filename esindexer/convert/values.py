"""Inert stand-ins that the unpickler builds instead of the objects a pickle names.

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

import datetime as _dt
import decimal as _decimal
from collections.abc import Callable
from typing import Any

import orjson

__all__ = [
    "Obj",
    "Ref",
    "StandInType",
    "standin",
    "persistent_ref",
    "hashable_persistent_ref",
    "global_json",
    "bytes_json",
    "fast_default",
    "clear_cache",
]


# --------------------------------------------------------------------------------------
# Instances
# --------------------------------------------------------------------------------------


class Obj(dict):
    """An instance description: ``{**state, "::": "module.Class", "::()": [args]}``.

    A ``dict`` subclass so orjson writes it natively. ``__setstate__`` takes BUILD's state
    the way newt.db does (a dict state is merged, any other truthy state is kept under
    ``"state"``). ``__setitem__``/``extend``/``append`` receive the items that a dict or
    list subclass (``OrderedDict``, ``defaultdict``, ``class D(dict)``) pickles after
    the instance; they go under ``"data"`` (or ``"::data"`` if the state has its own
    ``data`` attribute), the shape ``PersistentMapping``/``UserDict`` already have.
    Hashable by identity so that instances can be dict keys, as they were in Python.
    """

    __slots__ = ("_name", "_args", "_items")

    def __init__(self, name: str, args: tuple | dict | None) -> None:
        dict.__setitem__(self, "::", name)
        if args:
            dict.__setitem__(self, "::()", args)
        self._name = name
        self._args = args
        self._items: dict | list | None = None

    __hash__ = object.__hash__  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:  # identity, like the objects they describe
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            if self._items is not None and "data" in state:
                dict.__setitem__(self, "::data", dict.pop(self, "data"))
            dict.update(self, state)
            dict.__setitem__(self, "::", self._name)
            if self._args:
                dict.__setitem__(self, "::()", self._args)
        elif state:
            dict.__setitem__(self, "state", state)

    def _item_dict(self) -> dict:
        items = self._items
        if not isinstance(items, dict):
            if items is not None:
                raise TypeError(f"{self._name} received both list and dict items")
            items = self._items = {}
            dict.__setitem__(self, "data", items)
        return items

    def _item_list(self) -> list:
        items = self._items
        if not isinstance(items, list):
            if items is not None:
                raise TypeError(f"{self._name} received both dict and list items")
            items = self._items = []
            dict.__setitem__(self, "data", items)
        return items

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) on the instance
        self._item_dict()[key] = value

    def extend(self, values: list) -> None:  # APPENDS on the instance
        self._item_list().extend(values)

    def append(self, value: Any) -> None:  # APPEND on the instance
        self._item_list().append(value)

    def __reduce__(self):  # never pickle a stand-in back
        raise TypeError("stand-in instances cannot be pickled")


class Ref(dict):
    """A persistent reference as JSON; hashable by identity so it can be a dict key."""

    __slots__ = ()
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other


# --------------------------------------------------------------------------------------
# Stand-in types (what find_class returns)
# --------------------------------------------------------------------------------------


class _StandInMeta(type):
    """Metaclass of stand-in types: calling one builds inert data; they are read-only.

    Read-only matters because the types are cached and shared between records: a hostile
    BUILD on a global (``GLOBAL x; {...}; BUILD``) must not be able to change one.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:  # REDUCE, OBJ, INST
        special = cls.special
        if special is not None and not kwargs:
            result = special(args)
            if result is not NotImplemented:
                return result
        return _make(cls.dotted, None, args, kwargs)

    def __setattr__(cls, name: str, value: Any) -> None:
        raise TypeError(f"stand-in for {cls.dotted} is read-only")

    def __delattr__(cls, name: str) -> None:
        raise TypeError(f"stand-in for {cls.dotted} is read-only")

    def __repr__(cls) -> str:
        return f"<stand-in {cls.dotted}>"


class StandInType(metaclass=_StandInMeta):
    """Base of all stand-in types. NEWOBJ/NEWOBJ_EX call ``__new__`` directly."""

    __slots__ = ()
    dotted = "?"
    special: Callable | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # NEWOBJ, NEWOBJ_EX
        return _make(cls.dotted, cls.special, args, kwargs)


_CACHE: dict[tuple[str, str], type] = {}
_CACHE_MAX = 10_000


def standin(module: str, name: str) -> type:
    """The (cached) stand-in type for ``module.name``. Never imports anything."""
    t = _CACHE.get((module, name))
    if t is None:
        dotted = f"{module}.{name}"
        special = _SPECIAL.get(_PY2_NAMES.get(dotted, dotted))
        t = type.__new__(
            _StandInMeta, name if name.isidentifier() else "StandIn", (StandInType,),
            {"__slots__": (), "dotted": dotted, "special": special, "__module__": __name__},
        )
        if len(_CACHE) >= _CACHE_MAX:  # hostile streams of distinct names: stay bounded
            _CACHE.clear()
        _CACHE[(module, name)] = t
    return t


def clear_cache() -> None:
    """Forget cached stand-in types (tests; memory)."""
    _CACHE.clear()


def _make(dotted: str, special: Callable | None, args: tuple, kwargs: dict) -> Any:
    if special is not None and not kwargs:
        result = special(args)
        if result is not NotImplemented:
            return result
    if kwargs:  # NEWOBJ_EX, shaped as newt.db does
        return Obj(dotted, (args, kwargs) if args else kwargs)
    return Obj(dotted, args)


def global_json(t: type) -> dict:
    """A class or function used as a value: newt.db's ``{"::": "global", "name": ...}``."""
    return {"::": "global", "name": t.dotted}  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------
# Special classes (only data in, data out; nothing is imported or looked up by name)
# --------------------------------------------------------------------------------------

#: Python 2 spellings that ZODB 3/4 (and Python 3 pickles at protocol < 3) write.
_PY2_NAMES = {
    "__builtin__.set": "builtins.set",
    "__builtin__.frozenset": "builtins.frozenset",
    "copy_reg._reconstructor": "copyreg._reconstructor",
    "__builtin__.object": "builtins.object",
}


def _state_bytes(value: Any) -> bytes | None:
    """A datetime/date/time state as bytes: proto 3 gives bytes, py2 str gives str."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # py2 str was decoded as UTF-8 with surrogateescape: this restores the bytes.
        return value.encode("utf-8", "surrogateescape")
    return None


def _utcoffset(tz: Any) -> _dt.timedelta | None:
    """The fixed UTC offset of a tzinfo description, when the pickle itself carries it."""
    if not isinstance(tz, Obj):
        return None
    name, args = tz._name, tz._args
    try:
        if name == "datetime.timezone" and isinstance(args, tuple) and args:
            td = args[0]
            if isinstance(td, Obj) and td._name == "datetime.timedelta":
                d, s, us = (tuple(td._args or ()) + (0, 0, 0))[:3]
                if all(type(x) is int for x in (d, s, us)):
                    offset = _dt.timedelta(d, s, us)
                    if abs(offset) < _dt.timedelta(hours=24):
                        return offset
        elif name == "pytz._UTC":
            return _dt.timedelta(0)
        elif name == "pytz._p" and isinstance(args, tuple) and len(args) >= 2:
            if type(args[1]) is int and abs(args[1]) < 86400:
                return _dt.timedelta(seconds=args[1])
    except (OverflowError, ValueError, TypeError):
        return None
    return None


def _aware(value: _dt.datetime | _dt.time, tz: Any) -> Obj:
    offset = _utcoffset(tz)
    if offset is not None:
        text = value.replace(tzinfo=_dt.timezone(offset)).isoformat()
    else:
        text = value.isoformat()
    result = Obj("datetime", None)
    dict.clear(result)
    dict.update(result, {"value": text, "tz": tz, "::": "datetime"})
    return result


def _datetime(args: tuple) -> Any:
    state = args[0] if args else None
    if type(state) is bytes and len(state) == 10 and len(args) == 1:  # the usual
        return _dt.datetime(state).isoformat()  # stdlib decoding of the state bytes
    if not 1 <= len(args) <= 2:
        return NotImplemented
    state = _state_bytes(state)
    if state is None or len(state) != 10:
        return NotImplemented
    value = _dt.datetime(state)
    if len(args) == 2 and args[1] is not None:
        return _aware(value, args[1])
    return value.isoformat()


def _date(args: tuple) -> Any:
    if len(args) != 1:
        return NotImplemented
    state = _state_bytes(args[0])
    if state is None or len(state) != 4:
        return NotImplemented
    return _dt.date(state).isoformat()


def _time(args: tuple) -> Any:
    if not 1 <= len(args) <= 2:
        return NotImplemented
    state = _state_bytes(args[0])
    if state is None or len(state) != 6:
        return NotImplemented
    value = _dt.time(state)
    if len(args) == 2 and args[1] is not None:
        result = _aware(value, args[1])
        dict.__setitem__(result, "::", "time")
        return result
    return value.isoformat()


_DOUBLE_MAX_EXP = 308


def _decimal_(args: tuple) -> Any:
    if len(args) != 1 or not isinstance(args[0], str) or len(args[0]) > 10_000:
        return NotImplemented
    value = _decimal.Decimal(args[0])  # exact; raises InvalidOperation on junk
    if not value.is_finite():
        return None  # like float NaN/Infinity: strict JSON has no such number
    if value.adjusted() > _DOUBLE_MAX_EXP:
        return str(value)  # Elasticsearch would read it as an infinite double
    return orjson.Fragment(str(value))  # the exact digits as a JSON number


_LATIN1 = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "iso_8859_1", "l1"})


def _codecs_encode(args: tuple) -> Any:
    # Protocol-2 bytes: _codecs.encode(text, 'latin1'). Any other codec stays inert.
    if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str):
        if args[1].lower() in _LATIN1:
            return args[0].encode("latin-1")
    return NotImplemented


def _set(args: tuple) -> Any:
    if len(args) != 1 or not isinstance(args[0], (list, tuple)):
        return NotImplemented
    return sorted_items(args[0])


def sorted_items(items: Any) -> tuple:
    """Set members as a sorted tuple (an array in JSON; hashable, so sets can be keys).

    Sorted by value like newt.db when the members are comparable; otherwise (mixed
    types, where newt.db fails) by their JSON text, which is deterministic.
    """
    try:
        return tuple(sorted(items))
    except TypeError:
        pass
    from esindexer.convert.walk import json_ready  # late: the walker imports this module

    converted = [json_ready(item) for item in items]
    converted.sort(key=lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
    return tuple(converted)


def _reconstructor(args: tuple) -> Any:
    # copy_reg._reconstructor(cls, base, state): how Python 2 pickled new-style objects.
    if len(args) != 3 or not isinstance(args[0], _StandInMeta):
        return NotImplemented
    cls, base, state = args
    result = Obj(cls.dotted, None)
    if state is not None:
        if isinstance(base, _StandInMeta) and _PY2_NAMES.get(base.dotted, base.dotted) == "builtins.object":
            result.__setstate__(state)
        else:  # a dict/list/... subclass: the base value is the object's content
            result._items = state if isinstance(state, (dict, list)) else None
            dict.__setitem__(result, "data", state)
    return result


_SPECIAL: dict[str, Callable[[tuple], Any]] = {
    "datetime.datetime": _datetime,
    "datetime.date": _date,
    "datetime.time": _time,
    "decimal.Decimal": _decimal_,
    "_codecs.encode": _codecs_encode,
    "builtins.set": _set,
    "builtins.frozenset": _set,
    "copyreg._reconstructor": _reconstructor,
}


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
    if isinstance(klass, _StandInMeta):
        return klass.dotted
    if isinstance(klass, tuple) and len(klass) == 2 and all(isinstance(x, str) for x in klass):
        return f"{klass[0]}.{klass[1]}"
    raise ValueError(f"persistent reference with a bad class: {klass!r:.60}")


def persistent_ref(pid: Any) -> dict:
    """ZODB's persistent ids (newt-spec §4) as JSON (a plain dict: cheapest to build).

    ``(oid, class)`` and bare ``oid`` give newt.db's shapes. Weak (``['w', ...]``) and
    cross-database (``['m', ...]``, ``['n', ...]``) references, which newt.db cannot
    convert, get ``"weak": true`` and/or ``"database": name``; a cross-database one has
    no ``"::=>"`` because its zoid belongs to another database.
    """
    if type(pid) is tuple and len(pid) == 2:
        oid, klass = pid
        if type(oid) is bytes and len(oid) == 8 and type(klass) is _StandInMeta:  # the usual
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


def bytes_json(value: bytes | bytearray) -> str | dict:
    """ASCII bytes as a string (as newt.db does); anything else as lowercase hex."""
    if value.isascii():
        return value.decode("ascii")
    return {"::": "hex", "hex": value.hex()}


def fast_default(value: Any) -> Any:
    """orjson's ``default`` on the fast path: only leaf types orjson does not know."""
    if isinstance(value, (bytes, bytearray)):
        return bytes_json(value)
    if isinstance(value, _StandInMeta):
        return global_json(value)
    if isinstance(value, (set, frozenset)):
        return sorted_items(value)
    raise TypeError(f"unsupported type {type(value).__name__}")
