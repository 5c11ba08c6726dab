"""A small, non-Plone ZODB application for the object model's tests (issue 22).

Its classes are pickled by module and name (``tests.objects.app.Item``), so writer
subprocesses, the ground truth (``tests/objects/truth.py``) and the indexed documents all
name them the same. Three kinds of containers, as real applications have them:

- ``Folder``: children in an ``OOBTree`` attribute ``_tree`` (id -> child), large enough in
  the tests to split into buckets;
- ``AttrFolder``: OFS-like, children as attributes (``setattr(folder, id, child)``) and their
  entries in ``_objects`` (``{"id": ..., "meta_type": ...}``), as OFS keeps them;
- ``Container``: zope.container-like, children in ``_SampleContainer__data`` (an ``OOBTree``),
  each with ``__name__`` and a ``__parent__`` back-reference.

An ``Item`` holds its parts: ``__annotations__`` (``OOBTree`` of dotted keys -> behaviour
``PersistentMapping``), ``body`` (an inline ``RichText`` whose ``_holder`` is a persistent,
unnamed ``TextHolder``) and ``history`` (``PersistentMapping`` wf id -> list of entries).
A ``Registry`` refers to every item (``IOBTree`` int -> inline ``KeyRef``), which is not
ownership; a ``Settings`` tool holds the infrastructure area (``tests/objects/corpus.py``
builds it): thousands of unnamed records of ``INFRA_CLASSES`` distinct generated classes, and
named ``MimeType`` records held under keys that are not their ids.

The ZODB root mapping is the root of the tree (path ``/``); what it holds under a key equal
to the child's name is at ``/<name>``.
"""

from __future__ import annotations

from BTrees.IOBTree import IOBTree
from BTrees.OOBTree import OOBTree
from persistent import Persistent
from persistent.mapping import PersistentMapping

WORKFLOW = "app_workflow"
INFRA_CLASSES = 300


# -- content ------------------------------------------------------------------------------

class TextHolder(Persistent):
    """The persistent, unnamed record holding a rich text's raw HTML (a part of its item)."""

    def __init__(self, raw: str = ""):
        self.raw = raw


class RichText:
    """An inline (non-persistent) value: pickled inside its item's record."""

    def __init__(self, raw: str = ""):
        self._holder = TextHolder(raw)

    @property
    def raw(self) -> str:
        return self._holder.raw


class KeyRef:
    """An inline reference to an object (as intid key references are): not ownership."""

    def __init__(self, obj):
        self.object = obj


class Item(Persistent):
    def __init__(self, id, title, created, tags=(), rating=0.0, body="", lang="en", reviewer=""):
        self.id = id
        self.title = title
        self.created = created
        self.tags = list(tags)
        self.rating = float(rating)
        self.__annotations__ = OOBTree({
            "app.behaviors.language": PersistentMapping({"lang": lang}),
            "app.behaviors.review": PersistentMapping({"reviewer": reviewer}),
        })
        self.body = RichText(body)
        self.history = PersistentMapping({WORKFLOW: [
            {"action": None, "review_state": "private", "time": created}]})

    @property
    def review_state(self) -> str | None:
        entries = self.history.get(WORKFLOW) or []
        return entries[-1]["review_state"] if entries else None

    def transition(self, action: str, state: str, when) -> None:
        self.history[WORKFLOW] = list(self.history[WORKFLOW]) + [
            {"action": action, "review_state": state, "time": when}]


# -- containers ---------------------------------------------------------------------------

def name_of(obj) -> str | None:
    """The object's name: its ``id``, else its ``__name__`` (the spec's rule)."""
    state = obj.__getstate__() if isinstance(obj, Persistent) else vars(obj)
    for attr in ("id", "__name__"):
        value = state.get(attr) if isinstance(state, dict) else None
        if isinstance(value, str) and value:
            return value
    return None


def set_name(obj, name: str) -> None:
    """Rename: the attributes that carry the name change with the key. A tool whose id is
    on its class (Zope's ``portal_catalog``) keeps it: only that name fits."""
    state = obj.__getstate__()
    if "id" in state:
        obj.id = name
    if "__name__" in state:
        obj.__name__ = name
    if "id" not in state and "__name__" not in state:
        if getattr(type(obj), "id", None) is not None:
            assert type(obj).id == name, f"{type(obj).__name__} is always {type(obj).id!r}"
        else:
            obj.__name__ = name


def app_name(obj) -> str | None:
    """The name the application knows an object by: in its pickle, else on its class."""
    return name_of(obj) or getattr(type(obj), "id", None)


class _Containerish(Persistent):
    def children(self) -> list[tuple[str, object]]:
        raise NotImplementedError

    def get(self, key: str):
        return dict(self.children()).get(key)

    def add(self, key: str, child) -> None:
        set_name(child, key)
        self._set(key, child)

    def detach(self, key: str):
        child = self.get(key)
        self._del(key)
        return child


