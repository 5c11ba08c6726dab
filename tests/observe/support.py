"""Helpers for the observe tests (metrics, health, lag): tids built by ZODB itself.

``persistent.TimeStamp`` is ZODB's own implementation of the tid encoding, so it is an
independent oracle for ``esindexer.source.tid`` (:func:`test_tid_module_agrees_with_zodb` in
test_metrics checks the two agree).
"""

from __future__ import annotations

from persistent.TimeStamp import TimeStamp


def make_tid(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
             seconds: float = 0.0) -> int:
    """The tid ZODB would assign to a commit at this UTC time."""
    return int.from_bytes(TimeStamp(year, month, day, hour, minute, seconds).raw(), "big")


def reference_tid_to_epoch(tid: int) -> float:
    """Seconds since the Unix epoch, as ZODB's ``TimeStamp.timeTime()`` computes them."""
    return TimeStamp(tid.to_bytes(8, "big")).timeTime()
