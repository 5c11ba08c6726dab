"""Object transforms: user code that sees each object as Python data and adds search fields.

A transform configured with ``ESINDEXER_TRANSFORM`` that takes **one** argument is an
object transform, called by the document builder for every object it indexes::

    def transform(obj: esindexer.documents.ObjectRecord) -> Mapping[str, Any] | None

``obj.state`` is the converted state as Python data (dicts, lists, strings, numbers:
the shape of docs/json.md); the transform may change it in place or replace it. What it
returns (or puts in ``obj.fields``) is written under the document's ``fields`` object,
shaped by the same typed rules as ``state`` (so ``fields.effective`` given a converter
date marker, a ``datetime`` or an ISO string is a ``date``): a mapping-safe place,
since nothing else writes there and kinds that conflict are made harmless as in
``state``. A transform that raises is logged (ERROR, with class, zoid, tid and reason) and
the object is indexed as converted, without fields. The old two-argument form ``transform(class_name, json_text)`` keeps working
in the converter (docs/json.md); :func:`esindexer.config.transform_style` tells them apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from esindexer.documents.dates import utc_iso


@dataclass(slots=True)
class ObjectRecord:
    """One object as a transform sees it."""

    class_name: str
    zoid: int
    tid: int
    state: Any
    fields: dict[str, Any] = field(default_factory=dict)
    #: with documents=objects: the object's path ("/site/folder/page") and its folded parts
    path: str | None = None
    parts: tuple[int, ...] = ()


ObjectTransform = Callable[[ObjectRecord], "Mapping[str, Any] | None"]


def plain(value: Any) -> Any:
    """Python values a transform may return, as JSON-ready data (dates as ISO strings)."""
    if isinstance(value, datetime):
        return utc_iso(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return str(value)  # as the converter writes such ints; JSON serialisers refuse them
    if isinstance(value, float) and not math.isfinite(value):
        return None  # Elasticsearch refuses NaN and infinities
    return value


def apply(transform: ObjectTransform, record: ObjectRecord) -> dict[str, Any]:
    """Run ``transform`` on ``record``; the search fields it asks for (JSON-ready)."""
    added = transform(record)
    if added:
        record.fields.update(added)
    return plain(record.fields) if record.fields else {}
