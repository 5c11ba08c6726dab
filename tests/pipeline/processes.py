"""What the standby and partition tests share: real ``esindexer run`` processes, a live
ZODB writer, and the check that an index equals the database.

The processes are started as operators start them (``python -m esindexer run`` with
``ESINDEXER_*`` variables), log to files (a pipe nobody reads would block them), and
are looked at only from outside: their HTTP endpoints, PostgreSQL and Elasticsearch.
"""

from __future__ import annotations

import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import transaction
from BTrees.OOBTree import OOBTree

from esindexer.convert.configure import build_jsonifier
from esindexer.documents import DocumentBuilder
from esindexer.es.sink import ElasticsearchSink
from esindexer.ops.verify import Report, verify
from esindexer.source import deletions, follow
from esindexer.source.progress import get_progress_tid
from tests.indexing import Page, make_settings
from tests.support import esindexer_env, wait_for


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_status(port: int, path: str, timeout: float = 3.0) -> tuple[int, str] | None:
    """``(status, body)`` of a GET on the loopback port, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def service_env(db_dsn: str, es_url: str, es_prefix: str, **settings: str) -> dict[str, str]:
    """The environment of a test's ``esindexer run``: short intervals, no replicas."""
    env = esindexer_env()  # (with the test node's engine: the OpenSearch run's too)
    env.update(
        ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
        ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_HOST="127.0.0.1", ESINDEXER_LAG_POLL_INTERVAL="0.5",
        ESINDEXER_POLL_TIMEOUT="1", ESINDEXER_RETRY_MAX_SECONDS="1", ESINDEXER_ES_REQUEST_TIMEOUT="10",
        ESINDEXER_BATCH_LIMIT="200", ESINDEXER_BULK_MAX_DOCS="100",
    )
    env.update({f"ESINDEXER_{k.upper()}": v for k, v in settings.items()})
    return env


class Service:
    """One ``python -m esindexer run`` process with its own metrics port and log file."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None, *args: str) -> None:
        self.port = port if port is not None else free_port()
        self.log_path = log_path
        env = dict(env, ESINDEXER_METRICS_PORT=str(self.port))
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "esindexer", "run", *args], env=env,
                                         stdout=subprocess.DEVNULL, stderr=log)

    def get(self, path: str) -> tuple[int, str] | None:
        return http_status(self.port, path)

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled series on /metrics, None while not served."""
        answer = self.get("/metrics")
        if answer is None or answer[0] != 200:
            return None
        match = re.search(rf"^{re.escape(name)} (\S+)$", answer[1], re.M)
        return float(match.group(1)) if match else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no clean exit, no log line, no chance to save anything."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: every thread stops, its sockets (and PostgreSQL sessions) stay open."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> int:
        self.resume()  # a stopped process would not see SIGTERM
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class LiveWriter:
    """A ZODB application committing at about ``rate`` transactions per second from a
    thread: each adds a page and changes an existing one; every ``remove_every`` commits
    a page is dropped from the container (garbage, deleted by the next pack), and
    :meth:`pack` packs between two of its commits (RelStorage's history-free pack raced
    with commits that split BTree buckets here: the writer later met a POSKeyError for a
    page it still referenced, so the writer holds off while the pack runs)."""

    def __init__(self, db, rate: float = 20.0, remove_every: int = 5, seed: int = 15) -> None:
        self.db = db
        self.rate = rate
        self.remove_every = remove_every
        self.commits = 0
        self.packs = 0
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # held by a commit, or by a pack
        self._error: BaseException | None = None
        conn = db.open()
        root = conn.root()
        if "pages" not in root:
            root["pages"] = OOBTree()
            for n in range(200):
                root["pages"][n] = Page(f"page {n}", body="x" * 200)
            transaction.commit()
        self._next = max(root["pages"].keys()) + 1
        conn.close()
        self._thread = threading.Thread(target=self._run, name="live-writer", daemon=True)

    def start(self) -> LiveWriter:
        self._thread.start()
        return self

    def _run(self) -> None:
        tm = transaction.TransactionManager()
        conn = self.db.open(tm)
        try:
            pages = conn.root()["pages"]
            while not self._stop.is_set():
                started = time.monotonic()
                with self._lock:
                    tm.begin()
                    pages[self._next] = Page(f"page {self._next}", body="y" * 100)
                    self._next += 1
                    keys = list(pages.keys())
                    changed = self._random.choice(keys)
                    pages[changed].title = f"changed {self.commits}"
                    if self.remove_every and self.commits % self.remove_every == 0:
                        del pages[self._random.choice([k for k in keys[:-1] if k != changed])]
                    tm.commit()
                    self.commits += 1
                self._stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))
        except BaseException as exc:  # reported by stop()
            self._error = exc
        finally:
            tm.abort()
            conn.close()

    def pack(self) -> None:
        """Pack now (history-free: removes the dropped pages; the trigger logs them)."""
        with self._lock:
            self.db.pack()
        self.packs += 1

    def stop(self, check: bool = True) -> None:
        """Stop writing; with ``check``, raise what went wrong in the writer (a ``finally``
        passes False, so the processes are still stopped)."""
        self._stop.set()
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join(30)
        if check and self._error is not None:
            raise self._error


def caught_up(db_dsn: str, client_ids: list[str]) -> bool:
    """Whether every client's saved progress is at the newest tid with no deletion unapplied."""
    import psycopg2

    with psycopg2.connect(db_dsn) as conn:
        latest = follow.latest_tid(conn)
        done = all(get_progress_tid(conn, c) >= latest and deletions.count_unapplied(conn, c) == 0
                   for c in client_ids)
    conn.close()
    return done


def converge(db_dsn: str, es_url: str, es_prefix: str, client_ids: list[str], timeout: float = 90) -> Report:
    """Wait until ``client_ids`` are caught up, then compare the index with the database
    object by object (``esindexer verify``'s comparison: missing, stale, ahead, orphan)."""
    import psycopg2

    wait_for(lambda: caught_up(db_dsn, client_ids), timeout=timeout, interval=0.5)
    settings = make_settings(db_dsn, es_url, es_prefix)
    sink = ElasticsearchSink(settings)
    conn = psycopg2.connect(db_dsn)
    try:
        sink.refresh()
        return verify(conn, sink, DocumentBuilder(settings), build_jsonifier(settings), settings.client_id)
    finally:
        conn.close()
        sink.es.close()
