"""Folding an object's parts into its state: one document per object, not per record.

A part (a record only its owner reaches: annotations, persistent mappings and lists,
value holders, the buckets of its own BTrees) is written where its owner refers to it:
the reference ``{"::": "persistent", ..., "::=>": zoid}`` is replaced by the part's
converted state, marked with its class (``"::"``), recursively, each part once. A BTrees
part becomes the mapping it holds (``{key: value}``; a set: the list of its keys),
whatever number of bucket records it is stored in, so an annotation or a folder's
items read as a mapping, not as the tree's internal layout.

References to anything else (other objects, parts left out by the budget) stay
references: the document's ``refs`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from esindexer.objects.edges import btree_parts, is_btree_class, key_text, ref_zoid

_fold_value: Callable[..., Any] | None
try:
    from esindexer.objects._edges_c import fold_value as _fold_value
except ImportError:  # optional extension, not built here: the Python walk does it
    _fold_value = None

#: Values that are never walked (neither containers nor references).
_LEAVES = frozenset({str, int, float, bool, type(None)})

#: ``zoid -> (class name, converted state)`` of the parts available for folding.
Parts = dict[int, tuple[str, Any]]


class ItemsOfBTree(dict):  # type: ignore[type-arg]
    """The items of a folded BTree: data, not schema (a folder's children by id, an
    annotation store by dotted key), so the typed model keeps it whole in ``more`` (one
    field however many keys: a thousand small folders with different child ids must not
    map a thousand fields)."""

    __slots__ = ()


class NotFoldable(Exception):
    """An unpickled state folded where its JSON values might fold otherwise (a BTree key
    that is not a string): fold the JSON values instead."""


@dataclass
class Folded:
    """An object's state with its parts in place, and what was and was not folded."""

    state: Any
    folded: list[int] = field(default_factory=list)
    refs: list[int] = field(default_factory=list)


class _Folder:
    def __init__(self, parts: Parts, decoded: bool):
        self.parts = parts
        self.decoded = decoded
        self.used: set[int] = set()
        self.result = Folded(None)

    def value(self, v: Any) -> Any:
        """``v`` with the parts it refers to folded in. A plain dict or list none of whose
        values changes is returned as it is, not copied, and leaves are skipped without a
        call: most of an object's state holds no part (this walk was a fifth of the
        object documents' Python time; its C twin, used where it was built, is
        ``fold_value`` in ``esindexer/objects/_edges_c.c``: tests/objects/test_fold_walk.py
        compares the two)."""
        if isinstance(v, dict):
            target = ref_zoid(v)
            if target is not None:
                if target in self.parts and target not in self.used:
                    self.used.add(target)
                    self.result.folded.append(target)
                    class_name, state = self.parts[target]
                    return self.part(class_name, state)
                self.result.refs.append(target)
                return v
            if type(v) is not dict:  # a subclass: given as the plain dict its JSON reads back as
                return {k: x if type(x) in _LEAVES else self.value(x) for k, x in v.items()}
            changed = None
            for k, x in v.items():
                if type(x) in _LEAVES:
                    continue
                y = self.value(x)
                if y is not x:
                    if changed is None:
                        changed = dict(v)
                    changed[k] = y
            return v if changed is None else changed
        if type(v) is list:
            copy = None
            for i, x in enumerate(v):
                if type(x) in _LEAVES:
                    continue
                y = self.value(x)
                if y is not x:
                    if copy is None:
                        copy = list(v)
                    copy[i] = y
            return v if copy is None else copy
        if isinstance(v, list) or self.decoded and isinstance(v, tuple):  # a tuple's JSON is a list
            return [x if type(x) in _LEAVES else self.value(x) for x in v]
        return v

    def part(self, class_name: str, state: Any) -> Any:
        if is_btree_class(class_name):
            return self.btree(class_name, state)
        folded = self.value(state)
        if isinstance(folded, dict):
            if "::" not in folded:
                folded = {**folded, "::": class_name}
            return folded
        return {"::": class_name, "state": folded}

    def btree(self, class_name: str, state: Any) -> Any:
        keyed = not class_name.endswith("Set")
        items, structure = btree_parts(class_name, state)
        out: dict[str, Any] | list[Any] = ItemsOfBTree() if keyed else []
        big_tree = not items and len(structure) > 1 and not class_name.endswith(("Bucket", "Set")) \
            or class_name.endswith("TreeSet") and len(structure) > 1
        if big_tree:
            for child in structure[:-1]:  # the last one is the first bucket, a child already
                target = ref_zoid(child)
                if target is None:
                    continue
                if target in self.parts and target not in self.used:
                    self.used.add(target)
                    self.result.folded.append(target)
                    child_class, child_state = self.parts[target]
                    merged = self.btree(child_class, child_state)
                    if isinstance(out, dict) and isinstance(merged, dict):
                        out.update(merged)
                    elif isinstance(out, list) and isinstance(merged, list):
                        out.extend(merged)
                else:
                    self.result.refs.append(target)
            return out
        for key, value in items:
            if self.decoded and type(key) is not str:
                raise NotFoldable(f"a {type(key).__name__} key in {class_name}")
            if isinstance(out, dict):
                out[key_text(key) if not isinstance(key, (dict, list)) else _compact(key)] = self.value(value)
            else:
                out.append(self.value(key))
        return out


class _CFolder(_Folder):
    """The same, with :meth:`value` by the C twin (``_edges_c.fold_value``), which calls
    :meth:`part` for each part it folds. (A subclass, not the method set on the instance:
    that made each folder a reference cycle, left for the collector.)"""

    def value(self, v: Any) -> Any:
        return _fold_value(v, self.parts, self.used, self.result.folded, self.result.refs,  # type: ignore[misc]
                           self.decoded, self.part)  # (never None here: fold() picks this class only then)


def _compact(key: Any) -> str:
    import orjson

    return orjson.dumps(key).decode()


def fold(state: Any, parts: Parts, decoded: bool = False, *, c_walk: bool = True) -> Folded:
    """``state`` with every reference to one of ``parts`` replaced by that part, folded.

    ``decoded``: the states are unpickled (:class:`~esindexer.convert.jsonifier.Decoded`),
    not JSON values: tuples are walked as the lists their JSON is, and a BTree key that is
    not a string raises :class:`NotFoldable` (its JSON text may differ from ``str(key)``).
    ``c_walk`` False: the Python walk even where the C twin was built (for comparing them)."""
    folder = _CFolder(parts, decoded) if c_walk and _fold_value is not None else _Folder(parts, decoded)
    folder.result.state = folder.value(state)
    folder.result.refs = sorted(set(folder.result.refs) - folder.used)
    return folder.result
