"""sd_notify: READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 over a real unix datagram socket.

The socket stands in for systemd's end of ``$NOTIFY_SOCKET``: the protocol is a datagram
of ``KEY=VALUE`` lines, which is all systemd reads. The end-to-end tests run
``python -m esindexer run`` as systemd would start it (``NOTIFY_SOCKET`` and
``WATCHDOG_USEC`` in its environment) against the real PostgreSQL and Elasticsearch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import transaction

from esindexer.observe import systemd
from tests.observe.test_alerts_e2e import Note, free_port
from tests.support import wait_for


class NotifySocket:
    """A bound ``SOCK_DGRAM`` unix socket collecting every datagram in a thread."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def lines(self) -> list[str]:
        return [line for _, message in list(self.messages) for line in message]

    def lines_once_stopping(self) -> list[str]:
        """Every line, once the last datagram (STOPPING=1) has been read by the thread."""
        wait_for(lambda: "STOPPING=1" in self.lines(), timeout=5, message="STOPPING=1")
        return self.lines()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, NotifySocket]]:
    path = str(tmp_path / "notify.sock")
    receiver = NotifySocket(path)
    try:
        yield path, receiver
    finally:
        receiver.close()


# --- the protocol -------------------------------------------------------------------------


def test_notify_sends_one_datagram_of_lines(notify_socket) -> None:
    path, receiver = notify_socket
    assert systemd.notify("READY=1", "STATUS=ready: following the database", env={"NOTIFY_SOCKET": path})
    wait_for(lambda: receiver.messages, timeout=5)
    assert receiver.messages[0][1] == ["READY=1", "STATUS=ready: following the database"]


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"esindexer-test-{os.getpid()}-{time.monotonic_ns()}"
    receiver = NotifySocket("\0" + name)
    try:
        assert systemd.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
        wait_for(lambda: receiver.messages, timeout=5)
        assert receiver.lines() == ["WATCHDOG=1"]
    finally:
        receiver.close()


def test_notify_without_systemd_sends_nothing() -> None:
    assert systemd.notify("READY=1", env={}) is False


def test_notify_to_a_missing_socket_is_logged_not_raised(tmp_path: Path, caplog) -> None:
    assert systemd.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False
    assert "cannot notify systemd" in caplog.text
    assert systemd.notify("READY=1", env={"NOTIFY_SOCKET": "relative.sock"}) is False
    assert "neither a path nor an abstract socket name" in caplog.text


def test_watchdog_seconds() -> None:
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    # Meant for another process (this one inherited the variables): not ours to answer.
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_seconds({}) is None
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "soon"}) is None


def test_status_line() -> None:
    assert systemd.status_line(True, True, []) == "ready: following the database"
    assert systemd.status_line(True, False, ["PostgreSQL: not polled yet", "stalled:\n lag 9s"]) == (
        "not ready: PostgreSQL: not polled yet; stalled: lag 9s")
    assert systemd.status_line(False, True, []).startswith("not ready: starting (client lock")


def test_notifier_says_ready_once_pings_the_watchdog_and_says_stopping(notify_socket) -> None:
    path, receiver = notify_socket
    state = {"ready": False, "started": False}
    notifier = systemd.ServiceNotifier(
        lambda: (state["ready"], [] if state["ready"] else ["Elasticsearch unreachable: refused"]),
        started=lambda: state["started"], env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    notifier.start()
    try:
        wait_for(lambda: any(line.startswith("STATUS=not ready: starting") for line in receiver.lines()), timeout=5)
        state["started"] = True
        wait_for(lambda: "STATUS=not ready: Elasticsearch unreachable: refused" in receiver.lines(), timeout=5)
        assert "READY=1" not in receiver.lines()
        state["ready"] = True
        wait_for(lambda: "READY=1" in receiver.lines(), timeout=5)
        # Pings every half watchdog period (0.5 s) while the status stays the same.
        time.sleep(3.0)
    finally:
        notifier.stop()
    lines = receiver.lines_once_stopping()
    assert lines.count("READY=1") == 1
    assert lines.count("STATUS=ready: following the database") == 1
    assert lines.count("WATCHDOG=1") >= 5, lines
    assert lines[-2:] == ["STOPPING=1", "STATUS=stopping"]
    pings = [at for at, message in receiver.messages if "WATCHDOG=1" in message]
    assert max(b - a for a, b in zip(pings, pings[1:])) < 1.0  # never a full period without one


def test_notifier_outside_systemd_starts_no_thread() -> None:
    notifier = systemd.ServiceNotifier(lambda: (True, []), started=lambda: True, env={})
    notifier.start()
    assert not notifier.enabled and notifier._thread is None
    notifier.stop()


# --- end to end: `esindexer run` as systemd starts it ------------------------------------------


def start_service(db_dsn: str, es_url: str, es_prefix: str, notify_path: str, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESINDEXER_", "WATCHDOG_"))}
    env.update(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
               ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT=str(free_port()),
               ESINDEXER_LAG_POLL_INTERVAL="0.5", ESINDEXER_RETRY_MAX_SECONDS="1",
               NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="2000000")
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "esindexer", "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)


def stop_service(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def test_run_notifies_ready_after_loading_progress_and_stopping_on_sigterm(
        zodb, db_dsn, es_url, es_prefix, notify_socket, tmp_path) -> None:
    path, receiver = notify_socket
    conn = zodb.open()
    conn.root()["note"] = Note("indexed before READY=1 is even needed")
    transaction.commit()
    conn.close()
    log_path = tmp_path / "esindexer.log"
    started = time.monotonic()
    proc = start_service(db_dsn, es_url, es_prefix, path, log_path)
    try:
        wait_for(lambda: proc.poll() is not None or "READY=1" in receiver.lines(), timeout=60,
                 message="READY=1")
        assert proc.poll() is None, log_path.read_text()
        ready_after = time.monotonic() - started
        wait_for(lambda: receiver.lines().count("WATCHDOG=1") >= 3, timeout=10, message="watchdog pings")
    finally:
        code = stop_service(proc)
    lines = receiver.lines_once_stopping()
    assert code == 0, log_path.read_text()[-3000:]
    assert lines.count("READY=1") == 1
    assert "STATUS=ready: following the database" in lines
    assert lines[-2:] == ["STOPPING=1", "STATUS=stopping"]
    assert "told systemd the service is ready" in log_path.read_text()
    print(f"\n[sd_notify] READY=1 {ready_after:.1f}s after start; messages: {lines}")


def test_run_is_not_ready_while_elasticsearch_is_unreachable(db_dsn, zodb, es_prefix, notify_socket, tmp_path) -> None:
    path, receiver = notify_socket
    log_path = tmp_path / "esindexer.log"
    proc = start_service(db_dsn, f"http://127.0.0.1:{free_port()}", es_prefix, path, log_path)
    try:
        status = wait_for(lambda: [line for line in receiver.lines() if "Elasticsearch unreachable" in line],
                          timeout=30, message="a status naming Elasticsearch")
        time.sleep(3)
        lines = receiver.lines()
        assert proc.poll() is None, log_path.read_text()
        assert "READY=1" not in lines
        assert "WATCHDOG=1" in lines  # alive, only not ready: systemd must not kill it for that
        assert status[0].startswith("STATUS=not ready: starting"), status
    finally:
        assert stop_service(proc) == 0, log_path.read_text()[-3000:]
    assert receiver.lines_once_stopping()[-2:] == ["STOPPING=1", "STATUS=stopping"]
