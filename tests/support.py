"""Helpers shared by the tests: real RelStorage databases and a history-mode switch.

Import from tests as ``from tests.support import both_history_modes``.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import Callable, Iterator, TypeVar
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
    from relstorage.adapters.postgresql import PostgreSQLAdapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage

    from psycopg2.extensions import make_dsn, parse_dsn

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
    return os.environ.get("ESINDEXER_REQUIRE_SERVICES") == "1"
