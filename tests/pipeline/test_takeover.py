"""A hung active process is replaced (issue 21): real processes, a live ZODB writer.

- SIGSTOP the active process: its PostgreSQL sessions stay open, so it keeps the client
  lock; the standby finds its lease older than ``lease_seconds`` with work pending, ends
  its lock session and takes over. SIGCONT: the old one notices (one log line), stands
  by, and never moves progress back nor overwrites newer documents.
- A process stuck in a query (its progress save blocked on a row lock) ends its own lock
  session; the standby takes over.
- A standby that waits wins the lock over a process started when the active one dies.

Short lease here (``ESINDEXER_LEASE_SECONDS``); the default is 20 s.
"""

from __future__ import annotations

import threading
import time

import psycopg2

from esindexer.source.lease import TABLE as LEASE_TABLE
from esindexer.source.progress import get_progress_tid
from tests.pipeline.processes import LiveWriter, Service, converge, service_env
from tests.support import run_esindexer, wait_for

LEASE = 4.0  # seconds: renewed every second


def _indexing(service: Service) -> bool:
    answer = service.get("/readyz")
    return service.metric("esindexer_standby") == 0 and answer is not None and "standby" not in answer[1]


def _standing_by(service: Service) -> bool:
    answer = service.get("/readyz")
    return service.metric("esindexer_standby") == 1 and answer is not None and answer[0] == 503 \
        and answer[1].startswith("standby")


def _lease(db_dsn: str) -> tuple[int, int]:
    """``(epoch, process id of the holder)`` of the lease: who took the lock last."""
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT epoch, holder FROM {LEASE_TABLE} WHERE client_id = 'esindexer'")
        epoch, holder = cur.fetchone()
    conn.close()
    return int(epoch), int(holder.rsplit(":", 1)[1])


def _epoch(db_dsn: str) -> int:
    return _lease(db_dsn)[0]


class ProgressWatch:
    """Reads the saved progress every 50 ms from a thread: it must never go back."""

    def __init__(self, db_dsn: str) -> None:
        self.db_dsn = db_dsn
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = psycopg2.connect(self.db_dsn)
        conn.autocommit = True
        try:
            while not self._stop.wait(0.05):
                self.seen.append(get_progress_tid(conn, "esindexer"))
        finally:
            conn.close()

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(10)
        return self.seen


def test_a_stopped_active_is_replaced_and_after_sigcont_stands_by_without_writing(
        zodb, db_dsn, es_url, es, es_prefix, tmp_path, indexer_role):
    """Both processes run as the least-privileged role of ``esindexer setup --grant-to`` (not
    a superuser): ending the stopped one's session needs nothing more than the same role."""
    writer = LiveWriter(zodb, rate=20).start()
    role, role_dsn = indexer_role
    granted = run_esindexer("setup", "--grant-to", role, env=dict(ESINDEXER_PG_DSN=db_dsn))
    assert granted.returncode == 0, granted.stdout + granted.stderr
    assert f'GRANT SELECT, INSERT, UPDATE ON "esindexer_lease" TO "{role}"' in granted.stdout
    env = service_env(role_dsn, es_url, es_prefix, lease_seconds=str(LEASE))
    active = Service(env, tmp_path / "active.log")
    standby = None
    watch = None
    try:
        wait_for(lambda: _indexing(active), timeout=60, interval=0.2)
        standby = Service(env, tmp_path / "standby.log")
        wait_for(lambda: _standing_by(standby), timeout=30, interval=0.2)
        time.sleep(LEASE + 1)  # longer than a lease: a renewing active is not replaced
        assert _standing_by(standby) and _indexing(active)
        epoch = _epoch(db_dsn)
        watch = ProgressWatch(db_dsn)

        active.pause()  # while the writer commits: work is pending at once
        stopped = time.monotonic()
        wait_for(lambda: _indexing(standby), timeout=30, interval=0.1)
        took = time.monotonic() - stopped
        assert took <= LEASE + 4, f"standby took {took:.1f}s to replace the stopped active"
        assert _epoch(db_dsn) == epoch + 1
        said = standby.log()
        assert "has not renewed its lease for" in said and "ending its PostgreSQL session" in said, said[-3000:]
        assert "taking over client id 'esindexer'" in said and "cannot end the session" not in said

        time.sleep(3)  # the new active indexes while the old one is still stopped
        moved_on = get_progress_tid(db_dsn, "esindexer")
        active.resume()
        wait_for(lambda: "lost the lock of client id 'esindexer'" in active.log(), timeout=30, interval=0.2)
        wait_for(lambda: _standing_by(active), timeout=30, interval=0.2)
        assert active.proc.poll() is None  # it stands by, it did not exit
        assert _indexing(standby)
        time.sleep(2)
        writer.pack()
        time.sleep(1)
        writer.stop()
        report = converge(db_dsn, es_url, es_prefix, ["esindexer"])
        seen = watch.stop()
        assert report.clean, report.as_dict()  # no document older than its object's tid, none missing
        assert seen == sorted(seen), "progress went back"
        assert get_progress_tid(db_dsn, "esindexer") >= moved_on
        assert _epoch(db_dsn) == epoch + 1  # the old one did not take the lease back
        assert "Traceback" not in active.log()
        assert "permission denied" not in active.log() + standby.log()
        print(f"takeover from a SIGSTOPped active (lease {LEASE:g}s): {took:.2f}s; {writer.commits} commits, "
              f"{report.objects} objects")
    finally:
        if watch is not None:
            watch.stop()
        writer.stop(check=False)
        codes = [active.stop(), standby.stop() if standby is not None else 0]
        assert codes == [0, 0], active.log()[-3000:] + (standby.log()[-3000:] if standby else "")


