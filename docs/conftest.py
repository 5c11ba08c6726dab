"""Fixtures for the documentation doctests (``--doctest-glob=*.rst``).

``docs/follow.rst`` runs against a fresh PostgreSQL database written by real ZODB +
RelStorage: the fixture below commits ``root.x = 1`` and puts ``dsn`` (the database),
``zodb`` (an open ``ZODB.DB`` on it) and ``print_`` into the doctest namespace.

The server fixtures come from ``tests/conftest.py``: importing them here registers
them for this directory (``pytest_plugins`` is only honoured in the root conftest).
Other ``.rst`` files in docs/ are left alone: the database is only made for the
documents listed in ``_NEEDS_DATABASE``.
"""

from __future__ import annotations

import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # `pytest docs/...` from elsewhere: make `tests` importable
    sys.path.insert(0, _ROOT)

from tests.conftest import db_dsn, keep_history, pg_dsn, zodb  # noqa: E402,F401  (fixtures)

_NEEDS_DATABASE = {"follow.rst"}


@pytest.fixture(autouse=True)
def _follow_doctest_namespace(request, doctest_namespace):
    if os.path.basename(str(request.node.fspath)) not in _NEEDS_DATABASE:
        yield
        return
    import transaction

    db = request.getfixturevalue("zodb")  # history-free RelStorage on a fresh database
    tm = transaction.TransactionManager(explicit=True)
    conn = db.open(tm)
    with tm:
        conn.root.x = 1
    conn.close()
    doctest_namespace.update(dsn=request.getfixturevalue("db_dsn"), zodb=db, print_=print)
    try:
        yield
    finally:
        for name in ("dsn", "zodb", "print_"):
            doctest_namespace.pop(name, None)
