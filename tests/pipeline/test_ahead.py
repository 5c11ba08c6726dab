"""read_ahead: the producer runs one item ahead in its thread, errors reach the consumer,
and an early stop ends and joins the thread (nothing uses its connection afterwards)."""

from __future__ import annotations

import threading
import time

import pytest

from esindexer.pipeline.ahead import read_ahead


def test_items_in_order_produced_ahead_in_another_thread():
    produced: list[tuple[int, str]] = []

    def items():
        for n in range(5):
            produced.append((n, threading.current_thread().name))
            yield n

    got = []
    for n in read_ahead(items(), name="ahead-test"):
        time.sleep(0.05)  # the producer has the next one ready meanwhile
        got.append((n, len(produced)))
    assert [n for n, _ in got] == [0, 1, 2, 3, 4]
    assert all(seen >= min(n + 2, 5) for n, seen in got)  # one (or more) ahead, never behind
    assert {name for _, name in produced} == {"ahead-test"}


def test_an_error_of_the_producer_is_raised_to_the_consumer_where_it_happened():
    def items():
        yield 1
        raise ValueError("database went away")

    got = []
    with pytest.raises(ValueError, match="database went away"):
        for n in read_ahead(items()):
            got.append(n)
    assert got == [1]


def test_an_early_stop_ends_and_joins_the_producer():
    closed = threading.Event()
    started = threading.Event()

    def items():
        try:
            for n in range(1000):
                started.set()
                yield n
        finally:
            closed.set()

    before = threading.active_count()
    ahead = read_ahead(items(), name="ahead-stop")
    assert next(ahead) == 0
    ahead.close()  # what the reader does when a stop comes
    assert closed.is_set()
    assert not any(t.name == "ahead-stop" for t in threading.enumerate())
    assert threading.active_count() == before
