"""ZODB records to JSON, without ever running code named in the pickle.

A ZODB record is two pickles written by one pickler (newt-spec §4): the class record,
then the object's state. :class:`Jsonifier` turns one into
``(class_name, ghost_pickle, json_text)`` with newt.db's JSON shape (newt-spec §7), and
:meth:`Jsonifier.convert` says *why* there is no JSON (deleted, skipped, error) so the
service can count and dead-letter records. See ``docs/json.md`` for the JSON shape and
every deliberate difference from newt.db.

How it stays safe and fast:

1. :func:`esindexer.convert.scan.scan` walks the opcodes once (in C when the optional
   extension ``_scan_c`` is built, else in Python) and rejects malformed input,
   memo indexes that would make the C unpickler allocate far more than the record's
   size, and nesting deeper than :data:`~esindexer.convert.scan.MAX_DEPTH` levels
   (which C code would recurse over without a limit); it also notes whether the value
   can share structure.
2. CPython's C unpickler decodes the record with ``find_class`` returning inert stand-in
   types and ``persistent_load`` returning reference descriptions
   (:mod:`esindexer.convert.values`): nothing is imported, nothing named is called. One
   unpickler reads both pickles, so the state pickle's GETs see the class pickle's memo.
3. A plain tree goes straight to orjson (strict JSON by construction). Anything orjson
   refuses (non-string keys, integers beyond 53 bits, lone surrogates, deep nesting)
   and every record with shared structure goes through the walker
   (:mod:`esindexer.convert.walk`), which implements newt.db's shared/cyclic output with
   an expansion budget.
"""

from __future__ import annotations

import enum
import logging
import re
from _pickle import Unpickler as _CUnpickler
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import orjson

from esindexer.convert.cyclic import dumps_marked, plan
from esindexer.convert.model import StandInType
from esindexer.convert.reader import Source
from esindexer.convert.reader import find_class as _find_class
from esindexer.convert.reader import persistent_load as _persistent_load
from esindexer.convert.scan import UnsafePickle, scan
from esindexer.convert.surrogates import fix_in_place, refused_for_surrogates
from esindexer.convert.values import fast_default, hashable_persistent_ref
from esindexer.convert.walk import walk

__all__ = ["Conversion", "Decoded", "Jsonifier", "UnsafePickle", "default_skip_class", "json_normal"]

log = logging.getLogger(__name__)

#: newt.db's default: every ``BTrees.*`` class and ``ZODB.blob*`` (prefix match).
default_skip_class: Callable[[str], Any] = re.compile(r"BTrees[.]|ZODB.blob").match

StandInMeta = type(StandInType)
_STRICT = orjson.OPT_STRICT_INTEGER  # ints beyond 2**53 take the walker (64-bit check)
_MAX_ERROR = 300
_POOL_MAX = 4
_REUSE_MAX_BYTES = 1 << 16  # bigger records may have grown the memo: don't keep it
_MARK_MAX_BYTES = 1 << 22  # the walker's own graph limit cannot be reached below this
_BASE_BUDGET = 250_000  # JSON values (strings count 1 per 16 chars) beyond 16 per record byte


class Kind(enum.StrEnum):
    """What a record converted to (a ``str``: ``Kind.OK == "ok"``)."""

    OK = "ok"  #: ``json_text`` is set
    DELETED = "deleted"  #: empty or NULL data: the object is gone
    SKIPPED = "skipped"  #: ``skip_class`` matched, or ``transform`` returned ``''``
    ERROR = "error"  #: not convertible; ``error`` holds a one-line reason
    #: converting it killed the converter's process (only from a conversion in a child
    #: process, :mod:`esindexer.pipeline.isolate`); ``error`` says how
    CRASHED = "crashed"


