"""Helpers for the follow tests (no tests here): write with real ZODB, read what the follower should see."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg2
import transaction
from persistent.mapping import PersistentMapping
from psycopg2.extensions import make_dsn, parse_dsn
from ZODB.utils import u64

from esindexer.source import follow


class Writer:
    """Commits through ZODB on its own transaction manager (usable from any one thread)."""

    def __init__(self, db):
        self.db = db
        self.tm = transaction.TransactionManager(explicit=True)
        self.conn = db.open(self.tm)
        self.tm.begin()
        self.root = self.conn.root()

    def commit(self) -> int:
        """Commit; ``commit_started`` / ``commit_returned`` bracket it (monotonic seconds)."""
        self.commit_started = time.monotonic()
        self.tm.commit()
        self.commit_returned = time.monotonic()
        tid = u64(self.conn._storage.lastTransaction())  # this instance committed it
        self.tm.begin()
        return tid

    def add(self, key, **state) -> PersistentMapping:
        obj = self.root[key] = PersistentMapping(state)
        return obj

    def oid(self, key) -> int:
        return u64(self.root[key]._p_oid)

    def close(self) -> None:
        self.tm.abort()
        self.conn.close()


@contextlib.contextmanager
def writer(db) -> Iterator[Writer]:
    w = Writer(db)
    try:
        yield w
    finally:
        w.close()


def expected_rows(dsn: str, keep_history: bool, start_tid: int = -1, end_tid: int | None = None):
    """What the follower must return, read directly and independently with one query."""
    table = "object_state NATURAL JOIN current_object" if keep_history else "object_state"
    upper = "" if end_tid is None else f" AND tid <= {int(end_tid)}"
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT tid, zoid, state FROM {table} WHERE tid > %s{upper} ORDER BY tid, zoid",
                    (start_tid,))
        return [(t, z, None if s is None else bytes(s)) for t, z, s in cur.fetchall()]


def collect(conn, **kwargs) -> list[list[tuple]]:
    """All batches up to the newest data (``end_tid`` defaults to the latest tid)."""
    if "end_tid" not in kwargs:
        kwargs["end_tid"] = follow.latest_tid(conn)
    return [list(batch) for batch in follow.updates(conn, **kwargs)]


def flat(batches) -> list[tuple]:
    return [row for batch in batches for row in batch]


def tids_of(batch) -> list[int]:
    seen: list[int] = []
    for tid, _, _ in batch:
        if not seen or seen[-1] != tid:
            seen.append(tid)
    return seen


def with_params(dsn: str, **params) -> str:
    """The same DSN in keyword form with extra parameters (e.g. user, application_name)."""
    return make_dsn(**{**parse_dsn(dsn), **params})


@contextlib.contextmanager
def select_only_role(admin_dsn: str, db_dsn: str) -> Iterator[str]:
    """A LOGIN role that may only SELECT the tables of the test database; yields its DSN."""
    name = f"esit_ro_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    dbname = parse_dsn(db_dsn)["dbname"]
    with contextlib.closing(psycopg2.connect(db_dsn)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD %s", (password,))
            cur.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO {name}')
            cur.execute(f"GRANT USAGE ON SCHEMA public TO {name}")
            cur.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name}")
    try:
        yield with_params(db_dsn, user=name, password=password)
    finally:
        with contextlib.closing(psycopg2.connect(db_dsn)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                            (name,))
                cur.execute(f"DROP OWNED BY {name}")
                cur.execute(f"DROP ROLE {name}")


class Follower(threading.Thread):
    """Runs an endless follow in a thread, recording (monotonic time, batch rows)."""

    def __init__(self, conn, **kwargs):
        super().__init__(daemon=True)
        self.updates = follow.updates(conn, **kwargs)
        self.batches: list[tuple[float, list[tuple]]] = []
        self.error: BaseException | None = None
        self.started_iterating = threading.Event()
        self.changed = threading.Condition()

    def run(self) -> None:
        try:
            iterator = iter(self.updates)
            self.started_iterating.set()
            for batch in iterator:
                rows = list(batch)
                with self.changed:
                    self.batches.append((time.monotonic(), rows))
                    self.changed.notify_all()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.updates.close()

    def rows(self) -> list[tuple]:
        with self.changed:
            return [row for _, rows in self.batches for row in rows]
