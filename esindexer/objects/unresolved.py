"""A backfill's batches, written into the object graph unresolved (documents=objects).

A backfill reads every record before anything can be resolved (a record read last can make
a part shared, or hold an object under its name), so its batches only write what each
record says, with no owner and no place; :meth:`~esindexer.objects.store.GraphStore.resolve_all`
resolves the whole graph once the backlog is read. The batches are written on a thread of
their own while the reader decodes the next one (:mod:`esindexer.pipeline.objectreader`),
so this writing costs the backfill little of its time.
"""

from __future__ import annotations

import io
from typing import Any

import psycopg2.errors

from esindexer.objects import graph_sql as q
from esindexer.objects.edges import RecordFacts
from esindexer.source.graph import EDGES, NODES, STAGE_NODES

try:
    from esindexer.objects import _edges_c
except ImportError:  # optional extension, not built here: the Python formatting does it
    _edges_c = None  # type: ignore[assignment]

#: The batch's COPY text is UTF-8 bytes whatever the connection's client encoding (PostgreSQL
#: converts it to the database's).
UTF8 = "ENCODING 'UTF8'"


def latest_of(records: list[RecordFacts]) -> dict[int, RecordFacts]:
    """The newest state of each record in a batch."""
    latest: dict[int, RecordFacts] = {}
    for facts in records:
        if facts.zoid not in latest or latest[facts.zoid].tid <= facts.tid:
            latest[facts.zoid] = facts
    return latest


def write(cur: Any, client_id: str, records: list[RecordFacts], deleted: list[int], tid: int) -> list[int]:
    """A backfill's batch, written into the graph's tables with nothing resolved (no
    owner, no place: ``resolve_all`` computes them once the backlog is read).

    The records are copied straight into ``nodes`` and ``edges``. When some are there
    already (a batch read again after a crash, a record changed during the backfill),
    the copy fails on the unique index and the batch goes through temporary tables
    instead (:func:`_replace`): a record already there at a tid as new stays, a newer
    state replaces it with its edges. Only the unique index decides, so no plan depends
    on statistics that a growing graph outruns. A deletion is staged as a *gone* row at
    the batch's tid, which ``resolve_all`` applies (:func:`materialize`): a record read
    again after a crash, older than the deletion, cannot come back."""
    latest = latest_of(records)
    gone = sorted(set(deleted) - set(latest))
    client = text(client_id)
    if gone:
        cur.execute("SELECT txid_current()")
        batch = int(cur.fetchone()[0])
        cur.copy_expert(f"COPY {STAGE_NODES} (client_id, zoid, tid, batch, class_name, name, gone) FROM STDIN "
                        "WITH (FORMAT csv)", io.StringIO("".join(f"{client},{zoid},{tid},{batch},,,t\n"
                                                                 for zoid in gone)))
    if not latest:
        return []
    nodes, edges = copy_rows(client_id, list(latest.values()))
    cur.execute("SAVEPOINT esindexer_batch_nodes")
    try:  # usually none of them is there yet: straight in
        cur.copy_expert(f"COPY {NODES} (client_id, zoid, tid, class_name, name) FROM STDIN "
                        f"WITH (FORMAT csv, {UTF8})", io.BytesIO(nodes))
    except psycopg2.errors.UniqueViolation:
        cur.execute("ROLLBACK TO SAVEPOINT esindexer_batch_nodes")
        _replace(cur, client_id, nodes, edges)
        return []
    cur.execute("RELEASE SAVEPOINT esindexer_batch_nodes")
    if edges:
        cur.copy_expert(f"COPY {EDGES} (client_id, src, dst, key, listed) FROM STDIN WITH (FORMAT csv, {UTF8})",
                        io.BytesIO(edges))
    return []


def _replace(cur: Any, client_id: str, nodes: bytes, edges: bytes) -> None:
    """A batch with records the graph holds already (read again, or newer): through two
    temporary tables, a newer state replaces the node and its edges, one as new stays."""
    cur.execute(q.BATCH_TABLES)
    cur.copy_expert(f"COPY obj_batch_nodes FROM STDIN WITH (FORMAT csv, {UTF8})", io.BytesIO(nodes))
    if edges:
        cur.copy_expert(f"COPY obj_batch_edges FROM STDIN WITH (FORMAT csv, {UTF8})", io.BytesIO(edges))
    cur.execute(q.BATCH_NODES, {"c": client_id})
    rows = cur.fetchall()
    replaced = [int(z) for z, was_there in rows if was_there]
    if replaced:
        cur.execute(f"DELETE FROM {EDGES} WHERE client_id = %s AND src = ANY(%s)", (client_id, replaced))
    if edges and rows:
        cur.execute(q.BATCH_EDGES_OF, {"c": client_id, "written": [int(z) for z, _ in rows]})


def materialize(cur: Any, client_id: str) -> None:
    """Apply what is staged: the deletions a backfill staged (and the records an older
    version staged, whose backfill was resumed by this one). Each record's latest
    staged row replaces its node and edges unless the node is newer (a deletion wins
    a tie); then the staging rows go."""
    c = {"c": client_id}
    cur.execute(f"SELECT EXISTS (SELECT 1 FROM {STAGE_NODES} WHERE client_id = %(c)s)", c)
    if not cur.fetchone()[0]:
        return
    cur.execute(q.STAGED, c)
    cur.execute(f"SELECT EXISTS (SELECT 1 FROM {NODES} WHERE client_id = %(c)s)", c)
    replacing = bool(cur.fetchone()[0])
    if replacing:  # not a fresh graph: rows to replace (a newer one stays)
        cur.execute(q.STAGED_REPLACE, c)
    cur.execute(q.STAGED_INSERT if replacing else q.STAGED_INSERT_FRESH, c)


def copy_rows_py(client_id: str, records: list[RecordFacts]) -> tuple[bytes, bytes]:
    """The COPY text (CSV, UTF-8) of records' nodes and edges, a record's same edge once."""
    client = text(client_id)
    nodes = "".join(f"{client},{f.zoid},{f.tid},{text(f.class_name)},{text(f.name)}\n" for f in records)
    edges = "".join([f"{client},{f.zoid},{dst},{text(key)},{'t' if listed else 'f'}\n" for f in records
                     for dst, key, listed in dict.fromkeys(f.edges)])
    return nodes.encode(), edges.encode()


def _copy_rows_c(client_id: str, records: list[RecordFacts]) -> tuple[bytes, bytes]:
    """:func:`copy_rows_py` by the C twin, which gives up (None) on a value it would not
    write the same way (an int beyond 64 bits, a str it cannot write as UTF-8)."""
    got = _edges_c.copy_rows(client_id, records)
    return got if got is not None else copy_rows_py(client_id, records)


#: A batch's COPY text: the C twin where it was built (tests/objects/test_edges_c.py
#: compares the two), else the Python formatting.
copy_rows = _copy_rows_c if _edges_c is not None else copy_rows_py


def text(value: str | None) -> str:
    """A text value for COPY (CSV): None unquoted (NULL), a string quoted (so ``""`` stays
    an empty string: the root's name), NUL dropped (PostgreSQL text cannot hold it)."""
    return "" if value is None else '"' + value.replace("\x00", "").replace('"', '""') + '"'
