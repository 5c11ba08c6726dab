"""The typed shaping of a decoded state, in C where the C twin is sure, in Python otherwise.

``esindexer/documents/_shape_c.c`` walks an unpickled state exactly as
:class:`esindexer.documents.typed._Shaper` does, for the shapes nearly every record has
(dicts of identifiers, strings, numbers, booleans, lists, the converter's references and
instances), and answers None for anything the Python shaper would set aside or refuse; the
state is then shaped by :func:`~esindexer.documents.typed.shape` from the start. So a
document is the same either way (tests/documents/test_fastshape.py), and the C walk only
saves the interpreter's per-leaf work: the largest item of Python CPU per document in a
backfill (docs/performance.md). The extension is optional (built when a C compiler is
there at install time, like the converter's); without it every state is shaped in Python.
"""

from __future__ import annotations

from typing import Any

from esindexer.convert.model import Obj
from esindexer.documents.typed import _READ_AS_JSON, BOOLEAN, DATE, NUMBER, STRING, Shaped, _date, _Many, shape

try:
    import esindexer.documents._shape_c as _shape_c
except ImportError:  # optional extension, not built here: the Python shaper does it all
    _shape_c = None  # type: ignore[assignment]

#: Markers the Python shaper reads specially (or sets aside): the C twin leaves them to it.
_SPECIAL = frozenset(_READ_AS_JSON | {"datetime", "global", "shared"})
_configured = False


def _configure() -> None:
    global _configured
    _shape_c.configure(_date, _Many, Obj, _SPECIAL, (STRING, NUMBER, DATE, BOOLEAN))
    _configured = True


def shape_state(state: Any, text_limit: int, *, direct: bool) -> Shaped:
    """:func:`~esindexer.documents.typed.shape`, by the C twin when ``direct`` and it is sure."""
    if direct and _shape_c is not None:
        if not _configured:
            _configure()
        got = _shape_c.shape(state, text_limit)
        if got is not None:
            found, values, texts, refs, mixed = got
            # the Python shaper's last step: paths whose values differ in kind go to ``more``
            more = {path: found.pop(path) for path in mixed}
            return Shaped(found, more, values, texts, refs)
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
    found, values, texts, refs, mixed = got
    return Shaped(found, {path: found.pop(path) for path in mixed}, values, texts, refs)
