"""The ground truth of the object model's tests, computed by ZODB itself (no esindexer code).

``objects(dsn, keep_history)`` opens the RelStorage database with ZODB, walks the tree from
the root mapping through the application's own API (``app.children``: ``_tree``, the
attributes an OFS ``_objects`` lists, ``_SampleContainer__data``) and describes every reachable
object: what a user expects to find. Removed objects are not reachable, so not there.

``compare`` and ``assert_same`` print a small diff (the first 10 differences).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from persistent import Persistent
from ZODB.utils import u64

from tests.objects import app
from tests.support import open_zodb

WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Obj:
    zoid: int
    cls: str
    name: str | None
    path: str
    parent: int | None
    depth: int
    ancestors: tuple[str, ...]
    title: str | None = None
    words: frozenset[str] = frozenset()  # of the body's raw HTML, tags stripped
    review_state: str | None = None
    created: datetime | None = None  # always aware (UTC)
    tags: tuple[str, ...] = ()
    parts: frozenset[int] = frozenset()  # parts known to be the object's (a subset of all)
    states: tuple[str, ...] = ()  # every review_state of the workflow history, oldest first
    tid: int | None = None  # the tid of the object's own record
    parts_tid: int | None = None  # the newest tid of its known parts (items: all their parts)
    named_by_container: bool = False  # no pickle of it shows its name (an OFS tool's id is on its class)


def zoid(obj) -> int:
    return u64(obj._p_oid)


def class_name(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def body_words(raw: str) -> frozenset[str]:
    return frozenset(WORD.findall(re.sub(r"<[^>]*>", " ", raw).lower()))


def utc(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def btree_nodes(tree) -> list:
    """A BTree's own records: itself, its inner nodes and its buckets (from the tree's
    pickled state: ``((child, key, child, ...), firstbucket)`` once it has split)."""
    found: dict[int, object] = {}
    stack = [tree]
    while stack:
        node = stack.pop()
        if node._p_oid is None or zoid(node) in found:
            continue
        found[zoid(node)] = node
        state = node.__getstate__()
        if not state or len(state) < 2:
            continue  # empty, or one bucket (inline in a small tree)
        if type(node).__name__.endswith("Bucket"):
            stack.append(state[1])  # the next bucket
        else:
            stack.extend(state[0][0::2])  # the children, between the keys
            stack.append(state[1])  # the first bucket
    return list(found.values())


def btree_records(tree) -> set[int]:
    return {zoid(node) for node in btree_nodes(tree)}


def part_records(obj) -> list:
    """The records the spec folds into ``obj``'s document, as far as this application goes:
    every unnamed record below it (items: holder, history, annotations and whatever an
    application adds), with the BTrees' own bucket records."""
    records = []
    for part in unnamed_below(obj):
        records += btree_nodes(part) if type(part).__module__.startswith("BTrees.") else [part]
    return records


def unnamed_below(obj) -> list:
    """The unnamed persistent objects reachable from ``obj``'s state without passing through a
    named one (BTrees: through their items; their own records come from ``btree_records``)."""
    found: dict[int, object] = {}
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, Persistent) and value is not obj:
            if value._p_oid is None or zoid(value) in found or app.app_name(value) is not None:
                continue
            found[zoid(value)] = value
        if isinstance(value, Persistent) and type(value).__module__.startswith("BTrees."):
            stack.extend(v for pair in value.items() for v in pair)
        elif isinstance(value, Persistent):
            state = value.__getstate__()
            stack.append(state)
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend(value)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            stack.append(vars(value))
    return list(found.values())


def serial(obj) -> int:
    """The tid of the record's current revision (as ZODB loaded it)."""
    obj._p_activate()
    return u64(obj._p_serial)


def known_parts(obj) -> frozenset[int]:
    if isinstance(obj, (app.Item, app.Folder, app.Container)):
        return frozenset(zoid(p) for p in part_records(obj))
    return frozenset()


