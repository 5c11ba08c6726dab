"""Type stub for the optional C extension ``esindexer.documents._shape_c`` (``_shape_c.c``),
the C twin of the typed shaper for the states it is sure about;
:mod:`esindexer.documents.fastshape` uses the Python shaper without it."""

from collections.abc import Callable
from typing import Any

def configure(date: Callable[[str], str | None], many: type, obj: type, special: frozenset[str],
              kinds: tuple[str, str, str, str], dates: frozenset[str],
              special_date: Callable[[dict[str, Any]], str | None], /) -> None:
    """typed._date, typed._Many, the converter's Obj, the markers left to Python, the four
    kinds, the date markers and the function that reads them."""

def shape(state: Any, text_limit: int, /) -> tuple[dict[str, Any], dict[str, Any], list[Any], list[str], list[int],
                                                  set[str]] | None:
    """``(typed, more, values, texts, refs, mixed)`` as the Python shaper makes them (before
    it moves the mixed paths to ``more``), or None."""
