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
- **Bounded width and depth.** Mappings are data, not schema: a dict with more than
  :data:`MAX_KEYS` keys, or a key that is not an identifier, goes whole into the
  ``flattened`` field ``more`` (one field however many keys), as do values deeper than
  :data:`MAX_DEPTH` path segments and cyclic/shared forms. Instances' attributes are
  typed up to :data:`MAX_ATTRS`. The index also caps its fields (1000, beyond which new
  fields are kept in ``_source`` unindexed, never rejected).
"""

from __future__ import annotations

import math
import re
from typing import Any

from esindexer.documents.dates import DATETIME_CLASSES, aware_datetime, date_string, zope_datetime

#: A plain dict with more keys than this is data (key per entry): it goes to ``more``.
MAX_KEYS = 16
#: An instance with more attributes than this goes to ``more`` too.
MAX_ATTRS = 200
#: Path segments below ``state`` typed at most (``a.b.c.d``); deeper values go to ``more``.
MAX_DEPTH = 4

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_INT64 = 2**63

# Kinds of leaves: one mapping type each (es/admin.py's dynamic templates).
STRING, NUMBER, DATE, BOOLEAN = "s", "n", "d", "b"


class _Shaper:
    """One document's walk: ``typed`` maps a dotted path to a value or list, ``more`` the rest."""

    __slots__ = ("typed", "kinds", "more", "mixed", "values")

    def __init__(self) -> None:
        self.typed: dict[str, Any] = {}
        self.kinds: dict[str, str] = {}
        self.more: dict[str, Any] = {}
        self.mixed: set[str] = set()
        self.values: list[Any] = []

    def leaf(self, path: str, kind: str, value: Any) -> None:
        if kind is not STRING:
            self.values.append(value)
        have = self.kinds.get(path)
        if have is None:
            self.kinds[path] = kind
            self.typed[path] = value
            return
        if have != kind:
            self.mixed.add(path)
        old = self.typed[path]
        if type(old) is _Many:
            old.append(value)
        else:
            self.typed[path] = _Many((old, value))

    def aside(self, path: str, value: Any) -> None:
        """Keep ``value`` in ``more`` (flattened: keyword semantics, no conflicts, one field)."""
        have = self.more.get(path)
        if have is None:
            self.more[path] = value
        elif type(have) is _Many:
            have.append(value)
        else:
            self.more[path] = _Many((have, value))

    def value(self, path: str, value: Any, depth: int) -> None:
        if value is None:
            return
        kind = type(value)
        if kind is str:
            as_date = date_string(value)
            if as_date is None:
                self.leaf(path, STRING, value)
            else:
                self.leaf(path, DATE, as_date)
        elif kind is bool:
            self.leaf(path, BOOLEAN, value)
        elif kind is int:
            self.leaf(path, NUMBER, value if -_INT64 <= value < _INT64 else float(value))
        elif kind is float:
            if math.isfinite(value):
                self.leaf(path, NUMBER, value)
        elif kind is list:
            for item in value:
                self.value(path, item, depth)
        elif kind is dict:
            self.mapping(path, value, depth)
        else:  # transforms may hand in other Python values: their text
            self.leaf(path, STRING, str(value))

    def mapping(self, path: str, value: dict[str, Any], depth: int) -> None:
        marker = value.get("::")
        if marker is None:
            if "::->" in value or "::id" in value:
                self.aside(path, value)
            elif len(value) <= MAX_KEYS and depth < MAX_DEPTH and all(_KEY.fullmatch(k) for k in value):
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
            self.leaf(path, STRING, name) if isinstance(name, str) else self.aside(path, value)
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
        ident = value.get("id")
        if isinstance(ident, list) and len(ident) == 2:
            zoid, cls = ident
            if isinstance(cls, str):
                self.leaf(f"{path}._class", STRING, cls)
        else:
            zoid = ident
        if type(zoid) is int:
            self.leaf(f"{path}._ref", NUMBER, zoid)
        database = value.get("database")
        if isinstance(database, str):
            self.leaf(f"{path}._db", STRING, database)

    def attributes(self, path: str, value: dict[str, Any], depth: int) -> None:
        prefix = f"{path}." if path else ""
        depth += 1
        for key, child in value.items():
            if key.startswith("::"):
                continue  # markers of the converter's form (class names are handled above)
            if not _KEY.fullmatch(key):
                self.aside(f"{prefix}{key}" if key else f"{prefix}_", child)
            else:
                self.value(prefix + key, child, depth)


class _Many(list[Any]):
    """Values collected under one path (told apart from a value that is itself a list)."""


def shape(state: Any) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """``(typed, more, values)`` for a converted state: flat typed paths, what goes to
    ``more``, and every number, date and boolean among the typed leaves (for ``values``).

    A non-dict state (a list, a string) is the attribute ``value``. Paths whose values
    differ in kind within this document move to ``more``.
    """
    shaper = _Shaper()
    if isinstance(state, dict):
        if len(state) > MAX_ATTRS:
            shaper.aside("", state)
        else:
            shaper.attributes("", state, 0)
    else:
        shaper.value("value", state, 1)
    typed = shaper.typed
    for path in shaper.mixed:
        shaper.aside(path, typed.pop(path))
    more = shaper.more
    if "" in more:  # a whole state too wide to type
        whole = more.pop("")
        more.update(whole)
    return typed, more, shaper.values
