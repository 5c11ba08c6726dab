"""The object model end to end in-process: real ZODB + RelStorage, a real search node.

A small application (folders keeping items in OOBTrees that split into buckets, items with
a persistent text holder and a history mapping) is indexed with documents=objects; the
documents are compared with what ZODB itself reads (paths walked from the root), after a
backfill and after moves, renames, removals and part edits under the running service.
"""

from __future__ import annotations

import time

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent import Persistent
from persistent.mapping import PersistentMapping

from tests.indexing import make_settings, running, zoid_of
from tests.support import both_history_modes, scalar, wait_for


class Folder(Persistent):
    def __init__(self, id, title=""):
        self.id = id
        self.title = title
        self._tree = OOBTree()

    def add(self, child):
        self._tree[child.id] = child
        return child


class Holder(Persistent):
    def __init__(self, raw):
        self.raw = raw


class Item(Persistent):
    def __init__(self, id, title, words):
        self.id = id
        self.title = title
        self.body = {"holder": Holder(words)}
        self.history = PersistentMapping({"wf": [{"review_state": "private"}]})


def truth(db) -> dict[int, str]:
    """zoid -> path of every object reachable from the root through the folders (ZODB's reads)."""
    conn = db.open()
    try:
        root = conn.root()
        out = {0: "/"}

        def walk(folder, path):
            out[zoid_of(folder)] = path
            for key, child in folder._tree.items():
                if isinstance(child, Folder):
                    walk(child, f"{path}/{key}")
                else:
                    out[zoid_of(child)] = f"{path}/{key}"

        walk(root["site"], "/site")
        return out
    finally:
        conn.close()


def indexed(es, alias) -> dict[int, dict]:
    from elasticsearch import NotFoundError

    try:
        es.indices.refresh(index=alias)
    except NotFoundError:  # not created yet
        return {}
    hits = es.search(index=alias, size=5000, query={"match_all": {}})["hits"]["hits"]
    return {int(h["_id"]): h["_source"] for h in hits}


def paths(es, alias) -> dict[int, str]:
    return {z: d["path"] for z, d in indexed(es, alias).items()}


def build(db):
    conn = db.open()
    root = conn.root()
    site = root["site"] = Folder("site", "The site")
    news = site.add(Folder("news", "News"))
    for n in range(90):  # > one bucket
        news.add(Item(f"item-{n}", f"News item {n}", f"body of news {n} zebra{n}"))
    docs = site.add(Folder("docs", "Documents"))
    for n in range(20):
        docs.add(Item(f"doc-{n}", f"Document {n}", f"text of doc {n}"))
    transaction.commit()
    return conn


@both_history_modes
def test_objects_follow_the_tree(zodb, db_dsn, es_url, es_prefix, es):
    conn = build(zodb)
    root = conn.root()
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")
    alias = settings.alias_name
    with running(settings):
        expected = truth(zodb)
        wait_for(lambda: paths(es, alias) == expected, timeout=60)
        got = indexed(es, alias)
        item = root["site"]._tree["news"]._tree["item-7"]
        doc = got[zoid_of(item)]
        assert doc["parent"] == zoid_of(root["site"]._tree["news"])
        assert doc["ancestors"] == ["/", "/site", "/site/news"]
        assert zoid_of(item.body["holder"]) in doc["parts"] and zoid_of(item.history) in doc["parts"]
        hits = es.search(index=alias, query={"match": {"text": "zebra7"}})["hits"]["hits"]
        assert [int(h["_id"]) for h in hits] == [zoid_of(item)]  # a part's words find its object
        # no document for parts, BTrees or the holder
        assert zoid_of(item.body["holder"]) not in got
        # a folder's items (a folded BTree) are data, in more: no field per child id
        mapping = es.indices.get_mapping(index=alias)
        props = next(iter(mapping.values()))["mappings"]["properties"]["state"]["properties"]
        assert not [field for field in props if field.startswith("_tree")], sorted(props)

        # a move, a rename, a removal and a part edit, committed together
        site = root["site"]
        news = site._tree["news"]
        del site._tree["news"]
        docs = site._tree["docs"]
        docs._tree["news"] = news  # move /site/news under /site/docs
        moved = docs._tree.pop("doc-3")
        moved.id = "renamed-3"
        docs._tree["renamed-3"] = moved
        removed = news._tree.pop("item-1")
        news._tree["item-2"].body["holder"].raw = "fresh words kangaroo"
        transaction.commit()
        started = time.monotonic()
        expected = truth(zodb)
        wait_for(lambda: paths(es, alias) == expected, timeout=30)
        print(f"tree re-pathed and removal gone in {time.monotonic() - started:.2f} s")
        assert zoid_of(removed) not in indexed(es, alias)
        hits = es.search(index=alias, query={"match": {"text": "kangaroo"}})["hits"]["hits"]
        assert [int(h["_id"]) for h in hits] == [zoid_of(news._tree["item-2"])]
        assert indexed(es, alias)[zoid_of(news._tree["item-5"])]["path"] == "/site/docs/news/item-5"

        # undo-like: the removed item comes back
        news._tree["item-1"] = removed
        transaction.commit()
        expected = truth(zodb)
        wait_for(lambda: paths(es, alias) == expected, timeout=30)
    conn.close()


