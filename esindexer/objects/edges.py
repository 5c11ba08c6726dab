"""What one converted record says about the object graph: its name and its references.

The object model (docs/documents.md, "Objects") needs two facts per record, read from the
converted state (the shape of docs/json.md):

- its **name**: the top-level ``id`` or ``__name__`` attribute when that is a non-empty
  string. Containers hold a child under its name (OFS attributes, BTreeFolder2's ``_tree``,
  zope.container's data), so "held under its own name" is what containment means; the
  ZODB root (zoid 0) is named ``""``.
- its **edges**: every persistent reference with the *key* it is held under: the
  innermost attribute name or mapping key around it (list positions do not count), or
  in a BTrees bucket the item's key. A BTree's links to its own nodes and buckets have
  no key: they are structure, never containment.

Pure functions of the converted state: no database, no class imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

#: An edge: ``(zoid it refers to, the key it is held under or None, listed)``; *listed*: an
#: attribute whose name the record's ``_objects`` lists as a child's id (an OFS container,
#: whose children may keep their id on their class, where no pickle shows it).
Edge = tuple[int, str | None, bool]

ROOT_ZOID = 0
_META_PREFIX = "::"


class RecordFacts(NamedTuple):
    """What the graph needs of one record's current state (a tuple: the C twin of
    :func:`record_facts` builds it without a Python call)."""

    zoid: int
    tid: int
    class_name: str | None
    name: str | None
    edges: list[Edge]


def is_btree_class(class_name: str | None) -> bool:
    """A BTrees node: a tree, a bucket, a set or a tree set of any key/value kind."""
    return class_name is not None and class_name.startswith("BTrees.") and \
        class_name.rsplit(".", 1)[-1].endswith(("BTree", "Bucket", "Set", "TreeSet"))


def _is_keyed(class_name: str) -> bool:
    """Trees and buckets hold key/value items; sets and tree sets hold keys only."""
    return not class_name.endswith("Set")


def record_name(zoid: int, state: Any) -> str | None:
    """The record's name (see the module docstring), or None when it has none."""
    if zoid == ROOT_ZOID:
        return ""
    if isinstance(state, dict):
        for attribute in ("id", "__name__"):
            value = state.get(attribute)
            if isinstance(value, str) and value:
                return value
    return None


def ref_zoid(value: Any) -> int | None:
    """The zoid a converted persistent reference points at (None: not a reference, or one
    into another database)."""
    if isinstance(value, dict) and value.get("::") == "persistent":
        target = value.get("::=>")
        if isinstance(target, int) and not isinstance(target, bool):
            return target
    return None


def key_text(key: Any) -> str:
    """A mapping or BTree key as the text an edge and a folded mapping carry."""
    return key if isinstance(key, str) else str(key)


def walk_py(value: Any, key: str | None, out: list[tuple[int, str | None]]) -> None:
    """References in a converted state, or in a decoded one (the unpickled state itself,
    ``Jsonifier.decode``: tuples for lists, keys that may not be strings), appended to
    ``out`` with the key each is held under. ``esindexer/objects/_edges_c.c`` is its C
    twin (the same list, about ten times faster), :data:`walk` whichever is built."""
    stack: list[tuple[Any, str | None]] = [(value, key)]
    while stack:
        value, key = stack.pop()
        if isinstance(value, dict):
            target = ref_zoid(value)
            if target is not None:
                out.append((target, key))
                continue
            for k, v in value.items():
                if isinstance(v, (dict, list, tuple)):
                    # "::()" (constructor arguments), "::data" and other markers keep the key
                    if type(k) is not str:
                        k = key_text(k)
                    stack.append((v, key if k.startswith(_META_PREFIX) else k))
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, (dict, list, tuple)):
                    stack.append((item, key))


try:
    from esindexer.objects import _edges_c
except ImportError:  # optional extension, not built here: the Python walk does it
    _edges_c = None  # type: ignore[assignment]

#: The walk in use: the C twin when it was built.
walk: Callable[[Any, str | None, list[tuple[int, str | None]]], None] = \
    _edges_c.walk if _edges_c is not None else walk_py


