"""Corpora of one kind of record each, for bench/jsonify.py's per-kind table and the
per-kind differential test (tests/convert/test_jsonifier_kinds.py).

Each kind is what real sites hold and what once converted far slower than the typical
record (issue 13). All but the Python-2-era kind are written with real ZODB (into
whatever storage the caller's ``db`` has: RelStorage on PostgreSQL in the bench and the
test); the Python-2-era kind is assembled opcode by opcode as ZODB 3 on Python 2 wrote
it (:mod:`tests.convert.py2records`). :func:`write_kinds` returns, per kind, the zoids
of its records; the rows are then read back from ``object_state``.
"""

from __future__ import annotations

import datetime
import random
import sys
import types
from typing import Any

import persistent

from tests.convert.py2records import Inst, Ref2, Str, py2_record

__all__ = ["ASSEMBLED", "KINDS", "py2_records", "write_kinds"]

KINDS = ("py2", "py2-latin1", "cyclic", "dates", "instances", "removed")
#: The kinds assembled opcode by opcode as ZODB 3 wrote them -> py2_records' ``latin1``.
ASSEMBLED = {"py2": False, "py2-latin1": True}
WORDS = ["alpha", "beta", "gamma", "delta", "report", "budget", "meeting", "review", "draft",
         "final", "customer", "order", "invoice", "status", "priority", "team", "release"]


class Item(persistent.Persistent):
    """A content object of the per-kind corpora."""


