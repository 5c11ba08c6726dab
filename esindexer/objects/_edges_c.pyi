"""Type stub for the optional C extension ``esindexer.objects._edges_c`` (``_edges_c.c``), the
C twin of :func:`esindexer.objects.edges.walk_py`."""

from typing import Any

def walk(value: Any, key: str | None, out: list[tuple[int, str | None]], /) -> None:
    """Append ``(zoid, key)`` to ``out`` for every persistent reference in ``value``, as
    ``walk_py`` does."""
