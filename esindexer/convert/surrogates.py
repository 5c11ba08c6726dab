"""Plain records whose strings hold surrogates, fixed in place for orjson.

Why this exists: a Python 2 ``str`` that is not UTF-8 (Latin-1 text, common on old
Zope sites) is decoded with ``surrogateescape``, so that datetime states and oids keep
their bytes; its undecodable bytes become lone surrogates, which orjson refuses. Such a
record used to go through the whole walker (:mod:`esindexer.convert.walk`), every value
copied by Python code, and converted at ~1.6x newt.db instead of ~11x. The walker
changes nothing in a plain tree but those strings (:func:`~esindexer.convert.walk.fix_str`:
an escaped byte becomes its Latin-1 character, any other surrogate U+FFFD) and tuples
into lists, which orjson writes alike. So :func:`fix_in_place` replaces just those
strings inside the decoded value, which nothing else uses, and orjson writes the rest.

It stops (``False``) at what only the walker converts exactly: a surrogate in a dict
key or in a set member. Once it has changed something the value is spoiled for the
walker, which :func:`fix_in_place` reports so that the caller decodes the record again.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from esindexer.convert.model import Obj, Ref
from esindexer.convert.values import fast_default

__all__ = ["fix_in_place", "refused_for_surrogates"]

_SURROGATE = re.compile("[\ud800-\udfff]")
_NESTED = frozenset({list, dict, Obj, Ref, tuple, set, frozenset})


def refused_for_surrogates(exc: Exception) -> bool:
    """Whether orjson refused a value because of a surrogate (its message says so)."""
    return "surrogates not allowed" in str(exc)


def _replace(match: re.Match[str]) -> str:
    code = ord(match.group())
    return chr(code - 0xDC00) if 0xDC80 <= code <= 0xDCFF else "\ufffd"


def _fixed(s: str) -> str:
    """:func:`~esindexer.convert.walk.fix_str` of a string with surrogates. The usual
    one (escaped bytes in ASCII text) in C: its escaped bytes are its Latin-1 text."""
    try:
        return s.encode("ascii", "surrogateescape").decode("latin-1")
    except UnicodeEncodeError:  # other non-ASCII characters too
        return _SURROGATE.sub(_replace, s)


def _bad(s: str) -> bool:
    return not s.isascii() and _SURROGATE.search(s) is not None


class _Stop(Exception):
    pass


_PROBE_DEPTH = 2  # probe sub-values with orjson this far down (bounds the extra work to 2x)


def _clean(v: Any) -> bool:
    """Whether orjson writes ``v`` as it is: one C call instead of a Python walk over a
    sub-value that holds no surrogate (most of them, in such records)."""
    try:
        orjson.dumps(v, default=fast_default, option=orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError:
        return False
    return True


class _Fixer:
    __slots__ = ("changed",)

    def __init__(self) -> None:
        self.changed = False

    def fix(self, v: Any, depth: int = 0) -> Any:
        """``v`` with its strings fixed (a tuple that changes becomes a list)."""
        t = type(v)
        if t is list or t is tuple:
            try:
                if all(map(str.isascii, v)):  # only ASCII strings (in C): nothing to do
                    return v
            except TypeError:  # not only strings
                pass
            new = None
            for n, x in enumerate(v):
                tx = type(x)
                if tx is str:
                    if x.isascii() or _SURROGATE.search(x) is None:
                        continue
                    r: Any = _fixed(x)
                elif tx in _NESTED:
                    if depth < _PROBE_DEPTH and _clean(x):
                        continue
                    r = self.fix(x, depth + 1)
                    if r is x:
                        continue
                else:
                    continue
                if new is None:
                    new = v if t is list else list(v)
                new[n] = r
                self.changed = True
            return v if new is None else new
        if t is set or t is frozenset:
            if any(type(x) in _NESTED or (type(x) is str and _bad(x)) for x in v):
                raise _Stop  # sorted by the original members, then fixed: the walker's job
            return v
        try:  # a surrogate in a key, or a key that is not a string: the walker's job
            if not all(map(str.isascii, v)) and any(_SURROGATE.search(k) for k in v):
                raise _Stop
        except TypeError:  # (met wherever the scan reaches it: after a non-ASCII key too)
            raise _Stop from None
        changes = []
        for k, x in v.items():
            tx = type(x)
            if tx is str:
                if x.isascii() or _SURROGATE.search(x) is None:
                    continue
                changes.append((k, _fixed(x)))
            elif tx in _NESTED:
                if depth < _PROBE_DEPTH and _clean(x):
                    continue
                r = self.fix(x, depth + 1)
                if r is not x:
                    changes.append((k, r))
        for k, r in changes:
            dict.__setitem__(v, k, r)
            self.changed = True
        return v


def fix_in_place(value: Any) -> tuple[Any, bool, bool]:
    """``(value, fixed, spoiled)``: the value with its strings fixed and whether that
    succeeded; ``spoiled`` says the value was changed even though it did not."""
    fixer = _Fixer()
    if type(value) is str:
        return (_fixed(value) if _bad(value) else value), True, False
    if type(value) not in _NESTED:
        return value, False, False
    try:
        return fixer.fix(value), True, fixer.changed
    except _Stop:
        return value, False, fixer.changed
