"""PostgreSQL access for everything esindexer reads or writes there: one place.

How a connection is opened (:func:`connect`: a connect timeout, TCP keepalives so a
dead server is noticed, and an ``application_name`` so an operator finds esindexer in
``pg_stat_activity``), which errors mean "unreachable" (:data:`CONNECTION_ERRORS`) or
"not permitted" (:data:`NOT_PERMITTED`), the per-client advisory lock, and how
RelStorage's tables are found.

Every public function of :mod:`esindexer.source.follow` accepts either a psycopg2 connection
or a DSN string. The rules for whose transaction is whose live here so they are the
same everywhere:

- **A DSN** means the function owns the connection: it opens it, commits its own work
  and closes it.
- **A connection** means the caller owns the transaction. A function that writes never
  commits or rolls back the caller's transaction; it may roll back to a savepoint of
  its own. A function that only reads and finds the connection *idle* (no transaction
  in progress) ends the short read transaction it started, so that a plain
  non-autocommit connection is not left "idle in transaction" by a lookup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Union

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extensions import make_dsn, parse_dsn

from esindexer.errors import AlreadyRunning, SchemaError, SetupError
from esindexer.source import copyrows

if TYPE_CHECKING:
    from esindexer.config import Settings

ConnOrDsn = Union[str, "psycopg2.extensions.connection"]

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE

#: The connection is gone or could not be made: retried by the service.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)

#: The role may not do this here (DDL rights, a read-only replica, a lock not had in
#: time): the caller falls back (polling, the sweep) instead of failing.
NOT_PERMITTED = (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.LockNotAvailable,
                 psycopg2.errors.ReadOnlySqlTransaction, psycopg2.errors.FeatureNotSupported)

#: A statement cancelled (by a stop: :func:`cancel_if_busy`, or by ``statement_timeout``).
CANCELLED = psycopg2.errors.QueryCanceled

LOCK_CLASS = 0x65730001  # advisory lock namespace: "es" + 1

#: What the server says, at connection time, when it will never accept this DSN: the
#: password, the role, the database or pg_hba.conf is wrong. libpq reports these without
#: an SQLSTATE, so the (English, as libpq and the server send them by default) text is
#: all there is to tell them from an outage.
_REFUSED_FOR_GOOD = (
    ("password authentication failed", "the password (or the user) in ESINDEXER_PG_DSN is wrong"),
    ("no password supplied", "the server asks for a password and ESINDEXER_PG_DSN gives none"),
    ("authentication failed for user", "the server refused the authentication of that user"),
    ("no pg_hba.conf entry", "the server's pg_hba.conf admits no connection of this user to this database "
                             "from this host"),
    ("does not exist", "the database or role named in ESINDEXER_PG_DSN does not exist"),
    ("server does not support ssl", "ESINDEXER_PG_DSN asks for SSL (sslmode) and the server has none"),
)


def privilege_problem(exc: BaseException) -> SetupError:
    """The one line for a statement this role may not run: what was refused, and the fix."""
    text = " ".join(str(getattr(exc, "pgerror", None) or exc).split())
    return SetupError(f"PostgreSQL refused: {text[:300]}; an administrator sets esindexer up once with "
                      "`esindexer setup --grant-to <this role>` (docs/configuration.md, least privilege)")


def refused_for_good(exc: BaseException) -> SetupError | None:
    """The :class:`SetupError` a failed connection amounts to, when no retry can help.

    A wrong password used to be retried for ever and reported as "unreachable"; these
    end a command with exit code 2 and one line saying what to change.
    """
    if not isinstance(exc, psycopg2.OperationalError) or getattr(exc, "pgcode", None):
        return None
    text = " ".join(str(exc).split())
    lowered = text.lower()
    for needle, meaning in _REFUSED_FOR_GOOD:
        if needle in lowered:
            first = text.split(" connection to server at ")[0]  # libpq repeats it per address tried
            return SetupError(f"PostgreSQL refused the connection: {meaning} ({first[:300]})")
    return None


def int_array(values: Iterable[int]) -> str:
    """``values`` as a PostgreSQL array literal (``{1,2,3}``), for ``%s::bigint[]``.

    psycopg2 adapts a list item by item (1.75 ms for 1,300 zoids, against 0.2 ms for
    this text): the object model passes a request's worth of zoids to every read."""
    return "{" + ",".join(map(str, map(int, values))) + "}"


def dsn(settings: Settings, role: str) -> str:
    """The configured DSN with a connect timeout, keepalives and an ``application_name``
    naming esindexer, the connection's role and the client id. A name set in the DSN wins."""
    extra: dict[str, Any] = dict(connect_timeout=10, keepalives=1, keepalives_idle=30,
                                 keepalives_interval=10, keepalives_count=3)
    given = parse_dsn(settings.pg_dsn)
    if "application_name" not in given:
        extra["application_name"] = f"esindexer {role} ({settings.worker_id})"[:63]
    return str(make_dsn(settings.pg_dsn, **{k: v for k, v in extra.items() if k not in given}))


