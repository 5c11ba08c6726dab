"""A database that went back in time: found at every start, reported, and made good.

A database restored from a backup (``pg_dump`` then ``pg_restore``, a file-system
snapshot, a point-in-time recovery) has lost the transactions committed after the backup,
while the index still holds their documents: states newer than the database's, objects
it no longer has, and (objects packed after the backup) documents it deleted. esindexer's
own tables are restored with it, so the saved progress goes back too, or does not (kept
elsewhere, or not part of the dump), so it cannot tell; nor can the database's newest tid
for long, since the application's next commit gets a tid above everything indexed before
the restore (tids are commit times).

The documents tell. Each carries the tid of the record it was written from, and the
current tid of an object never decreases while the object exists (a new commit only
raises it; a pack keeps the current revision), so **a document whose tid is above its
object's current tid proves the database went back** ("ahead"). The documents of lost
transactions have the newest tids in the index, so :func:`find` reads the
:data:`NEWEST` newest documents (one sorted search), then PostgreSQL: their objects'
current tids and the newest tid. Read in that order, every document seen had been
written from a record committed before the database read, so no race between a commit,
its document and the check can make a false "ahead". A document of an object the
database no longer has is also proof ("ghost") when its tid is above the database's
newest tid, no captured pack deletion of it is in the log (a row is pruned only after
the document was deleted) and it is still there after a refresh that follows the
database read (so it is not a deletion applied meanwhile); this needs the capture
trigger, without which it is not counted.

What is found is kept as a mark on the indices (:mod:`esindexer.es.marks`), because a
second restore would roll back anything kept in the database. The mark stays until a
full compare-and-repair walk (:mod:`esindexer.ops.restored`, ``verify --repair``) that
started after the service had re-read every record of the restored database left no
difference; :class:`Resync` runs that walk in the service and says when it is done.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from esindexer.config import Settings
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.fieldwatch import search_every
from esindexer.sink import Sink
from esindexer.source import deletions, follow, partitions, pg, progress
from esindexer.source.tid import tid_to_datetime

log = logging.getLogger(__name__)

#: Documents with the newest tids compared with the database at each check.
NEWEST = 1000
#: Zoids named in the log line and the mark.
EXAMPLES = 5


@dataclass(frozen=True)
class Evidence:
    """Documents that prove the database is behind the index."""

    database_tid: int  #: the database's newest tid when checked (-1: empty)
    index_tid: int  #: the newest tid among the documents checked
    ahead: tuple[tuple[int, int, int], ...]  #: ``(zoid, document tid, object's current tid)``
    ghosts: tuple[tuple[int, int], ...]  #: ``(zoid, document tid)`` of objects the database lacks

    def mark(self, client_id: str, earlier: dict[str, Any] | None) -> dict[str, Any]:
        """The mark to keep on the indices; ``earlier``, a mark already there, keeps its
        detection time. The database tid to re-read to is always the one read now: after a
        second restore to an earlier backup, an earlier mark's tid may never be reached."""
        examples = sorted({zoid for zoid, *_ in self.ahead} | {zoid for zoid, _ in self.ghosts})[:EXAMPLES]
        return {"detected_at": earlier["detected_at"] if earlier else _now(), "client_id": client_id,
                "database_tid": self.database_tid, "index_tid": self.index_tid, "ahead": len(self.ahead),
                "ghosts": len(self.ghosts), "examples": examples}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _when(tid: int) -> str:
    return tid_to_datetime(tid).isoformat(timespec="seconds") if tid > 0 else "nothing"