def test_verify_explain_and_repair(zodb, db_dsn, es_url, es_prefix, es):
    import psycopg2

    from esindexer.convert.configure import build_jsonifier
    from esindexer.documents import DocumentBuilder
    from esindexer.ops.explain import explain
    from esindexer.ops.objectverify import verify_objects

    conn = build(zodb)
    root = conn.root()
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")
    alias = settings.alias_name
    news = root["site"]._tree["news"]
    removed = news._tree.pop("item-4")
    transaction.commit()
    with running(settings):
        expected = truth(zodb)
        wait_for(lambda: paths(es, alias) == expected, timeout=60)
    builder, jsonifier = DocumentBuilder(settings), build_jsonifier(settings)
    pg_conn = psycopg2.connect(db_dsn)
    try:
        report = verify_objects(pg_conn, es, builder, jsonifier, settings, deep=True)
        assert report.remaining == 0 and report.objects == len(expected), report.as_dict()

        item = news._tree["item-8"]
        said = explain(pg_conn, es, settings, jsonifier, builder, zoid_of(item))
        assert said["object_model"]["kind"] == "object" and said["object_model"]["path"] == "/site/news/item-8"
        assert said["verdict"].startswith("indexed in")
        part = explain(pg_conn, es, settings, jsonifier, builder, zoid_of(item.body["holder"]))
        assert part["object_model"]["kind"] == "part" and part["object_model"]["owner"] == zoid_of(item)
        gone = explain(pg_conn, es, settings, jsonifier, builder, zoid_of(removed))
        assert gone["object_model"]["kind"] == "detached" and "no document" in gone["verdict"]

        # hand damage: a document deleted, one for a part written, one re-pathed, one body changed
        index = builder.index_for_class(f"{Item.__module__}.Item")
        es.delete(index=index, id=zoid_of(news._tree["item-9"]), refresh=True)
        es.index(index=index, id=zoid_of(item.body["holder"]), document={"zoid": zoid_of(item.body["holder"])},
                 version=1, version_type="external", refresh=True)
        es.update(index=index, id=zoid_of(news._tree["item-10"]), doc={"path": "/elsewhere"}, refresh=True)
        es.update(index=index, id=zoid_of(news._tree["item-11"]), doc={"text": "tampered"}, refresh=True)
        report = verify_objects(pg_conn, es, builder, jsonifier, settings, deep=True)
        assert report.counts["missing"] == 1 and report.counts["orphan"] == 1, report.as_dict()
        assert report.counts["stale"] == 1 and report.counts["changed"] == 1 and report.counts["graph"] == 0
        report = verify_objects(pg_conn, es, builder, jsonifier, settings, deep=True, repair=True)
        assert report.repaired == 4 and report.still_different == 0, report.as_dict()
        assert verify_objects(pg_conn, es, builder, jsonifier, settings, deep=True).remaining == 0
        # the graph itself wrong (as a bug in its upkeep would leave it): --deep finds it
        with pg_conn.cursor() as cur:
            cur.execute("UPDATE esindexer_obj_nodes SET owner = NULL WHERE zoid = %s", (zoid_of(item.history),))
        pg_conn.commit()
        report = verify_objects(pg_conn, es, builder, jsonifier, settings, deep=True)
        assert report.counts["graph"] == 1 and report.examples["graph"] == [zoid_of(item.history)], report.as_dict()
    finally:
        pg_conn.close()
    conn.close()


