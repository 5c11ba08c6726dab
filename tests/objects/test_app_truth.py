"""The object model's test application and its ground truth, checked alone (issue 22).

Real ZODB + RelStorage in both history modes: the builder writes the tree it says it
writes, the truth (read back through ZODB by another ``ZODB.DB``) follows moves, renames,
removals, undo (or re-adding: history-free RelStorage cannot undo) and packs, and the big
folders really are split into BTree buckets, as the object model must handle.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import psycopg2
import transaction
from ZODB.utils import get_pickle_metadata

from tests.objects import corpus, live, truth
from tests.objects.app import Container, Item, name_of
from tests.objects.live import AppWriter
from tests.support import both_history_modes

ITEMS = 200


def current_classes(dsn: str, keep_history: bool) -> list[str]:
    """The dotted class name of every current record, read from RelStorage's tables."""
    sql = ("SELECT s.state FROM current_object c JOIN object_state s ON s.zoid = c.zoid AND s.tid = c.tid "
           "WHERE s.state IS NOT NULL") if keep_history else \
        "SELECT state FROM object_state WHERE state IS NOT NULL"
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        names = [".".join(get_pickle_metadata(bytes(state))) for (state,) in cur.fetchall()]
    conn.close()
    return names


def by_path(found: dict[int, truth.Obj]) -> dict[str, truth.Obj]:
    paths = {o.path: o for o in found.values()}
    assert len(paths) == len(found), "two objects at one path"
    return paths


@both_history_modes
def test_the_truth_is_the_tree_the_builder_wrote(zodb, db_dsn, keep_history):
    built = corpus.build_corpus(zodb, items=ITEMS, infra_records=600, mimetypes=20)
    found = truth.objects(db_dsn, keep_history)
    paths = by_path(found)
    items = {o.path for o in found.values() if o.cls == "tests.objects.app.Item"}
    assert items == set(built.item_paths)
    folders = {p for p, _, _ in corpus.LAYOUT}
    assert set(paths) == items | folders | {"/", "/registry", "/settings", "/a1/portal_catalog"}
    assert paths["/a1/portal_catalog"].name == "portal_catalog"  # its id is on its class only
    assert paths["/"].zoid == 0 and paths["/"].depth == 0 and paths["/"].parent is None
    assert paths["/"].cls == "persistent.mapping.PersistentMapping"
    for obj in found.values():
        if obj.zoid == 0:
            continue
        parent = found[obj.parent]
        assert obj.path == f"{parent.path.rstrip('/')}/{obj.name}"
        assert obj.depth == parent.depth + 1 and obj.ancestors == parent.ancestors + (parent.path,)
    sample = paths[built.item_paths[1]]  # item-1: aware, never published
    assert sample.title and sample.words and sample.review_state == "private" and sample.tags
    assert sample.created.tzinfo is UTC and len(sample.parts) == 5  # holder, history, 1 tree, 2 mappings
    rare = {o.path for o in found.values() if corpus.RARE_WORD in o.words}
    assert rare == {p for p in built.item_paths if int(p.rsplit("-", 1)[1]) % 37 == 0}
    # The registry refers to every item; the named mime types are not in the tree.
    conn = zodb.open()
    registry = conn.root()["registry"]
    assert {truth.zoid(ref.object) for ref in registry._refs.values()} == {o.zoid for o in found.values()
                                                                           if o.cls.endswith(".Item")}
    mimetypes = conn.root()["settings"].mimetypes
    assert all(key != name_of(m) for key, m in mimetypes.items())
    assert not {truth.zoid(m) for m in mimetypes.values()} & set(found)
    conn.close()


@both_history_modes
def test_the_big_folders_are_split_into_buckets(zodb, db_dsn, keep_history):
    corpus.build_corpus(zodb, items=ITEMS, infra_records=600, mimetypes=20)
    classes = current_classes(db_dsn, keep_history)
    buckets = classes.count("BTrees.OOBTree.OOBucket")
    assert buckets >= 10, buckets
    assert classes.count("BTrees.IOBTree.IOBucket") >= 2  # the registry's
    assert len({c for c in classes if c.startswith("tests.objects.app.InfraRecord")}) == 300
    found = truth.objects(db_dsn, keep_history)
    [big] = [o for o in found.values() if o.path == "/f1/sub"]
    [box] = [o for o in found.values() if o.path == "/c1/sub"]
    assert len(big.parts) >= 3 and len(box.parts) >= 3, (big.parts, box.parts)  # the tree and its buckets


