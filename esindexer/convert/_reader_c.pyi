"""Type stub for the optional C extension ``esindexer.convert._reader_c`` (``_reader_c.c``),
the C twins of :class:`esindexer.convert.reader.PySource` and of the stand-in cache
lookup; :mod:`esindexer.convert.reader` falls back to the Python versions without it."""

from collections.abc import Callable
from typing import Any

class Source:
    """``data`` (bytes) and ``pos``; ``peek`` gives everything from ``pos``."""

    data: bytes
    pos: int
    def peek(self, n: int = 0, /) -> bytes: ...
    def read(self, n: int | None = -1, /) -> bytes: ...
    def readinto(self, buffer: Any, /) -> int: ...
    def readline(self, size: int | None = -1, /) -> bytes: ...

def configure(cache: dict[tuple[str, str], type], fallback: Callable[[str, str], type], /) -> None:
    """The stand-in cache and the function that fills it; before :func:`find_class`."""

def find_class(module: str, name: str, /) -> type:
    """``cache[(module, name)]`` when present, else ``fallback(module, name)``."""

def configure_refs(standin_meta: type, fallback: Callable[[Any], dict[str, Any]], /) -> None:
    """The stand-in metaclass and :func:`esindexer.convert.values.persistent_ref`; before
    :func:`persistent_ref`."""

def persistent_ref(pid: Any, /) -> dict[str, Any]:
    """``values.persistent_ref(pid)``: the usual reference built in C, any other by it."""

def stand_in_call(metaclass: type, kind: str, fallback: Callable[..., Any], /) -> Any:
    """A ``__call__`` method for the ``datetime`` or ``date`` stand-in metaclass: the usual
    state bytes as ``isoformat()`` text, any other call as ``fallback(cls, *args, **kwargs)``."""