def find(conn: Any, sink: Sink, count: int = NEWEST) -> Evidence | None:
    """Compare the ``count`` newest documents with the database (module docstring);
    None when nothing proves it went back. Leaves ``conn`` idle."""
    newest = sink.newest(count)  # the index first, then the database: see the module docstring
    if not newest:
        return None
    latest = follow.latest_tid(conn)
    current = pg.current_tids(conn, sorted({doc.zoid for doc in newest}))
    ahead = tuple((doc.zoid, doc.tid, current[doc.zoid]) for doc in newest
                  if doc.zoid in current and doc.tid > current[doc.zoid])
    candidates = {(doc.index, doc.zoid, doc.tid) for doc in newest if doc.zoid not in current and doc.tid > latest}
    ghosts: tuple[tuple[int, int], ...] = ()
    if candidates and deletions.capture_installed(conn):
        logged = deletions.logged_zoids(conn, sorted({zoid for _, zoid, _ in candidates}))
        sink.refresh()
        still = {(doc.index, doc.zoid, doc.tid) for doc in sink.newest(count)}
        ghosts = tuple(sorted((zoid, tid) for index, zoid, tid in candidates & still if zoid not in logged))
    conn.rollback()
    if not ahead and not ghosts:
        return None
    return Evidence(latest, newest[0].tid, ahead, ghosts)


def check(conn: Any, sink: Sink, client_id: str) -> tuple[dict[str, Any] | None, Evidence | None, bool]:
    """Look for evidence and keep the mark: ``(mark in force, evidence found now, whether
    the indices had no mark before)``.

    Found now: the mark is written (or brought up to date) before anything acts on it, so a
    crash from here on leaves it in place. Not found now: an earlier mark still stands
    (documents repaired part-way no longer show, yet others may remain)."""
    evidence = find(conn, sink)
    earlier = sink.behind_mark()
    if evidence is None:
        return earlier, None, False
    mark = evidence.mark(client_id, earlier)
    sink.set_behind_mark(mark)
    return mark, evidence, earlier is None


def report_line(mark: dict[str, Any], evidence: Evidence | None, repair: str) -> str:
    """The one ERROR line that says what was found and what is being done; ``repair``:
    ``auto`` (this process repairs), ``off`` (the operator does), ``partition`` (partition 0
    of the set does), ``library`` (an :class:`~esindexer.pipeline.indexer.Indexer` built
    without a repair walk)."""
    if evidence is not None:
        found = (f"{len(evidence.ahead)} of the newest documents carry a newer tid than their object in the "
                 f"database and {len(evidence.ghosts)} belong to objects the database does not have (for "
                 f"example zoids {', '.join(str(z) for z in mark['examples'])}); the newest tid in the index is from "
                 f"{_when(evidence.index_tid)}, the database's newest from {_when(evidence.database_tid)}")
    else:
        found = (f"found on {mark['detected_at']} and not yet repaired (database newest tid then "
                 f"{mark['database_tid']})")
    doing = {
        "auto": "its documents are compared object by object and rewritten as the database says once the "
                "service has re-read the restored records (the indices keep the mark until that walk ends "
                "clean; progress in this log)",
        "partition": "the process of partition 0 compares and rewrites the documents once every partition "
                     "has re-read the restored records",
        "off": "run `esindexer verify --repair` once the service has caught up, to rewrite the documents as "
               "the database says (automatic repair is off: ESINDEXER_REPAIR_AFTER_RESTORE=off)",
        "library": "run `esindexer verify --repair` once the service has caught up, to rewrite the documents "
                   "as the database says (this Indexer was given no repair walk)",
    }[repair]
    return ("the database is behind the index: it went back in time (restored from a backup, or it is not "
            f"the database this index was built from): {found}. Until repaired, searches show "
            f"states the database no longer has; {doing}")


def reread_to(conn: Any, settings: Settings, database_tid: int) -> bool:
    """Whether the service (with partitions: every one) has saved progress at or past
    ``database_tid``: every record of the restored database was re-read and settled."""
    spec = settings.partition_spec
    try:
        if spec is None:
            return progress.get_progress_tid(conn, settings.worker_id) >= database_tid
        saved = partitions.partition_progress(conn, settings.client_id)
        return len(saved) >= spec[1] and min(saved.values()) >= database_tid
    finally:
        conn.rollback()


