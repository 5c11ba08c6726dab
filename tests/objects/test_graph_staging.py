"""A backfill's graph written unresolved batch by batch (``apply(resolve=False)``: records
straight into the graph's tables, deletions staged), then resolved at once
(:meth:`GraphStore.resolve_all`), is the graph the batches give applied one at a time
(``apply(resolve=True)``): same nodes, edges (none twice), owners and paths; also when a
batch is read again after a crash, before or after a deletion, and over rows an older
version staged."""

from __future__ import annotations

from typing import Any

import psycopg2
import pytest

from esindexer.objects.edges import RecordFacts
from esindexer.objects.store import GraphStore
from esindexer.source import graph, schema

FOLDER, ITEM, TREE, BUCKET = "app.Folder", "app.Item", "BTrees.OOBTree.OOBTree", "BTrees.OOBTree.OOBucket"
PART, MAPPING = "app.Part", "persistent.mapping.PersistentMapping"


def is_object(class_name: str | None) -> bool:
    return bool(class_name and class_name.startswith("app.") and class_name != PART)


def f(zoid: int, tid: int, cls: str, name: str | None, *edges: tuple[int, str | None, bool]) -> RecordFacts:
    return RecordFacts(zoid, tid, cls, name, list(edges))


#: ``(facts, deleted, tid, pack)``: a pack deletion is applied as the reader does (the
#: graph's applied tid, no facts).
def history() -> list[tuple[list[RecordFacts], list[int], int, bool]]:
    return [
        ([f(0, 5, MAPPING, "", (1, "site", False)),
          f(1, 5, FOLDER, "site", (2, "a", False), (3, "b", False), (10, "_tree", False)),
          f(2, 5, ITEM, "a", (4, "holder", False), (4, "holder", False)),  # the same edge twice: once
          f(4, 5, PART, None),
          f(6, 5, PART, None),  # unreachable: packed below
          f(10, 5, TREE, None, (11, None, False)),
          f(11, 5, BUCKET, None, (12, "c", False), (13, "d", False)),
          f(12, 5, ITEM, "c", (14, "history", False), (14, "history", False)),
          f(13, 5, ITEM, "d"),
          f(14, 5, MAPPING, None)], [], 5, False),
        ([], [6], 0, True),
        # later batches change records of earlier ones; one record twice in a batch
        ([f(3, 18, ITEM, "b"),
          f(3, 20, ITEM, "b", (5, "history", False), (15, "x", False)),
          f(5, 20, MAPPING, None, (4, "shared", False)),  # 4 now reached from two items: shared
          f(15, 20, ITEM, "x"),
          f(2, 20, ITEM, "a2", (4, "holder", False)),
          f(1, 20, FOLDER, "site", (2, "a2", False), (3, "b", False), (10, "_tree", False)),
          f(7, 20, PART, None)], [], 20, False),
        ([], [7], 0, True),  # packed at the applied tid: the deletion wins the tie
        # a deletion (13 and 5 gone), then 13 made again at a later tid
        ([f(11, 30, BUCKET, None, (12, "c", False)),
          f(3, 30, ITEM, "b", (15, "x", False))], [13, 5], 30, False),
        ([f(13, 40, ITEM, "d2", (16, "holder", False)),
          f(16, 40, PART, None),
          f(11, 40, BUCKET, None, (12, "c", False), (13, "d2", False))], [], 40, False),
    ]