def describe(obj, path: str, parent: int | None, depth: int, ancestors: tuple[str, ...],
             name: str | None = None) -> Obj:
    fields = {}
    if isinstance(obj, app.Item):
        parts = part_records(obj)
        fields = dict(title=obj.title, words=body_words(obj.body.raw), review_state=obj.review_state,
                      created=utc(obj.created), tags=tuple(obj.tags), tid=serial(obj),
                      parts_tid=max(serial(p) for p in parts),
                      states=tuple(e["review_state"] for e in obj.history.get(app.WORKFLOW, ())))
    elif hasattr(obj, "title"):
        fields = dict(title=obj.title)
    fields["named_by_container"] = bool(depth) and app.name_of(obj) is None
    return Obj(zoid(obj), class_name(obj), name, path, parent, depth, ancestors,
               parts=known_parts(obj), **fields)


def walk(root) -> dict[int, Obj]:
    """Every object reachable from ``root`` (the ZODB root mapping) through containment.

    An object held by several containers gets the spec's parent: the smallest (depth, zoid)
    of them; a breadth-first walk taking each level in zoid order finds that one first."""
    found: dict[int, Obj] = {0: describe(root, "/", None, 0, ())}
    level = [(root, found[0])]
    while level:
        below = []
        for obj, described in sorted(level, key=lambda pair: pair[1].zoid):
            ancestors = described.ancestors + (described.path,)
            for key, child in app.children(obj):
                assert app.app_name(child) == key, f"{described.path}: {key!r} holds {app.app_name(child)!r}"
                if zoid(child) in found:
                    continue
                path = f"{described.path.rstrip('/')}/{key}"
                found[zoid(child)] = child_described = describe(child, path, described.zoid, described.depth + 1,
                                                                ancestors, key)
                below.append((child, child_described))
        level = below
    return found


def objects(dsn: str, keep_history: bool) -> dict[int, Obj]:
    """The truth: zoid -> ``Obj`` for every object in the tree, read through ZODB now."""
    db = open_zodb(dsn, keep_history)
    try:
        conn = db.open()
        try:
            return walk(conn.root())
        finally:
            conn.close()
    finally:
        db.close()


def record_zoids(obj_truth: dict[int, Obj], cls: str) -> set[int]:
    return {z for z, o in obj_truth.items() if o.cls == cls}


# -- comparing ----------------------------------------------------------------------------

def compare(expected: dict[int, dict], actual: dict[int, dict], limit: int = 10) -> list[str]:
    """The differences between two ``zoid -> {field: value}`` maps (only the expected fields
    are compared), the first ``limit`` of them, then a count of the rest."""
    lines = []
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    lines += [f"missing {z}: expected {_short(expected[z])}" for z in missing]
    lines += [f"unexpected {z}: {_short(actual[z])}" for z in extra]
    for z in sorted(set(expected) & set(actual)):
        for key, value in expected[z].items():
            if actual[z].get(key) != value:
                lines.append(f"{z} {key}: expected {value!r}, got {actual[z].get(key)!r}")
    summary = f"{len(missing)} missing, {len(extra)} unexpected, {len(lines) - len(missing) - len(extra)} differing"
    if not lines:
        return []
    shown = lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])
    return [summary, *shown]


def assert_same(expected: dict[int, dict], actual: dict[int, dict], what: str = "index") -> None:
    diff = compare(expected, actual)
    assert not diff, f"{what} differs from the truth:\n  " + "\n  ".join(diff)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 200 else text[:200] + "..."


def placement(truth: dict[int, Obj]) -> dict[int, dict]:
    """What the tree says of each object: the fields every object document must carry."""
    return {z: {"class": o.cls, "path": o.path, "parent": o.parent, "depth": o.depth,
                "ancestors": list(o.ancestors)} for z, o in truth.items()}


def as_dict(obj: Obj) -> dict:
    return asdict(obj)