class Folder(_Containerish):
    def __init__(self, id: str, title: str = ""):
        self.id = id
        self.title = title
        self._tree = OOBTree()

    def children(self):
        return list(self._tree.items())

    def get(self, key):
        return self._tree.get(key)

    def _set(self, key, child):
        self._tree[key] = child

    def _del(self, key):
        del self._tree[key]


class AttrFolder(_Containerish):
    """OFS-like: children as attributes, listed in ``_objects`` (``{'id', 'meta_type'}`` dicts)."""

    def __init__(self, id: str, title: str = ""):
        self.id = id
        self.title = title
        self._objects = ()

    def children(self):
        return [(entry["id"], getattr(self, entry["id"])) for entry in self._objects]

    def _set(self, key, child):
        setattr(self, key, child)
        self._objects = self._objects + ({"id": key, "meta_type": type(child).__name__},)

    def _del(self, key):
        delattr(self, key)
        self._objects = tuple(entry for entry in self._objects if entry["id"] != key)


class Container(_Containerish):
    def __init__(self, name: str, title: str = ""):
        self.__name__ = name
        self.__parent__ = None
        self.title = title
        self._SampleContainer__data = OOBTree()

    def children(self):
        return list(self._SampleContainer__data.items())

    def get(self, key):
        return self._SampleContainer__data.get(key)

    def add(self, key, child):
        child.__name__ = key  # zope.container's contained objects carry their name
        super().add(key, child)

    def _set(self, key, child):
        self._SampleContainer__data[key] = child
        child.__parent__ = self

    def _del(self, key):
        child = self._SampleContainer__data.pop(key)
        child.__parent__ = None


CONTAINER_CLASSES = (Folder, AttrFolder, Container)


def children(obj) -> list[tuple[str, object]]:
    """The children of any node of the tree, the ZODB root mapping included."""
    if isinstance(obj, _Containerish):
        return obj.children()
    if isinstance(obj, PersistentMapping):
        return list(obj.items())
    return []


# -- utilities and the infrastructure area ------------------------------------------------

class Registry(Persistent):
    """An intid-like utility: refers to every item, owns none of them."""

    def __init__(self, id: str = "registry"):
        self.id = id
        self.title = "Registry"
        self._refs = IOBTree()
        self._next = 1

    def register(self, item: Item) -> int:
        intid, self._next = self._next, self._next + 1
        self._refs[intid] = KeyRef(item)
        item.intid = intid
        return intid

    def unregister(self, item: Item) -> None:
        self._refs.pop(getattr(item, "intid", None), None)


class Settings(Persistent):
    """A tool: ``records`` holds OOBTrees under dotted keys, full of unnamed records of many
    classes; ``mimetypes`` holds named records under keys that are not their names."""

    def __init__(self, id: str = "settings"):
        self.id = id
        self.title = "Settings"
        self.records = OOBTree()
        self.mimetypes = OOBTree()


class MimeType(Persistent):
    def __init__(self, id: str, title: str, extensions=()):
        self.id = id
        self.title = title
        self.extensions = list(extensions)


def _infra_class(n: int) -> type:
    """``InfraRecord017`` with attributes of its own (``i017_label``, ``i017_size``, ...)."""
    name = f"InfraRecord{n:03d}"
    prefix = f"i{n:03d}"

    def __init__(self, k: int):
        setattr(self, f"{prefix}_label", f"{name} {k}")
        setattr(self, f"{prefix}_size", k * 7 + n)
        setattr(self, f"{prefix}_enabled", k % 2 == 0)
        setattr(self, f"{prefix}_ratio", k / (n + 1))

    return type(name, (Persistent,), {"__init__": __init__, "__module__": __name__, "__qualname__": name,
                                      "__doc__": f"Generated infrastructure record class {n}."})


INFRA = [_infra_class(n) for n in range(INFRA_CLASSES)]
globals().update({cls.__name__: cls for cls in INFRA})


class CatalogTool(Persistent):
    """A Zope-style tool whose id is on its class, so no pickle of it shows a name: its
    container's ``_objects`` names it. Its catalog data (``_catalog``) is a part of it."""

    id = "portal_catalog"
    meta_type = "Catalog Tool"

    def __init__(self):
        self.title = "Catalog"
        self._catalog = OOBTree()


class Tool(Persistent):
    """A tool in the tree whose settings are unnamed records kept as attributes (as
    portal_properties-like tools do): each of its parts brings attribute names of its own."""

    def __init__(self, id: str, first: int, count: int):
        self.id = id
        self.title = f"Tool {id}"
        for n in range(first, first + count):
            setattr(self, f"cfg_{n:03d}", INFRA[n % INFRA_CLASSES](n))
