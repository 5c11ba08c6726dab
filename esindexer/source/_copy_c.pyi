"""Type stub for the optional C extension ``esindexer.source._copy_c`` (``_copy_c.c``), the
C twin of :func:`esindexer.source.copyrows.parse_py`."""

from typing import Any

def parse(data: Any, /) -> list[tuple[int, int, bytes | None, int | None]] | None:
    """The rows of a binary COPY stream of ``(int8, int8, bytea, int8)``, or None where
    the stream is not exactly that."""
