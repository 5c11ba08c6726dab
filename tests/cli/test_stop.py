"""A signal stops ``esindexer run`` within 2 s, also while a PostgreSQL statement waits.

The statement is held by a lock another connection takes on RelStorage's ``object_state``
(``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE``): before the fix the process ignored SIGINT,
a second SIGINT and SIGTERM until the statement ended (issue 26, point 1), because Python
runs signal handlers only between bytecodes and libpq does not return meanwhile.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psycopg2
import pytest
import transaction

from esindexer.errors import ExitCode
from tests.indexing import Page, commit_tree, progress
from tests.pipeline.processes import free_port, http_status
from tests.support import esindexer_env, run_esindexer, wait_for

SIGNALS = pytest.mark.parametrize("signum, expected", [(signal.SIGINT, ExitCode.INTERRUPTED),
                                                       (signal.SIGTERM, ExitCode.TERMINATED)],
                                  ids=["SIGINT", "SIGTERM"])


def _waiting_on_lock(db_dsn: str) -> str | None:
    """The application_name of an esindexer session waiting for a lock, if any."""
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT application_name FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND application_name LIKE 'esindexer%%' AND datname = current_database()")
        row = cur.fetchone()
    conn.close()
    return row[0] if row else None


def _start(db_dsn: str, es_url: str, es_prefix: str, port: int, **extra: str) -> subprocess.Popen:
    env = esindexer_env(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url,
                        ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"), ESINDEXER_INDEX_REPLICAS="0",
                        ESINDEXER_METRICS_HOST="127.0.0.1", ESINDEXER_METRICS_PORT=str(port), **extra)
    return subprocess.Popen([sys.executable, "-m", "esindexer", "run", "--until-caught-up"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop_within(proc: subprocess.Popen, signum: int, limit: float) -> tuple[int, str, float]:
    started = time.monotonic()
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=limit + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"still running 30 s after the signal: {err[-3000:]}") from None
    took = time.monotonic() - started
    print(f"exit {proc.returncode} {took:.2f}s after the signal")  # the figure for docs/operations.md (-s)
    return proc.returncode, err, took


def _stop_once_stalled(proc: subprocess.Popen, proxy: StallingProxy, signum: int, limit: float, *,
                       settle: float, saved: Callable[[], bool] | None = None) -> tuple[int, str, float]:
    """Once ``proxy`` swallowed the marked request (and ``saved()`` holds), give the run
    ``settle`` s to reach the wait under test, then stop it (:func:`_stop_within`)."""
    try:
        wait_for(proxy.stalled.is_set, timeout=60, message="the marked request swallowed")
        if saved is not None:
            wait_for(saved, message="the progress before that request saved")
        time.sleep(settle)
        assert proc.poll() is None
        code, err, took = _stop_within(proc, signum, limit)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.close()
    assert took < limit, f"{took:.1f}s\n{err[-3000:]}"
    return code, err, took


@SIGNALS
def test_a_signal_cancels_a_follower_read_held_by_a_lock(zodb, db_dsn, es_url, es_prefix, signum, expected):
    conn = zodb.open()
    commit_tree(conn.root(), 6000, per_transaction=100)
    conn.close()
    port = free_port()
    proc = _start(db_dsn, es_url, es_prefix, port, ESINDEXER_FETCH_SIZE="20", ESINDEXER_BATCH_LIMIT="20")
    locker = psycopg2.connect(db_dsn)
    try:
        wait_for(lambda: progress(db_dsn) > 0, timeout=60, message="a first batch indexed")
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE object_state IN ACCESS EXCLUSIVE MODE")  # held until rollback
        name = wait_for(lambda: _waiting_on_lock(db_dsn), message="the follower waiting for the lock")
        assert "follower" in name
        assert wait_for(lambda: http_status(port, "/readyz")) is not None
        code, err, took = _stop_within(proc, signum, 2.0)
        status = locker.info.transaction_status
    finally:
        if proc.poll() is None:
            proc.kill()
        locker.rollback()
        locker.close()
    assert status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS  # the lock was never given up
    assert code == expected, err[-3000:]
    assert took < 2.0, f"{took:.1f}s\n{err[-3000:]}"
    assert "stopped before catching up" in err


@SIGNALS
def test_a_signal_cancels_a_setup_statement_held_by_a_lock(zodb, db_dsn, es_url, es_prefix, signum, expected):
    conn = zodb.open()
    commit_tree(conn.root(), 10)
    conn.close()
    locker = psycopg2.connect(db_dsn)
    with locker.cursor() as cur:
        cur.execute("LOCK TABLE object_state IN ACCESS EXCLUSIVE MODE")
    port = free_port()
    proc = _start(db_dsn, es_url, es_prefix, port)
    try:
        wait_for(lambda: _waiting_on_lock(db_dsn), timeout=60, message="esindexer waiting for the lock")
        code, err, took = _stop_within(proc, signum, 2.0)
    finally:
        if proc.poll() is None:
            proc.kill()
        locker.rollback()
        locker.close()
    assert code == expected, err[-3000:]
    assert took < 2.0, f"{took:.1f}s\n{err[-3000:]}"


class StallingProxy:
    """A loopback TCP proxy that forwards until :meth:`stall`, then keeps every connection
    open and forwards nothing more: requests in flight hang (unlike a refused connection).

    With ``stall_on``, it stalls by itself when a request carries those bytes (a document's
    title), swallowing that request: a test picks the batch whose request hangs instead of
    racing the service with :meth:`stall`. With ``only_that_connection`` too, only the
    connection that carried the marker stalls; the others go on forwarding."""

    def __init__(self, host: str, port: int, stall_on: bytes | None = None, only_that_connection: bool = False) -> None:
        self.target = (host, port)
        self.stall_on = stall_on
        self.only_that_connection = only_that_connection
        self.stalled = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b, request in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, request), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, request: bool) -> None:
        tail = b""  # the end of the last chunk: a marker may straddle two
        stuck = False
        try:
            while data := source.recv(65536):
                if request and self.stall_on is not None:
                    if self.stall_on in tail + data:
                        stuck = True
                        self.stall()
                    tail = data[-len(self.stall_on):]
                if stuck or (self.stalled.is_set() and not self.only_that_connection):
                    self.stalled.wait()  # swallow: the peer waits for an answer that never comes
                    continue
                sink.sendall(data)
        except OSError:
            pass

    def stall(self) -> None:
        self.stalled.set()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def _commit_transactions(zodb, *titles: list[str]) -> list[int]:
    """One transaction per list of page titles (the pages go into ``root["pages"]``);
    returns the tid of each."""
    from BTrees.OOBTree import OOBTree

    from tests.indexing import Page

    conn = zodb.open()
    root = conn.root()
    root["pages"] = tree = OOBTree()
    tids = []
    for batch in titles:
        pages = [Page(title) for title in batch]
        for page in pages:
            tree[len(tree)] = page
        transaction.commit()
        tids.append(int.from_bytes(pages[-1]._p_serial, "big"))  # a new page: stored by this one
    conn.close()
    return tids


def _start_behind_proxy(db_dsn: str, proxy: StallingProxy, es_prefix: str) -> subprocess.Popen:
    """Each transaction its own batch, one bulk request in flight at a time: the batch whose
    request the proxy swallows is known, and the reader waits behind it."""
    return _start(db_dsn, proxy.url, es_prefix, free_port(), ESINDEXER_BATCH_LIMIT="1",
                  ESINDEXER_BULK_MAX_DOCS="50", ESINDEXER_BULK_CONCURRENCY="1", ESINDEXER_SHUTDOWN_TIMEOUT="60",
                  ESINDEXER_ES_REQUEST_TIMEOUT="20")


def test_a_second_signal_abandons_requests_elasticsearch_does_not_answer(zodb, db_dsn, es_url, es_prefix):
    """docs/architecture.md: "a second signal abandons at once", also while bulk requests hang.

    The request that hangs is the whole of a batch the reader handed to the committer (the
    second transaction), so the first signal's stop must wait for it: the process is still
    there a second later. (Stalling at an arbitrary moment, the hung request could belong
    to a batch the stop cut short, which a stop does not wait for.)"""
    from urllib.parse import urlsplit

    first, _, _ = _commit_transactions(zodb, [f"page {n}" for n in range(5)],
                                       ["stall here"] + [f"page {n}" for n in range(5, 10)],
                                       [f"page {n}" for n in range(10, 1010)])
    target = urlsplit(es_url)
    proxy = StallingProxy(target.hostname, target.port, stall_on=b"stall here")
    proc = _start_behind_proxy(db_dsn, proxy, es_prefix)
    try:
        wait_for(proxy.stalled.is_set, timeout=60, message="the second batch's request swallowed")
        wait_for(lambda: progress(db_dsn) == first, message="the first batch's progress saved")
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]  # the stop waits for the second batch
        code, err, took = _stop_within(proc, signal.SIGTERM, 2.0)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.close()
    assert code == ExitCode.TERMINATED, err[-3000:]
    assert took < 2.0, f"{took:.1f}s\n{err[-3000:]}"
    assert progress(db_dsn) == first  # the batch Elasticsearch never acknowledged does not count


def test_a_completed_stop_exits_while_a_request_of_a_cut_batch_hangs(zodb, db_dsn, es_url, es_prefix):
    """The stop cuts the batch being read short: its requests in flight do not count, so the
    stop does not wait for them and completes at once. The process then exits with the
    stop's code, without joining the sender thread that still waits for Elasticsearch
    (before, it lingered until the request timed out, with the default signal handling)."""
    from urllib.parse import urlsplit

    first, _ = _commit_transactions(zodb, [f"page {n}" for n in range(5)],
                                    [f"stall here {n}" for n in range(1000)])
    target = urlsplit(es_url)
    proxy = StallingProxy(target.hostname, target.port, stall_on=b"stall here")
    proc = _start_behind_proxy(db_dsn, proxy, es_prefix)
    try:
        wait_for(proxy.stalled.is_set, timeout=60, message="a request of the second batch swallowed")
        wait_for(lambda: progress(db_dsn) == first, message="the first batch's progress saved")
        code, err, took = _stop_within(proc, signal.SIGTERM, 2.0)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.close()
    assert code == ExitCode.TERMINATED, err[-3000:]
    assert took < 2.0, f"{took:.1f}s\n{err[-3000:]}"
    assert "stopped before catching up" in err
    assert "without waiting for" in err and "esindexer-bulk" in err, err[-3000:]  # it did not wait, and says so
    assert progress(db_dsn) == first


@pytest.mark.parametrize("queue_full", [False, True], ids=["done reading", "queue full"])
def test_a_stop_while_the_run_waits_behind_a_hanging_request_is_bounded(zodb, db_dsn, es_url, es_prefix,
                                                                       queue_full):
    """The second batch's request hangs, and a stop finds the reader in one of two waits:

    - *done reading*: that batch is the last; a bounded run has read everything and waits
      for it to settle;
    - *queue full*: later batches' requests succeed on another connection and queue behind
      it (progress moves in order) until the committer's queue is full and the reader waits
      to hand one more over; that batch is cut.

    Either way the stop waits ``shutdown_timeout`` for what is queued, exits with the stop's
    code and does not say "caught up"; nothing after the unacknowledged batch counts.
    Before, both waits were without end: only a second signal ended them (a CI run waited
    60 s for a SIGINT)."""
    from urllib.parse import urlsplit

    later = [[f"page {n} of {t}" for n in range(3)] for t in range(12)] if queue_full else []
    first, *_ = _commit_transactions(zodb, [f"page {n}" for n in range(5)], ["stall here"], *later)
    target = urlsplit(es_url)
    proxy = StallingProxy(target.hostname, target.port, stall_on=b"stall here", only_that_connection=queue_full)
    proc = _start(db_dsn, proxy.url, es_prefix, free_port(), ESINDEXER_BATCH_LIMIT="1",
                  ESINDEXER_BULK_CONCURRENCY="2" if queue_full else "1", ESINDEXER_SHUTDOWN_TIMEOUT="2",
                  ESINDEXER_ES_REQUEST_TIMEOUT="20")
    # settle: the run reaches its wait (nothing left to read; the later batches acknowledged)
    code, err, _ = _stop_once_stalled(proc, proxy, signal.SIGINT, 4.0, settle=2,
                                      saved=lambda: progress(db_dsn) == first)
    assert code == ExitCode.INTERRUPTED, err[-3000:]
    assert "did not finish within 2s" in err, err[-3000:]
    assert "stopped before catching up" in err and "caught up" not in err.replace("stopped before catching up", "")
    assert progress(db_dsn) == first


def test_a_stop_while_the_start_up_sweep_waits_for_elasticsearch_is_bounded(zodb, db_dsn, es_url, es_prefix):
    """The start-up sweep deletes the documents of objects packed while the service was
    away, before any batch is read; its bulk request hangs. A first stop abandons it one
    second after ``shutdown_timeout`` (the attempt under way ends at its request timeout):
    nothing of it is progress. Before, the sweep's send was retried until a second signal."""
    from urllib.parse import urlsplit

    conn = zodb.open()
    root = conn.root()
    for n in range(6):
        root[n] = Page(f"page {n}")
    transaction.commit()
    settings = dict(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
                    ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT="0")
    assert run_esindexer("run", "--until-caught-up", env=settings).returncode == ExitCode.OK
    for n in range(3):
        del root[n]
    transaction.commit()
    zodb.pack(time.time() + 1)  # their documents are left for a sweep
    conn.close()
    target = urlsplit(es_url)
    proxy = StallingProxy(target.hostname, target.port, stall_on=b"/_bulk", only_that_connection=True)
    proc = _start(db_dsn, proxy.url, es_prefix, free_port(), ESINDEXER_SWEEP_ON_START="always",
                  ESINDEXER_SHUTDOWN_TIMEOUT="2", ESINDEXER_ES_REQUEST_TIMEOUT="3")
    # within 7 s: 2 + 1 s, then at most the attempt's 3 s
    code, err, _ = _stop_once_stalled(proc, proxy, signal.SIGTERM, 7.0, settle=0.5)
    assert code == ExitCode.TERMINATED, err[-3000:]
    assert "still waiting for a server 3s after the stop; abandoning" in err, err[-3000:]
    assert "stopped before catching up" in err


