"""Type stub for the optional C extension ``esindexer.convert._scan_c`` (``_scan_c.c``).

The extension is built at install time when a C compiler is available (``setup.py``,
``optional=True``); :mod:`esindexer.convert.scan` imports it if present and falls back
to :func:`esindexer.convert.scan.scan_py` otherwise. This stub only describes its two
functions for type checkers: a ``.pyi`` file is never imported, so it cannot stand in
for the missing extension at runtime.
"""

from typing import Protocol

class _Scan(Protocol):
    """The signature of :func:`esindexer.convert.scan.scan_py` (and of :func:`scan`)."""

    def __call__(
        self,
        data: bytes,
        start: int,
        kinds: dict[int, int],
        state: list[int],
        stack: list[int] | None = None,
        marks: list[int] | None = None,
    ) -> int: ...

def configure(unsafe_pickle: type[BaseException], scan_py: _Scan, max_depth: int, /) -> None:
    """Set the exception class to raise (``UnsafePickle``), the reference scan to delegate
    rare cases to (``scan_py``) and the deepest nesting accepted (``MAX_DEPTH``, 1-254).
    Must be called before :func:`scan`."""

def scan(
    data: bytes,
    start: int,
    kinds: dict[int, int],
    state: list[int],
    stack: list[int] | None = None,
    marks: list[int] | None = None,
) -> int:
    """Scan one pickle of ``data`` from ``start`` to its STOP; return the offset after it.

    The C version of :func:`esindexer.convert.scan.scan_py`, with identical results.
    Other argument types, keywords, a negative ``start`` (and ``stack``/``marks``) are
    handed to ``scan_py`` as they are."""
