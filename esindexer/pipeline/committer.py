"""The committer: settle batches strictly in order, then save progress; apply pack deletions.

It takes batches from the reader through a short queue, waits until every request of
a batch is settled (written, or refused for good), then writes the batch's dead letters
and its last tid as progress in **one** PostgreSQL transaction. Progress therefore only
moves to a transaction boundary whose every write the sink acknowledged, and strictly
in order, although several requests are in flight.

Between batches, and every few seconds when idle, it applies deletions captured from
packs (:mod:`esindexer.source.deletions`), in the order that keeps a deleted object
from coming back (:func:`ready_deletions`; docs/architecture.md, "Guarantees about
deletions").
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from esindexer.config import Settings
from esindexer.documents import Action, DocumentBuilder
from esindexer.errors import Abandoned
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.budget import ErrorBudget
from esindexer.pipeline.lease import Liveness
from esindexer.pipeline.memory import LARGE_RECORD_BYTES, give_back
from esindexer.pipeline.refresher import Refresher
from esindexer.sink import SendResult, Sink
from esindexer.source import deadletters, deletions, progress
from esindexer.source.deadletters import DeadLetter

log = logging.getLogger(__name__)

#: A captured deletion: ``(xid, log id, zoid, tid of the object's last state)``.
Deletion = tuple[int, int, int, int]


@dataclass
class BatchInFlight:
    """One follow batch on its way to progress: its requests and its dead letters."""

    last_tid: int
    rows: int = 0
    #: read while the follower was caught up: its writes are refreshed at once (refresher)
    live: bool = False
    futures: list[Future[SendResult]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    #: the size of its largest record (memory is given back after a large one)
    largest: int = 0
    #: documents=objects: the objects whose documents this batch rewrote, and their version
    dirty: list[int] = field(default_factory=list)
    dirty_version: int = 0
    #: documents=objects: it wrote every object of the tree (a backfill's resolution)
    dirty_tree: bool = False


@dataclass
class Drain:
    """A marker in the committer's queue: apply all pending deletions, then set ``done``."""

    done: threading.Event


class Stoppable(Protocol):
    """What the committer wakes when it fails or finds deletions waiting (the follower)."""

    def stop(self) -> None: ...

    def wake(self) -> None: ...


def ready_deletions(items: list[Deletion], progress_tid: int, all_settled: bool,
                    owns: Callable[[int], bool] | None = None) -> list[Deletion]:
    """The leading deletions that may be sent now, in log order.

    A deletion of an object whose last state has tid T may go when no write of that
    object can still be unsettled: when progress has reached T (everything read up to
    T is acknowledged, and later reads cannot return the object: it is gone), or when
    ``all_settled`` (nothing read is unsettled and no read is running). The first one
    that must wait stops the rest, so the cursor never passes it.

    With ``owns`` (a partition: whether a zoid is this process's), the deletions of other
    partitions' objects are passed at once: another process applies them, under its own
    cursor, so this one never sends them.
    """
    if all_settled:
        return list(items)
    return list(itertools.takewhile(
        lambda item: (owns is not None and not owns(item[2])) or item[3] <= progress_tid, items))


def partition_filter(settings: Settings) -> Callable[[int], bool] | None:
    """``zoid -> bool``: whether this process handles ``zoid`` (None: it handles all)."""
    spec = settings.partition_spec
    if spec is None:
        return None
    index, count = spec
    return lambda zoid: zoid % count == index


