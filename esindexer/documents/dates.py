"""Dates for search: recognise every date kind the converter emits and write it as one UTC form.

Elasticsearch maps a new ``state`` field as ``date`` only when its first string has the
exact form ``strict_date_time`` (``2026-06-01T12:30:00.000005Z``, a fraction and a zone
are required: see :mod:`esindexer.es.admin`). So every date leaves the builder in that
form and no other string does by accident: a string is a date here exactly when it has
an ISO 8601 date shape and Python can read it, and then it is rewritten into the form.

The converter's date kinds (docs/json.md), and what they become:

- naive ``datetime``: ``"2026-06-01T12:30:00.000005"`` → read as UTC (documented: it
  names no zone, and one rule is needed);
- ``date``: ``"2026-06-01"`` → midnight UTC of that day;
- aware ``datetime``: ``{"::": "datetime", "value": "...+02:00", "tz": ...}`` → the value
  with its offset kept (Elasticsearch converts it to UTC for search, ``_source`` keeps the
  offset); without an offset in the pickle the wall time is read as UTC, as for naive;
- Zope ``DateTime`` (``{"::": "DateTime.DateTime.DateTime", ...}``): its pickled state,
  in every shape the DateTime package has written, WITHOUT importing it:

  * DateTime >= 2.12: ``"state": [micros, tz_naive, tz_name]`` (micros since the epoch,
    UTC; written as a float of *seconds* by a few releases, which DateTime itself reads
    as seconds too);
  * older releases pickled the instance ``__dict__``: ``_micros`` (int, µs) if present,
    else ``_t`` (float seconds since the epoch, UTC); other keys (``_year``, ``_tz``...)
    are derived and ignored.

  The instant is UTC in every shape; the zone name only says how Zope displays it.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

#: Class names the converter gives a Zope DateTime (module DateTime.DateTime, class DateTime).
DATETIME_CLASSES = frozenset({"DateTime.DateTime.DateTime", "DateTime.DateTime"})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: What might be an ISO date: checked by Python afterwards. Bounded length keeps this cheap.
_ISO = re.compile(r"\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?(?:Z|[+-]\d\d:?\d\d)?)?")


def utc_iso(moment: datetime) -> str:
    """``strict_date_time`` form of an aware or naive (= UTC) datetime: microseconds and ``Z``."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"  # 4x faster than strftime


def date_string(text: str) -> str | None:
    """The date form of ``text`` if it is an ISO 8601 date or date-time, else None.

    ``"2026-06-01"`` and ``"2026-06-01T12:30:00"`` (naive: UTC) become ``...Z`` strings;
    a string with an offset keeps it (Elasticsearch reads the offset). Years before 1
    or impossible days (``2026-02-30``) are not dates.
    """
    if len(text) < 10 or len(text) > 35 or not text[0].isdigit() or not _ISO.fullmatch(text):
        return None
    try:
        if len(text) == 10:
            return utc_iso(datetime.combine(date.fromisoformat(text), datetime.min.time()))
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return utc_iso(parsed)
    offset = parsed.utcoffset()
    if offset is None or offset == timedelta(0):
        return utc_iso(parsed)
    # Keep the offset in the source; Elasticsearch converts for search.
    sign = "+" if offset >= timedelta(0) else "-"
    minutes = abs(int(offset.total_seconds())) // 60
    wall = parsed.replace(tzinfo=None).isoformat(timespec="microseconds")
    return f"{wall}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _from_micros(micros: int) -> str | None:
    try:
        return utc_iso(_EPOCH + timedelta(microseconds=micros))
    except OverflowError:
        return None


def zope_datetime(value: dict[str, Any]) -> str | None:
    """The UTC instant of a converted Zope ``DateTime`` (any pickled shape), or None if unreadable."""
    state = value.get("state")
    if isinstance(state, list) and state:
        stamp = state[0]
        if isinstance(stamp, bool):
            return None
        if isinstance(stamp, int):
            return _from_micros(stamp)
        if isinstance(stamp, float) and stamp == stamp and abs(stamp) < 1e12:
            return _from_micros(int(stamp * 1_000_000))
        return None
    micros = value.get("_micros")
    if isinstance(micros, int) and not isinstance(micros, bool):
        return _from_micros(micros)
    seconds = value.get("_t")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and abs(seconds) < 1e12:
        return _from_micros(int(seconds * 1_000_000))
    return None


def aware_datetime(value: dict[str, Any]) -> str | None:
    """The converter's aware ``datetime`` marker (``{"::": "datetime", "value": ...}``) as a date string."""
    text = value.get("value")
    return date_string(text) if isinstance(text, str) else None