def test_an_active_stuck_in_a_query_gives_its_lock_up_to_the_standby(zodb, db_dsn, es_url, es, es_prefix, tmp_path):
    writer = LiveWriter(zodb, rate=10, remove_every=0).start()
    env = service_env(db_dsn, es_url, es_prefix, lease_seconds=str(LEASE))
    active = Service(env, tmp_path / "active.log")
    standby = None
    blocker = psycopg2.connect(db_dsn)
    try:
        wait_for(lambda: _indexing(active), timeout=60, interval=0.2)
        standby = Service(env, tmp_path / "standby.log")
        wait_for(lambda: _standing_by(standby), timeout=30, interval=0.2)
        with blocker.cursor() as cur:  # the next progress save waits for this row lock
            cur.execute("SELECT tid FROM esindexer_progress WHERE client_id = 'esindexer' FOR UPDATE")
        blocked = time.monotonic()
        time.sleep(LEASE / 2)
        # Its pipeline is stuck; its endpoints are served from their own thread and answer.
        assert active.get("/metrics") is not None and active.get("/readyz") is not None
        wait_for(lambda: "has done nothing for" in active.log(), timeout=30, interval=0.2)
        assert "ending this process's lock session" in active.log()
        # "giving up the lock of ...", or "lost the lock of ..." once the standby has claimed the lease
        wait_for(lambda: "the lock of client id 'esindexer': its pipeline did nothing for" in active.log(),
                 timeout=15, interval=0.2)
        wait_for(lambda: "taking over client id 'esindexer'" in standby.log(), timeout=15, interval=0.1)
        took = time.monotonic() - blocked
        blocker.rollback()  # the query ends; the new active saves progress
        wait_for(lambda: _indexing(standby), timeout=30, interval=0.1)
        wait_for(lambda: _standing_by(active), timeout=30, interval=0.2)
        writer.stop()
        report = converge(db_dsn, es_url, es_prefix, ["esindexer"])
        assert report.clean, report.as_dict()
        print(f"takeover from an active stuck in a query (lease {LEASE:g}s): {took:.2f}s")
    finally:
        blocker.close()
        writer.stop(check=False)
        codes = [active.stop(), standby.stop() if standby is not None else 0]
        assert codes == [0, 0], active.log()[-3000:] + (standby.log()[-3000:] if standby else "")


def test_a_waiting_standby_wins_the_lock_over_a_process_started_as_the_active_dies(
        zodb, db_dsn, es_url, es, es_prefix, tmp_path):
    """Each round: kill -9 the active while a new process starts; the standby that waited
    must be the one that indexes next, and the newcomer stands by behind it."""
    LiveWriter(zodb, rate=1)
    env = service_env(db_dsn, es_url, es_prefix, lease_seconds=str(LEASE))
    active = Service(env, tmp_path / "p0.log")
    services = [active]
    try:
        wait_for(lambda: _indexing(active), timeout=60, interval=0.2)
        waiting = Service(env, tmp_path / "p1.log")
        services.append(waiting)
        wait_for(lambda: _standing_by(waiting), timeout=30, interval=0.2)
        for round_, delay in enumerate((0.0, 0.4, 0.8, 1.2, 1.6), start=2):
            newcomer = Service(env, tmp_path / f"p{round_}.log")
            services.append(newcomer)
            time.sleep(delay)  # the newcomer is starting up: its first try of the lock comes about now
            epoch = _lease(db_dsn)[0]
            active.kill()
            epoch, holder = wait_for(lambda: (lease := _lease(db_dsn))[0] > epoch and lease, timeout=30)
            assert holder == waiting.proc.pid, f"round {round_} (newcomer {delay}s before the kill): " + (
                "the newcomer won" if holder == newcomer.proc.pid else f"pid {holder} holds the lease")
            wait_for(lambda: _indexing(waiting) and _standing_by(newcomer), timeout=30, interval=0.1)
            active, waiting = waiting, newcomer
    finally:
        codes = [service.stop() for service in services]
        assert all(code in (0, -9) for code in codes), codes
