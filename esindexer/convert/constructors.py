"""Special classes: the few a pickle names whose value is data, built from their arguments.

Datetimes become ISO strings (aware ones keep their offset), dates and times likewise,
decimals numbers or strings, sets sorted arrays, ``copy_reg._reconstructor`` an
instance description. Only data in, data out: nothing is imported or looked up by name.
"""

from __future__ import annotations

import datetime as _dt
import decimal as _decimal
from collections.abc import Callable
from typing import Any

import orjson

from esindexer.convert.model import PY2_NAMES, Obj, StandInMeta
from esindexer.convert.walk import sorted_items


def _state_bytes(value: Any) -> bytes | None:
    """A datetime/date/time state as bytes: proto 3 gives bytes, py2 str gives str."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # py2 str was decoded as UTF-8 with surrogateescape: this restores the bytes.
        return value.encode("utf-8", "surrogateescape")
    return None


_DAY = _dt.timedelta(hours=24)
_SUFFIXES: dict[tuple[int, int, int], str | None] = {}
_SUFFIXES_MAX = 1024


def _suffix(days: int, seconds: int, microseconds: int) -> str | None:
    """``isoformat()``'s UTC offset text ("+02:00") for a fixed offset, or ``None`` if it
    is not one (24 hours or more, or out of range). Cached: an aware value's offset
    object, its ``replace()`` and ``isoformat()`` were most of the cost of a record with
    aware datetimes; the text does not depend on the value, so it is built once."""
    key = (days, seconds, microseconds)
    text = _SUFFIXES.get(key, "")
    if text == "":
        try:
            offset = _dt.timedelta(days, seconds, microseconds)
            text = _dt.datetime(2000, 1, 1, tzinfo=_dt.timezone(offset)).isoformat()[19:] if abs(offset) < _DAY else None
        except (OverflowError, ValueError, TypeError):
            text = None
        if len(_SUFFIXES) >= _SUFFIXES_MAX:  # hostile streams of distinct offsets: stay bounded
            _SUFFIXES.clear()
        _SUFFIXES[key] = text
    return text


def _utcoffset(tz: Any) -> str | None:
    """The fixed UTC offset of a tzinfo description as ISO text, when the pickle itself
    carries it."""
    if not isinstance(tz, Obj):
        return None
    name, args = tz._name, tz._args
    try:
        if name == "datetime.timezone" and isinstance(args, tuple) and args:
            td = args[0]
            if isinstance(td, Obj) and td._name == "datetime.timedelta":
                d, s, us = (tuple(td._args or ()) + (0, 0, 0))[:3]
                if type(d) is int and type(s) is int and type(us) is int:
                    return _suffix(d, s, us)
        elif name == "pytz._UTC":
            return _suffix(0, 0, 0)
        elif name == "pytz._p" and isinstance(args, tuple) and len(args) >= 2:
            if type(args[1]) is int and abs(args[1]) < 86400:
                return _suffix(0, args[1], 0)
    except (OverflowError, ValueError, TypeError):
        return None
    return None


def _aware(value: _dt.datetime | _dt.time, tz: Any) -> Obj:
    suffix = _utcoffset(tz)
    text = value.isoformat() if suffix is None else value.isoformat() + suffix
    result = Obj("datetime", None)
    dict.clear(result)
    dict.update(result, {"value": text, "tz": tz, "::": "datetime"})
    return result


def _datetime(args: tuple[Any, ...]) -> Any:
    state = args[0] if args else None
    if type(state) is bytes and len(state) == 10 and len(args) == 1:  # the usual
        # stdlib decoding of the state bytes (datetime accepts its pickled state bytes)
        return _dt.datetime(state).isoformat()  # type: ignore[call-arg, arg-type]  # see above
    if not 1 <= len(args) <= 2:
        return NotImplemented
    state = _state_bytes(state)
    if state is None or len(state) != 10:
        return NotImplemented
    value = _dt.datetime(state)  # type: ignore[call-arg, arg-type]  # datetime accepts its pickled state bytes
    if len(args) == 2 and args[1] is not None:
        return _aware(value, args[1])
    return value.isoformat()


def _date(args: tuple[Any, ...]) -> Any:
    if len(args) != 1:
        return NotImplemented
    state = _state_bytes(args[0])
    if state is None or len(state) != 4:
        return NotImplemented
    return _dt.date(state).isoformat()  # type: ignore[call-arg, arg-type]  # date accepts its pickled state bytes


def _time(args: tuple[Any, ...]) -> Any:
    if not 1 <= len(args) <= 2:
        return NotImplemented
    state = _state_bytes(args[0])
    if state is None or len(state) != 6:
        return NotImplemented
    value = _dt.time(state)  # type: ignore[arg-type]  # time accepts its pickled state bytes
    if len(args) == 2 and args[1] is not None:
        result = _aware(value, args[1])
        dict.__setitem__(result, "::", "time")
        return result
    return value.isoformat()


_DOUBLE_MAX_EXP = 308


def _decimal_(args: tuple[Any, ...]) -> Any:
    if len(args) != 1 or not isinstance(args[0], str) or len(args[0]) > 10_000:
        return NotImplemented
    value = _decimal.Decimal(args[0])  # exact; raises InvalidOperation on junk
    if not value.is_finite():
        return None  # like float NaN/Infinity: strict JSON has no such number
    if value.adjusted() > _DOUBLE_MAX_EXP:
        return str(value)  # Elasticsearch would read it as an infinite double
    return orjson.Fragment(str(value))  # the exact digits as a JSON number


_LATIN1 = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "iso_8859_1", "l1"})


def _codecs_encode(args: tuple[Any, ...]) -> Any:
    # Protocol-2 bytes: _codecs.encode(text, 'latin1'). Any other codec stays inert.
    if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str):
        if args[1].lower() in _LATIN1:
            return args[0].encode("latin-1")
    return NotImplemented


def _set(args: tuple[Any, ...]) -> Any:
    if len(args) != 1 or not isinstance(args[0], (list, tuple)):
        return NotImplemented
    return sorted_items(args[0])


def _reconstructor(args: tuple[Any, ...]) -> Any:
    # copy_reg._reconstructor(cls, base, state): how Python 2 pickled new-style objects.
    if len(args) != 3 or not isinstance(args[0], StandInMeta):
        return NotImplemented
    cls, base, state = args
    result = Obj(cls.dotted, None)
    if state is not None:
        if isinstance(base, StandInMeta) and PY2_NAMES.get(base.dotted, base.dotted) == "builtins.object":
            result.__setstate__(state)
        else:  # a dict/list/... subclass: the base value is the object's content
            result._items = state if isinstance(state, (dict, list)) else None
            dict.__setitem__(result, "data", state)
    return result


def _only_state(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes | None:
    """The one positional argument of a call as bytes (a Python 2 str, read with
    surrogateescape, as its bytes), or None for any other call."""
    if len(args) != 1 or kwargs:
        return None
    state = args[0]
    if type(state) is str:
        state = state.encode("utf-8", "surrogateescape")
    return state if type(state) is bytes else None


def _datetime_call(cls: StandInMeta, *args: Any, **kwargs: Any) -> Any:
    """The ``datetime.datetime`` stand-in's call: the usual call (a naive datetime's 10
    state bytes, or a Python 2 str of them) is decoded right here, one Python call instead
    of two; the profile of date-heavy records showed the call chain as their largest cost.
    Anything else takes :func:`_datetime` as before. With the ``_reader_c`` extension, the
    usual case is decoded in C and this is called for the rest (see the end of this module)."""
    state = _only_state(args, kwargs)
    if state is not None:
        if len(state) == 10:
            return _dt.datetime(state).isoformat()  # type: ignore[call-arg, arg-type]  # its pickled state
    elif len(args) == 2 and not kwargs:  # an aware datetime: (state, tzinfo)
        state, tz = args
        if type(state) is bytes and len(state) == 10 and tz is not None:
            return _aware(_dt.datetime(state), tz)  # type: ignore[call-arg, arg-type]  # its pickled state
    return StandInMeta.__call__(cls, *args, **kwargs)


def _date_call(cls: StandInMeta, *args: Any, **kwargs: Any) -> Any:
    """The same for ``datetime.date`` (4 state bytes); anything else takes :func:`_date`."""
    state = _only_state(args, kwargs)
    if state is not None and len(state) == 4:
        return _dt.date(state).isoformat()  # type: ignore[call-arg, arg-type]  # its pickled state
    return StandInMeta.__call__(cls, *args, **kwargs)


class _DatetimeMeta(StandInMeta):
    """Stand-in metaclass for ``datetime.datetime``: calling the stand-in is :func:`_datetime_call`."""

    __call__ = _datetime_call


class _DateMeta(StandInMeta):
    """Stand-in metaclass for ``datetime.date``: calling the stand-in is :func:`_date_call`."""

    __call__ = _date_call


#: dotted name -> the metaclass of its stand-in type, where not StandInMeta.
SPECIAL_META: dict[str, type[StandInMeta]] = {"datetime.datetime": _DatetimeMeta, "datetime.date": _DateMeta}

#: dotted name -> the function that builds data for it (a stand-in type's ``special``).
SPECIAL: dict[str, Callable[[tuple[Any, ...]], Any]] = {
    "datetime.datetime": _datetime,
    "datetime.date": _date,
    "datetime.time": _time,
    "decimal.Decimal": _decimal_,
    "_codecs.encode": _codecs_encode,
    "builtins.set": _set,
    "builtins.frozenset": _set,
    "copyreg._reconstructor": _reconstructor,
}

try:
    from esindexer.convert import _reader_c
except ImportError:  # optional extension, not built here: the Python calls above
    pass
else:
    # The usual datetime and date in C, the rest by the Python calls above (_reader_c.c).
    # type.__setattr__: the metaclass's __call__ slot is updated as for any assignment.
    type.__setattr__(_DatetimeMeta, "__call__", _reader_c.stand_in_call(_DatetimeMeta, "datetime", _datetime_call))
    type.__setattr__(_DateMeta, "__call__", _reader_c.stand_in_call(_DateMeta, "date", _date_call))
