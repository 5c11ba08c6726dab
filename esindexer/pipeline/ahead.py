"""Reading one step ahead in a thread: database reads overlap the work on what was read.

The object reader's documents need the graph's answers and the objects' current states
from PostgreSQL, then Python work (decoding, folding, shaping). A thread runs the reads
of the next group while this one is built: the database works (and the GIL is released
while it does) instead of waiting for Python, and the other way round.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()


def read_ahead(items: Iterator[T], name: str = "read-ahead") -> Iterator[T]:
    """``items``, produced by a thread one item ahead of the consumer.

    An exception of ``items`` is raised to the consumer where it would have been. When
    the consumer stops early (a stop, an error), the thread is told to stop and joined
    before this returns, so nothing else uses its connection meanwhile.
    """
    handoff: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
    abandoned = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not abandoned.is_set():
            try:
                handoff.put(entry, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put((False, exc))
            return
        put((True, _END))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = handoff.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        abandoned.set()
        thread.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()
