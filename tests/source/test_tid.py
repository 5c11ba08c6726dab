"""esindexer.source.tid against persistent.TimeStamp, the encoding ZODB itself uses."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from persistent.timestamp import TimeStamp, TimeStampPy

from esindexer.source import tid as tids

# Tids from 1900 to about 2200 (the full range is checked separately where TimeStamp
# itself can represent it).
tid_values = st.integers(min_value=0, max_value=(0x0A000000 << 32) | 0xFFFFFFFF)
aware = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2999, 12, 31, 23, 59, 59, 999999),
    timezones=st.just(UTC),
)


def _raw(tid: int) -> bytes:
    return tid.to_bytes(8, "big")


def _valid_calendar_day(tid: int) -> bool:
    """TimeStamp builds no datetime for "day 31" of a shorter month; skip those."""
    ts = TimeStampPy(_raw(tid))
    try:
        datetime(ts.year(), ts.month(), ts.day())
    except ValueError:
        return False
    return True


def test_observed_example_from_the_spec():
    # newt-spec §6: 0x040d4b41420c85dd is 2026-11-27 09:37:15.480215 UTC.
    tid = 291972294502024669
    assert tids.tid_to_datetime(tid) == datetime(2026, 11, 27, 9, 37, 15, 480215, tzinfo=UTC)
    assert tids.tid_to_epoch(tid) == 1795772235.480215
    assert tids.tid_to_str(tid) == "2026-11-27 09:37:15.480215"
    assert tids.tid_to_bytes(tid) == bytes.fromhex("040d4b41420c85dd")
    assert tids.bytes_to_tid(bytes.fromhex("040d4b41420c85dd")) == tid


@settings(max_examples=3000)
@given(tid_values)
def test_epoch_matches_timestamp_timetime_bit_for_bit(tid):
    # TimeStamp is the C implementation when it is compiled (it is here).
    assert tids.tid_to_epoch(tid) == TimeStamp(_raw(tid)).timeTime()


@settings(max_examples=3000)
@given(tid_values)
def test_datetime_matches_timestamp_fields(tid):
    ts = TimeStamp(_raw(tid))
    dt = tids.tid_to_datetime(tid)
    assert dt.tzinfo is UTC
    start = datetime(ts.year(), ts.month(), 1, ts.hour(), ts.minute(), tzinfo=UTC)
    start += timedelta(days=ts.day() - 1)
    expected = start + timedelta(microseconds=round(ts.second() * 1e6))
    assert abs(dt - expected) <= timedelta(microseconds=1)
    if _valid_calendar_day(tid):
        assert (dt.year, dt.month, dt.day, dt.hour, dt.minute) == (
            ts.year(), ts.month(), ts.day(), ts.hour(), ts.minute()
        ) or dt.second == 0  # seconds rounding up to the next minute


@settings(max_examples=3000)
@given(aware)
def test_datetime_round_trip_and_timestamp_encoding(dt):
    tid = tids.datetime_to_tid(dt)
    assert tids.tid_to_datetime(tid) == dt
    ts = TimeStamp(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second + dt.microsecond / 1e6)
    assert tid == int.from_bytes(ts.raw(), "big")


@settings(max_examples=3000)
@given(st.floats(min_value=0, max_value=2**33, allow_nan=False))
def test_epoch_to_tid_is_zodbs_new_tid(seconds):
    # ZODB.utils.newTid: TimeStamp(*(time.gmtime(now)[:5] + (now % 60,)))
    expected = TimeStamp(*(time.gmtime(seconds)[:5] + (seconds % 60,)))
    assert tids.epoch_to_tid(seconds) == int.from_bytes(expected.raw(), "big")
    assert abs(tids.tid_to_epoch(tids.epoch_to_tid(seconds)) - seconds) < 1e-6 * max(1, seconds / 1e9)


def test_day_31_of_a_short_month_carries_forward():
    # February 31st 2026 00:00 is March 3rd in the encoding's 31-day months.
    tid = tids.datetime_to_tid(datetime(2026, 2, 28, tzinfo=UTC)) + (3 * 1440 << 32)
    assert tids.tid_to_datetime(tid) == datetime(2026, 3, 3, tzinfo=UTC)
    assert tids.tid_to_epoch(tid) == TimeStamp(_raw(tid)).timeTime()


def test_tids_are_not_linear_in_time():
    """Why one must never subtract tids: a month end jumps."""
    jan31 = tids.datetime_to_tid(datetime(2026, 1, 31, 23, 59, tzinfo=UTC))
    feb1 = tids.datetime_to_tid(datetime(2026, 2, 1, 0, 1, tzinfo=UTC))
    feb28 = tids.datetime_to_tid(datetime(2026, 2, 28, 23, 59, tzinfo=UTC))
    mar1 = tids.datetime_to_tid(datetime(2026, 3, 1, 0, 1, tzinfo=UTC))
    assert tids.seconds_between(jan31, feb1) == tids.seconds_between(feb28, mar1) == 120.0
    assert mar1 - feb28 != feb1 - jan31
    assert tids.seconds_between(feb1, jan31) == -120.0


def test_other_time_zones_are_converted():
    plus2 = timezone(timedelta(hours=2))
    dt = datetime(2026, 11, 27, 11, 37, 15, 480215, tzinfo=plus2)
    utc = datetime(2026, 11, 27, 9, 37, 15, 480215, tzinfo=UTC)
    assert tids.datetime_to_tid(dt) == tids.datetime_to_tid(utc)
    # A microsecond datetime lands within one microsecond of the tid it came from.
    assert 0 <= 291972294502024669 - tids.datetime_to_tid(utc) < 2**32 // 60_000_000 + 1


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        tids.datetime_to_tid(datetime(2026, 1, 1))


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_out_of_range_tids_are_refused(bad):
    with pytest.raises(ValueError):
        tids.tid_to_datetime(bad)


def test_out_of_range_times_are_refused():
    with pytest.raises(ValueError):
        tids.epoch_to_tid(float("nan"))
    with pytest.raises(ValueError):
        tids.datetime_to_tid(datetime(1899, 12, 31, tzinfo=UTC))
    with pytest.raises(ValueError):
        tids.bytes_to_tid(b"\0" * 7)


def test_now_tid_is_close_to_now():
    before = time.time()
    now = tids.now_tid()
    after = time.time()
    assert before - 1e-6 <= tids.tid_to_epoch(now) <= after + 1e-6
