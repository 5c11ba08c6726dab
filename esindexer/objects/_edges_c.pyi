"""Type stub for the optional C extension ``esindexer.objects._edges_c`` (``_edges_c.c``): the
C twins of :func:`esindexer.objects.edges.walk_py`, of
:func:`esindexer.objects.edges.record_facts_py` (for the usual states) and of the walk of
:meth:`esindexer.objects.fold._Folder.value`."""

from collections.abc import Callable
from typing import Any

def walk(value: Any, key: str | None, out: list[tuple[int, str | None]], /) -> None:
    """Append ``(zoid, key)`` to ``out`` for every persistent reference in ``value``, as
    ``walk_py`` does."""

def configure(record_facts: type, /) -> None:
    """The tuple subclass :func:`facts` returns (``RecordFacts``)."""

def facts(zoid: int, tid: int, class_name: str | None, state: Any, /) -> Any:
    """``RecordFacts(zoid, tid, class_name, name, edges)`` as ``record_facts_py`` gives it, or
    None where only the Python functions can tell (a BTrees class, a state that is not a
    plain dict, one with ``_objects``)."""

def fold_value(value: Any, parts: dict[int, tuple[str, Any]], used: set[int], folded: list[int], refs: list[int],
               decoded: bool, part: Callable[[str, Any], Any], /) -> Any:
    """``value`` with the parts it refers to folded in, as ``_Folder.value`` gives it (``part``
    is called for each part folded)."""

def copy_rows(client: str, facts: list[Any], /) -> tuple[bytes, bytes] | None:
    """The COPY text (CSV, UTF-8) of a backfill batch's nodes and edges, as
    ``unresolved.copy_rows_py`` gives it, or None for a value it would not write the same way."""