def btree_parts(class_name: str, state: Any) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """``(items, structure)`` of a BTrees record's converted state.

    ``items`` are ``(key, value)`` pairs (``(key, None)`` for sets) held in this record;
    ``structure`` the references to the tree's own nodes and buckets (children, next
    bucket). The shapes, as BTrees pickles them: a bucket ``[[k, v, k, v, ...], next?]``;
    a tree with one inline bucket ``[[[[k, v, ...]]]]``; a larger tree
    ``[[child, key, child, ..., child], first_bucket]``; an empty one ``null``.
    """
    keyed = _is_keyed(class_name)
    seq = (list, tuple)  # (a decoded state has tuples where the converted one has lists)
    if not isinstance(state, seq) or not state:
        return [], []
    leaf = class_name.endswith(("Bucket", "Set")) and not class_name.endswith("TreeSet")
    if leaf:
        flat = state[0] if isinstance(state[0], seq) else []
        structure = [state[1]] if len(state) > 1 else []
    elif len(state) == 1:  # a tree whose only bucket is inline: [[bucket_state]]
        inner = state[0]
        bucket = inner[0] if isinstance(inner, seq) and inner and isinstance(inner[0], seq) else []
        flat = bucket[0] if bucket and isinstance(bucket[0], seq) else []
        structure = []
    else:  # children alternate with separator keys; the first bucket follows
        children = state[0] if isinstance(state[0], seq) else []
        return [], list(children[::2]) + [state[1]]
    if keyed:
        return [(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)], structure
    return [(k, None) for k in flat], structure


def listed_ids(state: Any) -> set[str]:
    """The ids an OFS ``ObjectManager`` lists in ``_objects`` (``({'id': ..., 'meta_type': ...}, ...)``)."""
    objects = state.get("_objects") if isinstance(state, dict) else None
    if not isinstance(objects, (list, tuple)):
        return set()
    return {entry["id"] for entry in objects if isinstance(entry, dict) and isinstance(entry.get("id"), str)}


def record_edges(class_name: str | None, state: Any) -> list[Edge]:
    """Every persistent reference of one record with the key it is held under, deduplicated."""
    out: list[tuple[int, str | None]] = []
    if class_name and is_btree_class(class_name):
        items, structure = btree_parts(class_name, state)
        for node in structure:
            target = ref_zoid(node)
            if target is not None:
                out.append((target, None))
        for key, value in items:
            name = key_text(key) if not isinstance(key, (dict, list, tuple)) else None
            walk(key, None, out)
            walk(value, name, out)
        return [(zoid, key, False) for zoid, key in dict.fromkeys(out)]
    walk(state, None, out)
    listed = listed_ids(state)
    attributes = {k: ref_zoid(v) for k, v in state.items() if k in listed} if listed else {}
    return [(zoid, key, key is not None and attributes.get(key) == zoid) for zoid, key in dict.fromkeys(out)]


def record_facts_py(zoid: int, tid: int, class_name: str | None, state: Any) -> RecordFacts:
    """What one record says about the graph: its name and its edges (the functions above)."""
    return RecordFacts(zoid, tid, class_name, record_name(zoid, state), record_edges(class_name, state))


def _record_facts_c(zoid: int, tid: int, class_name: str | None, state: Any) -> RecordFacts:
    """:func:`record_facts_py` by the C twin for the states it takes (a plain dict, not a
    BTrees class, no ``_objects``: nearly every record), by the Python functions for the rest."""
    got = _edges_c.facts(zoid, tid, class_name, state)
    return got if got is not None else record_facts_py(zoid, tid, class_name, state)


if _edges_c is not None:
    _edges_c.configure(RecordFacts)

#: The facts of one record from its converted or decoded state: the C twin where it was
#: built (tests/objects/test_edges_c.py compares the two), else the Python functions.
record_facts: Callable[[int, int, str | None, Any], RecordFacts] = \
    _record_facts_c if _edges_c is not None else record_facts_py


def iter_refs(value: Any) -> Iterator[int]:
    """Zoids of every persistent reference in a converted value (no keys)."""
    edges: list[tuple[int, str | None]] = []
    walk(value, None, edges)
    for zoid, _key in edges:
        yield zoid
