"""The typed shaping of a decoded state, in C where the C twin is sure, in Python otherwise.

``esindexer/documents/_shape_c.c`` walks an unpickled state exactly as
:class:`esindexer.documents.typed._Shaper` does, for the shapes nearly every record has
(dicts of identifiers, strings, numbers, booleans, lists, the converter's references and
instances), and answers None for anything the Python shaper would set aside or refuse; the
state is then shaped by :func:`~esindexer.documents.typed.shape` from the start. So a
document is the same either way (tests/test_fastshape.py), and the C walk only
saves the interpreter's per-leaf work: the largest item of Python CPU per document in a
backfill (docs/performance.md). The extension is optional (built when a C compiler is
there at install time, like the converter's); without it every state is shaped in Python.
"""

from __future__ import annotations

from typing import Any

from esindexer.convert.jsonifier import json_normal
from esindexer.convert.model import Obj
from esindexer.documents.dates import DATETIME_CLASSES, aware_datetime, zope_datetime
from esindexer.documents.typed import _READ_AS_JSON, BOOLEAN, DATE, NUMBER, STRING, Shaped, _date, _Many, add_at, shape

try:
    import esindexer.documents._shape_c as _shape_c
except ImportError:  # optional extension, not built here: the Python shaper does it all
    _shape_c = None  # type: ignore[assignment]

#: Markers the Python shaper reads specially (or sets aside): the C twin leaves them to it,
#: but for the dates, which it asks :func:`_special_date` about.
_SPECIAL = frozenset(_READ_AS_JSON | {"datetime", "global", "shared"})
_DATES = frozenset(DATETIME_CLASSES | {"datetime"})
_configured = False


def _special_date(value: dict[str, Any]) -> str | None:
    """The date the Python shaper writes for a Zope ``DateTime`` or an aware ``datetime``
    marker (``typed._Shaper.mapping``), or None where it would set the value aside."""
    marker = value.get("::")
    if marker in DATETIME_CLASSES:  # read as its JSON text reads, as the Python shaper does
        value = json_normal(value)
        return zope_datetime(value) if isinstance(value, dict) and value.get("::") in DATETIME_CLASSES else None
    if marker == "datetime" and "value" in value:
        return aware_datetime(value)
    return None


def _configure() -> None:
    global _configured
    _shape_c.configure(_date, _Many, Obj, _SPECIAL, (STRING, NUMBER, DATE, BOOLEAN), _DATES, _special_date)
    _configured = True


def shape_state(state: Any, text_limit: int, *, direct: bool) -> Shaped:
    """:func:`~esindexer.documents.typed.shape`, by the C twin when ``direct`` and it is sure."""
    if direct and _shape_c is not None:
        got = c_shape(state, text_limit)
        if got is not None:
            return got
    return shape(state, text_limit, direct=direct)


def c_shape(state: Any, text_limit: int) -> Shaped | None:
    """The C twin's answer alone (None: not sure, or not built); for tests and benchmarks."""
    if _shape_c is None:
        return None
    if not _configured:
        _configure()
    got = _shape_c.shape(state, text_limit)
    if got is None:
        return None
    found, more, values, texts, refs, mixed = got
    for path in mixed:  # the Python shaper's last step: paths whose values differ in kind go to ``more``
        add_at(more, path, found.pop(path))
    return Shaped(found, more, values, texts, refs)