def nodes(conn: Any, client_id: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute("SELECT zoid, tid, class_name, name, listed, owner, in_tree, parent, depth, path "
                    f"FROM {graph.NODES} WHERE client_id = %s ORDER BY zoid", (client_id,))
        rows = cur.fetchall()
    conn.rollback()
    return rows


def edges(conn: Any, client_id: str) -> list[tuple[Any, ...]]:
    """Every edge row, duplicates kept."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT src, dst, key, listed FROM {graph.EDGES} WHERE client_id = %s "
                    "ORDER BY src, dst, key NULLS FIRST, listed", (client_id,))
        rows = cur.fetchall()
    conn.rollback()
    return rows


def staged(conn: Any, client_id: str) -> int:
    with conn.cursor() as cur:
        cur.execute(f"SELECT (SELECT count(*) FROM {graph.STAGE_NODES} WHERE client_id = %s) "
                    f"+ (SELECT count(*) FROM {graph.STAGE_EDGES} WHERE client_id = %s)", (client_id, client_id))
        count = int(cur.fetchone()[0])
    conn.rollback()
    return count


def run(store: GraphStore, steps: list[tuple[list[RecordFacts], list[int], int, bool]], resolve: bool,
        replay: int | None = None) -> tuple[list[int], int]:
    """Apply the steps (step ``replay`` twice, as after a crash before the progress commit)."""
    dirty: list[int] = []
    for n, (facts, deleted, tid, pack) in enumerate(steps):
        for _again in range(2 if n == replay else 1):
            dirty, version = store.apply(facts, deleted, store.applied_tid() if pack else tid, resolve=resolve)
    if resolve:
        return dirty, store.applied_tid()
    count, version = store.resolve_all(40)
    objects = store.tree_objects()
    assert count == len(objects)
    return objects, version


def reference(conn: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The graph the same batches give applied and resolved one at a time."""
    store = GraphStore(conn, "reference", is_object)
    run(store, history(), resolve=True)
    return nodes(conn, "reference"), edges(conn, "reference")


@pytest.mark.parametrize("replay", [None, 0, 1, 2, 3, 4, 5])
def test_staged_backfill_gives_the_graph_of_batches_applied_one_by_one(conn, replay):
    want_nodes, want_edges = reference(conn)
    assert [r[0] for r in want_nodes] == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16]  # 5, 6, 7 gone
    paths = {r[0]: r[9] for r in want_nodes}
    assert (paths[2], paths[12], paths[13], paths[15]) == ("/site/a2", "/site/c", "/site/d2", "/site/b/x")
    owners = {r[0]: r[5] for r in want_nodes}
    assert (owners[4], owners[14], owners[16]) == (2, 12, 13)  # 4 no longer shared: 5 is gone

    store = GraphStore(conn, "staged", is_object)
    dirty, version = run(store, history(), resolve=False, replay=replay)
    assert nodes(conn, "staged") == want_nodes
    assert edges(conn, "staged") == want_edges  # a batch staged twice adds no edge twice
    assert staged(conn, "staged") == 0
    assert version == 40 and store.complete()
    assert dirty == sorted(r[0] for r in want_nodes if r[6] and is_object(r[2]))


def test_a_backfill_writes_records_unresolved_until_resolve_all(conn):
    store = GraphStore(conn, "staged", is_object)
    steps = history()
    for facts, deleted, tid, pack in steps[:3]:
        assert store.apply(facts, deleted, store.applied_tid() if pack else tid, resolve=False) == ([], max(tid, 5))
    written = nodes(conn, "staged")
    assert [r[0] for r in written] == [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15]  # 6 packed: staged, not applied
    assert all(r[5] is None and not r[6] and r[7] is None and r[9] is None for r in written)  # no owner, no place
    assert (3, 20) in {(r[0], r[1]) for r in written}  # read at 18, then at 20: the newer state
    assert edges(conn, "staged")
    summary = graph.summary(conn, "staged")
    assert summary is not None and not summary["complete"]
    assert summary["staged_records"] == 14  # the records read into the graph (6, packed since, counted)
    store.resolve_all(20)
    summary = graph.summary(conn, "staged")
    assert summary is not None and summary["complete"] and summary["staged_records"] == 0
    assert summary["in_tree"] == 7  # 0, 1, 2, 3, 12, 13, 15
    assert staged(conn, "staged") == 0


