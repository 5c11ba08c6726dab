"""The reader's work on one batch: convert each record, shape actions, cut requests.

Runs on the thread that follows the database. Each record is converted
(:mod:`esindexer.convert`), turned into actions (:meth:`DocumentBuilder.actions_for`),
and collected into requests bounded by count and bytes (:class:`RequestBuffer`);
a full request goes to a small pool of sender threads, and a semaphore makes the
reader wait while ``bulk_concurrency`` requests are in flight. The reader never holds
more than one pending request, so memory is flat however far behind the service is and
whatever the size of one transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from esindexer.config import Settings
from esindexer.convert.jsonifier import Jsonifier, Kind
from esindexer.documents import Action, DocumentBuilder
from esindexer.errors import Abandoned
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.committer import BatchInFlight
from esindexer.pipeline.crashguard import CrashGuard
from esindexer.pipeline.isolate import convert_in_process
from esindexer.pipeline.lease import Liveness
from esindexer.sink import SendResult, Sink
from esindexer.source.deadletters import DeadLetter
from esindexer.source.pages import Row


class RequestBuffer:
    """Collects actions into one bulk request bounded by count and bytes.

    ``add`` says when the request is full; ``take`` hands it over and starts a new one.
    An action larger than the byte bound still goes, alone: the sink decides
    (Elasticsearch's HTTP 413 is split down to it and then dead-lettered).
    """

    def __init__(self, max_docs: int, max_bytes: int):
        self.max_docs = max_docs
        self.max_bytes = max_bytes
        self._actions: list[Action] = []
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._actions)

    def add(self, action: Action) -> bool:
        """Append; True when the request has reached a bound and should be sent."""
        self._actions.append(action)
        self._bytes += action.size()
        return len(self._actions) >= self.max_docs or self._bytes >= self.max_bytes

    def take(self) -> list[Action]:
        actions, self._actions, self._bytes = self._actions, [], 0
        return actions


class BatchReader:
    """Turns the rows of one follow batch into settled-later requests and dead letters."""

    def __init__(self, settings: Settings, jsonifier: Jsonifier, builder: DocumentBuilder, sink: Sink,
                 metrics: Metrics, *, abandon: threading.Event, stopping: Callable[[], bool],
                 guard: CrashGuard | None = None, liveness: Liveness | None = None,
                 fence: Callable[[], None] | None = None):
        self.settings = settings
        self.jsonifier = jsonifier
        self.builder = builder
        self.sink = sink
        self.metrics = metrics
        self._abandon = abandon
        self._stopping = stopping
        self._guard = guard
        self._liveness = liveness or Liveness()
        #: raises when this process may no longer write (its lease is lost or too old)
        self._fence = fence
        self.pool = ThreadPoolExecutor(max_workers=settings.bulk_concurrency, thread_name_prefix="esindexer-bulk")
        self._in_flight = threading.BoundedSemaphore(settings.bulk_concurrency)

    def close(self) -> None:
        """Stop the senders; wait for them unless the work is being abandoned."""
        self.pool.shutdown(wait=not self._abandon.is_set(), cancel_futures=True)

    def read(self, rows: Iterable[Row], raise_failure: Callable[[], None]) -> BatchInFlight | None:
        """The batch of ``rows`` with its requests submitted, or None when stopped part-way
        (that batch must not count as done). ``raise_failure`` re-raises a committer failure."""
        s = self.settings
        batch = BatchInFlight(last_tid=-1)
        buffer = RequestBuffer(s.bulk_max_docs, s.bulk_max_bytes)
        actions_for = self.builder.actions_for
        record_documents = self.metrics.record_documents
        beat = self._liveness.beat

        def submit() -> bool:
            return self.submit(buffer, batch, raise_failure)

        # Converted here, or in a child process while the crash guard is active.
        guard = self._guard
        records = guard.records(rows) if guard is not None and guard.active else \
            convert_in_process(self.jsonifier, self.builder, rows)
        add = buffer.add
        for tid, zoid, data, conversion, built in records:
            if built is not None:  # the usual: an object's document
                full = add(built)
            elif (kind := conversion.kind) is Kind.ERROR or kind is Kind.CRASHED:
                full = False
                batch.dead.append(DeadLetter(zoid, tid, "unconvertible" if kind is Kind.ERROR else "crashed",
                                             conversion.error or "conversion failed",
                                             class_name=conversion.class_name, record=bytes(data or b"")))
                record_documents("index", "error")
            else:
                full = False
                if kind is Kind.SKIPPED:
                    record_documents("index", "skipped")
                for action in actions_for(tid, zoid, conversion):
                    full = add(action) or full
            batch.rows += 1
            batch.last_tid = tid
            if data is not None and len(data) > batch.largest:
                batch.largest = len(data)
            beat()
            if full and (not submit() or self._stopping()):
                return None
        if buffer and not submit():
            return None
        return batch

    def submit(self, buffer: RequestBuffer, batch: BatchInFlight, raise_failure: Callable[[], None]) -> bool:
        """Send the buffer; False when a stop came while every slot was busy.

        Waiting on for a slot after a stop could be for ever (Elasticsearch away, the
        in-flight requests retrying): the batch is cut short instead, so that the
        shutdown timeout starts and bounds the wait for what is in flight.
        """
        while not self._in_flight.acquire(timeout=0.5):
            raise_failure()
            if self._abandon.is_set():
                raise Abandoned("waiting for a bulk request slot (in-flight requests abandoned)")
            if self._stopping():
                return False
        future = self.pool.submit(self._send, buffer.take())
        future.add_done_callback(lambda _f: self._in_flight.release())
        batch.futures.append(future)
        return True

    def _send(self, actions: list[Action]) -> SendResult:
        if self._fence is not None:
            self._fence()
        with self._liveness.sending():
            result = self.sink.send(actions)
        for op, count in result.done.items():
            self.metrics.record_documents(op, "ok", count)
        return result
