"""The crash guard: a record that crashes the process must not stop indexing for ever.

A record that makes native code crash (SIGSEGV or SIGABRT in a C extension) or eats
memory until the OOM killer strikes ends the process before any Python code runs: no
dead letter, no log line. The service restarts, reads from the saved progress, meets
the same record and dies again, for ever. The guard breaks that loop.

Detection, one row per client id in ``esindexer_crash_guard`` (:mod:`esindexer.source.runs`), two writes per process
life (none per batch):

- **At start** (under the client's advisory lock, after progress is read): if the row
  says the previous run is still ``running``, it ended without running its Python exit
  path: it *died*. A death at the same saved progress as the previous death adds one to
  ``unclean_exits``; a death elsewhere counts 1 (progress moved: whatever killed the
  earlier run is behind us). Then the row is marked ``running`` for this run.
- **At any Python-level exit** (a stop, an error exit, an exception) the row is marked
  not running and the count reset. A native crash or a SIGKILL never gets there.

When ``unclean_exits`` reaches ``ESINDEXER_CRASH_GUARD_AFTER`` (default 2), the start is
**guarded**: every batch from the saved progress up to the newest tid at this start
(``guard_until``; the crash must be there, since the dead runs never saved progress
past it) is converted in a child process (:mod:`esindexer.pipeline.isolate`). A record that
kills the child is dead-lettered with kind ``crashed``; everything else is indexed as
usual. Once a batch ends at or past ``guard_until``, conversion returns to the service's
own process. ``guard_until`` is kept in the row until progress passes it, so a guarded
pass interrupted by a restart resumes where it was.

A false alarm (two unrelated kills while nothing moved) costs only speed: guarded
conversion gives the same documents as the normal path. A loop that the guard cannot
break (the crash is not in converting a record) is reported at the next start.

Without the right to create or write the table, the guard is off and says so once, as
the deletion log's tables do.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from esindexer.config import Settings
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.isolate import IsolatedConverter, Record
from esindexer.source import follow, runs
from esindexer.source.pages import Row
from esindexer.source.pg import NOT_PERMITTED
from esindexer.source.runs import GuardRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assessment:
    """What the guard row says about the previous run, seen from the saved progress."""

    died: bool  # the previous run ended without a Python-level exit
    unclean_exits: int  # deaths in a row at the saved progress (the previous one included)
    resume_until: int | None  # an unfinished guarded pass (its end is past the progress)
    guarded_before: bool  # the run that died was itself guarded


def assess(row: GuardRow | None, progress: int) -> Assessment:
    """Judge the previous run: the one rule shared by the service's start and ``status``."""
    if row is None:
        return Assessment(False, 0, None, False)
    resume = row.guard_until if row.guard_until is not None and row.guard_until > progress else None
    if not row.running:
        return Assessment(False, 0, resume, False)
    exits = row.unclean_exits + 1 if row.death_tid == progress else 1
    guarded_before = resume is not None and resume > row.start_tid  # died short of its pass's end
    return Assessment(True, exits, resume, guarded_before)


