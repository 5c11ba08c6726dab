"""Building the test application's corpus and changing it as its users would.

``build_corpus`` fills a database: nested folders of the three kinds (``LAYOUT``) holding
``items`` items, the registry referring to every item, and the settings tool's
infrastructure area. The operations (``move``, ``rename``, ``remove``, ``readd``, part
edits) work on the ZODB root mapping of an open connection and leave the commit to the
caller; ``undo_last`` and ``pack`` work on the database.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

from tests.objects import app
from tests.objects.app import AttrFolder, CatalogTool, Container, Folder, Item, MimeType, Registry, Settings

#: (path, kind, share of the items). /f1/sub and /c1/sub get enough to split into buckets.
LAYOUT = [
    ("/f1", Folder, 1), ("/f1/sub", Folder, 30), ("/f1/sub/deep", AttrFolder, 4), ("/f1/box", Container, 5),
    ("/a1", AttrFolder, 3), ("/a1/f", Folder, 8), ("/c1", Container, 2), ("/c1/sub", Container, 25),
    ("/c1/sub/f", Folder, 6), ("/f2", Folder, 16),
]
TITLE_WORDS = ["annual", "budget", "report", "minutes", "meeting", "garden", "project", "summary", "notes",
               "plan", "review", "draft"]
TAGS = ["red", "green", "blue", "urgent", "archive", "public", "internal"]
#: Words only ever written into TextHolder.raw (never a title, tag or annotation).
BODY_WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "eiusmod",
              "tempor", "incididunt", "labore", "magna", "aliqua", "veniam"]
RARE_WORD = "zeppelin"  # in the body of every 37th item only
EPOCH = datetime(2024, 1, 1)


@dataclass
class Corpus:
    items: int = 0
    item_paths: list[str] = field(default_factory=list)
    infra_records: int = 0
    mimetypes: int = 0


def item_created(n: int, rng: random.Random) -> datetime:
    """Somewhere in 2024; odd items aware (UTC), even ones naive (UTC by convention)."""
    when = EPOCH + timedelta(minutes=rng.randrange(366 * 24 * 60))
    return when.replace(tzinfo=UTC) if n % 2 else when


def make_item(n: int, rng: random.Random) -> Item:
    words = rng.sample(BODY_WORDS, 6) + ([RARE_WORD] if n % 37 == 0 else [])
    created = item_created(n, rng)
    item = Item(f"item-{n}", f"{rng.choice(TITLE_WORDS).title()} {rng.choice(TITLE_WORDS)} {n}", created,
                tags=rng.sample(TAGS, rng.randrange(1, 4)), rating=round(rng.uniform(0, 5), 2),
                body=f"<p>{' '.join(words)}</p>", lang=rng.choice(["en", "de", "fr"]), reviewer=f"reviewer-{n % 13}")
    if n % 3 == 0:
        item.transition("publish", "published", created + timedelta(days=1))
    if n % 15 == 0:
        item.transition("retract", "pending", created + timedelta(days=2))
    return item


def build_corpus(db, items: int = 200, infra_records: int = 3000, mimetypes: int = 200, seed: int = 22,
                 per_transaction: int = 250) -> Corpus:
    """Fill an empty database (see the module's docstring); return what was written."""
    rng = random.Random(seed)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    corpus = Corpus()
    try:
        root = conn.root()
        for path, kind, _ in LAYOUT:
            parent_path, _, name = path.rpartition("/")
            attach(resolve(root, parent_path or "/"), name, kind(name, f"Folder {path}"))
        registry = attach(root, "registry", Registry())
        attach(root, "settings", Settings())
        catalog = attach(resolve(root, "/a1"), "portal_catalog", CatalogTool())  # named by /a1's _objects only
        tm.commit()
        paths = [p for p, _, _ in LAYOUT]
        weights = [w for _, _, w in LAYOUT]
        for n in range(items):
            folder_path = rng.choices(paths, weights)[0]
            item = make_item(n, rng)
            attach(resolve(root, folder_path), item.id, item)
            registry.register(item)
            catalog._catalog[f"{folder_path}/{item.id}"] = {"title": item.title, "review_state": item.review_state}
            corpus.item_paths.append(f"{folder_path}/{item.id}")
            if n % per_transaction == per_transaction - 1:
                tm.commit()
        tm.commit()
        corpus.items = items
        corpus.infra_records = fill_infrastructure(root["settings"], infra_records, tm, per_transaction * 4)
        for m in range(mimetypes):  # named, but held under a key that is not the name
            root["settings"].mimetypes[f"application/x-type-{m}"] = MimeType(f"mime-{m}", f"Type {m}", [f"t{m}"])
        corpus.mimetypes = mimetypes
        tm.commit()
    finally:
        tm.abort()
        conn.close()
    return corpus


def fill_infrastructure(settings: Settings, count: int, tm, per_transaction: int = 1000, areas: int = 10) -> int:
    """``count`` unnamed records of ``app.INFRA_CLASSES`` classes in OOBTrees under dotted keys."""
    for a in range(areas):
        settings.records[f"app.infra.area{a:02d}"] = OOBTree()
    for k in range(count):
        key = f"app.infra.area{k % areas:02d}"
        settings.records[key][f"{key}.r{k:05d}"] = app.INFRA[k % app.INFRA_CLASSES](k)
        if k % per_transaction == per_transaction - 1:
            tm.commit()
    tm.commit()
    return count


# -- navigation ---------------------------------------------------------------------------

def resolve(root, path: str):
    obj = root
    for name in [p for p in path.split("/") if p]:
        obj = root[name] if obj is root else obj.get(name)
        if obj is None:
            raise KeyError(path)
    return obj


def attach(parent, key: str, obj):
    """Put ``obj`` into ``parent`` (a container or the root mapping) under ``key``; its name follows."""
    if isinstance(parent, PersistentMapping):
        app.set_name(obj, key)
        parent[key] = obj
    else:
        parent.add(key, obj)
    return obj


def detach(parent, key: str):
    if isinstance(parent, PersistentMapping):
        return parent.pop(key)
    return parent.detach(key)


def subtree(obj) -> list:
    """``obj`` and everything below it (containment only)."""
    found, seen, stack = [], set(), [obj]
    while stack:
        node = stack.pop()
        if id(node) in seen:  # an application may hold a folder twice, even in a cycle
            continue
        seen.add(id(node))
        found.append(node)
        stack.extend(child for _, child in app.children(node))
    return found


# -- operations (the caller commits) ------------------------------------------------------

def move(root, path: str, dest: str) -> str:
    """Move the object at ``path`` (and its subtree) into the container at ``dest``."""
    parent_path, _, name = path.rpartition("/")
    obj = detach(resolve(root, parent_path or "/"), name)
    attach(resolve(root, dest), name, obj)
    return f"{dest.rstrip('/')}/{name}"


def rename(root, path: str, new_name: str) -> str:
    """Change the key and the name together."""
    parent_path, _, name = path.rpartition("/")
    parent = resolve(root, parent_path or "/")
    attach(parent, new_name, detach(parent, name))
    return f"{parent_path}/{new_name}"


def remove(root, path: str) -> list:
    """Remove the object at ``path`` and its subtree (its items leave the registry too);
    return the removed objects."""
    parent_path, _, name = path.rpartition("/")
    obj = resolve(root, path)
    gone = subtree(obj)
    for node in gone:
        if isinstance(node, Item):
            root["registry"].unregister(node)
    detach(resolve(root, parent_path or "/"), name)
    return gone


def readd(root, folder_path: str, obj) -> None:
    """Put a removed object (and its subtree) back, registering its items again."""
    attach(resolve(root, folder_path), app.app_name(obj), obj)
    for node in subtree(obj):
        if isinstance(node, Item):
            root["registry"].register(node)


def edit_title(root, path: str, title: str) -> None:
    resolve(root, path).title = title


def edit_body(root, path: str, raw: str) -> None:
    """Edit a part: only the TextHolder record changes."""
    resolve(root, path).body._holder.raw = raw


def transition(root, path: str, action: str, state: str, when: datetime) -> None:
    """Edit a part: only the history mapping changes."""
    resolve(root, path).transition(action, state, when)


def annotate(root, path: str, key: str, name: str, value) -> None:
    """Edit a part: only the annotation's PersistentMapping changes (a new key adds one)."""
    annotations = resolve(root, path).__annotations__
    if key not in annotations:
        annotations[key] = PersistentMapping()
    annotations[key][name] = value


def undo_last(db, tm=None) -> None:
    """Undo the newest transaction (history-preserving RelStorage only: see ``supports_undo``)."""
    tm = tm or transaction.manager
    tm.begin()
    db.undo(db.undoLog(0, 1)[0]["id"], tm.get())
    tm.commit()


def supports_undo(db) -> bool:
    return bool(db.supportsUndo())


def pack(db) -> None:
    db.pack()
