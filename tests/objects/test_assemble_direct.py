"""Object documents shaped straight from the unpickled state equal those from JSON values.

An object with no part to fold is only decoded and shaped from its state (as record
documents are); every other object is converted to JSON values and folded. Both ways must
give the same bytes, for the odd values too (integers beyond 53 bits, non-string keys,
dates, bytes, sets, tuples), and with an object transform. Real ZODB + RelStorage writes
the records; the graph is a real one in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
from collections.abc import Iterator

import orjson
import psycopg2
import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent import Persistent
from persistent.mapping import PersistentMapping

from esindexer.convert.configure import build_jsonifier
from esindexer.convert.jsonifier import Jsonifier, Kind
from esindexer.documents import DocumentBuilder
from esindexer.objects.assemble import ObjectView, build, read_groups
from esindexer.objects.edges import RecordFacts, record_edges, record_name
from esindexer.objects.store import GraphStore
from esindexer.source import graph, pg
from tests.indexing import make_settings


class Shelf(Persistent):
    def __init__(self, id):
        self.id = id
        self._tree = OOBTree()


class Thing(Persistent):
    def __init__(self, id, n):
        self.id = id
        self.title = f"thing {n}"
        self.when = datetime.datetime(2024, 1, 1 + n % 28, 12, n % 60, tzinfo=datetime.UTC)
        self.day = datetime.date(2020, 2, 1 + n % 27)
        self.count = n
        self.ratio = n / 7
        self.tags = (f"t{n % 3}", "x")
        self.flags = {1, 2, n}
        self.blob = b"\x00\x01" * (n % 3)
        self.price = decimal.Decimal("1.25")


def write_app(db) -> None:
    conn = db.open()
    root = conn.root()
    root["shelf"] = shelf = Shelf("shelf")
    for n in range(60):
        thing = Thing(f"thing-{n}", n)
        if n % 4 == 0:
            thing.notes = PersistentMapping({"text": f"note {n}", "by": "me"})  # a part: folded
        if n == 5:
            thing.huge = 2**60  # beyond 53 bits: the direct path gives up for this one
        if n == 6:
            thing.by_number = {1: "one", 2: "two"}  # non-string keys
        if n == 7:  # a part whose keys are tuples: folded from JSON values
            thing.index = OOBTree({(1, "a"): "tuple key", (2, "b"): "another"})
        if n == 8:
            thing.pair = (PersistentMapping({"inner": "held in a tuple"}), "x")  # a part inside a tuple
        shelf._tree[thing.id] = thing
    transaction.commit()
    conn.close()


def upper_titles(record):
    """An object transform: a field from the state."""
    return {"shout": str(record.state.get("title", "")).upper()}


@contextlib.contextmanager
def resolved_graph(db_dsn: str, jsonifier: Jsonifier) -> Iterator[tuple[GraphStore, list[int], int]]:
    """The application's graph written and resolved as a backfill does: the store, the
    tree's objects and their version."""
    conn = psycopg2.connect(db_dsn)
    try:
        assert graph.ensure_tables(conn)
        conn.commit()
        store = GraphStore(conn, "direct-test", lambda name: bool(name))
        graph.forget(conn, store.client_id)
        facts, last = [], 0
        for rows in pg.current_pages(conn, 1000):
            for zoid, tid, data in rows:
                conversion = jsonifier.convert((tid, zoid), data)
                assert conversion.kind is Kind.OK and conversion.json_text is not None
                state = orjson.loads(conversion.json_text)
                facts.append(RecordFacts(zoid, tid, conversion.class_name, record_name(zoid, state),
                                         record_edges(conversion.class_name, state)))
                last = max(last, tid)
        store.apply(facts, [], last, resolve=False)
        _count, version = store.resolve_all(last, quiet=True)
        yield store, store.tree_objects(), version
    finally:
        conn.close()


def actions(db_dsn: str, jsonifier: Jsonifier, builder: DocumentBuilder) -> tuple[list, list[ObjectView]]:
    with resolved_graph(db_dsn, jsonifier) as (store, dirty, version):
        views = [v for group in read_groups(dirty, store, pg.CurrentStates(store.conn)) for v in build(group, jsonifier)]
        return builder.assembled_actions(views, version), [v for v in views if isinstance(v, ObjectView)]


def test_a_groups_views_are_decoded_one_at_a_time(zodb, db_dsn, es_url, es_prefix, monkeypatch):
    """``build`` decodes an object and its parts only when its view is asked for: a group's
    views made all at once kept every unpickled state alive together, and the collector
    walked them again and again (1.0-1.35 s of a 10^5-object backfill, *Ninth pass*)."""
    write_app(zodb)
    jsonifier = build_jsonifier(make_settings(db_dsn, es_url, es_prefix, documents="objects"))
    decoded: list[int] = []
    real = jsonifier.decode
    monkeypatch.setattr(jsonifier, "decode", lambda label, data: decoded.append(label) or real(label, data))
    with resolved_graph(db_dsn, jsonifier) as (store, dirty, _version):
        group = next(read_groups(dirty, store, pg.CurrentStates(store.conn)))
        assert len(group.live) == 62  # the root, the shelf and the 60 things: one group
        views = build(group, jsonifier)
        allowed: set[int] = set()
        for _ in range(3):
            view = next(views)
            assert isinstance(view, ObjectView)
            allowed |= {view.zoid, *view.parts}  # this view's records, and those of the views before it
            assert decoded and set(decoded) <= allowed, (sorted(set(decoded) - allowed), view.zoid)
        rest = list(views)
        assert len(rest) == 59 and set(decoded) >= set(group.live)  # each decoded once it was asked for


@pytest.mark.parametrize("transform", ["", f"{__name__}.upper_titles"])
def test_decoded_objects_give_the_documents_of_their_json_values(zodb, db_dsn, es_url, es_prefix, transform,
                                                                 monkeypatch):
    write_app(zodb)
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects", transform=transform)
    builder = DocumentBuilder(settings)
    jsonifier = build_jsonifier(settings)  # as the service's, which reads BTrees too
    direct, views = actions(db_dsn, jsonifier, builder)
    decoded = {v.zoid for v in views if v.decoded}
    folded = {v.zoid for v in views if v.parts}
    # Every object but thing-7 (its part's keys are tuples) is folded and shaped from its
    # unpickled state; 15 things with notes, thing-7 and the shelf (its items tree) have parts.
    assert (len(views), len(decoded), len(folded)) == (62, 61, 17)
    assert {v.name for v in views if not v.decoded} == {"thing-7"}
    # The same objects, every one converted to JSON values first (the former way).
    monkeypatch.setattr(jsonifier, "decode", lambda label, data: jsonifier.convert(label, data))
    converted, views = actions(db_dsn, jsonifier, builder)
    assert not any(v.decoded for v in views)
    assert len(direct) == len(converted) == 62  # the root, the shelf, 60 things
    for a, b in zip(direct, converted, strict=True):
        assert a == b, (orjson.loads(a.source or b"null"), orjson.loads(b.source or b"null"))
    sources = {a.zoid: orjson.loads(a.source) for a in direct}
    huge = next(z for z, s in sources.items() if s.get("name") == "thing-5")
    assert sources[huge]["path"] == "/shelf/thing-5"
    pair = next(s for s in sources.values() if s.get("name") == "thing-8")
    assert len(pair["parts"]) == 2 and "held in a tuple" in pair["text"]
    if transform:
        assert all(s["fields"]["shout"] == str(s["state"].get("title", "")).upper() for s in sources.values()
                   if "fields" in s)
