"""The reader with documents=objects: records update the graph, objects are written.

Each batch's records are converted as always; what each says about the graph (its name,
its references) is applied to the graph in PostgreSQL (:class:`GraphStore`), which
answers with the objects whose documents changed: the records' own objects, the owners
of changed parts, and every object whose place changed (a move re-paths a subtree, a
removal takes it out). Those documents are assembled from the current states
(:func:`assemble`), shaped by the same builder as record documents, and sent like any
other request. The graph's answer is written as *dirty* rows in the transaction that
changed the graph; the batch's progress transaction removes them, so a crash in between
rebuilds them at the next start (:meth:`ObjectBatchReader.recover`).
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson

from esindexer.config import Settings
from esindexer.convert.jsonifier import Decoded, Kind
from esindexer.documents import Action
from esindexer.errors import SetupError
from esindexer.objects import dirtypages
from esindexer.objects.assemble import Group, assemble, build, read_groups
from esindexer.objects.edges import RecordFacts, record_facts
from esindexer.objects.store import GraphStore
from esindexer.pipeline.ahead import read_ahead
from esindexer.pipeline.committer import BatchInFlight
from esindexer.pipeline.reader import BatchReader, RequestBuffer
from esindexer.sink import SendResult
from esindexer.source import graph, pg
from esindexer.source.deadletters import DeadLetter
from esindexer.source.pages import Row

log = logging.getLogger(__name__)


class ObjectBatchReader(BatchReader):
    """:class:`BatchReader` for object documents (see the module docstring)."""

    def __init__(self, *args: Any, store: GraphStore, states_conn: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.store = store
        self._states_conn = states_conn
        self._states = pg.CurrentStates(states_conn)
        #: a backfill writes the graph unresolved, then resolves it once, when caught up
        #: (set-based over the whole graph: far faster than batch by batch)
        self.building = not store.complete()
        #: whether the follower has handed out everything committed (set by the indexer),
        #: and the tid a bounded run stops at
        self.caught_up: Callable[[], bool] = lambda: False
        self.end_tid: int | None = None
        #: a backfill's batches are written into the graph on a thread of their own, while
        #: the reader decodes the next batch (PostgreSQL's work on the other core)
        self._graph_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esindexer-graph")
        self._graph_write: Future[SendResult] | None = None
        self._tree_count = 0

    def begin(self, start_tid: int, end_tid: int | None) -> None:
        """Before following from ``start_tid`` (up to ``end_tid``): a :class:`SetupError` when
        the graph is not the one the documents up to ``start_tid`` were built from.

        A resolved graph with no progress at all is one whose progress was set back to the
        start by hand (docs/operations.md: re-index everything): its records, applied at the
        tids read again, would change nothing and no document would be written (an emptied
        index stayed empty). It is built again from the start, as a backfill's."""
        with self.store.lock:  # the committer uses the graph's connection too (packs)
            problem = graph.coverage_problem(self.store.conn, self.store.client_id, start_tid)
        if problem is not None:
            raise SetupError(problem)
        if start_tid < 0 and not self.building:
            log.info("indexing from the start: the object graph of client id %r is built again",
                     self.store.client_id, extra={"client_id": self.store.client_id})
            self.store.forget()
            self.building = True
        self.end_tid = end_tid

    @property
    def connections(self) -> tuple[Any, Any]:
        """The graph's connection and the one states are read on (a stop cancels their statements)."""
        return self.store.conn, self._states_conn

    def close(self) -> None:
        super().close()
        self._graph_writer.shutdown(wait=not self._abandon.is_set(), cancel_futures=True)
        for conn in self.connections:
            try:
                conn.close()
            except Exception:  # closing on the way out: nothing to do about it
                pass

    def object_actions(self, zoids: list[int], version: int) -> list[Action]:
        """Index or delete actions for the documents of ``zoids`` at ``version``."""
        with self.store.lock:  # the committer uses the graph's connection too (packs)
            views = assemble(zoids, self.store, self._states, self.jsonifier)
        return self.builder.assembled_actions(views, version)

    def recover(self) -> int:
        """Write the documents a crash left dirty (before following); returns how many.

        A page of objects at a time (:func:`dirtypages.to_rewrite`), each settled once
        sent: after a crash while a backfill wrote its documents, every object of the tree
        is dirty (a million documents assembled at once were one bulk request of 1.6 GB,
        refused, and as much memory). A page is built while the last one's request is
        answered (one after the other took twice as long), and the progress report
        counts them down as it does a backfill's (they were "ETA 0:01" for minutes)."""
        version = self.store.applied_tid()
        left, pages = dirtypages.to_rewrite(self.store, self.settings.bulk_max_docs)
        if not left:
            return 0
        log.info("rewriting %d object document(s) left unwritten by the last run", left, extra={"count": left})
        self.metrics.set_object_documents_to_write(left)
        written, stopped = 0, False
        in_flight: tuple[list[int], Future[SendResult]] | None = None
        try:
            for page in pages:
                actions = self.object_actions(page, version)
                if in_flight is not None:
                    written += self._settle_sent(*in_flight, version)
                    in_flight = None
                    if self._stopping():  # (the page just built is the next start's)
                        stopped = True
                        break
                in_flight = page, self.pool.submit(self._send, actions)
                left = max(left - len(page), 0)
                self.metrics.set_object_documents_to_write(left)
            if in_flight is not None:
                written += self._settle_sent(*in_flight, version)
        finally:
            self.metrics.set_object_documents_to_write(0)
        if stopped:
            log.info("stopped while rewriting the object documents left unwritten: %d rewritten, the rest at "
                     "the next start", written, extra={"count": written})
            return written
        with self.store.lock, self.store.conn.cursor() as cur:
            self.store.settle(cur, [], version, whole_tree=True)  # (the tree's mark, if it was set)
            self.store.conn.commit()
        log.info("rewrote %d object document(s) left unwritten by the last run", written,
                 extra={"count": written, "tid": version})
        return written

    def _settle_sent(self, page: list[int], request: Future[SendResult], version: int) -> int:
        """Wait for a restart's request; once accepted, forget its page's dirty rows."""
        result = request.result()
        for rejected in result.rejected:
            log.error("object document of zoid %d refused after a restart: %s", rejected.action.zoid,
                      rejected.reason, extra={"zoid": rejected.action.zoid})
        with self.store.lock, self.store.conn.cursor() as cur:
            self.store.settle(cur, page, version)
            self.store.conn.commit()
        return len(page)

    def packed(self, zoids: list[int]) -> tuple[list[Action], Callable[[], None]]:
        """Pack deletions: drop the records from the graph; the documents that changed with
        them, and how to forget them as dirty once sent."""
        with self.store.lock:
            dirty, version = self.store.apply([], zoids, self.store.applied_tid(), resolve=not self.building)
            actions = self.object_actions(dirty, version) if dirty else []

        def settle() -> None:
            with self.store.lock, self.store.conn.cursor() as cur:
                self.store.settle(cur, dirty, version)
                self.store.conn.commit()

        return actions, settle

    def read(self, rows: Iterable[Row], raise_failure: Callable[[], None]) -> BatchInFlight | None:
        batch = BatchInFlight(last_tid=-1)
        facts: list[RecordFacts] = []
        deleted: list[int] = []
        guard = self._guard
        if guard is not None and guard.active:
            records: Iterable[tuple[int, int, Any, Any]] = (r[:4] for r in guard.records(rows))
        else:  # decoded without JSON text where it can be: only names and references are read here
            decode = self.jsonifier.decode
            records = ((tid, zoid, data, decode((tid, zoid), data)) for tid, zoid, data in rows)
        beat = self._liveness.beat
        for tid, zoid, data, conversion in records:
            if type(conversion) is Decoded:
                facts.append(record_facts(zoid, tid, conversion.class_name, conversion.state))
                kind = Kind.OK
            else:
                kind = conversion.kind
            if kind is Kind.OK:
                pass
            elif kind is Kind.ERROR or kind is Kind.CRASHED:
                batch.dead.append(DeadLetter(zoid, tid, "unconvertible" if kind is Kind.ERROR else "crashed",
                                             conversion.error or "conversion failed",
                                             class_name=conversion.class_name, record=bytes(data or b"")))
                self.metrics.record_documents("index", "error")
            elif kind is Kind.DELETED:
                deleted.append(zoid)
            if kind is Kind.OK and type(conversion) is not Decoded:
                state = orjson.loads(conversion.json_text)
                facts.append(record_facts(zoid, tid, conversion.class_name, state))
            batch.rows += 1
            batch.last_tid = tid
            if data is not None and len(data) > batch.largest:
                batch.largest = len(data)
            beat()
            if self._stopping():
                return None
        if batch.last_tid < 0:
            return batch
        if not self.building:
            if self._fence is not None:
                self._fence()
            dirty, version = self.store.apply(facts, deleted, batch.last_tid)
        else:
            batch.futures.append(self._write_unresolved(facts, deleted, batch.last_tid))
            dirty, version = [], batch.last_tid
            if self.caught_up() or (self.end_tid is not None and batch.last_tid >= self.end_tid):
                version = self._resolve(batch.last_tid)
                return self._write(batch, [], version, raise_failure, whole_tree=True)
        return self._write(batch, dirty, version, raise_failure)

    def _write_unresolved(self, facts: list[RecordFacts], deleted: list[int], tid: int) -> Future[SendResult]:
        """A backfill's batch, written into the graph on the graph writer's thread.

        The reader decodes the next batch meanwhile; it waits for the write before this one
        (at most two batches' facts are held). The batch's progress waits for the write
        as for a bulk request: the future is one of its requests, with nothing to count."""
        if self._graph_write is not None:
            self._graph_write.result()  # a failure is the pipeline's: it stops here

        def write() -> SendResult:
            if self._fence is not None:
                self._fence()
            self.store.apply(facts, deleted, tid, resolve=False)
            return SendResult()

        self._graph_write = self._graph_writer.submit(write)
        return self._graph_write

    def _resolve(self, tid: int) -> int:
        """Resolve the graph a backfill wrote; the version of its objects, all dirty."""
        if self._graph_write is not None:
            self._graph_write.result()  # every batch written before the graph is resolved
        log.info("backfill read: resolving the object graph", extra={"tid": tid})
        # PostgreSQL's work alone, for as long as the graph takes (20 s at 10^6 objects, one
        # statement of it minutes at 10^7): the watchdog asks PostgreSQL whether it still
        # works (and allows it a request's time where it cannot tell), and the progress
        # report says what runs (the rows, all read, stand still)
        self.metrics.set_object_graph_resolving(time.time())
        try:
            with self._liveness.sending(), self._liveness.in_statement(self.store.conn.get_backend_pid()):
                count, version = self.store.resolve_all(tid, beat=self._liveness.beat)
        finally:
            self.metrics.set_object_graph_resolving(None)
        self.building = False
        self._tree_count = count  # for the progress report: the documents the tree's write has to send
        return version

    def finish(self, last_tid: int, raise_failure: Callable[[], None]) -> BatchInFlight | None:
        """At the end of a bounded run whose last batch did not reach ``end_tid``: resolve a
        graph still being built and write every object (a batch to settle), else None."""
        if not self.building:
            return None
        batch = BatchInFlight(last_tid=last_tid)
        version = self._resolve(last_tid)
        return self._write(batch, [], version, raise_failure, whole_tree=True)

    def _write(self, batch: BatchInFlight, dirty: list[int], version: int,
               raise_failure: Callable[[], None], whole_tree: bool = False) -> BatchInFlight | None:
        """Submit the documents of ``dirty`` as part of ``batch``; None when stopped part-way.
        The next group's reads run in a thread while this group is built (:func:`read_ahead`).
        ``whole_tree``: every object of the tree, dirty by one mark, read a page at a time."""
        batch.dirty, batch.dirty_version, batch.dirty_tree = dirty, version, whole_tree
        beat = self._liveness.beat
        buffer = RequestBuffer(self.settings.bulk_max_docs, self.settings.bulk_max_bytes)
        step = self.settings.bulk_max_docs
        pages = (dirtypages.tree_pages(self.store, step) if whole_tree
                 else (dirty[start:start + step] for start in range(0, len(dirty), step)))
        # a backfill's last batch is the whole tree (minutes at 10^7 objects, rows standing
        # still): the progress report says how many documents are left instead
        left = self._tree_count if whole_tree else 0
        if left:
            self.metrics.set_object_documents_to_write(left)
        groups = read_ahead(self._groups(pages), name="object-reads")
        checked = 0  # batch.futures before this one have been looked at
        try:
            for group in groups:
                for action in self.builder.assembled_actions(build(group, self.jsonifier), version):
                    if buffer.add(action) and not self.submit(buffer, batch, raise_failure):
                        return None
                checked = self._raise_sent_failure(batch, checked)
                if left:
                    left = max(left - len(group.live) - len(group.gone), 0)
                    self.metrics.set_object_documents_to_write(left)
                beat()
                if self._stopping():
                    return None
        finally:
            groups.close()  # type: ignore[attr-defined]  # a generator: stops and joins the thread
            if left:  # every group built, or the write given up: no stale count for a restart
                self.metrics.set_object_documents_to_write(0)
        if buffer and not self.submit(buffer, batch, raise_failure):
            return None
        return batch

    def _raise_sent_failure(self, batch: BatchInFlight, checked: int) -> int:
        """Stop building a long write (a backfill's whole tree: 823 requests at 10^6 objects)
        once this process may not write any more, or one of its requests failed: the
        committer learns of it only when the write ends, and the rest would be built for
        nothing (55 s at 10^6 objects after a lost lease). Returns how many requests in
        order were looked at (each once)."""
        if self._fence is not None:
            self._fence()
        futures = batch.futures
        while checked < len(futures) and futures[checked].done():
            if (failure := futures[checked].exception()) is not None:
                raise failure
            checked += 1
        return checked

    def _groups(self, pages: Iterable[list[int]]) -> Iterator[Group]:
        """The reads for each page of objects (a request's worth)."""
        for page in pages:
            yield from read_groups(page, self.store, self._states, lock=self.store.lock)


