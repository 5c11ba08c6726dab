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
from tests.support import wait_for



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