class Resync:
    """The service's watch on the database's place in time, in a thread of its own.

    While the indices carry no mark it checks again every :attr:`check_every` seconds (every
    :data:`~esindexer.pipeline.fieldwatch.BACKLOG_SEARCH_EVERY` while a backlog is worked through; a
    database restored under a running service, ``pg_restore --clean`` say, need not drop
    its connections; the pipeline checks at each of its starts). While they carry one it
    keeps ``esindexer_database_behind_index`` at 1, waits for the service to re-read the
    restored records, then runs ``repair`` (one full compare-and-repair walk that removes
    the mark when it leaves no difference; None: the operator runs ``verify --repair``)
    until the mark is gone, and says so."""

    def __init__(self, settings: Settings, sink: Sink, metrics: Metrics, repair: Callable[[], bool] | None,
                 mode: str, interval: float = 5.0, check_every: float = 60.0) -> None:
        self.settings = settings
        self.sink = sink
        self.metrics = metrics
        self.repair = repair
        self.mode = mode  #: what :func:`report_line` says is being done
        self.interval = interval
        self.check_every = check_every
        #: Seconds before another walk after one that left differences or failed.
        self.retry_after = max(interval, 60.0)
        self._behind = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def found(self, mark: dict[str, Any] | None, evidence: Evidence | None, first: bool) -> None:
        """What a check found: say it (once per finding: at a restart of the pipeline only
        when found anew, or at the process's first start) and keep the gauge."""
        if mark is None:
            return
        if evidence is not None or first:
            log.error("%s", report_line(mark, evidence, self.mode), extra={"database_behind": mark})
        self._behind = True
        self.metrics.set_database_behind(True)

    def start(self) -> None:
        """Start the thread (once; later calls do nothing while it runs)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="esindexer-resync", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching; a walk in progress is left to end with the process (the mark stays)."""
        self._stop.set()

    def _with_conn(self, fn: Callable[[Any], Any]) -> Any:
        conn = pg.connect(self.settings, "resync")
        try:
            return fn(conn)
        finally:
            conn.close()

    def _converged(self) -> None:
        self._behind = False
        self.metrics.set_database_behind(False)
        log.info("the database is no longer behind the index: a repair walk left no document ahead of it, "
                 "missing or left over from the transactions it lost, and the mark is removed")

    def _run(self) -> None:
        pause, last_check = self.interval, time.monotonic()
        while not self._stop.wait(pause):
            pause = self.interval
            try:
                if not self._behind:  # one check a minute; the mark is read only by it meanwhile
                    # (at most one in ten minutes while a backlog is worked through: each
                    # search wakes a search-idle index into refreshing, esindexer.pipeline.fieldwatch)
                    if time.monotonic() - last_check >= search_every(self.check_every, self.metrics.working_through_backlog()):
                        last_check = time.monotonic()
                        mark, evidence, _ = self._with_conn(lambda conn: check(conn, self.sink,
                                                                                 self.settings.worker_id))
                        # a mark without evidence now: put by another process (a partition of the set)
                        self.found(mark, evidence, first=evidence is None)
                    continue
                mark = self.sink.behind_mark()
                if mark is None:  # removed by a walk of another process (verify --repair)
                    self._converged()
                    continue
                database_tid = int(mark["database_tid"])
                if self.repair is None or not self._with_conn(functools.partial(
                        reread_to, settings=self.settings, database_tid=database_tid)):
                    continue
                log.info("comparing every object with its document: the database went back in time",
                         extra={"database_tid": database_tid})
                if self.repair():
                    self._converged()
                else:
                    pause = self.retry_after  # differences left (logged by the walk): not a walk every few s
            except Exception as exc:  # a server away: the mark stays, try again later
                pause = self.retry_after
                log.warning("checking or repairing the index against the database failed (%s: %s); trying "
                            "again in %gs", type(exc).__name__, exc, pause)