@pytest.mark.parametrize("second", [False, True], ids=["one signal", "two signals"])
def test_a_reindex_stopped_while_a_request_of_a_cut_batch_hangs_exits_143(zodb, db_dsn, es_url, es_prefix, second):
    """``esindexer reindex`` runs its indexer in-process: the same stop (the build cut short
    while a request of that batch hangs) exits 143 promptly, and a second SIGTERM meanwhile
    does not kill it (-15). Before, it lingered until the request timed out (20 s here)."""
    from urllib.parse import urlsplit

    alias = es_prefix.rstrip("-")
    first, _ = _commit_transactions(zodb, [f"page {n}" for n in range(5)],
                                    [f"stall here {n}" for n in range(1000)])
    target = urlsplit(es_url)
    proxy = StallingProxy(target.hostname, target.port, stall_on=b"stall here")
    env = esindexer_env(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=proxy.url, ESINDEXER_INDEX_PREFIX=f"{alias}-gen1",
                        ESINDEXER_ALIAS=alias, ESINDEXER_CLIENT_ID="esindexer-gen1", ESINDEXER_INDEX_REPLICAS="0",
                        ESINDEXER_BATCH_LIMIT="1", ESINDEXER_BULK_MAX_DOCS="50", ESINDEXER_BULK_CONCURRENCY="1",
                        ESINDEXER_SHUTDOWN_TIMEOUT="60", ESINDEXER_ES_REQUEST_TIMEOUT="20")
    proc = subprocess.Popen([sys.executable, "-m", "esindexer", "reindex", "--to", f"{alias}-gen2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(proxy.stalled.is_set, timeout=60, message="a request of the second batch swallowed")
        wait_for(lambda: progress(db_dsn, f"{alias}-gen2") == first, message="the first batch's progress saved")
        if second:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
        code, err, took = _stop_within(proc, signal.SIGTERM, 2.0)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.close()
    assert code == ExitCode.TERMINATED, err[-3000:]
    assert took < 2.0, f"{took:.1f}s\n{err[-3000:]}"
    assert "the build did not finish; run the same command again to resume" in err
    assert "without waiting for" in err and "esindexer-bulk" in err, err[-3000:]
    assert progress(db_dsn, f"{alias}-gen2") == first


_FAILING_SERVE = """
import sys, threading
import esindexer.cli.run as run

def _serve(*args):
    # what a failure leaves: a sender thread (not a daemon) still waiting for a request
    threading.Thread(target=threading.Event().wait, args=(20,), name="esindexer-bulk_0").start()
    raise RuntimeError("the pipeline failed")

run._serve = _serve
from esindexer.cli import main
sys.exit(main(["run", "--until-caught-up"]))
"""


def test_an_error_of_the_service_is_reported_and_exits_without_joining_a_waiting_sender(db_dsn, es_url, es_prefix):
    """The error path of ``run``: when ``_serve`` raises, the error is reported as main()
    reports it (a bug: exit 1, the traceback in the log), and the process exits without
    joining a sender thread left waiting (before: up to the request timeout). Not triggered
    through the services: the thread and the error are planted, the rest is the real command."""
    env = esindexer_env(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
                        ESINDEXER_METRICS_PORT="0")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _FAILING_SERVE], env=env, capture_output=True, text=True,
                          timeout=60)
    took = time.monotonic() - started
    assert done.returncode == ExitCode.ERROR, done.stderr[-3000:]
    assert "esindexer run failed" in done.stderr and "RuntimeError: the pipeline failed" in done.stderr
    assert "exit 1 without waiting for esindexer-bulk_0" in done.stderr, done.stderr[-3000:]
    assert took < 10, f"{took:.1f}s\n{done.stderr[-3000:]}"