def test_documents_left_dirty_by_a_crash_are_written_at_start(zodb, db_dsn, es_url, es_prefix, es):
    """The outbox: a dirty row whose document never reached the index (a crash between the
    graph's commit and the bulk) is written when the service starts again."""
    import psycopg2

    from esindexer.errors import ExitCode
    from esindexer.observe.metrics import Metrics
    from esindexer.pipeline.indexer import Indexer

    conn = build(zodb)
    root = conn.root()
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")
    alias = settings.alias_name
    with running(settings):
        wait_for(lambda: paths(es, alias) == truth(zodb), timeout=60)
    item = root["site"]._tree["docs"]._tree["doc-5"]
    index = next(iter(es.indices.get_alias(name=alias)))
    es.indices.delete(index=index)  # nothing left: as if no bulk had ever gone

    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("INSERT INTO esindexer_obj_dirty (client_id, zoid, as_of) "
                    "SELECT client_id, %s, tid FROM esindexer_obj_applied", (zoid_of(item),))
    with running(settings):
        wait_for(lambda: zoid_of(item) in indexed(es, alias), timeout=30)
        wait_for(lambda: scalar(db_dsn, "SELECT count(*) FROM esindexer_obj_dirty") == 0, timeout=30)
    assert {z: d["path"] for z, d in indexed(es, alias).items()} == {zoid_of(item): "/site/docs/doc-5"}
    # the same indices with records configured: refused at start, with the way out
    code = Indexer(make_settings(db_dsn, es_url, es_prefix), Metrics(process_metrics=False)).run(until_caught_up=True)
    assert code == ExitCode.SETUP
    conn.close()


def test_a_whole_tree_left_dirty_by_a_crash_is_written_at_start_a_request_at_a_time(zodb, db_dsn, es_url,
                                                                                     es_prefix, es):
    """A crash while a backfill wrote its documents leaves the whole tree dirty (one mark,
    not a row each). The next start writes every object of the tree again, a request's
    worth at a time (bulk_max_docs: 25 here), then clears the mark."""
    import psycopg2

    from esindexer.observe.metrics import Metrics

    conn = build(zodb)
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")
    alias = settings.alias_name
    with running(settings):
        wait_for(lambda: paths(es, alias) == truth(zodb), timeout=60)
    conn.close()
    index = next(iter(es.indices.get_alias(name=alias)))
    es.indices.delete(index=index)  # nothing left: as if no bulk had ever gone
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("UPDATE esindexer_obj_applied SET tree_dirty_as_of = tid")
    metrics = Metrics(process_metrics=False)
    with running(settings, metrics):
        wait_for(lambda: paths(es, alias) == truth(zodb), timeout=60)
        wait_for(lambda: scalar(db_dsn, "SELECT count(*) FROM esindexer_obj_applied "
                                        "WHERE tree_dirty_as_of IS NOT NULL") == 0, timeout=30)
    objects = len(truth(zodb))  # the tree's objects, the root included
    requests = metrics.registry.get_sample_value("esindexer_bulk_requests_total", {"outcome": "ok"}) or 0
    assert requests >= objects / 25  # a request at a time, not one request for the whole tree