class Conversion(NamedTuple):
    """The outcome of converting one record (see :class:`Kind`). ``class_name`` is known
    for ok and skipped records, and for errors once the class pickle has decoded.
    """

    kind: Kind
    class_name: str | None = None
    json_text: str | None = None
    ghost_pickle: bytes | None = None
    error: str | None = None


class Decoded(NamedTuple):
    """A record decoded but not written as JSON (:meth:`Jsonifier.decode`): its ``state``
    is the unpickled value, which the fast path of the JSON text would have written as
    it is (``orjson.dumps(state, default=fast_default)``, when that succeeds); see
    :func:`json_normal` for a value as that text would read back."""

    class_name: str
    ghost_pickle: bytes
    state: Any


def json_normal(value: Any) -> Any:
    """``value`` (a part of a :class:`Decoded` state) as the JSON text of the fast path
    reads back: tuples become lists, bytes, sets and globals their JSON forms, decimals
    numbers. Raises (``orjson.JSONEncodeError``) where that text would not have been
    written by the fast path: integers beyond 53 bits, non-string keys, lone surrogates."""
    return orjson.loads(orjson.dumps(value, default=fast_default, option=_STRICT))


_DELETED = Conversion(Kind.DELETED)
_tuple_new = tuple.__new__  # Conversion(...) without NamedTuple's Python-level __new__


class _Unpickler(_CUnpickler):
    """C unpickler whose globals and persistent ids become inert data.

    It carries the one :data:`Source` it reads from (``source``), so that an unpickler
    and a source are never paired wrongly: a pool of ``(unpickler, source)`` tuples once
    kept a replacement unpickler with the source of the one it replaced, and the next
    record was then read from the previous record's leftover input (issue 21).
    """

    __slots__ = ("source",)
    source: Any

    find_class = staticmethod(_find_class)
    persistent_load = staticmethod(_persistent_load)


class _CarefulUnpickler(_Unpickler):
    """For the rare record whose persistent references are dict keys or set members:
    references become hashable (slower to build), so a record is retried with this one
    when the plain unpickler fails."""

    persistent_load = staticmethod(hashable_persistent_ref)


def _new_unpickler(cls: type = _Unpickler) -> tuple[_Unpickler, Any]:
    """A fresh unpickler and the source it reads (also its ``source`` attribute)."""
    source = Source()
    # Python 2 ``str`` (SHORT_BINSTRING/BINSTRING): UTF-8 when it is UTF-8; other bytes
    # survive as surrogate escapes, which the walker maps to Latin-1 like newt.db.
    unpickler = cls(source, encoding="utf-8", errors="surrogateescape")
    unpickler.source = source
    return unpickler, source


def _decode_again(cls: type, data: bytes) -> tuple[_Unpickler, Any]:
    """A fresh unpickler and the record's state read anew: a faster path changed the
    decoded value in place before giving up, and the walker needs it as it was."""
    unpickler, source = _new_unpickler(cls)
    source.data = data
    unpickler.load()  # the class pickle
    return unpickler, unpickler.load()


def _record_class_name(klass: Any) -> str:
    """The class name from a class record (newt-spec §4): GLOBAL, ``(class, args)`` or
    ``((module, name), args)``."""
    if type(klass) is tuple and len(klass) == 2 and type(klass[0]) is StandInMeta:  # ZODB's
        return klass[0].dotted
    if isinstance(klass, StandInMeta):
        return klass.dotted
    if type(klass) is tuple and len(klass) == 2:
        first = klass[0]
        if isinstance(first, StandInMeta):
            return first.dotted
        if type(first) is tuple and len(first) == 2 and type(first[0]) is str and type(first[1]) is str:
            return f"{first[0]}.{first[1]}"
    raise ValueError(f"unsupported class record: {type(klass).__name__}")


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