def open_reader(settings: Settings, *args: Any, **kwargs: Any) -> BatchReader:
    """The reader ``settings.documents`` asks for; an object reader has the graph's own
    connections (one writes the graph, one reads states)."""
    if settings.documents != "objects":
        return BatchReader(settings, *args, **kwargs)
    graph_conn = pg.connect(settings, "object graph")
    ready = graph.ensure_tables(graph_conn)
    graph_conn.commit()
    if not ready:
        graph_conn.close()
        raise SetupError(f"the object model's tables ({', '.join(graph.TABLES)}) are missing, or lack a column "
                         "this version adds, and this role may not create or alter them: run `esindexer setup` "
                         "as an administrator")
    store = GraphStore(graph_conn, settings.worker_id, object_class_filter(settings))
    return ObjectBatchReader(settings, *args, store=store, states_conn=pg.connect(settings, "object states"),
                             **kwargs)


def object_class_filter(settings: Settings) -> Callable[[str | None], bool]:
    """Whether a class's objects get documents: ESINDEXER_OBJECT_CLASSES, minus CLASS_EXCLUDE."""
    include, exclude = settings.object_classes, settings.class_exclude

    def is_object_class(class_name: str | None) -> bool:
        if not class_name:
            return False
        if any(fnmatch.fnmatchcase(class_name, p) for p in exclude):
            return False
        return any(fnmatch.fnmatchcase(class_name, p) for p in include)

    return is_object_class
