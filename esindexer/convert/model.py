"""The values a converted record is made of: instance descriptions, persistent
references and the inert stand-in types the unpickler gets instead of classes.

Nothing here imports or calls what a pickle names: a stand-in type only remembers its
dotted name, and calling it builds an :class:`Obj`. The special classes that become
other data (datetimes, sets, decimals) are in :mod:`esindexer.convert.constructors`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn


class Obj(dict[str, Any]):
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

    def __init__(self, name: str, args: tuple[Any, ...] | dict[str, Any] | None) -> None:
        dict.__setitem__(self, "::", name)
        if args:
            dict.__setitem__(self, "::()", args)
        self._name = name
        self._args = args
        self._items: dict[Any, Any] | list[Any] | None = None

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

    def _item_dict(self) -> dict[Any, Any]:
        items = self._items
        if not isinstance(items, dict):
            if items is not None:
                raise TypeError(f"{self._name} received both list and dict items")
            items = self._items = {}
            dict.__setitem__(self, "data", items)
        return items

    def _item_list(self) -> list[Any]:
        items = self._items
        if not isinstance(items, list):
            if items is not None:
                raise TypeError(f"{self._name} received both dict and list items")
            items = self._items = []
            dict.__setitem__(self, "data", items)
        return items

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) on the instance
        self._item_dict()[key] = value

    def extend(self, values: list[Any]) -> None:  # APPENDS on the instance
        self._item_list().extend(values)

    def append(self, value: Any) -> None:  # APPEND on the instance
        self._item_list().append(value)

    def __reduce__(self) -> NoReturn:  # never pickle a stand-in back
        raise TypeError("stand-in instances cannot be pickled")


class Ref(dict[str, Any]):
    """A persistent reference as JSON; hashable by identity so it can be a dict key."""

    __slots__ = ()
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other


class StandInMeta(type):
    """Metaclass of stand-in types: calling one builds inert data; they are read-only.

    Read-only matters because the types are cached and shared between records: a hostile
    BUILD on a global (``GLOBAL x; {...}; BUILD``) must not be able to change one.
    """

    # Set per stand-in type (class attributes of StandInType and of the types that
    # esindexer.convert.values.standin builds); declared here so that type checkers know
    # every instance of this metaclass has them. Annotations only: nothing at runtime.
    dotted: str
    special: Callable[[tuple[Any, ...]], Any] | None

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:  # REDUCE, OBJ, INST
        special = cls.special
        if special is not None and not kwargs:
            result = special(args)
            if result is not NotImplemented:
                return result
        if kwargs:
            return _make(cls.dotted, None, args, kwargs)
        return Obj(cls.dotted, args)  # the usual (one Python call fewer than via _make)

    def __setattr__(cls, name: str, value: Any) -> None:
        raise TypeError(f"stand-in for {cls.dotted} is read-only")

    def __delattr__(cls, name: str) -> None:
        raise TypeError(f"stand-in for {cls.dotted} is read-only")

    def __repr__(cls) -> str:
        return f"<stand-in {cls.dotted}>"


class StandInType(metaclass=StandInMeta):
    """Base of all stand-in types. NEWOBJ/NEWOBJ_EX call ``__new__`` directly."""

    __slots__ = ()
    dotted = "?"
    special: Callable[[tuple[Any, ...]], Any] | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # NEWOBJ, NEWOBJ_EX
        special = cls.special
        if special is None and not kwargs:  # the usual
            return Obj(cls.dotted, args)
        return _make(cls.dotted, special, args, kwargs)


def _make(
    dotted: str, special: Callable[[tuple[Any, ...]], Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if special is not None and not kwargs:
        result = special(args)
        if result is not NotImplemented:
            return result
    if kwargs:  # NEWOBJ_EX, shaped as newt.db does
        return Obj(dotted, (args, kwargs) if args else kwargs)
    return Obj(dotted, args)


def global_json(t: StandInMeta) -> dict[str, str]:
    """A class or function used as a value: newt.db's ``{"::": "global", "name": ...}``."""
    return {"::": "global", "name": t.dotted}


#: Python 2 spellings that ZODB 3/4 (and Python 3 pickles at protocol < 3) write.
PY2_NAMES = {
    "__builtin__.set": "builtins.set",
    "__builtin__.frozenset": "builtins.frozenset",
    "copy_reg._reconstructor": "copyreg._reconstructor",
    "__builtin__.object": "builtins.object",
}


def bytes_json(value: bytes | bytearray) -> str | dict[str, str]:
    """ASCII bytes as a string (as newt.db does); anything else as lowercase hex."""
    if value.isascii():
        return value.decode("ascii")
    return {"::": "hex", "hex": value.hex()}

