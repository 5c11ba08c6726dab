"""Helpers shared by the tests: real RelStorage databases and a history-mode switch.

Import from tests as ``from tests.support import both_history_modes``.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

T = TypeVar("T")

#: Run a test once against a history-free and once against a history-preserving database.
both_history_modes = pytest.mark.parametrize(
    "keep_history", [False, True], ids=["history-free", "history-preserving"]
)


def dsn_for_database(dsn: str, dbname: str) -> str:
    """The same server and credentials as ``dsn`` (a URI), on another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


@contextlib.contextmanager
def fresh_database(admin_dsn: str, prefix: str = "esit") -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its DSN, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        yield dsn_for_database(admin_dsn, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def open_zodb(dsn: str, keep_history: bool):
    """A ``ZODB.DB`` on RelStorage over ``dsn``, creating the schema on first use."""
    import ZODB
    from psycopg2.extensions import make_dsn, parse_dsn
    from relstorage.adapters.postgresql import PostgreSQLAdapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage

    options = Options(keep_history=keep_history, cache_local_mb=0)
    # RelStorage appends "application_name=..." to the DSN: it needs the keyword form.
    adapter = PostgreSQLAdapter(dsn=make_dsn(**parse_dsn(dsn)), options=options)
    storage = RelStorage(adapter, options=options)
    return ZODB.DB(storage)


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
             message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def require_services() -> bool:
    return os.environ.get("ESIT_REQUIRE_SERVICES") == "1"


class TcpProxy:
    """A loopback TCP proxy in front of a real server, to simulate its outage.

    ``pause()`` closes every connection and refuses new ones (as a stopped server
    would); ``resume()`` accepts again. The server behind it keeps running, so
    other tests sharing it are not disturbed.
    """

    def __init__(self, target_host: str, target_port: int):
        import socket
        import threading

        self._target = (target_host, target_port)
        self._socket_mod = socket
        self._lock = threading.Lock()
        self._conns: list = []
        self._listener = None
        self._closed = False
        self._thread = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.resume()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def resume(self) -> None:
        import threading

        socket = self._socket_mod
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def pause(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(self._socket_mod.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(self._socket_mod.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._closed = True
        self.pause()

    def _accept(self, listener) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self._socket_mod.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


def servers_from_env() -> tuple[str, str]:
    """(admin PostgreSQL DSN, Elasticsearch URL) for benchmarks; exit 2 with a hint if unset."""
    import sys

    pg = os.environ.get("ESIT_PG_DSN")
    es_url = os.environ.get("ESIT_ES_URL")
    if not pg or not es_url:
        print('set ESIT_PG_DSN and ESIT_ES_URL (eval "$(scripts/services env)")',
              file=sys.stderr)
        raise SystemExit(2)
    return pg, es_url


def search_engine() -> str:
    """The engine at ``ESIT_ES_URL``: ``ESIT_SEARCH_ENGINE`` (the OpenSearch run of
    scripts/test sets ``opensearch``), else ``elasticsearch``."""
    return os.environ.get("ESIT_SEARCH_ENGINE", "elasticsearch")


def search_client(url: str, request_timeout: float = 60, max_retries: int = 3):
    """A client of the test search node: the Elasticsearch client, or for OpenSearch
    esindexer's OpenSearch client, which has the same interface (so tests are written once)."""
    if search_engine() == "opensearch":
        from opensearchpy import OpenSearch

        from esindexer.opensearch.client import OpenSearchClient

        return OpenSearchClient(OpenSearch([url], timeout=request_timeout, max_retries=max_retries),
                                request_timeout=request_timeout)
    from elasticsearch import Elasticsearch

    return Elasticsearch(url, request_timeout=request_timeout, max_retries=max_retries)


def esindexer_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ESINDEXER_* variable, plus ``settings``
    (and the engine of the test node, unless ``settings`` names one). The metrics server is
    off unless ``settings`` gives it a port: tests run in parallel (pytest-xdist), and two
    processes on the default port would refuse each other."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")}
    env["ESINDEXER_SEARCH_ENGINE"] = search_engine()
    env["ESINDEXER_METRICS_PORT"] = "0"
    env.update(settings)
    return env


def run_esindexer(*args: str, env: dict[str, str], timeout: float = 120):
    """Run ``python -m esindexer ARGS`` to completion with exactly the given settings."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "esindexer", *args], env=esindexer_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def scalar(dsn: str, sql: str, args: tuple = ()):
    """The one value a query returns, on a connection of its own (closed afterwards)."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        value = cur.fetchone()[0]
    conn.close()
    return value
