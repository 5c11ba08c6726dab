"""Transaction ids as points in time.

A ZODB transaction id (tid) is a ``persistent.TimeStamp``: 8 bytes, big-endian, read
by RelStorage as a PostgreSQL ``bigint``. It encodes a **UTC** wall-clock time:

- the high 32 bits count minutes: ``a = ((((year - 1900) * 12 + month - 1) * 31
  + day - 1) * 24 + hour) * 60 + minute``;
- the low 32 bits count fractions of the minute in units of ``60 / 2**32`` seconds
  (about 13.97 ns), truncated.

Every month is encoded as 31 days long, so tids are **not linear in time**: the gap
between the tids of Jan 31 and Feb 1 is not the gap between Feb 28 and Mar 1. Never
subtract two tids to get a duration; convert both with :func:`tid_to_epoch` (or use
:func:`seconds_between`) and subtract the results.

The conversions reproduce ``persistent.TimeStamp`` exactly, so a tid written by
ZODB (or computed by RelStorage from the server clock, which uses the same encoding)
decodes here to the same instant that ``TimeStamp(p64(tid)).timeTime()`` gives:

- :func:`tid_to_epoch` returns the same float as ``TimeStamp.timeTime()`` (C
  implementation), including its rounding;
- :func:`tid_to_datetime` rounds to the nearest microsecond, because ``datetime``
  cannot hold finer values;
- encoding truncates the seconds to the 13.97 ns unit, as TimeStamp does, so
  ``tid_to_datetime(datetime_to_tid(dt)) == dt`` for every microsecond ``dt``.

A "31st" day of a shorter month (possible when RelStorage bumps a tid past midnight
with ``max + 1``) decodes by carrying into the next month, as TimeStamp's day
arithmetic does, instead of raising: a tid in the database must stay readable.

This module is pure arithmetic: no database, no clock except where a function says so.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

__all__ = [
    "MAX_TID",
    "bytes_to_tid",
    "datetime_to_tid",
    "epoch_to_tid",
    "now_tid",
    "seconds_between",
    "tid_to_bytes",
    "tid_to_datetime",
    "tid_to_epoch",
    "tid_to_str",
]

#: The largest tid PostgreSQL's signed ``bigint`` can hold (reached around the year 5900).
MAX_TID = 2**63 - 1

# The unit of the low 32 bits, computed the way TimeStamp computes it so that float
# rounding matches bit for bit.
_SECOND_UNIT = 60.0 / (1 << 16) / (1 << 16)
_MINUTES_PER_DAY = 24 * 60
_MINUTES_PER_MONTH = 31 * _MINUTES_PER_DAY
_MINUTES_PER_YEAR = 12 * _MINUTES_PER_MONTH
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# persistent's C TimeStamp counts seconds from its own base near 1900 and subtracts
# this offset (its value of 1970-01-01) at the end; the float rounding depends on it.
_C_EPOCH_OFFSET = 2177452800


def _check_tid(tid: int) -> None:
    if not 0 <= tid < 2**64:
        raise ValueError(f"not a transaction id: {tid!r}")


def _split(tid: int) -> tuple[int, int]:
    """(whole seconds since the epoch at the start of the tid's minute, low 32 bits)."""
    _check_tid(tid)
    minutes, fraction = tid >> 32, tid & 0xFFFFFFFF
    year = minutes // _MINUTES_PER_YEAR + 1900
    month = minutes // _MINUTES_PER_MONTH % 12 + 1
    day = minutes // _MINUTES_PER_DAY % 31 + 1
    minute_of_day = minutes % _MINUTES_PER_DAY
    # Count days from the first of the month so that a "31st" of a shorter month
    # carries into the next month instead of raising.
    first = datetime(year, month, 1, tzinfo=UTC)
    start = (first - _EPOCH).days * 86400 + (day - 1) * 86400 + minute_of_day * 60
    return start, fraction


def tid_to_datetime(tid: int) -> datetime:
    """The UTC instant a tid encodes, as an aware ``datetime``.

    The sub-minute part is rounded to the nearest microsecond in integer arithmetic
    (one tid unit is 13.97 ns, so nothing meaningful is lost).
    """
    start, fraction = _split(tid)
    micro = (fraction * 60_000_000 * 2 + (1 << 32)) // (1 << 33)  # round half up
    return _EPOCH + timedelta(seconds=start, microseconds=micro)


def tid_to_epoch(tid: int) -> float:
    """Seconds since the Unix epoch (UTC) for a tid.

    Bit for bit what ``persistent.TimeStamp(p64(tid)).timeTime()`` returns with the C
    implementation ZODB uses by default: that code adds the float seconds to a day
    count based in 1900 and then subtracts the 1970 offset, and the two roundings are
    reproduced here. (The pure-Python fallback rounds to microseconds first and can
    differ in the last digit.)
    """
    start, fraction = _split(tid)
    return (float(start + _C_EPOCH_OFFSET) + fraction * _SECOND_UNIT) - _C_EPOCH_OFFSET


def _encode(year: int, month: int, day: int, hour: int, minute: int, seconds: float) -> int:
    if not year >= 1900:
        raise ValueError(f"tids cannot encode years before 1900: {year}")
    minutes = ((((year - 1900) * 12 + month - 1) * 31 + day - 1) * 24 + hour) * 60 + minute
    tid = (minutes << 32) | int(seconds / _SECOND_UNIT)
    if tid > MAX_TID:
        raise ValueError(f"year {year} is beyond what a PostgreSQL bigint tid can hold")
    return tid


def datetime_to_tid(dt: datetime) -> int:
    """The tid ZODB would assign at the instant ``dt``.

    ``dt`` must be timezone-aware: a naive datetime is ambiguous (``datetime.now()`` is
    local time, ``datetime.utcnow()`` is UTC), and guessing wrong shifts every lag
    metric by hours, so it is refused with ``ValueError``.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("datetime_to_tid needs a timezone-aware datetime (tids are UTC)")
    utc = dt.astimezone(UTC)
    return _encode(utc.year, utc.month, utc.day, utc.hour, utc.minute,
                   utc.second + utc.microsecond / 1e6)


def epoch_to_tid(seconds: float) -> int:
    """The tid ZODB would assign at ``seconds`` since the epoch.

    Computed as ZODB computes a new tid from ``time.time()``: the calendar fields from
    ``time.gmtime(seconds)`` and the seconds within the minute from ``seconds % 60``.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite time: {seconds!r}")
    fields = time.gmtime(seconds)
    return _encode(fields.tm_year, fields.tm_mon, fields.tm_mday, fields.tm_hour,
                   fields.tm_min, seconds % 60)


def now_tid() -> int:
    """The tid that corresponds to the local clock now (for lag estimates, not commits)."""
    return epoch_to_tid(time.time())


def seconds_between(older_tid: int, newer_tid: int) -> float:
    """Wall-clock seconds from ``older_tid`` to ``newer_tid`` (negative if reversed).

    This is the safe replacement for ``newer_tid - older_tid``, which mixes minutes
    and fractions and jumps at every month end.
    """
    return tid_to_epoch(newer_tid) - tid_to_epoch(older_tid)


def tid_to_bytes(tid: int) -> bytes:
    """The 8-byte form ZODB uses (``ZODB.utils.p64``)."""
    _check_tid(tid)
    return tid.to_bytes(8, "big")


def bytes_to_tid(raw: bytes) -> int:
    """The integer form RelStorage stores (``ZODB.utils.u64``) of an 8-byte tid."""
    if len(raw) != 8:
        raise ValueError(f"a tid is 8 bytes, got {len(raw)}")
    return int.from_bytes(raw, "big")


def tid_to_str(tid: int) -> str:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC, the format ``str(TimeStamp)`` uses."""
    return tid_to_datetime(tid).strftime("%Y-%m-%d %H:%M:%S.%f")
