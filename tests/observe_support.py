"""Helpers for the observe tests (metrics, health, lag): tids built by ZODB itself.

``persistent.TimeStamp`` is ZODB's own implementation of the tid encoding, so it is an
independent oracle for ``esindexer.tid``. While ``esindexer.tid`` has not landed yet,
the ``tid_impl`` fixture stands in for it with this oracle; once it exists, the real
module is used and :func:`test_tid_module_agrees_with_zodb` (in test_metrics) checks it.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest
from persistent.TimeStamp import TimeStamp


def make_tid(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
             seconds: float = 0.0) -> int:
    """The tid ZODB would assign to a commit at this UTC time."""
    return int.from_bytes(TimeStamp(year, month, day, hour, minute, seconds).raw(), "big")


def reference_tid_to_epoch(tid: int) -> float:
    """Seconds since the Unix epoch, as ZODB's ``TimeStamp.timeTime()`` computes them."""
    return TimeStamp(tid.to_bytes(8, "big")).timeTime()


def real_tid_module() -> types.ModuleType | None:
    """``esindexer.tid`` if it exists and offers ``tid_to_epoch``."""
    try:
        module = importlib.import_module("esindexer.tid")
    except ImportError:
        return None
    return module if hasattr(module, "tid_to_epoch") else None


@pytest.fixture
def tid_impl(monkeypatch) -> types.ModuleType:
    """The ``esindexer.tid`` module the metrics code will import (real or stand-in)."""
    if (module := real_tid_module()) is not None:
        return module
    stand_in = types.ModuleType("esindexer.tid")
    stand_in.tid_to_epoch = reference_tid_to_epoch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "esindexer.tid", stand_in)
    return stand_in
