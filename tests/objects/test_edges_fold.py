"""Names, edges and folding, read from real pickles of real BTrees and persistent objects.

The records are written by ZODB itself (a MappingStorage), converted by esindexer's
converter, and the results compared with what ZODB reads back: a folded BTree must equal
``dict(tree)`` however many bucket and interior-node records it is stored in.
"""

from __future__ import annotations

import orjson
import pytest
import transaction
import ZODB
from BTrees.IOBTree import IOBTree
from BTrees.OOBTree import OOBTree, OOTreeSet
from persistent import Persistent
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from ZODB.MappingStorage import MappingStorage
from ZODB.utils import u64

from esindexer.convert.jsonifier import Jsonifier
from esindexer.objects.edges import is_btree_class, record_edges, record_name
from esindexer.objects.fold import fold


class Named(Persistent):
    def __init__(self, id, **attrs):
        self.id = id
        self.__dict__.update(attrs)


class Zope3(Persistent):
    def __init__(self, name):
        self.__name__ = name


class Inline:
    def __init__(self, target):
        self.object = target


@pytest.fixture
def db():
    storage = MappingStorage()
    database = ZODB.DB(storage)
    yield database, storage
    database.close()


def records(storage) -> dict[int, tuple[str, object]]:
    """Every record of the storage, converted: ``zoid -> (class, state)``."""
    conv = Jsonifier(skip_class=lambda c: False, transform=None)
    out = {}
    for oid in storage._data:  # MappingStorage keeps {oid: {tid: data}}
        data, _tid = storage.load(oid)
        c = conv.convert(u64(oid), data)
        out[u64(oid)] = (c.class_name, orjson.loads(c.json_text))
    return out


def zoid(obj) -> int:
    return u64(obj._p_oid)


def test_names():
    assert record_name(0, {"data": {}}) == ""
    assert record_name(5, {"id": "doc", "__name__": "other"}) == "doc"
    assert record_name(5, {"__name__": "n"}) == "n"
    assert record_name(5, {"id": ""}) is None
    assert record_name(5, {"id": 7}) is None
    assert record_name(5, [1, 2]) is None


@pytest.mark.parametrize("count", [3, 200, 40_000])  # inline bucket, buckets, interior nodes
def test_a_btree_folds_to_what_zodb_reads(db, count):
    database, storage = db
    conn = database.open()
    root = conn.root()
    tree = root["t"] = OOBTree()
    children = {}
    for n in range(count):
        key = f"k{n:06d}"
        children[key] = tree[key] = Named(key) if n % 50 == 0 else n
    transaction.commit()
    recs = records(storage)
    btree_records = {z for z, (cls, _s) in recs.items() if is_btree_class(cls)}
    if count > 100:
        assert len(btree_records) > 2  # really split
    if count > 20_000:  # interior BTree nodes are records of the tree's class
        assert sum(1 for z in btree_records if recs[z][0].endswith("OOBTree")) > 1
    # every child held by the tree is an edge under its key, from some bucket (or the tree)
    held = {}
    for z in btree_records:
        cls, state = recs[z]
        for dst, key, _listed in record_edges(cls, state):
            if key is not None:
                held[dst] = key
    assert held == {zoid(v): k for k, v in children.items() if isinstance(v, Named)}
    # folded, the whole tree is the mapping ZODB reads
    parts = {z: recs[z] for z in btree_records if z != zoid(tree)}
    folded = fold({"items": {"::": "persistent", "id": [zoid(tree), "BTrees.OOBTree.OOBTree"],
                             "::=>": zoid(tree)}}, {**parts, zoid(tree): recs[zoid(tree)]})
    mapping = folded.state["items"]
    assert set(mapping) == set(children)
    for key, value in children.items():
        if isinstance(value, Named):
            assert mapping[key]["::=>"] == zoid(value)
        else:
            assert mapping[key] == value
    assert set(folded.folded) == btree_records
    conn.close()