class Jsonifier:
    """Convert ZODB records to newt.db-shaped, strict JSON.

    ``skip_class(class_name)`` returning true skips a record (default:
    :data:`default_skip_class`). ``transform(class_name, json_text)`` may return a new
    JSON text, ``None`` to keep the text, or ``''`` to skip the record; its output must
    be strict JSON (it is checked).

    Calling the instance gives newt.db's triple and logs errors (once, at ERROR, with
    the label); :meth:`convert` gives a :class:`Conversion` and does not log, because
    its caller counts and dead-letters errors itself. Neither raises. Instances are
    safe to share between threads.

    ``prescan`` is accepted for compatibility and changes nothing: the opcode pre-scan
    always runs, because it is also what bounds nesting depth before C code recurses
    over the value, and ZODB's own pickler writes records nested deeper than orjson
    survives (docs/json.md, *Safety and limits*).
    """

    skip_class: Callable[[str], Any] = staticmethod(default_skip_class)

    def __init__(
        self,
        skip_class: Callable[[str], Any] | None = None,
        transform: Callable[[str, str], str | None] | None = None,
        *,
        prescan: bool = True,
    ) -> None:
        if skip_class is not None:
            self.skip_class = skip_class
        self.transform = transform
        self.prescan = prescan  # no effect (see the class docstring)
        self._pool: list[_Unpickler] = []  # each with its own source, memo cleared

    def __call__(self, label: Any, data: bytes | memoryview | None) -> tuple[Any, Any, Any]:
        """newt.db's contract: ``(class_name, ghost_pickle, json_text)`` or three Nones."""
        c = self.convert(label, data)
        if c.kind is Kind.OK:
            return c.class_name, c.ghost_pickle, c.json_text
        if c.kind is Kind.ERROR:
            log.error(
                "cannot convert record %r to JSON: %s",
                label,
                c.error,
                extra={"label": repr(label), "class_name": c.class_name, "error": c.error},
            )
        return None, None, None

    def convert(self, label: Any, data: bytes | memoryview | None) -> Conversion:
        """Convert one record; ``label`` (e.g. ``(tid, zoid)``) is only for messages."""
        return self._convert(label, data, False)  # type: ignore[return-value]  # never Decoded

    def decode(self, label: Any, data: bytes | memoryview | None) -> Conversion | Decoded:
        """Like :meth:`convert`, but a record whose JSON text would be its unpickled state
        written as it is (no shared structure, within the expansion budget, no text
        transform) comes back :class:`Decoded`, without the text: the document builder
        shapes it straight from the state (:meth:`DocumentBuilder.index_action_from_state`).
        Every other outcome is what :meth:`convert` gives."""
        return self._convert(label, data, self.transform is None)

    def _convert(self, label: Any, data: bytes | memoryview | None, direct: bool) -> Conversion | Decoded:
        if not data:
            return _DELETED
        if type(data) is not bytes:
            data = bytes(data)
        reusable = False
        class_name = None
        kinds: dict[int, int] = {}
        scan_state = [0, 0, 0]
        # A pooled unpickler only for records without MEMOIZE (protocols 0-3): the C
        # unpickler numbers MEMOIZE entries from a count that clearing its memo does not
        # reset, so a reused one would give a protocol-4 record's entries the wrong
        # indices ("Memo value not found", or a wrong value). The class and state pickles
        # of one record share one unpickler either way, as ZODB reads them.
        unpickler: _Unpickler | None = None
        try:
            class_end = scan(data, 0, kinds, scan_state)
            if scan_state[2] > 0 or not self._pool:
                unpickler, source = _new_unpickler()
            else:
                unpickler = self._pool.pop()
                source = unpickler.source
            source.data = data
            source.pos = 0
            klass = unpickler.load()
            if type(klass) is tuple and len(klass) == 2 and type(klass[0]) is StandInMeta:  # ZODB's
                class_name = klass[0].dotted
            else:
                class_name = _record_class_name(klass)
            ghost = data[:class_end]
            if self.skip_class(class_name):
                return Conversion(Kind.SKIPPED, class_name, None, ghost)
            pooled_memo = scan_state[2] <= 0
            end = scan(data, class_end, kinds, scan_state)
            if pooled_memo and scan_state[2] > 0:  # MEMOIZE only in the state pickle (hand-made)
                unpickler, source = _new_unpickler()
                source.data = data
                unpickler.load()
            try:
                state = unpickler.load()
            except TypeError:  # e.g. a persistent object used as a dict key: retry
                unpickler, source = _new_unpickler(_CarefulUnpickler)
                source.data = data
                unpickler.load()
                state = unpickler.load()
            flags, expansion, _ = scan_state
            size = len(data)
            budget = _BASE_BUDGET + 16 * size
            if direct and not flags and expansion <= budget:
                reusable = end == size and size <= _REUSE_MAX_BYTES and scan_state[2] <= 0
                return _tuple_new(Decoded, (class_name, ghost, state))
            if flags or expansion > budget:
                out: bytes | None = None
                got = plan(state) if flags < 2 and expansion <= budget >> 1 and size <= _MARK_MAX_BYTES else None
                if got is not None:  # a cycle: mark it in place (the walker's output, faster)
                    out = dumps_marked(state, got, partial(_memo_ids, unpickler, got))
                    if out is None:  # spoiled: decode again for the walker
                        unpickler, state = _decode_again(type(unpickler), data)
                if out is None:
                    out = walk(state, budget, partial(_memo_ids, unpickler))
            else:
                try:
                    out = orjson.dumps(state, default=fast_default, option=_STRICT)
                except orjson.JSONEncodeError as exc:
                    out = None
                    if expansion <= budget >> 1 and refused_for_surrogates(exc):  # py2 Latin-1 text
                        state, fixed, spoiled = fix_in_place(state)
                        if fixed:
                            try:
                                out = orjson.dumps(state, default=fast_default, option=_STRICT)
                            except orjson.JSONEncodeError:
                                spoiled = True
                        if out is None and spoiled:  # decode again for the walker
                            unpickler, state = _decode_again(type(unpickler), data)
                    if out is None:
                        out = walk(state, budget, partial(_memo_ids, unpickler))
            del state
            text = out.decode()
            reusable = end == size and size <= _REUSE_MAX_BYTES and scan_state[2] <= 0
            if self.transform is not None:
                new = self.transform(class_name, text)
                if new is not None:
                    if new == "":
                        return Conversion(Kind.SKIPPED, class_name, None, ghost)
                    if not isinstance(new, str):
                        raise TypeError(f"transform returned {type(new).__name__}, not str")
                    orjson.loads(new)  # the transform must keep the text strict JSON
                    text = new
            return _tuple_new(Conversion, (Kind.OK, class_name, text, ghost, None))
        except RecursionError:
            return Conversion(Kind.ERROR, class_name, None, None, "RecursionError: nesting too deep")
        except Exception as exc:
            return Conversion(Kind.ERROR, class_name, None, None, _reason(exc))
        finally:
            # Only the unpickler that read this record to its end, with its own source,
            # goes back to the pool: whatever replaced it on the way is dropped.
            if unpickler is not None:
                unpickler.source.data = b""
                if reusable and type(unpickler) is _Unpickler and len(self._pool) < _POOL_MAX:
                    unpickler.memo.clear()
                    self._pool.append(unpickler)


def _memo_ids(unpickler: _Unpickler, only: set[int] | None = None) -> dict[int, int]:
    """``{id(object): memo index}`` for the cyclic output (lowest index wins), for the
    objects whose ids are in ``only`` when it is given."""
    ids: dict[int, int] = {}
    items = unpickler.memo.copy().items()
    if only is not None:
        for idx, value in items:
            i = id(value)
            if i in only and idx < ids.get(i, idx + 1):
                ids[i] = idx
        return ids
    for idx, value in sorted(items):
        ids.setdefault(id(value), idx)
    return ids