@both_history_modes
def test_the_truth_follows_moves_renames_removals_and_undo(zodb, db_dsn, keep_history):
    built = corpus.build_corpus(zodb, items=ITEMS, infra_records=300, mimetypes=20)
    before = by_path(truth.objects(db_dsn, keep_history))
    conn = zodb.open()
    root = conn.root()
    item_path = next(p for p in built.item_paths if p.startswith("/f1/sub/item-"))
    item = before[item_path]
    deep = {o.zoid: o.path for o in before.values() if o.path.startswith("/f1/sub/deep")}

    moved = corpus.move(root, item_path, "/c1/sub")  # into a zope-like container
    corpus.move(root, "/f1/sub/deep", "/f2")  # a whole AttrFolder subtree
    corpus.rename(root, "/c1/sub", "renamed")  # a container: key and __name__ change together
    corpus.edit_body(root, moved.replace("/c1/sub", "/c1/renamed"), "<p>brand new words</p>")
    corpus.transition(root, moved.replace("/c1/sub", "/c1/renamed"), "publish", "published",
                      datetime(2025, 1, 1, tzinfo=UTC))
    transaction.commit()
    after = truth.objects(db_dsn, keep_history)
    moved_now = after[item.zoid]
    assert moved_now.path == f"/c1/renamed/{item.name}" and moved_now.depth == 3
    assert after[moved_now.parent].path == "/c1/renamed" and after[moved_now.parent].cls.endswith(".Container")
    assert moved_now.words == {"brand", "new", "words"} and moved_now.review_state == "published"
    assert root["c1"].get("renamed").get(item.name).__parent__ is root["c1"].get("renamed")
    for z, path in deep.items():  # the subtree re-pathed
        assert after[z].path == path.replace("/f1/sub/deep", "/f2/deep"), path
    renamed = corpus.rename(root, moved_now.path, "item-renamed")
    transaction.commit()
    assert truth.objects(db_dsn, keep_history)[item.zoid].path == renamed

    # Removals: an item, then a folder subtree; gone from the truth, back after undo/re-adding.
    removed_item = corpus.remove(root, renamed)
    transaction.commit()
    assert item.zoid not in truth.objects(db_dsn, keep_history)
    if corpus.supports_undo(zodb):
        corpus.undo_last(zodb)
        conn.sync()
    else:  # history-free RelStorage does not support undo: the application adds it back
        assert not keep_history
        corpus.readd(root, "/c1/renamed", removed_item[0])
        transaction.commit()
    back = truth.objects(db_dsn, keep_history)
    assert back[item.zoid].path == renamed
    registry = conn.root()["registry"]
    assert item.zoid in {truth.zoid(ref.object) for ref in registry._refs.values()}

    gone = {truth.zoid(o) for o in corpus.remove(root, "/a1/f")}
    transaction.commit()
    corpus.pack(zodb)
    conn.sync()
    now = truth.objects(db_dsn, keep_history)
    assert not gone & set(now) and len(gone) > 10
    assert set(now) == set(back) - gone
    assert isinstance(root["c1"], Container) and isinstance(conn.get(back[item.zoid].zoid.to_bytes(8, "big")), Item)
    conn.close()


@both_history_modes
def test_the_live_writer_keeps_its_own_account_of_the_tree(zodb, db_dsn, keep_history):
    """The e2e test's writer (moves, renames, removals, additions, a folder moved back and
    forth, a pack between commits): the item paths it believes in are the truth's."""
    built = corpus.build_corpus(zodb, items=ITEMS, infra_records=300, mimetypes=20)
    writer = AppWriter(db_dsn, keep_history, built.item_paths, rate=100.0)
    try:
        writer.start()
        time.sleep(1.5)
        writer.pack()
        gone, _ = writer.do(lambda root: {truth.zoid(o) for o in corpus.remove(root, "/c1/sub/f")})
        deadline = time.monotonic() + 30  # until every kind of change was made (a loaded machine is slow)
        while not all(writer.counts[op] for op in ("move-folder", "rename", "remove", "move")) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        writer.stop()
    finally:
        writer.close()
    found = truth.objects(db_dsn, keep_history)
    in_areas = {o.path for o in found.values() if o.cls.endswith(".Item") and o.path.startswith(live.AREAS)}
    assert in_areas == set(writer.paths)
    assert not gone & set(found)
    assert writer.counts["move-folder"] and writer.counts["rename"] and writer.counts["remove"], writer.counts
