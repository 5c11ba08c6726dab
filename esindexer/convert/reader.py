"""What the C unpickler reads a record from, and how it looks up the globals a record names.

CPython's C unpickler calls back into its file object at the start and end of every
load (``peek``, then ``read`` of what it consumed) and into ``find_class`` for every
global. From Python each is a C-to-Python call, ~10 per small record, which profiles
(issue 13) put at 5-10 % of a conversion. So both come in two equivalent versions:
:class:`PySource` and :func:`esindexer.convert.values.standin` here, and their C twins
in the optional extension ``_reader_c`` (``_reader_c.c``), used when it was built
(tests/convert/test_reader.py checks they behave alike). :data:`Source` and
:data:`find_class` are whichever is in use. So is :data:`persistent_load`, the
unpickler's call for every persistent reference: the C twin builds the usual reference
(an 8-byte oid and its class) itself and hands any other to
:func:`esindexer.convert.values.persistent_ref`. (The datetime and date stand-ins'
calls have their C fast path too: see the end of :mod:`esindexer.convert.constructors`.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from esindexer.convert.model import StandInMeta
from esindexer.convert.values import _CACHE, persistent_ref, standin

__all__ = ["PySource", "Source", "find_class", "persistent_load"]


class PySource:
    """The file object the C unpickler reads. ``peek`` hands over everything at once,
    so the unpickler parses from memory and calls back only at the end of each load
    (``read(consumed)`` to advance, whose result it ignores)."""

    __slots__ = ("data", "pos")

    def __init__(self) -> None:
        self.data = b""
        self.pos = 0

    def peek(self, n: int = 0) -> bytes:
        pos = self.pos
        return self.data[pos:] if pos else self.data

    def read(self, n: int | None = -1) -> bytes:
        start = self.pos
        end = len(self.data) if n is None or n < 0 else min(start + n, len(self.data))
        self.pos = end
        return self.data[start:end]

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(memoryview(buffer)))
        size = len(chunk)
        memoryview(buffer).cast("B")[:size] = chunk
        return size

    def readline(self, size: int = -1) -> bytes:
        start = self.pos
        j = self.data.find(b"\n", start)
        end = len(self.data) if j < 0 else j + 1
        self.pos = end
        return self.data[start:end]


Source: Callable[[], Any]
find_class: Callable[[str, str], type]
persistent_load: Callable[[Any], dict[str, Any]]
try:
    from esindexer.convert import _reader_c
except ImportError:  # no compiler at install time: the Python versions
    Source, find_class, persistent_load = PySource, standin, persistent_ref
else:
    _reader_c.configure(_CACHE, standin)
    _reader_c.configure_refs(StandInMeta, persistent_ref)
    Source, find_class, persistent_load = _reader_c.Source, _reader_c.find_class, _reader_c.persistent_ref
