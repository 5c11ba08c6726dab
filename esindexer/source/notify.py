"""Change notification: a trigger on ``object_state`` that NOTIFYs a channel on commit.

The follower (:mod:`esindexer.source.follow`) wakes on these notifications instead of polling
the database; polling remains as a backstop and as the only mode where the trigger
cannot exist (a role without DDL rights, a hot-standby replica).

What is installed, all in the schema where ``object_state`` is found:

- function ``esindexer_notify_object_state()`` (plpgsql) that runs
  ``pg_notify('esindexer_object_state', <newest tid as text>)``;
- trigger ``esindexer_notify_object_state``, ``AFTER INSERT OR UPDATE ON object_state
  FOR EACH STATEMENT``.

Why these choices:

- **Statement level**, not row level: RelStorage writes a commit's rows with a handful
  of statements, so a 1,000,000-row commit costs a handful of trigger calls, not a
  million. The payload is ``max(tid)`` read through the tid index inside the
  committing transaction, which is that transaction's own tid (it holds the commit
  lock and its tid is larger than every other). It is informational only (logs,
  latency); correctness never depends on the payload.
- PostgreSQL delivers notifications **at commit** and folds identical ones sent in
  one transaction, so a listener gets one notification per commit, after the rows
  are visible. Rolled-back transactions notify nobody.
- No DELETE trigger: deletions by packing do not go through the follower (see
  :mod:`esindexer.source.follow`).

Installing is idempotent and safe to race: it takes a transaction-scoped advisory lock,
does nothing if the trigger is already there with the current function body (so a
follower start does not take the ``ACCESS EXCLUSIVE`` lock that ``CREATE TRIGGER``
needs on ``object_state`` every time), and otherwise replaces function and trigger in
one transaction. Lack of privilege (SQLSTATE 42501) and read-only servers (25006) make
:func:`install_trigger` return ``False``; anything else raises.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from esindexer.source.pg import NOT_PERMITTED, ConnOrDsn, connection, keeps_history

if TYPE_CHECKING:
    import psycopg2
    import psycopg2.extensions

log = logging.getLogger(__name__)

__all__ = [
    "CHANNEL",
    "FUNCTION",
    "TRIGGER",
    "install_trigger",
    "trigger_installed",
    "uninstall_trigger",
]

#: The LISTEN/NOTIFY channel.
CHANNEL = "esindexer_object_state"
#: The trigger function's name.
FUNCTION = "esindexer_notify_object_state"
#: The trigger's name (on ``object_state``).
TRIGGER = "esindexer_notify_object_state"

# Arbitrary constant that serializes concurrent installers (pg_advisory_xact_lock key).
_INSTALL_LOCK = 0x6573_6978_7472_6967  # "esixtrig"

_BODY = f"""
BEGIN
    PERFORM pg_notify('{CHANNEL}', (SELECT max(tid) FROM object_state)::text);
    RETURN NULL;
END
"""

def installed_in(cur: Any) -> bool:
    """Whether the trigger is on ``object_state`` with the current body (on ``cur``'s connection)."""
    cur.execute(
        """
        SELECT p.prosrc = %s
        FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
        WHERE t.tgrelid = to_regclass('object_state') AND t.tgname = %s
          AND t.tgenabled <> 'D'
        """,
        (_BODY, TRIGGER),
    )
    row = cur.fetchone()
    return bool(row and row[0])


def trigger_installed(conn: ConnOrDsn) -> bool:
    """Whether the notification trigger is on ``object_state`` with the current body."""
    with connection(conn, commit=False) as pg, pg.cursor() as cur:
        return installed_in(cur)


def _install_statements(cur: psycopg2.extensions.cursor) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))
    # Never wedge the application: give up on the table lock after a while.
    cur.execute("SET LOCAL lock_timeout = '10s'")
    if installed_in(cur):
        return
    # The function goes where object_state is, so both resolve the same way.
    cur.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass('object_state')"
    )
    schema = cur.fetchone()[0]
    qualified = f'"{schema}".{FUNCTION}'
    # prosrc keeps the text between the dollar quotes verbatim: installed_in() compares it.
    cur.execute(
        f"CREATE OR REPLACE FUNCTION {qualified}() RETURNS trigger "
        f"LANGUAGE plpgsql AS $esindexer${_BODY}$esindexer$"
    )
    # DROP TRIGGER takes an ACCESS EXCLUSIVE lock, which waits behind every open
    # RelStorage read transaction (and blocks every query queued after it): only drop
    # an outdated trigger, never speculatively. CREATE TRIGGER needs a weaker lock.
    cur.execute("SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass('object_state') AND tgname = %s",
                (TRIGGER,))
    if cur.fetchone():
        cur.execute(f"DROP TRIGGER {TRIGGER} ON object_state")
    cur.execute(
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE ON object_state "
        f"FOR EACH STATEMENT EXECUTE PROCEDURE {qualified}()"
    )
    log.info("installed the change-notification trigger", extra={"schema": schema})


def _refused(exc: psycopg2.Error, warn: bool) -> bool:
    (log.warning if warn else log.info)(
        "cannot install the change-notification trigger (%s); followers will poll. "
        "An administrator can run `esindexer install-trigger`.",
        exc.pgerror.strip() if getattr(exc, "pgerror", None) else exc,
        extra={"sqlstate": getattr(exc, "pgcode", None)},
    )
    return False


def install_trigger(conn: ConnOrDsn, *, warn: bool = True) -> bool:
    """Install (or confirm) the notification trigger; True if present, False if refused.

    Transactions:

    - given a DSN, the work is committed before returning;
    - given an autocommit connection, the statements run in their own ``BEGIN`` …
      ``COMMIT`` block, so they are atomic and committed before returning;
    - given a connection that is not in autocommit mode, the statements run inside a
      savepoint of the caller's transaction and are **not committed**: the trigger
      exists for everyone once the caller commits. A refusal rolls back to the
      savepoint only, so the caller's other pending work survives.

    Raises :class:`esindexer.source.pg.SchemaError` if there is no ``object_state``
    table, and re-raises any database error other than "not permitted". ``warn=False``
    logs a refusal at info level (the follower logs its own warning, with its poll
    interval).
    """
    with connection(conn, commit=True) as pg, pg.cursor() as cur:
        keeps_history(cur)  # raises SchemaError without object_state
        if pg.autocommit:
            cur.execute("BEGIN")
            try:
                _install_statements(cur)
            except NOT_PERMITTED as exc:
                cur.execute("ROLLBACK")
                return _refused(exc, warn)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            return True
        cur.execute("SAVEPOINT esindexer_install_trigger")
        try:
            _install_statements(cur)
        except NOT_PERMITTED as exc:
            cur.execute("ROLLBACK TO SAVEPOINT esindexer_install_trigger")
            cur.execute("RELEASE SAVEPOINT esindexer_install_trigger")
            return _refused(exc, warn)
        cur.execute("RELEASE SAVEPOINT esindexer_install_trigger")
        return True


def uninstall_trigger(conn: ConnOrDsn) -> None:
    """Drop the trigger and its function (same transaction rules as :func:`install_trigger`).

    Followers keep working after this: they fall back to polling at their next wake-up.
    """
    with connection(conn, commit=True) as pg, pg.cursor() as cur:
        statements = [
            f"DROP TRIGGER IF EXISTS {TRIGGER} ON object_state",
            f"DROP FUNCTION IF EXISTS {FUNCTION}()",
        ]
        if pg.autocommit:
            statements = ["BEGIN", *statements, "COMMIT"]
        for statement in statements:
            cur.execute(statement)