def test_a_batch_read_again_after_a_deletion_does_not_bring_its_record_back(conn):
    """A crash after a pack deletion was applied and before the batch's progress was saved:
    the batch is read again, with the deleted record at its old tid; the deletion stays."""
    steps = history()
    again = steps[:4] + [steps[2], steps[3]] + steps[4:]  # 7 packed, read again, packed again
    want_nodes, want_edges = reference(conn)
    store = GraphStore(conn, "staged", is_object)
    for facts, deleted, tid, pack in again[:5]:
        store.apply(facts, deleted, store.applied_tid() if pack else tid, resolve=False)
    assert 7 in {r[0] for r in nodes(conn, "staged")}  # read again: there until the graph is resolved
    run(store, again[5:], resolve=False)
    assert nodes(conn, "staged") == want_nodes
    assert edges(conn, "staged") == want_edges


def test_staging_on_a_graph_that_holds_rows(conn):
    """Records staged over a graph already written (a backfill resumed after an upgrade, a
    graph resolved then written unresolved again): newer rows replace, older ones stay."""
    steps = history()
    store = GraphStore(conn, "staged", is_object)
    run(store, steps[:3], resolve=True)
    assert nodes(conn, "staged")
    run(store, steps[2:], resolve=False)  # step 2 again: as old as the graph's rows
    want_nodes, want_edges = reference(conn)
    assert nodes(conn, "staged") == want_nodes
    assert edges(conn, "staged") == want_edges


def test_forget_drops_staged_rows(conn):
    store = GraphStore(conn, "staged", is_object)
    other = GraphStore(conn, "other", is_object)
    for s in (store, other):
        facts, deleted, tid, _pack = history()[0]
        s.apply(facts, deleted, tid, resolve=False)
        s.apply([], [6], tid, resolve=False)
    assert staged(conn, "staged") > 0
    graph.forget(conn, "staged")
    assert staged(conn, "staged") == 0 and graph.summary(conn, "staged") is None
    assert staged(conn, "other") > 0


def test_an_install_without_the_staging_tables_gets_them(conn):
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE {graph.STAGE_NODES}; DROP TABLE {graph.STAGE_EDGES}")
    conn.commit()
    assert graph.ensure_tables(conn)
    conn.commit()
    store = GraphStore(conn, "staged", is_object)
    facts, deleted, tid, _pack = history()[0]
    store.apply(facts, deleted, tid, resolve=False)
    store.apply([], [6], store.applied_tid(), resolve=False)
    assert staged(conn, "staged") > 0


def test_a_role_granted_by_setup_stages_and_resolves(zodb, db_dsn, indexer_role):
    """Staging, moving and resolving need no more than ``setup --grant-to`` gives (no
    ownership: ANALYZE of a table it does not own is skipped with a warning)."""
    name, role_dsn = indexer_role
    admin = psycopg2.connect(db_dsn)
    schema.create_all(admin)
    schema.grant(admin, name)
    admin.close()
    as_role = psycopg2.connect(role_dsn)
    try:
        assert graph.ensure_tables(as_role)
        as_role.commit()
        store = GraphStore(as_role, "staged", is_object)
        dirty, version = run(store, history(), resolve=False, replay=2)
        assert version == 40 and 15 in dirty
        graph.forget(as_role, "staged")
    finally:
        as_role.close()


def _installed_then(db_dsn: str, role: str, statement: str) -> Any:
    """An administrator's connection after ``esindexer setup --grant-to role`` and then
    ``statement`` (an older installation, a role with fewer rights)."""
    admin = psycopg2.connect(db_dsn)
    schema.create_all(admin)
    schema.grant(admin, role)
    with admin.cursor() as cur:
        cur.execute(statement)
    admin.commit()
    return admin


