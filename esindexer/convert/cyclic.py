"""Records with a true cycle, converted in place: mark the repeated containers, then orjson.

Why this exists: a record containing a cycle (a list that contains itself, an object
whose sub-object points back at it) used to go through the walker
(:mod:`esindexer.convert.walk`) twice: once in newt.db's non-cyclic mode until the
cycle showed up, then a counting pass and the cyclic mode, every value copied by
Python code (about three calls per value). Profiling showed those passes as ~80% of the
time of such records, which converted at ~2.5x newt.db against ~11x for plain ones.

The cyclic form differs from the plain tree only at the *containers* that occur more
than once: the first occurrence gets ``"::id": n`` (a list is wrapped as ``{"::":
"shared", "::id": n, "value": [...]}``), later ones become ``{"::->": n}``. So this
module visits only containers (scalars are skipped by C-level ``map(type, ...)`` checks),
rewrites those places in the decoded value itself, which nothing else uses, and lets
orjson write the rest exactly as on the fast path.

It produces the walker's output or nothing: :func:`plan` answers ``None`` (the caller
uses the walker, nothing touched) unless the value has a cycle and only the shapes
whose output is sure to be the walker's: string keys, no tuple reached twice (the walker
writes a tuple out at every occurrence), no container in a set, nesting below
:data:`MAX_DEPTH`, no container reached twice before the first cycle (the walker's
non-cyclic pass would have written it out twice, against the budget), and every
repeated container in the memo (its index is its id). :func:`dumps_marked` answers
``None`` when orjson refuses the rewritten value (a big integer, a lone surrogate);
the value is then spoiled and the caller decodes the record again for the walker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from esindexer.convert.model import Obj, Ref
from esindexer.convert.scan import MAX_DEPTH
from esindexer.convert.values import fast_default

__all__ = ["dumps_marked", "plan"]

_CONTAINERS = frozenset({list, dict, Obj, Ref, tuple})
_NESTED = _CONTAINERS | {set, frozenset}  # types that need a look inside
_STR = frozenset({str})
_STRICT = orjson.OPT_STRICT_INTEGER


class _Bail(Exception):
    """The value has a shape whose output only the walker is sure to get right."""


class _Planner:
    __slots__ = ("seen", "active", "got", "cyclic")

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.active: set[int] = set()
        self.got: set[int] = set()
        self.cyclic = False

    def visit(self, v: Any, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise _Bail
        i = id(v)
        t = type(v)
        if i in self.seen:
            if t is tuple:
                raise _Bail
            if i in self.active:
                self.cyclic = True
            elif not self.cyclic:
                raise _Bail  # shared before the first cycle
            self.got.add(i)
            return
        self.seen.add(i)
        self.active.add(i)
        if t is list or t is tuple:
            items: Any = v
        else:
            if not _STR.issuperset(map(type, v)):
                raise _Bail
            items = v.values()
        if not _NESTED.isdisjoint(map(type, items)):
            for x in items:
                tx = type(x)
                if tx in _CONTAINERS:
                    self.visit(x, depth + 1)
                elif (tx is set or tx is frozenset) and not _NESTED.isdisjoint(map(type, x)):
                    raise _Bail
        self.active.discard(i)


def plan(value: Any) -> set[int] | None:
    """The ids of the containers that occur more than once, when ``value`` has a cycle
    and a shape this module converts exactly as the walker would; else ``None``."""
    if type(value) not in _CONTAINERS:
        return None
    planner = _Planner()
    try:
        planner.visit(value, 0)
    except _Bail:
        return None
    return planner.got if planner.cyclic else None


class _Marker:
    __slots__ = ("got", "ids", "emitted")

    def __init__(self, got: set[int], ids: dict[int, int]) -> None:
        self.got = got
        self.ids = ids
        self.emitted: set[int] = set()

    def mark(self, v: Any) -> Any:
        """``v`` rewritten in newt.db's cyclic form (the same object where possible)."""
        t = type(v)
        if t is tuple:
            if _CONTAINERS.isdisjoint(map(type, v)):
                return v
            new = [self.mark(x) if type(x) in _CONTAINERS else x for x in v]
            return v if all(a is b for a, b in zip(new, v)) else new
        i = id(v)
        mark = None
        if i in self.got:
            if i in self.emitted:
                return {"::->": self.ids[i]}
            self.emitted.add(i)
            mark = self.ids[i]
        if t is list:
            if not _CONTAINERS.isdisjoint(map(type, v)):
                for n, x in enumerate(v):
                    if type(x) in _CONTAINERS:
                        r = self.mark(x)
                        if r is not x:
                            v[n] = r
            return v if mark is None else {"::": "shared", "::id": mark, "value": v}
        if not _CONTAINERS.isdisjoint(map(type, v.values())):
            for k, x in list(v.items()):
                if type(x) in _CONTAINERS:
                    r = self.mark(x)
                    if r is not x:
                        dict.__setitem__(v, k, r)
        if mark is not None:
            dict.__setitem__(v, "::id", mark)
        return v


def dumps_marked(value: Any, got: set[int], memo_ids: Callable[[], dict[int, int]]) -> bytes | None:
    """``value`` (a :func:`plan` yielded ``got``) as newt.db's cyclic JSON, or ``None``
    if only the walker can convert it. ``memo_ids`` gives ``{id: memo index}``; the
    value is rewritten in place (spoiled) once this is called, whatever it returns."""
    ids = memo_ids()
    if not got.issubset(ids):
        return None  # a repeated container outside the memo: the walker numbers those
    marked = _Marker(got, ids).mark(value)
    try:
        return orjson.dumps(marked, default=fast_default, option=_STRICT)
    except orjson.JSONEncodeError:
        return None
