"""esindexer's own objects in the RelStorage database, created once, and the rights to use them.

``esindexer setup`` runs this as an administrator (a role that may create tables in the
schema and triggers on RelStorage's tables). ``--grant-to ROLE`` then grants ROLE
exactly what ``run``, ``status``, ``verify``, ``dead-letters`` and ``alias`` use: reading
RelStorage's tables, and reading and writing esindexer's own rows. With everything
present, the service never attempts DDL (each ``ensure`` step looks before it creates),
so ROLE needs no CREATE on any schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg2 import sql

from esindexer.source import deadletters, deletions, graph, lease, notify, progress, runs
from esindexer.source.pg import has_relation, keeps_history

#: esindexer's tables and what a running indexer does with each.
TABLE_RIGHTS: dict[str, tuple[str, ...]] = {
    progress.PROGRESS_TABLE: ("SELECT", "INSERT", "UPDATE"),
    deadletters.TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    deletions.LOG_TABLE: ("SELECT", "DELETE"),  # rows are written by the capture trigger (definer rights)
    deletions.CURSOR_TABLE: ("SELECT", "INSERT", "UPDATE"),
    runs.TABLE: ("SELECT", "INSERT", "UPDATE"),
    lease.TABLE: ("SELECT", "INSERT", "UPDATE"),  # the active process's lease (hot standby)
    lease.STANDBY_TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),  # the standbys' queue
    # documents=objects: the object graph, kept exact batch by batch
    graph.NODES: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    graph.EDGES: ("SELECT", "INSERT", "UPDATE", "DELETE"),  # UPDATE: which edges hold listed items
    graph.DIRTY: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    graph.APPLIED: ("SELECT", "INSERT", "UPDATE", "DELETE"),  # DELETE: forget() (verify --deep's scratch graph)
    graph.STAGE_NODES: ("SELECT", "INSERT", "DELETE"),  # a backfill's deletions, applied when it resolves the graph
    graph.STAGE_EDGES: ("SELECT", "INSERT", "DELETE"),
}


@dataclass
class SetupReport:
    """What ``setup`` found or made, in the words it prints."""

    done: list[str] = field(default_factory=list)  #: there now, as ``"created: ..."`` or ``"present: ..."``
    missing: list[str] = field(default_factory=list)  #: what could not be made (rights)
    granted: list[str] = field(default_factory=list)


def create_all(conn: Any) -> SetupReport:
    """Create every table and trigger esindexer uses (idempotent); commits."""
    report = SetupReport()
    with conn.cursor() as cur:
        keeps_history(cur)  # SchemaError without RelStorage's tables
        before = {table for table in TABLE_RIGHTS if has_relation(cur, table)}
    conn.rollback()
    had = {"pack-deletion log and capture trigger": deletions.capture_installed(conn),
           "change-notification trigger": notify.trigger_installed(conn)}
    conn.rollback()
    progress.ensure_table(conn)
    deadletters.ensure_table(conn)
    if not runs.ensure_table(conn):
        report.missing.append(f"table {runs.TABLE} (the crash guard)")
    if not graph.ensure_tables(conn):
        report.missing.append(f"tables {', '.join(graph.TABLES)} (documents=objects)")
    if not lease.ensure_tables(conn):
        report.missing.append(f"tables {lease.TABLE} and {lease.STANDBY_TABLE} (hot standby)")
    conn.commit()
    for what, ok in (("pack-deletion log and capture trigger", deletions.install(conn)),
                     ("change-notification trigger", notify.install_trigger(conn))):
        conn.commit()
        if ok:
            report.done.append(f"{'present' if had[what] else 'created'}: {what}")
        else:
            report.missing.append(what)
    with conn.cursor() as cur:
        report.done[:0] = [f"{'present' if table in before else 'created'}: table {table}"
                           for table in TABLE_RIGHTS if has_relation(cur, table)]
    conn.rollback()
    return report


def grant(conn: Any, role: str) -> list[str]:
    """Grant ``role`` what the commands need, and nothing more; returns the statements run."""
    statements: list[sql.Composable] = []
    with conn.cursor() as cur:
        history = keeps_history(cur)
        cur.execute("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.oid = to_regclass('object_state')")
        schema = cur.fetchone()[0]
        who = sql.Identifier(role)
        statements.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), who))
        for table in ("object_state", "current_object") if history else ("object_state",):
            statements.append(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), who))
        for table, rights in TABLE_RIGHTS.items():
            statements.append(sql.SQL("GRANT {} ON {} TO {}").format(
                sql.SQL(", ").join(map(sql.SQL, rights)), sql.Identifier(table), who))
            if "INSERT" not in rights:
                continue
            # Sequences behind bigserial ids: inserting takes their next value.
            cur.execute("SELECT s.oid::regclass::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
                        "AND s.relkind = 'S' WHERE d.refobjid = to_regclass(%s) AND d.deptype IN ('a', 'i')",
                        (table,))
            for (sequence,) in cur.fetchall():
                statements.append(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.SQL(sequence), who))
        for statement in statements:
            cur.execute(statement)
        text = [statement.as_string(cur) for statement in statements]
    conn.commit()
    return text