def test_a_role_that_may_not_create_the_staging_tables_is_told(zodb, db_dsn, indexer_role):
    """An installation with the graph's first four tables only, and a role without CREATE:
    ``ensure_tables`` says so (the reader's SetupError) instead of failing later."""
    name, role_dsn = indexer_role
    _installed_then(db_dsn, name, f"DROP TABLE {graph.STAGE_NODES}; DROP TABLE {graph.STAGE_EDGES}; "
                    "REVOKE CREATE ON SCHEMA public FROM PUBLIC").close()
    as_role = psycopg2.connect(role_dsn)
    try:
        assert not graph.ensure_tables(as_role)
        as_role.rollback()
        graph.forget(as_role, "staged")  # what is there is forgotten all the same
    finally:
        as_role.close()


def test_status_counts_a_batch_read_twice_once(conn):
    """After a crash before the progress commit a batch is read and written again: its
    records are in the graph once, edges included, and ``status`` counts them once."""
    store = GraphStore(conn, "staged", is_object)
    first = history()[0]
    store.apply(first[0], first[1], first[2], resolve=False)
    once = nodes(conn, "staged"), edges(conn, "staged")
    store.apply(first[0], first[1], first[2], resolve=False)
    assert (nodes(conn, "staged"), edges(conn, "staged")) == once
    assert len(once[0]) == 10
    summary = graph.summary(conn, "staged")
    assert summary is not None and summary["staged_records"] == 10
    store.apply([], [6], store.applied_tid(), resolve=False)  # packed after it was read: still a record read
    summary = graph.summary(conn, "staged")
    assert summary is not None and summary["staged_records"] == 10


def test_records_an_older_version_staged_are_moved_in_at_resolve(conn):
    """A backfill begun by an older version (records in the staging tables) and finished by
    this one (records in the graph): each record's newest state wins, a deletion a tie."""
    steps = history()
    store = GraphStore(conn, "staged", is_object)
    old_way = steps[:3]
    for facts, deleted, tid, pack in old_way:  # as the older version staged them
        tid = store.applied_tid() if pack else tid
        latest = {f.zoid: f for f in sorted(facts, key=lambda f: f.tid)}
        gone = sorted(set(deleted) - set(latest))
        with conn.cursor() as cur:
            cur.execute("SELECT txid_current()")
            batch = cur.fetchone()[0]
            for fact in latest.values():
                cur.execute(f"INSERT INTO {graph.STAGE_NODES} VALUES ('staged', %s, %s, %s, %s, %s, false)",
                            (fact.zoid, fact.tid, batch, fact.class_name, fact.name))
                for dst, key, listed in dict.fromkeys(fact.edges):
                    cur.execute(f"INSERT INTO {graph.STAGE_EDGES} VALUES ('staged', %s, %s, %s, %s, %s)",
                                (fact.zoid, batch, dst, key, listed))
            for zoid in gone:
                cur.execute(f"INSERT INTO {graph.STAGE_NODES} VALUES ('staged', %s, %s, %s, NULL, NULL, true)",
                            (zoid, tid, batch))
            cur.execute(f"INSERT INTO {graph.APPLIED} (client_id, tid) VALUES ('staged', %s) ON CONFLICT (client_id) "
                        f"DO UPDATE SET tid = greatest({graph.APPLIED}.tid, excluded.tid)", (tid,))
        conn.commit()
    run(store, [steps[2]] + steps[3:], resolve=False)  # resumed: the last batch staged is read again
    want_nodes, want_edges = reference(conn)
    assert nodes(conn, "staged") == want_nodes
    assert edges(conn, "staged") == want_edges
    assert staged(conn, "staged") == 0


