"""The general (slow) path: turn an unpickled value into JSON-ready data, step by step.

Why a second path: the fast path hands the unpickled value straight to orjson, which is
right for the usual ZODB record (a tree of dicts, lists, strings and numbers). This
walker handles everything else, with newt.db's semantics where newt.db has them:

- shared sub-structures are written out in full at every place they occur (newt.db's
  non-cyclic mode), within a budget, so a few bytes of ``GET`` cannot expand into
  gigabytes;
- a true cycle switches the record to newt.db's cyclic mode: every repeated container
  is written once with ``"::id": n`` (``{"::": "shared", "::id": n, "value": [...]}`` for
  lists) and referenced elsewhere as ``{"::->": n}``, n being the pickle memo index;
- dict keys that are not strings get newt.db's spelling (``1``, ``1.5``, ``true``,
  ``null``) and, where newt.db fails, a string (bytes as text or hex, anything else as
  its compact JSON text);
- integers outside the signed 64-bit range become decimal strings, NaN and infinities
  become ``null``, lone surrogates become U+FFFD (surrogate-escaped bytes of Python 2
  ``str`` become the matching Latin-1 character);
- nesting deeper than :data:`MAX_DEPTH` is an error rather than a crash: the walker
  recurses in Python (about three frames per level, so 200 levels stay far below
  Python's recursion limit) and refuses the next level with ``ValueError: nesting
  deeper than 200 levels``, whatever the input; what it hands orjson has no tuples
  (they become lists), and orjson refuses lists and dicts nested beyond its own limit
  cleanly. The Jsonifier's pre-scan (:mod:`esindexer.convert.scan`) refuses records
  nested that deep before anything is unpickled; the walker's check is for what the
  scan cannot see (a container filled after it was memoized) and for direct callers of
  :func:`json_ready`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson

from esindexer.convert.model import Obj, Ref, StandInType, bytes_json, global_json
from esindexer.convert.scan import MAX_DEPTH
from esindexer.errors import TooLarge

__all__ = ["MAX_DEPTH", "json_ready", "walk"]

# MAX_DEPTH: the deepest nesting accepted, the pre-scan's limit (esindexer.convert.scan).
# Elasticsearch refuses objects deeper than 20 by default (``index.mapping.depth.limit``);
# this only keeps hostile input from exhausting the stack.

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
StandInMeta = type(StandInType)
_DEFAULT_BUDGET = 2_000_000


class _Cycle(Exception):
    pass


def fix_str(s: str) -> str:
    """``s`` with lone surrogates replaced, so that it can be encoded as UTF-8."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    out = []
    for ch in s:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            # surrogateescape'd byte of a py2 str -> that byte as Latin-1 (newt.db's reading)
            out.append(chr(code - 0xDC00) if 0xDC80 <= code <= 0xDCFF else "\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def _float_key(f: float) -> str:
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "Infinity" if f > 0 else "-Infinity"
    return float.__repr__(f)


class _Walker:
    __slots__ = ("budget", "active", "cyclic", "ids", "got", "emitted", "next_id")

    def __init__(self, budget: int, ids: dict[int, int] | None = None) -> None:
        self.budget = budget
        self.active: set[int] = set()
        self.cyclic = ids is not None
        self.ids = ids or {}
        self.got: set[int] = set()
        self.emitted: set[int] = set()
        self.next_id = max(self.ids.values(), default=-1) + 1

    def _spend(self, units: int) -> None:
        self.budget -= units
        if self.budget < 0:
            raise TooLarge("JSON expansion exceeds the budget for this record (shared structure)")

    # -- cyclic mode: which containers occur more than once -------------------------------
    def count(self, root: Any) -> None:
        seen: set[int] = set()
        stack = [root]
        steps = 0
        while stack:
            v = stack.pop()
            steps += 1
            if steps > 4 * _DEFAULT_BUDGET:
                raise TooLarge("record graph too large")
            t = type(v)
            if t is list or t is dict or t is Obj or t is Ref or t is tuple:
                i = id(v)
                if i in seen:
                    if t is not tuple:
                        self.got.add(i)
                    continue
                seen.add(i)
                if t is list or t is tuple:
                    stack.extend(reversed(v))
                else:
                    children = []
                    for k, val in v.items():
                        children.append(k)
                        children.append(val)
                    stack.extend(reversed(children))
            elif t is set or t is frozenset:
                stack.extend(v)

    # -- conversion ----------------------------------------------------------------------
    def conv(self, v: Any, depth: int) -> Any:
        t = type(v)
        if t is str:
            self._spend(1 + (len(v) >> 4))
            return fix_str(v)
        if v is None or t is bool:
            self._spend(1)
            return v
        if t is int:
            self._spend(1)
            return v if _INT64_MIN <= v <= _INT64_MAX else str(v)
        if t is float:
            self._spend(1)
            return v if math.isfinite(v) else None
        if depth > MAX_DEPTH:
            raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
        if t is list or t is dict or t is Obj or t is Ref:
            return self._container(v, t, depth)
        if t is tuple:
            self._spend(1)
            return [self.conv(x, depth + 1) for x in v]
        if t is bytes or t is bytearray:
            self._spend(1 + (len(v) >> 3))
            return bytes_json(v)
        if t is orjson.Fragment:
            self._spend(1)
            return v
        if isinstance(v, StandInMeta):
            self._spend(1)
            return global_json(v)
        if t is set or t is frozenset:
            return self.conv(sorted_items(v), depth)
        if isinstance(v, str):  # str subclasses do not come out of the unpickler; be safe
            return self.conv(str(v), depth)
        raise TypeError(f"cannot convert {t.__name__} to JSON")

    def _container(self, v: Any, t: type, depth: int) -> Any:
        self._spend(1)
        i = id(v)
        mark = None
        if self.cyclic:
            if i in self.got:
                idx = self.ids.get(i)
                if idx is None:
                    idx = self.ids[i] = self.next_id
                    self.next_id += 1
                if i in self.emitted:
                    return {"::->": idx}
                self.emitted.add(i)
                mark = idx
        else:
            if i in self.active:
                raise _Cycle
            self.active.add(i)
        try:
            if t is list:
                out: Any = [self.conv(x, depth + 1) for x in v]
            else:
                out = {}
                for k, val in v.items():
                    out[self.key(k, depth)] = self.conv(val, depth + 1)
        finally:
            if not self.cyclic:
                self.active.discard(i)
        if mark is not None:
            if t is list:
                return {"::": "shared", "::id": mark, "value": out}
            out["::id"] = mark
        return out

    def key(self, k: Any, depth: int) -> str:
        t = type(k)
        if t is str:
            return fix_str(k)
        if t is bool:
            return "true" if k else "false"
        if t is int:
            return str(k)
        if t is float:
            return _float_key(k)
        if k is None:
            return "null"
        if t is bytes or t is bytearray:
            converted = bytes_json(k)
            return converted if isinstance(converted, str) else converted["hex"]
        # tuples, frozensets, instances, references, globals: their compact JSON text
        return orjson.dumps(self.conv(k, depth + 1)).decode()


def json_ready(value: Any, budget: int = _DEFAULT_BUDGET) -> Any:
    """``value`` as plain JSON data (non-cyclic; a cycle raises ``ValueError``)."""
    try:
        return _Walker(budget).conv(value, 0)
    except _Cycle:
        raise ValueError("cyclic structure inside a set or dict key") from None


def walk(value: Any, budget: int, memo_ids: Callable[[], dict[int, int]]) -> bytes:
    """Serialize ``value`` with newt.db's shared/cyclic semantics; ``memo_ids`` gives
    ``{id(object): memo index}`` and is only called when the record has a cycle."""
    try:
        out = _Walker(budget).conv(value, 0)
    except _Cycle:
        walker = _Walker(budget, memo_ids())
        walker.count(value)
        out = walker.conv(value, 0)
    return orjson.dumps(out)


def sorted_items(items: Any) -> tuple[Any, ...]:
    """Set members as a sorted tuple (an array in JSON; hashable, so sets can be keys).

    Sorted by value like newt.db when the members are comparable; otherwise (mixed
    types, where newt.db fails) by their JSON text, which is deterministic.
    """
    try:
        return tuple(sorted(items))
    except TypeError:
        pass
    converted = [json_ready(item) for item in items]
    converted.sort(key=lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
    return tuple(converted)

