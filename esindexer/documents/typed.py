"""The typed document model: a converted state shaped so that every value is searchable by its kind.

Elasticsearch maps each new field from the first value it sees and then rejects a value
that conflicts with the mapping. The builder is stateless across documents, so this
module makes conflicts harmless *by construction* (the mapping side is in
:mod:`esindexer.es.admin`; docs/documents.md says where each value goes and how to query it):

- **Flat dotted paths.** ``state`` is an object with ``subobjects: false``: the attribute
  ``a`` of an object is the field ``state.a``, an attribute of a nested object
  ``state.a.b``. A path is never an object, so "a dict here, a string there" (``state.a``
  and ``state.a.b``) cannot conflict. Lists are flattened into their path.
- **One kind per path per document.** Each leaf is a *string* (text + ``.keyword``), a
  *number* (``double``), a *date* (``date``, always written in one UTC form by
  :mod:`esindexer.documents.dates`) or a *boolean* (``keyword``). Within one document
  Elasticsearch cannot map a new field from two kinds (``[7, "x"]``), so a path whose
  values differ in kind in one document goes to ``more`` instead.
- Across documents, a value of another kind than the field's is dropped from that field
  by ``ignore_malformed`` (the document is kept); every number, date and boolean is also
  in the keyword catch-all ``values``, every string in ``text``, so it stays findable.
- **No path ends in ``.keyword``** (a key ``keyword`` is written ``keyword_``): that is a string's sub-field.
- **Bounded width and depth.** Mappings are data, not schema: a dict with more than
  :data:`MAX_KEYS` keys, or a key that is not an identifier, goes whole into the
  ``flattened`` field ``more`` (one field however many keys), as do values deeper than
  :data:`MAX_DEPTH` path segments, cyclic/shared forms and folded BTrees (the object
  model's :class:`ItemsOfBTree`). Instances' attributes are typed up to :data:`MAX_ATTRS`.
  The index caps its fields (1000; beyond, kept in ``_source`` unindexed, never rejected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from esindexer.convert.jsonifier import json_normal
from esindexer.convert.model import Obj
from esindexer.documents.dates import DATETIME_CLASSES, aware_datetime, date_string, zope_datetime
from esindexer.documents.walk import collect, deeper_than
from esindexer.objects.fold import ItemsOfBTree

#: A plain dict with more keys than this is data (key per entry): it goes to ``more``.
MAX_KEYS = 16
#: An instance with more attributes than this goes to ``more`` too.
MAX_ATTRS = 200
#: Path segments below ``state`` typed at most (``a.b.c.d``); deeper values go to ``more``.
MAX_DEPTH = 4
#: Levels a value set aside may have (the ``more`` field's depth_limit is 30, its key is one).
MORE_DEPTH = 28
_INT64 = 2**63
#: Integers the converter's fast path writes as they are (``orjson.OPT_STRICT_INTEGER``).
_INT53 = 2**53 - 1
#: Markers whose readers expect the JSON form (lists, not tuples): normalised first when direct.
_READ_AS_JSON = DATETIME_CLASSES | {"datetime.timedelta"}


class NotDirect(Exception):
    """A decoded state the direct path would not shape as its JSON text (an integer beyond
    53 bits, a key that is not a string...): the caller takes the text path."""

# Kinds of leaves: one mapping type each (es/admin.py's dynamic templates).
STRING, NUMBER, DATE, BOOLEAN = "s", "n", "d", "b"


class _Shaper:
    """One document's walk: ``typed`` maps a dotted path to a value or list, ``more`` the rest.

    The same walk collects the strings for ``text`` (up to ``budget`` characters) and the
    referenced zoids for ``refs``, so a document is walked once (what ``walk.collect``
    does for the other mapping modes; values set aside are walked by it).
    """

    __slots__ = ("typed", "kinds", "more", "mixed", "values", "texts", "refs", "budget", "direct")

    def __init__(self, budget: int, direct: bool = False) -> None:
        #: walking the unpickled state of a :class:`~esindexer.convert.jsonifier.Decoded`
        #: record instead of its parsed JSON text: the values it holds that JSON would not
        #: (tuples, instances, bytes, sets...) are read as their JSON form
        self.direct = direct
        self.typed: dict[str, Any] = {}
        self.kinds: dict[str, str] = {}
        self.more: dict[str, Any] = {}
        self.mixed: set[str] = set()
        self.values: list[Any] = []
        self.texts: list[str] = []
        self.refs: list[int] = []
        self.budget = [budget]

    def leaf(self, path: str, kind: str, value: Any) -> None:
        if kind is not STRING:
            self.values.append(value)
        if path not in self.kinds:
            self.kinds[path] = kind
            self.typed[path] = value
        else:
            self.again(path, kind, value)

    def again(self, path: str, kind: str, value: Any) -> None:
        """A leaf at a path that has one already (``values`` has it, if it goes there)."""
        if self.kinds[path] != kind:
            self.mixed.add(path)
        add_at(self.typed, path, value)  # never None there: a leaf has a value

    def string(self, path: str, value: str) -> None:
        if self.budget[0] > 0:
            self.texts.append(value[: self.budget[0]])
            self.budget[0] -= len(value) + 1
        as_date = _date(value) if "0" <= value[:1] <= "9" else None
        if as_date is None:
            self.leaf(path, STRING, value)
        else:
            self.leaf(path, DATE, as_date)

    def aside(self, path: str, value: Any) -> None:
        """Keep ``value`` in ``more`` (flattened: keyword semantics, no conflicts, one field)."""
        if self.direct:
            value = json_normal(value)
        collect(value, self.texts, self.refs, self.budget)
        if isinstance(value, (dict, list)) and deeper_than(value, MORE_DEPTH):
            # ``more`` is flattened with depth_limit 30: a deeper value would reject the
            # document, so it is kept as its JSON text (in _source; its words are in text)
            value = orjson.dumps(value).decode()
        add_at(self.more, path, value)

    def value(self, path: str, value: Any, depth: int) -> None:
        kind = type(value)
        if kind is str:
            self.string(path, value)
        elif kind is int:
            if self.direct and not -_INT53 <= value <= _INT53:
                raise NotDirect("an integer beyond 53 bits")
            self.leaf(path, NUMBER, value if -_INT64 <= value < _INT64 else float(value))
        elif kind is float:
            if math.isfinite(value):
                self.leaf(path, NUMBER, value)
        elif kind is bool:
            self.leaf(path, BOOLEAN, value)
        elif kind is dict:
            self.mapping(path, value, depth)
        elif kind is ItemsOfBTree:  # the object model's folded BTrees: data, kept whole
            self.aside(path, value)
        elif kind is list or kind is _Many:
            budget, kinds = self.budget, self.kinds
            for item in value:
                if type(item) is not str:
                    if item is not None:
                        self.value(path, item, depth)
                elif "0" <= item[:1] <= "9":
                    self.string(path, item)
                else:  # a string that is no date (tags, names): what string() does, written out
                    left = budget[0]
                    if left > 0:
                        self.texts.append(item[:left])
                        budget[0] = left - len(item) - 1
                    if path in kinds:
                        self.again(path, STRING, item)
                    else:
                        kinds[path] = STRING
                        self.typed[path] = item
        elif value is None:
            pass
        elif self.direct:  # an instance, a tuple, bytes...: as the JSON text has it
            if kind is Obj:
                self.mapping(path, value, depth)
            else:
                self.value(path, json_normal(value), depth)
        else:  # transforms may hand in other Python values: their text
            self.string(path, str(value))

    def mapping(self, path: str, value: dict[str, Any], depth: int) -> None:
        marker = value.get("::")
        if self.direct and marker is not None and (type(marker) is not str or marker in _READ_AS_JSON):
            value = json_normal(value)
            marker = value.get("::")
        if marker is not None and type(marker) is not str:  # not the converter's: kept as it is
            self.aside(path, value)
            return
        if marker is None:
            if "::->" in value or "::id" in value:
                self.aside(path, value)
            elif len(value) <= MAX_KEYS and depth < MAX_DEPTH and _all_plain(value):
                self.attributes(path, value, depth)
            else:
                self.aside(path, value)
            return
        if marker == "persistent":
            self.reference(path, value)
        elif marker == "datetime" and "value" in value:
            self.special(path, value, aware_datetime(value))
        elif marker in DATETIME_CLASSES:
            self.special(path, value, zope_datetime(value))
        elif marker == "datetime.timedelta":
            args = value.get("::()")
            if isinstance(args, list) and len(args) == 3 and all(type(a) is int for a in args):
                self.leaf(path, NUMBER, args[0] * 86400 + args[1] + args[2] / 1e6)  # seconds
            else:
                self.aside(path, value)
        elif marker == "global":
            name = value.get("name")
            self.string(path, name) if isinstance(name, str) else self.aside(path, value)
        elif marker == "shared" or depth >= MAX_DEPTH or len(value) > MAX_ATTRS or not isinstance(marker, str):
            self.aside(path, value)
        else:  # an instance of some class: its attributes, and its class at <path>._class
            self.leaf(f"{path}._class", STRING, marker)
            self.attributes(path, value, depth)

    def special(self, path: str, value: dict[str, Any], as_date: str | None) -> None:
        if as_date is None:
            self.aside(path, value)
        else:
            self.leaf(path, DATE, as_date)

    def reference(self, path: str, value: dict[str, Any]) -> None:
        """A persistent reference: ``<path>._ref`` (zoid), ``<path>._class``, ``<path>._db``."""
        ident: Any = value.get("id")
        target = value.get("::=>")
        if (type(ident) is list and len(ident) == 2 and type(target) is int and len(value) == 3
                and ident[0] == target and type(ident[0]) is int and type(ident[1]) is str
                and -_INT53 <= target <= _INT53):  # the converter's ``(oid, class)``, written out
            kinds, typed, cls = self.kinds, self.typed, ident[1]
            at = f"{path}._class"
            if at in kinds:
                self.again(at, STRING, cls)
            else:
                kinds[at], typed[at] = STRING, cls
            at = f"{path}._ref"
            self.values.append(target)
            if at in kinds:
                self.again(at, NUMBER, target)
            else:
                kinds[at], typed[at] = NUMBER, target
            self.refs.append(target)
            return
        if self.direct:  # another shape: read as its JSON text reads (raises beyond 53 bits)
            value = json_normal(value)
            ident = value.get("id")
        if isinstance(ident, list) and len(ident) == 2:
            zoid, cls = ident
            if isinstance(cls, str):
                self.leaf(f"{path}._class", STRING, cls)
        else:
            zoid = ident
        if type(zoid) is int:
            self.leaf(f"{path}._ref", NUMBER, zoid)
        if type(value.get("::=>")) is int:
            self.refs.append(value["::=>"])  # a zoid of this database (not a cross-database one)
        database = value.get("database")
        if isinstance(database, str):
            self.leaf(f"{path}._db", STRING, database)

    def attributes(self, path: str, value: dict[str, Any], depth: int) -> None:
        prefix = f"{path}." if path else ""
        depth += 1
        plain = _PLAIN
        # What string() and leaf() do, written out for the usual leaves (strings, numbers,
        # a path seen first): most of a document's leaves, and calls are what costs here.
        kinds, typed, values, texts, budget = self.kinds, self.typed, self.values, self.texts, self.budget
        direct = self.direct
        for key, child in value.items():
            ok = plain.get(key)
            if ok is None:
                ok = _remember_plain(key)
            if not ok:
                if key[:2] != "::":  # markers of the converter's form (class names are handled above)
                    self.aside(f"{prefix}{key}" if key else f"{prefix}_", child)
                continue
            if key == "keyword" and prefix:
                # <path>.keyword is the sub-field of a string at <path>: a key of that name
                # would define the field twice (Elasticsearch then rejects the document)
                key = "keyword_"
            of = type(child)
            kind: str
            if of is str:
                left = budget[0]
                if left > 0:
                    texts.append(child[:left])
                    budget[0] = left - len(child) - 1
                if "0" <= child[:1] <= "9" and (as_date := _date(child)) is not None:
                    kind, child = DATE, as_date
                    values.append(child)
                else:
                    kind = STRING
            elif (of is int and (not direct or -_INT53 <= child <= _INT53) and -_INT64 <= child < _INT64
                  or of is float and math.isfinite(child)):
                kind = NUMBER
                values.append(child)
            elif of is bool:
                kind = BOOLEAN
                values.append(child)
            elif of is dict and child.get("::") == "persistent":  # a reference: what mapping() does
                self.reference(prefix + key, child)
                continue
            else:
                if child is not None:
                    self.value(prefix + key, child, depth)
                continue
            path = prefix + key
            if path in kinds:
                self.again(path, kind, child)
            else:
                kinds[path] = kind
                typed[path] = child


def _date(text: str) -> str | None:
    """:func:`date_string`, without its pattern for the converter's own naive datetimes
    (``isoformat()``'s text, which is what it would return with ``Z`` and microseconds)."""
    size = len(text)
    if (size == 26 or size == 19) and text[10:11] == "T":
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None  # date_string would fail in the same call
        if moment.tzinfo is None and moment.isoformat() == text:
            return text + "Z" if size == 26 else text + ".000000Z"
    return date_string(text)


def _all_plain(value: dict[str, Any]) -> bool:
    """Whether every key of ``value`` can be a path segment."""
    plain = _PLAIN
    for key in value:
        ok = plain.get(key)
        if not (ok or ok is None and _remember_plain(key)):
            return False
    return True


#: Keys seen, and whether each can be a path segment (keys repeat across objects: a
#: dict lookup is cheaper than the checks). Cleared when it grows past _PLAIN_MAX.
_PLAIN: dict[str, bool] = {}
_PLAIN_MAX = 100_000


def _remember_plain(key: str) -> bool:
    """A key that can be a path segment: an ASCII identifier of at most 64 characters."""
    ok = len(key) <= 64 and key.isidentifier() and key.isascii()
    if len(_PLAIN) >= _PLAIN_MAX:
        _PLAIN.clear()
    _PLAIN[key] = ok
    return ok


class _Many(list[Any]):
    """Values collected under one path (told apart from a value that is itself a list)."""


def add_at(values: dict[str, Any], path: str, value: Any) -> None:
    """Keep ``value`` at ``path``: a second one makes both a :class:`_Many`, later ones join it."""
    have = values.get(path)
    if have is None:
        values[path] = value
    elif type(have) is _Many:
        have.append(value)
    else:
        values[path] = _Many((have, value))


@dataclass(slots=True)
class Shaped:
    """A state shaped for the typed model, and its text and references."""

    typed: dict[str, Any]
    more: dict[str, Any]
    values: list[Any]
    texts: list[str]
    refs: list[int]


def shape(state: Any, text_limit: int = 32_000, *, direct: bool = False) -> Shaped:
    """A converted state shaped: flat typed paths, what goes to ``more``, every number, date
    and boolean among the typed leaves (for ``values``), the strings (for ``text``, at most
    ``text_limit`` characters) and the referenced zoids.

    A non-dict state (a list, a string) is the attribute ``value``. Paths whose values
    differ in kind within this document move to ``more``.

    ``direct``: ``state`` is a decoded record's unpickled state
    (:class:`~esindexer.convert.jsonifier.Decoded`), shaped as its JSON text would be;
    raises :class:`NotDirect` (or the error of :func:`json_normal`) where that is not sure.
    """
    shaper = _Shaper(text_limit, direct)
    if isinstance(state, dict):
        if len(state) > MAX_ATTRS:
            for key, child in state.items():
                if direct and type(key) is not str:
                    raise NotDirect("a key that is not a string")
                shaper.aside(key or "_", child)
        else:
            shaper.attributes("", state, 0)
    elif state is not None:
        shaper.value("value", state, 1)
    typed = shaper.typed
    for path in shaper.mixed:
        add_at(shaper.more, path, typed.pop(path))  # its strings are in the text already
    return Shaped(typed, shaper.more, shaper.values, shaper.texts, shaper.refs)