def test_a_resolution_makes_the_whole_tree_dirty_with_one_mark_until_it_is_settled(conn):
    """resolve_all writes no dirty row per object: one mark says every object of the tree
    is dirty as of its version. Until the batch that wrote them settles it (``whole_tree``),
    a restart rewrites them all (``dirty()``) and ``status`` counts them as documents to
    write; a later batch's own dirty rows outlive it."""
    store = GraphStore(conn, "staged", is_object)
    dirty, version = run(store, history(), resolve=False)
    objects = sorted(r[0] for r in nodes(conn, "staged") if r[6] and is_object(r[2]))
    assert dirty == objects and store.dirty() == objects
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {graph.DIRTY} WHERE client_id = 'staged'")
        assert cur.fetchone()[0] == 0  # no row each
    conn.rollback()
    summary = graph.summary(conn, "staged", is_object)
    assert summary is not None and summary["documents_to_write"] == len(objects)
    everything = graph.summary(conn, "staged")  # without the class filter: the tree's records of every class
    assert everything is not None and everything["documents_to_write"] == summary["in_tree"]

    later, later_version = store.apply([f(12, 50, ITEM, "c", (14, "history", False))], [], 50)
    assert later == [12] and later_version == 50
    assert store.dirty() == objects  # 12 is one of them
    with conn.cursor() as cur:
        store.settle(cur, [], version - 1, whole_tree=True)  # not as of the mark: it stays
    conn.commit()
    assert store.dirty() == objects
    with conn.cursor() as cur:
        store.settle(cur, [], version, whole_tree=True)
    conn.commit()
    assert store.dirty() == [12]  # the later batch's row is still to settle
    summary = graph.summary(conn, "staged", is_object)
    assert summary is not None and summary["documents_to_write"] == 1
    with conn.cursor() as cur:
        store.settle(cur, [12], later_version)
    conn.commit()
    assert store.dirty() == []


def test_a_role_that_may_not_add_a_new_column_is_told(zodb, db_dsn, indexer_role):
    """An installation from before the dirty mark (``esindexer_obj_applied`` without
    ``tree_dirty_as_of``) and a role that does not own the table: ``ensure_tables`` says
    so (the reader's SetupError) instead of failing at the first resolution."""
    name, role_dsn = indexer_role
    admin = _installed_then(db_dsn, name, f"ALTER TABLE {graph.APPLIED} DROP COLUMN tree_dirty_as_of")
    as_role = psycopg2.connect(role_dsn)
    try:
        assert not graph.ensure_tables(as_role)
        as_role.rollback()
    finally:
        as_role.close()
    assert graph.ensure_tables(admin)  # as the owner (what `esindexer setup` runs): added
    admin.commit()
    with admin.cursor() as cur:
        cur.execute(f"SELECT tree_dirty_as_of FROM {graph.APPLIED} LIMIT 0")
    admin.close()


@pytest.mark.parametrize("encoding", ["UTF8", "LATIN1"])
def test_names_and_keys_any_text_can_hold_reach_the_graph_as_they_are(conn, encoding):
    """A backfill's batch goes to PostgreSQL as COPY text (CSV) formatted in C: quotes, commas,
    line breaks and non-ASCII names and keys arrive as the records hold them (NUL, which
    PostgreSQL's text cannot hold, dropped), whatever the connection's client encoding;
    the same batch read again (the temporary tables' way) leaves them so."""
    names = ['a"b', "c,d", "e\nf", "caf\u00e9", "x\x00y", " lead", '""']
    conn.set_client_encoding(encoding)
    store = GraphStore(conn, f"texts-{encoding}", is_object)
    facts = [f(0, 5, MAPPING, "", *((i + 1, name, False) for i, name in enumerate(names)))]
    facts += [f(i + 1, 5, ITEM, name) for i, name in enumerate(names)]
    for _ in range(2):  # the second time: the batch is there already
        store.apply(facts, [], 5, resolve=False)
        got = nodes(conn, f"texts-{encoding}")
        assert [r[3] for r in got] == [""] + [name.replace("\x00", "") for name in names]
        assert sorted(r[2] for r in edges(conn, f"texts-{encoding}")) == sorted(n.replace("\x00", "") for n in names)
    store.resolve_all(5)
    assert {r[9] for r in nodes(conn, f"texts-{encoding}") if r[0]} == {"/" + n.replace("\x00", "") for n in names}
    graph.forget(conn, f"texts-{encoding}")