class CrashGuard:
    """The guard of one service process: :meth:`begin` at start, :meth:`records` for each
    batch while :attr:`active`, :meth:`finish` at any Python-level exit."""

    def __init__(self, settings: Settings, metrics: Metrics, connect: Callable[[], Any],
                 cancel: threading.Event | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._connect = connect
        self._cancel = cancel
        self._permitted = True
        self._run_id: str | None = None  # set once this process owns the row
        self._begun = False
        self._guard_until: int | None = None
        self._isolated: IsolatedConverter | None = None

    @property
    def active(self) -> bool:
        """Whether batches are converted in the child process now."""
        return self._guard_until is not None

    # -- start and exit ------------------------------------------------------------------

    def ensure_table(self, conn: Any) -> None:
        """Create the table with esindexer's others (the writer connection, uncommitted)."""
        if self._permitted and not runs.ensure_table(conn):
            self._permitted = False
            log.warning("cannot create %s (no privilege): the crash guard is off, so a record that crashes "
                        "the process would stop indexing until it is dealt with by hand", runs.TABLE)

    def begin(self, conn: Any, progress: int, restored: bool = False) -> None:
        """Judge the previous run and mark this one running; commits. Once per process.

        ``restored``: the database was found to have gone back in time at this start, so
        the row is the backup's: a run that was going when the backup was taken, whose
        later clean exit the restore undid. It is not counted as a death."""
        if self._begun:
            return
        s = self.settings
        threshold = s.crash_guard_after
        if not self._permitted:
            self.metrics.set_crash_guard(False, 0)
            self._begun = True
            return
        row = runs.read_row(conn, s.worker_id)
        verdict = assess(row, progress)
        if restored and verdict.died:
            log.info("not counting the previous run as an unclean exit: its row comes from the restored "
                     "backup (the run was going when the backup was taken)", extra={"tid": progress})
            verdict = assess(None, progress)
        head = follow.latest_tid(conn)
        guard_until = verdict.resume_until
        if verdict.died:
            log.warning("the previous run ended without a clean exit (a native crash, an OOM kill, SIGKILL, "
                        "or a standby's takeover from a stopped or hung process) at saved progress tid %d: %d "
                        "time(s) in a row at this position",
                        progress, verdict.unclean_exits,
                        extra={"tid": progress, "unclean_exits": verdict.unclean_exits})
        if verdict.died and verdict.guarded_before:
            log.error("the previous run died during its guarded pass: the crash is probably not in "
                      "converting a record (reading rows, sending to Elasticsearch, the service itself); "
                      "its stderr shows the Python stack of the crash", extra={"tid": progress})
        if guard_until is None and threshold > 0 and verdict.unclean_exits >= threshold:
            if head > progress:
                guard_until = head
            else:
                log.error("crash loop at saved progress tid %d, but nothing is committed after it: the crash "
                          "is not in converting a record", progress, extra={"tid": progress})
        self._run_id = uuid.uuid4().hex
        try:
            runs.mark_running(conn, s.worker_id, self._run_id, progress, progress if verdict.died else None,
                              verdict.unclean_exits, guard_until)
        except NOT_PERMITTED as exc:
            self._run_id = None
            self._permitted = False
            log.warning("cannot write %s (%s): the crash guard is off", runs.TABLE, str(exc).strip())
            guard_until = None
        conn.commit()
        self._begun = True  # (a connection lost before this point: judged again on the next one)
        self.metrics.set_crash_guard(guard_until is not None, verdict.unclean_exits)
        if guard_until is not None:
            self._start_guard(progress, guard_until, verdict)

    def finish(self) -> None:
        """A Python-level exit: end the child, mark the row not running and reset the count.

        On a connection of its own (the writer's is gone by now); only this process's
        row is touched (``run_id``), in case another process took the client id over.
        """
        if self._isolated is not None:
            self._isolated.close()
            self._isolated = None
        run_id, self._run_id = self._run_id, None
        if run_id is None:
            return
        try:
            conn = self._connect()
            try:
                runs.mark_clean_exit(conn, self.settings.worker_id, run_id)
            finally:
                conn.close()
        except Exception as exc:
            log.warning("could not record the clean exit in %s (%s): the next start counts this run as a crash",
                        runs.TABLE, str(exc).strip()[:300])

    # -- guarded conversion --------------------------------------------------------------

    def records(self, rows: Iterable[Row]) -> Iterator[Record]:
        """The batch's records, converted in the child; ends guarded mode after the batch
        that reaches ``guard_until``. Only while :attr:`active`."""
        assert self._guard_until is not None and self._isolated is not None
        last = None
        for record in self._isolated.records(rows):
            last = record[0]
            yield record
        if last is not None and last >= self._guard_until:
            self._end_guard(last)

    def _start_guard(self, progress: int, guard_until: int, verdict: Assessment) -> None:
        self._guard_until = guard_until
        self._isolated = IsolatedConverter(self.settings, cancel=self._cancel, on_crash=self._isolated_record)
        if verdict.resume_until is not None:
            log.warning("resuming the guarded pass: converting records from saved progress tid %d up to tid %d "
                        "in a child process", progress, guard_until,
                        extra={"tid": progress, "guard_until": guard_until})
        else:
            log.error("crash loop: %d deaths without a clean exit at saved progress tid %d; guarded mode: "
                      "converting records from there up to tid %d in a child process, dead-lettering as "
                      "'crashed' each record that kills it", verdict.unclean_exits, progress, guard_until,
                      extra={"tid": progress, "guard_until": guard_until,
                             "unclean_exits": verdict.unclean_exits})

    def _end_guard(self, tid: int) -> None:
        isolated = self._isolated
        crashed = isolated.crashed if isolated is not None else 0
        if isolated is not None:
            isolated.close()
        self._isolated = None
        self._guard_until = None
        self.metrics.set_crash_guard(False, None)
        log.warning("guarded mode ended at tid %d: %d record(s) isolated as crashed; converting in process again",
                    tid, crashed, extra={"tid": tid, "crashed": crashed})

    def _isolated_record(self, tid: int, zoid: int, reason: str) -> None:
        self.metrics.record_crashed_record()
        log.error("record zoid %d at tid %d crashes the converter; dead-lettered as crashed: %s", zoid, tid,
                  reason, extra={"zoid": zoid, "tid": tid, "reason": reason})


def describe(conn: Any, client_id: str, threshold: int, progress: int) -> dict[str, Any]:
    """The guard's state for ``esindexer status`` (reads only)."""
    row = runs.read_row(conn, client_id)
    running = runs.client_running(conn, client_id)  # the service holds its advisory lock while it runs
    if row is None:
        return {"last_run": "running" if running else None, "unclean_exits": 0, "threshold": threshold,
                "guard": "off" if threshold > 0 else "disabled", "guard_until": None}
    if running:
        last_run, exits = "running", row.unclean_exits
        resume = row.guard_until if row.guard_until is not None and row.guard_until > progress else None
        guard = f"active up to tid {resume}" if resume is not None else "off"
    else:
        verdict = assess(row, progress)
        last_run = "died without a clean exit" if verdict.died else "exited cleanly"
        exits = verdict.unclean_exits
        resume = verdict.resume_until
        if resume is not None:
            guard = f"resumes at next start, up to tid {resume}"
        elif threshold > 0 and exits >= threshold:
            guard = "at next start, up to the newest tid"
        else:
            guard = "off"
    if threshold <= 0:
        guard = "disabled"
    return {"last_run": last_run, "unclean_exits": exits, "threshold": threshold, "guard": guard,
            "guard_until": resume}
