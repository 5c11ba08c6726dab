"""Documents: what one ZODB record becomes in Elasticsearch.

A record ``(tid, zoid, data)`` converted by the Jsonifier turns into bulk
*actions*:

- a converted object → one ``index`` action into the index its class routes to;
- a deleted object (NULL/empty state), a class that is skipped, or a record the
  transform drops → a ``delete`` action in *every* routed index, because the
  class of a deleted object is unknown and the document may live in any of them;
- a record that cannot be converted → nothing to write, a dead letter instead.

(:meth:`DocumentBuilder.actions_for` is that rule, written once.) Where the actions go
and how they are sent is the sink's business (:mod:`esindexer.sink`); the index
template and the alias are in :mod:`esindexer.es.admin`.

Every write carries the record's tid as an **external version**
(``version_type=external_gte``). Tids grow with every commit, so a replay after
a crash, or a bulk that overtakes an earlier one, can never overwrite a newer
state: Elasticsearch answers 409 and the item counts as already applied.
Deletions of objects removed by packing carry ``last tid + 1``, which beats any
write of that object still in flight (oids are never reused).

The document shape (documented in docs/documents.md)::

    {"class": "myapp.content.Document", "zoid": 42, "oid": "0x2a",
     "tid": 291972294502024669, "committed_at": "2026-11-27T09:37:15.480215Z",
     "state": {...}, "more": {...}, "fields": {...}, "text": "all string values ...",
     "refs": [7, 12]}

``state`` is the converted state shaped by :mod:`esindexer.documents.typed` (the default
``typed`` model: flat dotted paths, dates in one UTC form, what cannot be typed safely in
``more``), or the converted state as it is (``flattened``, ``dynamic``). ``fields`` holds
what an object transform added (:mod:`esindexer.documents.transform`).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable
from datetime import UTC
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import orjson

from esindexer.config import Settings, load_dotted, transform_style
from esindexer.convert.jsonifier import Conversion, Decoded, Jsonifier, Kind, json_normal
from esindexer.documents.fastshape import shape_state
from esindexer.documents.transform import ObjectRecord, ObjectTransform, apply
from esindexer.documents.typed import shape
from esindexer.documents.walk import collect, harmonise_lists
from esindexer.objects.assemble import Gone, ObjectView

log = logging.getLogger(__name__)

#: Characters of string values collected into the ``text`` field at most; keeps
#: documents small when an object holds a whole book.
TEXT_LIMIT = 32_000
#: Documents shorter than this are copied out of orjson's output buffer (see ``source``).
_COPY_BELOW = 1 << 20
_tuple_new = tuple.__new__  # a NamedTuple without its Python-level __new__


#: Length of a bulk metadata line without its variable parts (op, index, id, version):
#: the size model of :meth:`Action.size`, which request bounds are computed with.
_META_FIXED = len(b'{"":{"_index":"","_id":"","version":,"version_type":"external_gte"}}')


class Action(NamedTuple):
    """One bulk item: its metadata and, for ``index``, the document source as JSON bytes.

    A named tuple (immutable, hashable, built in a fraction of a frozen dataclass's time:
    one is made per document).
    """

    op: Literal["index", "delete"]
    index: str  # type: ignore[assignment]  # shadows tuple.index, which nothing here calls
    zoid: int
    tid: int
    version: int
    class_name: str | None = None
    source: bytes | None = None

    def size(self) -> int:
        """Bytes this action adds to a bulk body (metadata, source and newlines).

        Computed from the parts rather than by serialising the metadata line a second
        time: index names are validated ASCII and ids and versions are digits, so
        nothing in the line is escaped.
        """
        meta = _META_FIXED + len(self.op) + len(self.index) + len(str(self.zoid)) + len(str(self.version))
        return meta + 1 + (len(self.source) + 1 if self.source is not None else 0)


@lru_cache(maxsize=4096)
def commit_time_iso(tid: int) -> str:
    """The commit time a tid encodes, as ISO 8601 UTC with a ``Z`` (what ``date`` fields want)."""
    from esindexer.source.tid import tid_to_datetime

    return tid_to_datetime(tid).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class DocumentBuilder:
    """Turns converted records into bulk actions, following the configured routing."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._routes = tuple(settings.class_routes)
        self._default_index = settings.index_for_route(settings.default_route)
        self.indices = settings.routed_indices
        self._mode = settings.state_mapping
        self._transform: ObjectTransform | None = None
        if settings.transform:
            fn = load_dotted(settings.transform)
            if transform_style(fn) == "object":
                self._transform = fn

    @lru_cache(maxsize=8192)
    def index_for_class(self, class_name: str) -> str:
        for pattern, route in self._routes:
            if fnmatch.fnmatchcase(class_name, pattern):
                return self._settings.index_for_route(route)
        return self._default_index

    def index_action(self, tid: int, zoid: int, class_name: str, json_text: str) -> Action:
        return Action("index", self.index_for_class(class_name), zoid, tid, tid, class_name,
                      self.source(tid, zoid, class_name, json_text))

    def index_action_from_state(self, tid: int, zoid: int, class_name: str, state: Any) -> Action | None:
        """:meth:`index_action` for a :class:`~esindexer.convert.jsonifier.Decoded` record,
        straight from its unpickled state: the same document as from the record's JSON
        text, with no text written and parsed again. None where that is not sure (an
        integer beyond 53 bits, a key that is not a string, text the JSON fast path
        would have refused...): the caller converts the record to JSON text instead."""
        try:
            source = self._source(tid, zoid, class_name, state, None)
        except Exception:  # the text path decides, and reports, whatever this was
            return None
        return _tuple_new(Action, ("index", self.index_for_class(class_name), zoid, tid, tid, class_name, source))

    def record(self, jsonifier: Jsonifier, tid: int, zoid: int, data: bytes | None) -> tuple[Conversion, Action | None]:
        """Convert one record and build its index action (None unless the record converted):
        straight from the unpickled state where it can be (:meth:`index_action_from_state`),
        from the JSON text otherwise. An ok conversion built from the state has no
        ``json_text``; use :meth:`actions_for` only for conversions without an action."""
        decoded = jsonifier.decode((tid, zoid), data)
        if type(decoded) is Decoded:
            action = self.index_action_from_state(tid, zoid, decoded.class_name, decoded.state)
            if action is not None:
                return _tuple_new(Conversion, (Kind.OK, decoded.class_name, None, decoded.ghost_pickle, None)), action
            decoded = jsonifier.convert((tid, zoid), data)
        conversion: Conversion = decoded  # type: ignore[assignment]  # convert() never gives Decoded
        if conversion.kind is Kind.OK:  # an ok conversion names its class and has its JSON
            assert conversion.class_name is not None and conversion.json_text is not None
            return conversion, self.index_action(tid, zoid, conversion.class_name, conversion.json_text)
        return conversion, None

    def actions_for(self, tid: int, zoid: int, conversion: Conversion) -> list[Action]:
        """What one converted record asks of the index, decided here once for the service,
        ``verify`` and ``--redeliver``: an object → index it; deleted, skipped or dropped
        by the transform → delete it everywhere; not convertible → nothing (the caller
        keeps a dead letter)."""
        if conversion.kind is Kind.OK:
            assert conversion.class_name is not None and conversion.json_text is not None
            return [self.index_action(tid, zoid, conversion.class_name, conversion.json_text)]
        if conversion.kind is Kind.ERROR or conversion.kind is Kind.CRASHED:
            return []
        return self.delete_actions(tid, zoid)

    def object_action(self, view: ObjectView, version: int) -> Action | None:
        """The document of one application object (documents=objects): its state with its
        parts folded in and its place; ``version`` is the graph's applied tid (never less
        than any earlier document of it: docs/architecture.md, "Object documents")."""
        place = {"name": view.name, "path": view.path, "parent": view.parent, "depth": view.depth,
                 "ancestors": view.ancestors, "parts": view.parts, "parts_omitted": view.parts_omitted,
                 # the time of the object's last change, its parts' included (Kibana's time field)
                 "committed_at": commit_time_iso(max(view.tid, view.parts_tid))}
        if view.parts_tid:
            place["parts_tid"] = view.parts_tid
        state = view.state
        body = None
        if view.decoded:  # straight from the unpickled state, as a record document is
            try:
                body = self._source(view.tid, view.zoid, view.class_name, state, None, place=place, path=view.path)
            except Exception:  # the JSON values decide, as index_action_from_state's fallback does
                state = view.json_state() if view.json_state is not None else None
                if state is None:
                    return None
        if body is None:
            body = self._source(view.tid, view.zoid, view.class_name, state, None, reread=lambda: state,
                                place=place, path=view.path)
        return Action("index", self.index_for_class(view.class_name), view.zoid, view.tid, version,
                      view.class_name, body)

    def assembled_actions(self, views: Iterable[ObjectView | Gone], version: int) -> list[Action]:
        """The actions of assembled objects at ``version``: a document for each object in the
        tree, deletes in every routed index for each that is gone (the one rule for the
        service, ``verify --repair`` and dead-letter redelivery). An object whose record
        turns out not to be convertible has none (its record is dead-lettered)."""
        out: list[Action] = []
        for view in views:
            if isinstance(view, Gone):
                out.extend(self.delete_actions(version, view.zoid, version=version))
            elif (action := self.object_action(view, version)) is not None:
                out.append(action)
        return out

    def delete_actions(self, tid: int, zoid: int, version: int | None = None) -> list[Action]:
        """Deletes in every routed index; ``version`` defaults to the record's tid."""
        version = tid if version is None else version
        return [Action("delete", index, zoid, tid, version) for index in self.indices]

    def source(self, tid: int, zoid: int, class_name: str, json_text: str) -> bytes:
        """The document of a converted record (its JSON text) as JSON bytes."""
        return self._source(tid, zoid, class_name, orjson.loads(json_text), json_text)

    def _source(self, tid: int, zoid: int, class_name: str, state: Any, json_text: str | None, *,
                reread: Callable[[], Any] | None = None, place: dict[str, Any] | None = None,
                path: str | None = None) -> bytes:
        """``state`` parsed from ``json_text``, or (``json_text`` None) a decoded record's
        unpickled state, which raises where it would not give the same document. With
        ``reread`` (the object model) ``state`` is already JSON values, given again by
        ``reread`` if a transform fails half-way; ``place`` adds the object's place and parts."""
        direct = json_text is None and reread is None
        original = state
        if direct and (self._mode != "typed" or self._transform is not None):
            state = json_normal(state)  # what a transform and the other modes see: JSON values
            direct = False
        fields: dict[str, Any] = {}
        if self._transform is not None:
            record = ObjectRecord(class_name, zoid, tid, state, path=path,
                                  parts=tuple(place.get("parts", ())) if place else ())
            try:
                fields = apply(self._transform, record)
                state = record.state
            except Exception as exc:
                # The object is still indexed (as converted, without the transform's fields)
                # rather than stopping the service on every start at this record.
                reason = f"{type(exc).__name__}: {exc}"
                log.error("transform failed for %s (zoid %d, tid %d): %s; indexed without its fields",
                          class_name, zoid, tid, reason,
                          extra={"class_name": class_name, "zoid": zoid, "tid": tid, "error": reason})
                state = reread() if reread is not None else orjson.loads(json_text) if json_text is not None \
                    else json_normal(original)
        doc: dict[str, Any] = {
            "class": class_name,
            "zoid": zoid,
            "oid": hex(zoid),
            "tid": tid,
            "committed_at": commit_time_iso(tid),
        }
        if place:
            doc.update(place)
        if self._mode == "typed":
            shaped = shape_state(state, TEXT_LIMIT, direct=direct)
            texts, refs, more, values = shaped.texts, shaped.refs, shaped.more, shaped.values
            doc["state"] = shaped.typed
            if fields:
                extra = shape(fields, 0)  # their words are the state's: no second copy in text
                doc["fields"] = extra.typed
                more.update((f"fields.{path}", value) for path, value in extra.more.items())
                values += extra.values
            if more:
                doc["more"] = more
            if values:
                doc["values"] = values
        else:
            texts, refs = [], []
            collect(state, texts, refs, [TEXT_LIMIT])
            if not isinstance(state, dict):
                # flattened (and object) fields need an object; keep non-dict states findable.
                state = {"value": state}
            if self._mode == "dynamic":
                harmonise_lists(state)
            doc["state"] = state
            if fields:
                doc["fields"] = fields
        doc["text"] = " ".join(texts)
        doc["refs"] = sorted(set(refs) - set(place.get("parts", ()))) if place else sorted(set(refs))
        # orjson's result keeps its whole output buffer (~32 KB for a 2 KB document);
        # a copy holds exactly the document while it waits in a bulk request. A large
        # document is not copied: its buffer's slack is small beside it, and a second
        # copy of a 100 MB document would double the memory it takes (issue 21).
        out = orjson.dumps(doc)
        return bytes(memoryview(out)) if len(out) < _COPY_BELOW else out