class Node:
    """A non-persistent sub-object (held in a persistent object's state)."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


class Point:
    """A small non-persistent value object (two attributes)."""

    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _base(rng: random.Random, obj: Any) -> None:
    obj.title = _text(rng, 5)
    obj.description = _text(rng, 15)
    obj.views = rng.randint(0, 10**5)


def _cyclic(rng: random.Random, obj: Any, other: Any) -> None:
    _base(rng, obj)
    loop: list[Any] = [_text(rng, 3), rng.randint(0, 99)]
    loop.append(loop)  # a list that contains itself
    obj.loop = loop
    node = Node(name=_text(rng, 2), owner=other)
    node.me = node  # an object that contains itself
    obj.node = node
    tree = Node(name="root", children=[])  # children pointing back at their parent
    for i in range(4):
        tree.children.append(Node(name=f"c{i}", parent=tree, weight=rng.random()))
    obj.tree = tree
    obj.tags = [rng.choice(WORDS) for _ in range(3)]


_UTC2 = datetime.timezone(datetime.timedelta(hours=2))


def _dates(rng: random.Random, obj: Any, other: Any) -> None:
    _base(rng, obj)
    start = datetime.datetime(2010, 1, 1) + datetime.timedelta(minutes=rng.randint(0, 10**7))
    obj.created = start
    obj.modified = start + datetime.timedelta(hours=rng.randint(1, 1000))
    obj.effective = start.replace(tzinfo=datetime.UTC)
    obj.expires = (start + datetime.timedelta(days=365)).replace(tzinfo=_UTC2)
    obj.day = start.date()
    obj.opens = datetime.time(rng.randint(0, 23), rng.choice((0, 30)))
    obj.duration = datetime.timedelta(minutes=rng.randint(1, 600))
    obj.history = [{"when": start + datetime.timedelta(days=d), "who": rng.choice(WORDS),
                    "day": (start + datetime.timedelta(days=d)).date()} for d in range(rng.randint(2, 6))]
    obj.owner = other


def _instances(rng: random.Random, obj: Any, other: Any) -> None:
    _base(rng, obj)
    obj.location = Point(rng.random() * 90, rng.random() * 180)
    obj.contacts = [Node(name=_text(rng, 2), email=f"x{i}@example.org", phone=(rng.randint(100, 999), "555"))
                    for i in range(rng.randint(2, 4))]
    obj.keywords = set(rng.sample(WORDS, 4))
    obj.frozen = frozenset(rng.sample(range(1000), 5))
    obj.pair = (rng.choice(WORDS), rng.randint(0, 9))
    obj.matrix = [[rng.randint(0, 9) for _ in range(4)] for _ in range(3)]
    obj.layout = {"columns": [{"width": rng.randint(1, 12), "blocks": [Node(kind="text", id=i)]} for i in range(3)],
                  "flags": (True, False), "owner": other}


def _removed_module() -> types.ModuleType:
    """A module with classes that exist only while the corpus is written (a removed
    add-on): records name ``legacy_addon.content.*``, which nothing can import later."""
    mod = types.ModuleType("legacy_addon.content")

    class OldItem(persistent.Persistent):
        pass

    class OldNote:
        pass

    class OldTag:
        pass

    for cls in (OldItem, OldNote, OldTag):
        cls.__module__ = mod.__name__
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    return mod


def _removed(rng: random.Random, obj: Any, other: Any, mod: types.ModuleType) -> None:
    _base(rng, obj)
    notes = []
    for i in range(rng.randint(2, 5)):
        note = mod.OldNote()
        note.text, note.rank = _text(rng, 6), i
        notes.append(note)
    obj.notes = notes
    tag = mod.OldTag()
    tag.name = rng.choice(WORDS)
    obj.tag = tag
    obj.kind = mod.OldNote  # a class used as a value
    obj.related = other  # a reference to a persistent object of a removed class
    obj.meta = {"lang": "en", "words": rng.randint(10, 2000)}


def write_kinds(db: Any, per_kind: int, seed: int = 13) -> dict[str, list[int]]:
    """Write ``per_kind`` objects of each ZODB-written kind; return the zoids per kind."""
    import transaction

    rng = random.Random(seed)
    mod = _removed_module()
    parent = types.ModuleType("legacy_addon")
    sys.modules["legacy_addon"], sys.modules[mod.__name__] = parent, mod
    try:
        conn = db.open()
        root = conn.root()
        others = [Item() for _ in range(20)]
        olds = [mod.OldItem() for _ in range(20)]
        root["kinds_others"], root["kinds_olds"] = others, olds
        made: dict[str, list[Any]] = {k: [] for k in KINDS if k not in ASSEMBLED}
        for kind, objs in made.items():
            for i in range(per_kind):
                obj = mod.OldItem() if kind == "removed" else Item()
                if kind == "cyclic":
                    _cyclic(rng, obj, rng.choice(others))
                elif kind == "dates":
                    _dates(rng, obj, rng.choice(others))
                elif kind == "instances":
                    _instances(rng, obj, rng.choice(others))
                else:
                    _removed(rng, obj, rng.choice(olds), mod)
                root[f"{kind}{i}"] = obj
                objs.append(obj)
                if i % 2000 == 1999:
                    transaction.commit()
            transaction.commit()
        zoids = {k: [int.from_bytes(o._p_oid, "big") for o in objs] for k, objs in made.items()}
        conn.close()
    finally:
        del sys.modules[mod.__name__], sys.modules["legacy_addon"]
    return zoids


def py2_records(count: int, seed: int = 13, latin1: bool = False) -> list[tuple[int, bytes]]:
    """``count`` Python-2-era records (zoids from 1,000,000,000): content objects with
    py2 ``str`` ids and names, ``unicode`` text, datetimes, a set, a non-persistent
    instance and persistent references; half with ZODB 3.2's class metadata tuple.
    ``latin1``: the title and description are py2 ``str`` in Latin-1 (not UTF-8), as
    sites whose default encoding was Latin-1 stored them."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        start = datetime.datetime(2005, 1, 1) + datetime.timedelta(minutes=rng.randint(0, 10**7))
        title, description = _text(rng, 5) + " \u00e9t\u00e9", _text(rng, 15) + " d\u00e9j\u00e0 vu"
        state = {
            Str(b"id"): Str(f"item-{i}".encode()),
            Str(b"title"): Str(title.encode("latin-1")) if latin1 else title,
            Str(b"description"): Str(description.encode("latin-1")) if latin1 else description,
            Str(b"portal_type"): Str(b"Document"),
            Str(b"creation_date"): start,
            Str(b"modification_date"): start + datetime.timedelta(hours=3),
            Str(b"effective"): start.date(),
            Str(b"subject"): (Str(rng.choice(WORDS).encode()), Str(rng.choice(WORDS).encode())),
            Str(b"workflow_history"): {Str(b"simple_publication_workflow"): (
                {Str(b"action"): None, Str(b"actor"): Str(b"admin"), Str(b"review_state"): Str(b"private"),
                 Str(b"comments"): Str(b""), Str(b"time"): start},)},
            Str(b"_owner"): ([Str(b"acl_users")], Str(b"admin")),
            Str(b"__ac_local_roles__"): {Str(b"admin"): [Str(b"Owner")]},
            Str(b"views"): rng.randint(0, 10**6),
            Str(b"rating"): rng.random() * 5,
            Str(b"published"): rng.random() < 0.5,
            Str(b"keywords"): {Str(w.encode()) for w in rng.sample(WORDS, 3)},
            Str(b"text"): Inst("Products.Archetypes.BaseUnit", "BaseUnit",
                               {Str(b"id"): Str(b"text"), Str(b"raw"): _text(rng, 30),
                                Str(b"mimetype"): Str(b"text/html")}),
            Str(b"_parent"): Ref2(rng.randint(1, 10**6), "Products.ATContentTypes.content.folder", "ATFolder"),
            Str(b"_related"): [Ref2(rng.randint(1, 10**6), "Products.ATContentTypes.content.document",
                                    "ATDocument") for _ in range(rng.randint(0, 3))],
        }
        rows.append((10**9 + i, py2_record("Products.ATContentTypes.content.document", "ATDocument",
                                           state, old_meta=bool(i % 2))))
    return rows