class Committer:
    """Settles batches in order and moves progress; owns the writer connection."""

    def __init__(self, conn: Any, *, settings: Settings, sink: Sink, builder: DocumentBuilder,
                 metrics: Metrics, budget: ErrorBudget, abandon: threading.Event, progress_tid: int,
                 refresher: Refresher | None = None, fence: Callable[[Any], None] | None = None,
                 liveness: Liveness | None = None, stopping: Callable[[], bool] = lambda: False):
        self.conn = conn
        self.settings = settings
        self.sink = sink
        self.builder = builder
        self.metrics = metrics
        self.budget = budget
        self._abandon = abandon
        #: whether the service was asked to stop: a wait for Elasticsearch is then bounded
        #: by ``shutdown_timeout`` (:meth:`finish`), or not begun (:meth:`put`, :meth:`drain_when_idle`)
        self._stopping = stopping
        self.refresher = refresher
        #: raises (esindexer.source.lease.LostLease) when this process may no longer write
        #: progress; run inside the transaction that writes it (esindexer.pipeline.lease)
        self._fence = fence
        self._liveness = liveness or Liveness()  # signs of life for the lease's watchdog
        self._queue: queue.Queue[BatchInFlight | Drain | None] = queue.Queue(maxsize=4)
        #: the last tid whose batch is settled.
        self.progress_tid = progress_tid
        #: a captured deletion waits for progress or for the reader's next idle moment.
        self.deletions_waiting = False
        self._thread = threading.Thread(target=self._run, name="esindexer-committer", daemon=True)
        self._failure: BaseException | None = None
        self._follower: Stoppable | None = None  # woken on failure (watch())
        self._closed = threading.Event()
        #: documents=objects: the object reader (dirty rows settle with progress; packs
        #: change the graph): :class:`esindexer.pipeline.objectreader.ObjectBatchReader`
        self.objects: Any = None

    def start(self) -> None:
        self._thread.start()

    def put(self, item: BatchInFlight | Drain) -> bool:
        """Queue ``item`` to settle in order; False, with nothing queued, when a stop comes
        while the queue is full (its batches wait for Elasticsearch, which may be gone):
        that batch does not count, and the stop's bounded wait can begin."""
        while True:
            self.raise_failure()
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                if self._stopping():
                    return False

    def watch(self, follower: Stoppable) -> None:
        """The follow iteration to end early if this committer fails (see :meth:`_run`)."""
        self._follower = follower
        if self._failure is not None:  # failed already, before there was anything to wake
            follower.stop()

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def finish(self, timeout: float | None) -> None:
        """Let queued batches settle (up to ``timeout`` s), then stop the thread.

        Without a ``timeout`` (the reader read everything), a stop that comes meanwhile
        bounds the wait by ``shutdown_timeout`` like any other stop: the last batches'
        requests may be retrying against an Elasticsearch that is gone."""
        if not self._thread.is_alive():
            return
        waited = self._join(timeout, end=True)
        if self._thread.is_alive() and not self._abandon.is_set():
            log.warning("in-flight bulks did not finish within %.0fs; abandoning them (progress stays at the "
                        "last acknowledged batch)", waited)
            self._abandon.set()
            self._closed.set()

    def _join(self, timeout: float | None, end: bool = False) -> float:
        """Wait for the thread up to ``timeout`` s (or ``shutdown_timeout`` s from a stop), or
        until the work is abandoned (a second signal must not wait for a bulk request
        Elasticsearch does not answer). Returns the bound that applied (0 for none).

        With ``end``, the end marker is queued behind the batches as soon as there is room:
        the queue may be full of batches that wait for Elasticsearch, and so must the marker."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread.is_alive() and not self._abandon.is_set():
            if end:
                try:
                    self._queue.put_nowait(None)
                    end = False
                except queue.Full:
                    pass
            if deadline is None and self._stopping():
                timeout = self.settings.shutdown_timeout
                deadline = time.monotonic() + timeout
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                break
            self._thread.join(left)
        return timeout or 0.0

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._join(10)

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                try:
                    item = self._queue.get(timeout=self.settings.lag_poll_interval)
                except queue.Empty:
                    self.drain_deletions()
                    continue
                if item is None:
                    return
                if isinstance(item, Drain):  # every earlier batch is settled: all may go
                    self.deletions_waiting = False
                    self.drain_deletions(all_settled=True)
                    item.done.set()
                    continue
                self._settle(item)
                largest = item.largest
                del item  # (its requests and documents go with it)
                if largest >= LARGE_RECORD_BYTES:
                    give_back(largest)
                self.drain_deletions()
        except BaseException as exc:  # handed to the reader thread
            self._failure = exc
            # The reader may be waiting for the next commit, which can be hours away in a
            # quiet database: wake it so the failure is seen now (not a silent stall).
            # Only this pipeline's iteration: a late failure of an old committer must not
            # end a newer one.
            follower = self._follower
            if follower is not None:
                follower.stop()

    def _settle(self, batch: BatchInFlight) -> None:
        dead = list(batch.dead)
        touched: set[str] = set()
        for future in batch.futures:
            result = future.result()  # Abandoned propagates: no progress for this batch
            touched |= result.touched
            for rejected in result.rejected:
                action = rejected.action
                dead.append(DeadLetter(action.zoid, action.tid, "rejected", rejected.reason,
                                       class_name=action.class_name, index_name=action.index,
                                       document=action.source))
                self.metrics.record_documents(action.op, "dead_lettered")
                log.warning("Elasticsearch rejected %s of zoid %d: %s", action.op, action.zoid, rejected.reason,
                            extra={"zoid": action.zoid, "tid": action.tid, "index": action.index})
        client_id = self.settings.worker_id
        if self._fence is not None:
            self._fence(self.conn)
        deadletters.add(self.conn, client_id, dead)
        progress.set_progress_tid(self.conn, client_id, batch.last_tid)
        if (batch.dirty or batch.dirty_tree) and self.objects is not None:
            with self.conn.cursor() as cur:
                self.objects.store.settle(cur, batch.dirty, batch.dirty_version, whole_tree=batch.dirty_tree)
        self.conn.commit()
        self._liveness.beat()
        self.progress_tid = batch.last_tid
        if self.refresher is not None and batch.live and touched:
            self.refresher.touched(touched)
        self.metrics.set_live(batch.live)
        self.metrics.record_progress(batch.last_tid)
        if batch.rows:  # (a partition also saves progress past commits none of its objects had)
            self.metrics.record_batch(batch.rows)
        if dead:
            self.metrics.set_dead_letters(deadletters.count(self.conn, client_id))
            self.conn.rollback()
        log.debug("progress saved", extra={"tid": batch.last_tid, "rows": batch.rows, "dead": len(dead)})
        self.budget.spend(len(dead))

    def drain_deletions(self, all_settled: bool = False) -> int:
        """Apply captured pack deletions that may go now (:func:`ready_deletions`); returns
        how many. When one must wait, :attr:`deletions_waiting` asks the reader to drain at
        its next idle moment (a quiet database may never move progress to its tid)."""
        if self.settings.documents == "objects" and self.objects is None:
            return 0  # not before the object reader is there: the graph must forget them with their documents
        client_id = self.settings.worker_id
        owns = partition_filter(self.settings)
        total = 0
        while True:
            items = deletions.pending(self.conn, client_id)
            self.conn.rollback()
            ready = ready_deletions(items, self.progress_tid, all_settled, owns)
            if len(ready) < len(items) and not self.deletions_waiting:
                self.deletions_waiting = True
                follower = self._follower
                if follower is not None:
                    follower.wake()
            if not ready:
                return total
            mine = ready if owns is None else [item for item in ready if owns(item[2])]
            actions: list[Action] = []
            for _xid, _id, zoid, tid in mine:
                actions.extend(self.builder.delete_actions(tid, zoid, version=tid + 1))
            settle_objects = None
            if self.objects is not None and mine:  # the graph forgets them; documents they changed
                changed, settle_objects = self.objects.packed([item[2] for item in mine])
                actions.extend(changed)
            # Checked before the deletes go, as before any bulk request, and again in the cursor's
            # transaction; no transaction (nor the xid of its row lock) stays open while they go.
            if self._fence is not None:
                self._fence(self.conn)
                self.conn.rollback()
            if actions:
                with self._liveness.sending():
                    result = self.sink.send(actions)
                for rejected in result.rejected:  # a delete is only refused when the index is broken
                    log.error("delete of packed zoid %d refused: %s", rejected.action.zoid, rejected.reason)
                if settle_objects is not None:
                    settle_objects()
            last_xid, last_id = ready[-1][0], ready[-1][1]
            if self._fence is not None:
                self._fence(self.conn)
            deletions.advance(self.conn, client_id, last_xid, last_id)
            self.conn.commit()
            self._liveness.beat()
            deletions.prune(self.conn)
            if mine:
                self.metrics.record_documents("delete", "ok", len(mine))
                total += len(mine)
                log.info("applied %d pack deletion(s)", len(mine), extra={"count": len(mine)})
            if len(ready) < len(items):
                return total

    def drain_all_known(self, stopping: Callable[[], bool], poll: float = 0.2) -> bool:
        """At the end of a bounded run (every batch settled, nothing read any more): apply
        every captured deletion this client has not applied, waiting for those committed
        behind a transaction still open on the server (:func:`deletions.pending` hands a
        row out only once every older transaction ended, so the cursor never passes one
        that may still appear). True once none is left, False when ``stopping`` ends the wait.
        Before, a bounded run said "caught up" with such deletions unapplied."""
        warned_at: float | None = None
        while True:
            self.drain_deletions(all_settled=True)
            left = deletions.count_unapplied(self.conn, self.settings.worker_id)
            holder = deletions.holding_back(self.conn) if left else None
            self.conn.rollback()
            if not left:
                return True
            now = time.monotonic()
            if warned_at is None or now - warned_at >= 10:
                log.warning("waiting to apply %d captured pack deletion(s): they are committed, but an older "
                            "transaction is still open on the PostgreSQL server (%s), and deletions are applied "
                            "in commit order", left, holder or "ended meanwhile", extra={"count": left})
                warned_at = now
            self._liveness.beat()
            deadline = now + poll
            while time.monotonic() < deadline:
                if stopping():
                    return False
                time.sleep(0.05)

    def drain_when_idle(self) -> None:
        """Called by the reader when it has read everything and is about to wait: settle
        every batch queued so far, then apply every pending deletion, before the reader
        reads again. Does nothing unless a deletion was found waiting for progress, and
        stops waiting at a stop (the deletions wait for the next run, as they would have)."""
        if not self.deletions_waiting or not self._thread.is_alive():
            return
        done = threading.Event()
        if not self.put(Drain(done)):
            return
        while not done.wait(0.5):
            self.raise_failure()
            if self._abandon.is_set():
                raise Abandoned("applying pack deletions")
            if self._stopping():
                return
        self.raise_failure()
