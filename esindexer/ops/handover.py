"""The new generation followed live by ``esindexer reindex``, then handed over to the service.

A re-index under a live application cannot wait for "caught up with the newest commit"
with nobody following: the newest commit moves every 100 ms. So from the end of the
build until the service runs on the new generation, the command itself indexes it live
(:class:`Follower`: an :class:`~esindexer.pipeline.indexer.Indexer` in a thread, holding
the new client id's lock like any service). The publish check then waits for a tid read
just before the switch, which a live follower reaches within a second; and commits made
after the switch reach the published generation because the same follower keeps going.

The handover uses the hot standby (:mod:`esindexer.pipeline.standby`): the service
restarted with the new prefix and client id finds the lock held and stands by, which it
announces in ``pg_locks`` (:func:`esindexer.source.runs.standby_waiting`). The follower
then stops like a service on SIGTERM (in-flight bulks settle, progress is saved), its
session ends, the standby takes the lock within a second and resumes from that progress:
no commit is skipped, and the generation is unfollowed for about a second, the same as a
standby taking over from a stopped service.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from esindexer.config import Settings
from esindexer.errors import AlreadyRunning, ExitCode

log = logging.getLogger(__name__)

#: How often the handover looks for a standby, and how long it waits for the standby to
#: take the lock once the follower stopped (it tries every second).
LOOK_EVERY = 0.5
TAKEOVER_WAIT = 10.0


class Follower:
    """The generation's indexer, live (not ``until_caught_up``), in a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        from esindexer.observe.metrics import Metrics
        from esindexer.pipeline.indexer import Indexer

        # Never a standby: a process already holding the new client id is reported, not waited for.
        self.settings = dataclasses.replace(settings, standby=False)
        self.indexer = Indexer(self.settings, Metrics(process_metrics=False))
        self.code: ExitCode | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="reindex-follower", daemon=True)

    def start(self) -> Follower:
        """Take the client id's lock now (raising :class:`AlreadyRunning` if another process
        has it), then follow in the thread."""
        self.indexer.claim()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.code = self.indexer.run()
        except BaseException as exc:  # reported by the command, which is waiting on the thread
            self.error = exc
            self.code = ExitCode.ERROR
            log.exception("following %s failed", self.settings.client_id)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> ExitCode | None:
        """Stop as a service stops on SIGTERM (in-flight bulks settle within
        ``shutdown_timeout``, progress is saved) and release the lock."""
        self.indexer.stop()
        self._thread.join()
        return self.code


def wait_caught_up(conn: Any, follower: Follower, stopped: threading.Event) -> int | None:
    """Wait until the follower's saved progress reaches the newest tid read now (what was
    committed during the build); returns that tid, or None when stopped or the follower ended.
    Verify and the publish check then start from a generation at most a second behind."""
    from esindexer.source import follow, progress

    target = follow.latest_tid(conn)
    conn.rollback()
    while not stopped.is_set() and follower.alive:
        if progress.get_progress_tid(conn, follower.settings.worker_id) >= target:
            return target
        stopped.wait(LOOK_EVERY)
    return None


def running_partitions(conn: Any, client_id: str) -> list[str] | None:
    """A complete set of ``client_id``'s partition workers that all run now, so that together
    they follow every object (the service restarted with ``ESINDEXER_PARTITION`` does not
    stand by for the client id: each partition seeds itself from its progress); None when
    no complete set runs."""
    from esindexer.source import partitions, runs

    known = partitions.partition_progress(conn, client_id)
    conn.rollback()
    for ids in partitions.covering_sets(client_id, known):
        if all(runs.client_running(conn, worker) for worker in ids):
            return ids
    return None


def running_workers(conn: Any, client_id: str) -> list[str]:
    """The ids of ``client_id``'s indexers that run now: the client id itself, and any of its
    partitions."""
    from esindexer.source import partitions, runs

    workers = [client_id, *partitions.partition_progress(conn, client_id)]
    conn.rollback()
    return [worker for worker in workers if runs.client_running(conn, worker)]


@dataclasses.dataclass
class Handover:
    """How following ended."""

    handed_over: bool = False
    followed_for: float = 0.0
    takeover_after: float | None = None  #: from the follower's stop to the lock taken by the service
    unclaimed: bool = False  #: the follower stopped for a standby that did not take the lock
    by: list[str] = dataclasses.field(default_factory=list)  #: the ids that follow the generation now
    problem: str | None = None


def hand_over(follower: Follower, stopped: Callable[[], bool], wait: Callable[[float], object]) -> Handover:
    """Follow until a process stands by for the client id, then let it take over.

    Returns with ``problem`` set when following ended otherwise: the command was stopped
    (``stopped()``), or the follower ended on its own (a setup error). It looks on a
    connection of its own, opened again after PostgreSQL went away (the follower
    reconnects by itself): an outage while waiting must not end the following."""
    from esindexer.source import pg

    out = Handover()
    conn: Any = None
    while out.problem is None and not out.handed_over:
        if stopped():  # also while PostgreSQL does not answer
            follower.stop()
            out.problem = "interrupted"
            break
        try:
            if conn is None:
                conn = pg.connect(follower.settings, "handover")
            if _look(conn, follower, out):
                break
        except pg.CONNECTION_ERRORS as exc:
            log.warning("looking for a standby of %s failed (%s); trying again", follower.settings.worker_id,
                        str(exc).strip()[:200])
            if conn is not None:
                conn.close()
            conn = None
        wait(LOOK_EVERY)
    if conn is not None:
        conn.close()
    out.followed_for = out.followed_for or time.monotonic() - follower.started
    log.info("handover of %s: %s", follower.settings.worker_id, "done" if out.handed_over else out.problem,
             extra={"client_id": follower.settings.worker_id, "followed_seconds": round(out.followed_for, 3),
                    "takeover_seconds": out.takeover_after})
    return out


def _look(conn: Any, follower: Follower, out: Handover) -> bool:
    """One look: True when following ended (``out`` says how)."""
    from esindexer.source import runs

    client = follower.settings.worker_id

    if not follower.alive:
        if follower.code == ExitCode.LOCKED and runs.client_running(conn, client):
            out.handed_over, out.by = True, [client]  # it lost its session and a standby took the lock
        else:
            out.problem = f"following ended ({describe(follower)})"
        return True
    if not runs.standby_waiting(conn, client) and running_partitions(conn, client) is None:
        return False
    out.followed_for = time.monotonic() - follower.started
    stopping = time.monotonic()
    follower.stop()
    deadline = stopping + TAKEOVER_WAIT
    while time.monotonic() < deadline:
        if (by := [client] if runs.client_running(conn, client) else running_partitions(conn, client)) is not None:
            out.handed_over, out.takeover_after, out.by = True, time.monotonic() - stopping, by
            break
        time.sleep(0.05)
    else:  # the standby went away meanwhile: the caller follows again rather than leave a gap
        out.unclaimed = True
        out.problem = (f"the process standing by for client id {client!r} did not take over within "
                       f"{TAKEOVER_WAIT:.0f}s")
    return True


def describe(follower: Follower) -> str:
    """Why a follower ended, in words."""
    if isinstance(follower.error, AlreadyRunning) or follower.code == ExitCode.LOCKED:
        return "another process took its client id"
    if follower.error is not None:
        return f"{type(follower.error).__name__}: {follower.error}"
    return f"exit code {int(follower.code) if follower.code is not None else '?'}"