def connect(settings: Settings, role: str) -> Any:
    """A new connection made from :func:`dsn`."""
    return psycopg2.connect(dsn(settings, role))


def try_lock_client(conn: Any, client_id: str) -> bool:
    """Try once to take the session-level advisory lock of ``client_id``; True when taken.

    The lock lives as long as the session: when the process holding it dies, or its
    connection is lost, PostgreSQL frees it, which is what a standby waits for."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, client_id))
        locked = bool(cur.fetchone()[0])
    conn.commit()
    return locked


def lock_client(conn: Any, client_id: str) -> None:
    """Take the session-level advisory lock of ``client_id`` (held while ``conn`` lives),
    or raise :class:`AlreadyRunning`: two processes on one progress row would race."""
    if not try_lock_client(conn, client_id):
        raise AlreadyRunning(
            f"another esindexer with client id {client_id!r} is running against this "
            "database; give each indexer its own ESINDEXER_CLIENT_ID")


#: Advisory lock namespace of the lock that serialises esindexer's DDL between processes.
SCHEMA_LOCK_CLASS = 0x65730002  # "es" + 2


@contextlib.contextmanager
def schema_lock(conn: Any) -> Iterator[None]:
    """Hold, for the block, a session-level advisory lock that every esindexer process takes
    around creating its tables, functions and triggers.

    ``CREATE TABLE IF NOT EXISTS`` is not safe against itself: two processes starting at
    once (the partitions of one client, say) both find the table missing, and the second
    fails with a unique violation on ``pg_type``. A session lock because the block commits
    several times; PostgreSQL frees it if the connection is lost."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s, %s)", (SCHEMA_LOCK_CLASS, 0))
    conn.commit()
    try:
        yield
    finally:
        if not conn.closed:
            try:
                conn.rollback()
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s, %s)", (SCHEMA_LOCK_CLASS, 0))
                conn.commit()
            except CONNECTION_ERRORS:
                pass  # the session is gone, and its lock with it


def cancel_if_busy(conn: Any) -> bool:
    """Cancel the statement ``conn`` is running, if it is running one; True if a cancel
    request was sent. Safe from any thread while another uses ``conn`` (libpq's cancel
    goes over a connection of its own): how a stop interrupts a statement that waits for
    a lock or runs for minutes. The statement then fails with ``QueryCanceled``."""
    if conn is None or conn.closed:
        return False
    try:
        if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_ACTIVE:
            return False
        conn.cancel()
    except psycopg2.Error:
        return False  # closed meanwhile, or the server is gone: nothing left to cancel
    return True


def is_idle(conn: psycopg2.extensions.connection) -> bool:
    """True if no transaction is in progress on ``conn`` (always true in autocommit)."""
    idle: bool = conn.autocommit or conn.info.transaction_status == _IDLE
    return idle


@contextlib.contextmanager
def connection(conn_or_dsn: ConnOrDsn, *, commit: bool) -> Iterator[psycopg2.extensions.connection]:
    """Yield a connection; open, commit (if ``commit``) and close it when given a DSN."""
    if not isinstance(conn_or_dsn, str):
        yield conn_or_dsn
        return
    conn = psycopg2.connect(conn_or_dsn)
    try:
        yield conn
        if commit:
            conn.commit()
    finally:
        conn.close()