def test_ofs_children_named_by_their_container(zodb, db_dsn, es_url, es_prefix, es):
    """A tool whose id is a class attribute (no pickle shows it) is placed by its OFS
    container's ``_objects`` listing, or by being an item of a container's ``_tree``, and is
    an object of its own, not a part of the folder."""
    from tests.objects.test_edges_fold import ClassNamed, OFSFolder

    conn = zodb.open()
    root = conn.root()
    app = root["app"] = OFSFolder("app")
    tool = ClassNamed()
    tool.title = "The tool"
    tool.data = PersistentMapping({"setting": "value"})
    app._setObject("portal_tool", tool)
    sub = OFSFolder("sub")
    app._setObject("sub", sub)
    sub._setObject("leaf", Item("leaf", "A leaf", "leaf words"))
    site = root["site"] = Folder("site")  # a BTreeFolder2-like container: items in _tree
    in_tree = ClassNamed()
    site._tree["portal_tool"] = in_tree
    in_tree.catalog = OOBTree({"word": PersistentMapping({"rid": 1})})  # the tool's own parts
    transaction.commit()
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")
    alias = settings.alias_name
    expected = {0: "/", zoid_of(app): "/app", zoid_of(tool): "/app/portal_tool", zoid_of(sub): "/app/sub",
                zoid_of(sub.leaf): "/app/sub/leaf", zoid_of(site): "/site", zoid_of(in_tree): "/site/portal_tool"}
    with running(settings):
        wait_for(lambda: paths(es, alias) == expected, timeout=60)
        got = indexed(es, alias)
        assert got[zoid_of(tool)]["parts"] == [zoid_of(tool.data)]  # its own part, not the folder's
        assert zoid_of(tool) not in got[zoid_of(app)]["parts"]
        assert zoid_of(in_tree.catalog) in got[zoid_of(in_tree)]["parts"]
        assert zoid_of(in_tree) not in got[zoid_of(site)]["parts"]
        # removed from the listing and the attribute (OFS _delObject): gone
        del app.portal_tool
        app._objects = tuple(o for o in app._objects if o["id"] != "portal_tool")
        transaction.commit()
        del expected[zoid_of(tool)]
        wait_for(lambda: paths(es, alias) == expected, timeout=30)
    conn.close()


def test_a_failed_graph_write_during_a_backfill_saves_no_progress_past_it(zodb, db_dsn, es_url, es_prefix, es,
                                                                          monkeypatch):
    """A backfill writes each batch into the graph on a thread of its own, while the next
    batch is read. When a write fails, the run stops and saves no progress past the last
    batch whose write committed; the next run completes the same documents."""
    import psycopg2

    from esindexer.objects import unresolved
    from esindexer.observe.metrics import Metrics
    from esindexer.pipeline.indexer import Indexer
    from esindexer.source import progress

    conn = build(zodb)
    docs = conn.root()["site"]._tree["docs"]
    for n in range(20, 80):  # many transactions: many batches
        docs.add(Item(f"doc-{n}", f"Document {n}", f"text of doc {n}"))
        transaction.commit()
    conn.close()
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")
    real, written, failed = unresolved.write, [], []

    def write(cur, client_id, records, deleted, tid):
        if len(written) == 2:
            failed.append(min(f.tid for f in records))
            raise RuntimeError("injected: the graph write failed")
        written.append(tid)
        return real(cur, client_id, records, deleted, tid)

    monkeypatch.setattr(unresolved, "write", write)
    with pytest.raises(RuntimeError, match="injected"):  # (the command reports it and exits non-zero)
        Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True)
    assert failed, "the run never reached its third batch"
    pg = psycopg2.connect(db_dsn)
    try:
        saved = progress.get_progress_tid(pg, settings.client_id)
    finally:
        pg.close()
    assert saved is not None and saved <= written[-1] < failed[0]  # nothing past the batch that failed

    monkeypatch.setattr(unresolved, "write", real)
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == 0
    assert paths(es, settings.alias_name) == truth(zodb)