def test_keys_of_attributes_mappings_and_containers(db):
    database, storage = db
    conn = database.open()
    root = conn.root()
    child = Named("child")
    zchild = Zope3("z1")
    intids = IOBTree()
    holder = PersistentMapping({"a.b.c": PersistentList([1, 2])})
    root["app"] = app = Named("app", child=child, meta={"holder": holder}, box=Inline(child))
    app.data = OOBTree({"z1": zchild})
    app.intids = intids
    intids[17] = Inline(child)
    zchild.__parent__ = app
    ts = root["set"] = OOTreeSet()
    ts.update(["a", "b"])
    transaction.commit()
    recs = records(storage)
    cls, state = recs[zoid(app)]
    edges = {(dst, key) for dst, key, _listed in record_edges(cls, state)}
    assert (zoid(child), "child") in edges  # an attribute: containment when child.id == "child"
    assert (zoid(child), "object") in edges  # inside an inline instance: its attribute's name
    assert (zoid(holder), "holder") in edges
    cls, state = recs[zoid(app.data)]
    assert record_edges(cls, state) == [(zoid(zchild), "z1", False)]
    cls, state = recs[zoid(intids)]
    assert record_edges(cls, state) == [(zoid(child), "object", False)]  # an intid never holds under a name
    cls, state = recs[zoid(zchild)]
    assert record_edges(cls, state) == [(zoid(app), "__parent__", False)]
    cls, state = recs[zoid(ts)]
    folded = fold({"s": {"::": "persistent", "id": zoid(ts), "::=>": zoid(ts)}}, {zoid(ts): (cls, state)})
    assert folded.state["s"] == ["a", "b"]
    # a PersistentMapping part folds as its state, marked with its class, its own parts inside
    folded = fold(recs[zoid(app)][1], {zoid(holder): recs[zoid(holder)],
                                       zoid(holder["a.b.c"]): recs[zoid(holder["a.b.c"])]})
    inner = folded.state["meta"]["holder"]
    assert inner["::"] == "persistent.mapping.PersistentMapping"
    assert inner["data"]["a.b.c"]["data"] == [1, 2]
    assert zoid(child) in folded.refs and zoid(holder) not in folded.refs
    conn.close()


class ClassNamed(Persistent):
    """An OFS tool: its id is a class attribute, so no pickle carries it."""

    id = "portal_tool"


class OFSFolder(Persistent):
    def __init__(self, id):
        self.id = id
        self._objects = ()

    def _setObject(self, id, obj):
        setattr(self, id, obj)
        self._objects = self._objects + ({"id": id, "meta_type": "Thing"},)


def test_an_ofs_container_names_its_children_in_objects(db):
    database, storage = db
    conn = database.open()
    root = conn.root()
    folder = root["f"] = OFSFolder("f")
    tool = ClassNamed()
    folder._setObject("portal_tool", tool)
    folder.settings = PersistentMapping()  # an attribute not listed: not a child
    transaction.commit()
    recs = records(storage)
    cls, state = recs[zoid(folder)]
    assert record_name(zoid(tool), recs[zoid(tool)][1]) is None  # nothing in the pickle names it
    edges = set(record_edges(cls, state))
    assert (zoid(tool), "portal_tool", True) in edges
    assert (zoid(folder.settings), "settings", False) in edges
    conn.close()


def test_decoded_states_give_the_facts_converted_ones_do(db):
    """The reader reads names and references from decoded states (no JSON text) where it can:
    the same as from the converted JSON, record by record."""
    from esindexer.convert.jsonifier import Decoded

    database, storage = db
    conn = database.open()
    root = conn.root()
    root["t"] = big = OOBTree()
    for n in range(300):
        big[f"k{n:04d}"] = Named(f"k{n:04d}", tags=("a", n), pair=(Named(f"x{n}"), {"k": n}))
    root["m"] = PersistentMapping({1: Named("one"), "two": [Named("two")], ("t", 1): "tuple key"})
    folder = root["f"] = OFSFolder("f")
    folder._setObject("portal_tool", ClassNamed())
    root["i"] = IOBTree({5: Inline(Named("five"))})
    root["s"] = OOTreeSet([f"s{n}" for n in range(200)])
    transaction.commit()
    conv = Jsonifier(skip_class=lambda c: False, transform=None)
    decoded_seen = 0
    for oid in storage._data:
        data, _tid = storage.load(oid)
        z = u64(oid)
        converted = conv.convert(z, data)
        state = orjson.loads(converted.json_text)
        expected = (record_name(z, state), sorted(record_edges(converted.class_name, state), key=repr))
        got = conv.decode(z, data)
        if type(got) is Decoded:
            decoded_seen += 1
            assert (record_name(z, got.state), sorted(record_edges(got.class_name, got.state), key=repr)) == \
                expected, converted.class_name
    assert decoded_seen > 300
    conn.close()