@contextlib.contextmanager
def reading(conn_or_dsn: ConnOrDsn) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor for read-only statements that leaves the caller's transaction state alone.

    If the connection was idle on entry (and is not autocommit), the transaction the
    reads start is ours and is rolled back at the end: nothing was written, and this
    keeps a lookup from leaving the connection idle in transaction.
    """
    with connection(conn_or_dsn, commit=False) as conn:
        ours = not conn.autocommit and is_idle(conn)
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            if ours and not conn.closed:
                conn.rollback()


def has_relation(cur: psycopg2.extensions.cursor, name: str) -> bool:
    """Whether ``name`` resolves through the connection's ``search_path``.

    ``to_regclass`` honours the search_path, so a table of the same name in an
    unrelated schema (another RelStorage database in the same PostgreSQL database,
    say) does not count, unlike a name match on ``pg_class``.
    """
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    return bool(cur.fetchone()[0])


def run_ddl(cur: psycopg2.extensions.cursor, statements: str | Sequence[str], savepoint: str) -> bool:
    """Run ``statements`` in a savepoint of the caller's transaction; False, and nothing
    done, when this role may not (a least-privileged role: the caller says what to do)."""
    cur.execute(f"SAVEPOINT {savepoint}")
    try:
        for statement in [statements] if isinstance(statements, str) else statements:
            cur.execute(statement)
    except NOT_PERMITTED:
        cur.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
        return False
    except Exception:
        cur.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
        raise
    cur.execute(f"RELEASE SAVEPOINT {savepoint}")
    return True


def keeps_history(cur: psycopg2.extensions.cursor) -> bool:
    """Detect the RelStorage layout once: history-preserving iff ``current_object`` exists."""
    if not has_relation(cur, "object_state"):
        raise SchemaError(
            "no RelStorage table object_state in the connection's search_path "
            "(has RelStorage created its schema in this database?)"
        )
    return has_relation(cur, "current_object")


def require_relstorage(conn: Any) -> None:
    """Raise :class:`SchemaError` unless ``conn``'s database has RelStorage's tables."""
    try:
        with conn.cursor() as cur:
            keeps_history(cur)
    finally:
        conn.rollback()


def current_revisions(cur: psycopg2.extensions.cursor) -> tuple[str, str]:
    """``(FROM clause, zoid column)`` selecting one row per object, its current revision,
    as ``s.tid`` and ``s.state`` (history-preserving: joined through ``current_object``).
    Raises :class:`SchemaError` without a RelStorage schema."""
    if keeps_history(cur):
        return "current_object c JOIN object_state s ON s.zoid = c.zoid AND s.tid = c.tid", "c.zoid"
    return "object_state s", "s.zoid"


def current_states(conn: Any, zoids: list[int]) -> dict[int, tuple[int, bytes | None]]:
    """``zoid -> (tid, state)`` of the current revisions (history-free or -preserving), read
    as :meth:`CurrentStates.states` reads them (binary COPY)."""
    return CurrentStates(conn).states(zoids)


def current_tids(conn: Any, zoids: list[int]) -> dict[int, int]:
    """``zoid -> tid`` of the current revisions of those of ``zoids`` that exist (no states
    read: the check for a database gone back in time asks only for tids)."""
    if not zoids:
        return {}
    with conn.cursor() as cur:
        source, key = current_revisions(cur)
        cur.execute(f"SELECT {key}, s.tid FROM {source} WHERE {key} = ANY(%s)", (zoids,))
        rows = {int(z): int(t) for z, t in cur.fetchall()}
    conn.rollback()
    return rows


class CurrentStates:
    """Current states and sizes by zoid on one connection, the layout detected once (the
    object model asks for a batch's objects and parts many times per batch)."""

    def __init__(self, conn: Any):
        self.conn = conn
        self._source: tuple[str, str] | None = None

    def _states(self, state: str, size: str, zoids: list[int]) -> list[tuple[int, int, bytes | None, int | None]]:
        """``(zoid, tid, state, size)`` rows read as binary COPY (states as their bytes, not
        hex text: :mod:`esindexer.source.copyrows`); ``state`` and ``size`` are the two
        column expressions (bytea, bigint)."""
        if not zoids:
            return []
        with self.conn.cursor() as cur:
            if self._source is None:
                self._source = current_revisions(cur)
            source, key = self._source
            query = cur.mogrify(f"SELECT {key}, s.tid, {state}, {size} FROM unnest(%s::bigint[]) z(zoid) "
                                f"JOIN {source} ON {key} = z.zoid", (int_array(zoids),)).decode()
            rows = copyrows.fetch(cur, query)
        self.conn.rollback()
        return rows

    def states(self, zoids: list[int]) -> dict[int, tuple[int, bytes | None]]:
        return {z: (t, d) for z, t, d, _ in self._states("s.state", "NULL::bigint", zoids)}

    def bounded(self, zoids: list[int], limit: int) -> dict[int, tuple[int, int, bytes | None]]:
        """``zoid -> (tid, size, state)``, the state only when it is at most ``limit`` bytes."""
        rows = self._states(f"CASE WHEN octet_length(s.state) <= {int(limit)} THEN s.state END",
                            "coalesce(octet_length(s.state), 0)::bigint", zoids)
        return {z: (t, n or 0, d) for z, t, d, n in rows}


def current_pages(conn: Any, page: int) -> Iterator[list[tuple[int, int, bytes | None]]]:
    """Current ``(zoid, tid, state)`` rows in zoid order, a short read transaction per page."""
    with conn.cursor() as cur:
        source, key = current_revisions(cur)
    conn.rollback()
    after = -1
    while True:
        with conn.cursor() as cur:
            query = cur.mogrify(f"SELECT {key}, s.tid, s.state, NULL::bigint FROM {source} WHERE {key} > %s "
                                f"ORDER BY {key} LIMIT %s", (after, page)).decode()
            rows = [(z, t, s) for z, t, s, _ in copyrows.fetch(cur, query)]  # binary: states as bytes
        conn.rollback()
        if not rows:
            return
        yield rows
        after = rows[-1][0]

