"""Object transforms for Plone content (Dexterity and Archetypes): the fields editors search by.

Two entry points:

- :func:`object_transform`, the Plone profile's (``ESINDEXER_PROFILE=plone``, docs/plone.md):
  for the object documents of ``ESINDEXER_DOCUMENTS=objects``, whose state is *folded*
  (the workflow history mapping, the rich text's raw value holder and the blob file
  metadata are inside the content item's state), it returns every field of the guide's
  field reference, computed the way Plone's catalog computes its indexes;
- :func:`transform`, the older record-level one (``ESINDEXER_TRANSFORM=
  esindexer.transforms.plone.transform`` on record documents): ``portal_type``, ``id``,
  ``title``, the dates and ``review_state`` when ``workflow_history`` is inline (a
  ``PersistentMapping`` history is a record of its own, which a record transform cannot
  read: the object documents fold it in).

Dates are Zope ``DateTime`` values as converted (any pickled shape, decoded without
importing ``DateTime``: :mod:`esindexer.documents.dates`). Other objects are left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from esindexer.documents.transform import ObjectRecord

_DATES = {
    "effective": ("effective_date", "effectiveDate"),
    "expires": ("expiration_date", "expirationDate"),
    "modified": ("modification_date", "modificationDate"),
    "created": ("creation_date", "creationDate"),
}


def _sort_key(entry: Mapping[str, Any]) -> tuple[int, Any]:
    """Workflow entries by time: a DateTime's micros, else its ISO text, else first."""
    when = entry.get("time")
    if isinstance(when, Mapping):
        state = when.get("state")
        if isinstance(state, list) and state and isinstance(state[0], (int, float)):
            return (2, float(state[0]) if isinstance(state[0], int) else state[0] * 1e6)
        micros = when.get("_micros", when.get("_t"))
        if isinstance(micros, (int, float)):
            return (2, float(micros))
    if isinstance(when, str):
        return (1, when)
    return (0, 0)


def review_state(history: Any) -> str | None:
    """The current review state from an inline ``workflow_history`` (workflow id → entries)."""
    if not isinstance(history, Mapping):
        return None
    data = history.get("data", history) if "::" in history else history
    if not isinstance(data, Mapping):
        return None
    latest: tuple[tuple[int, Any], str] | None = None
    for entries in data.values():
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, Mapping) and isinstance(entry.get("review_state"), str):
                key = _sort_key(entry)
                if latest is None or key >= latest[0]:
                    latest = (key, entry["review_state"])
    return latest[1] if latest else None


def transform(obj: ObjectRecord) -> dict[str, Any] | None:
    """The search fields of a Plone content object; None for anything else."""
    state = obj.state
    if not isinstance(state, dict) or not isinstance(state.get("portal_type"), str):
        return None
    fields: dict[str, Any] = {"portal_type": state["portal_type"]}
    for name in ("id", "title"):
        if isinstance(state.get(name), str):
            fields[name] = state[name]
    current = review_state(state.get("workflow_history"))
    if current is not None:
        fields["review_state"] = current
    for field, attributes in _DATES.items():
        for attribute in attributes:
            if state.get(attribute) is not None:
                fields[field] = state[attribute]
                break
    return fields


# --- the Plone profile's object transform (folded object documents) ---------------------

#: What Plone's catalog indexes for a missing effective/creation date and a missing
#: expiration date (plone.dexterity's FLOOR_DATE ``DateTime(1970, 0)`` and CEILING_DATE
#: ``DateTime(2500, 0)``: 1969-12-31 and 2499-12-31, midnight UTC), so that a range query
#: finds the same items the catalog finds.
FLOOR_DATE = "1969-12-31T00:00:00.000000Z"
CEILING_DATE = "2499-12-31T00:00:00.000000Z"

#: Attributes each field is read from: Dexterity's first, then Archetypes' (best effort).
_OBJECT_DATES = {
    "effective": (("effective_date", "effectiveDate"), FLOOR_DATE),
    "expires": (("expiration_date", "expirationDate"), CEILING_DATE),
    "created": (("creation_date", "creationDate"), FLOOR_DATE),
    "modified": (("modification_date", "modificationDate"), None),
}
#: Classes whose value is a rich text field (Dexterity's, Archetypes' BaseUnit).
_RICH_TEXT = frozenset({"plone.app.textfield.value.RichTextValue", "Products.Archetypes.BaseUnit.BaseUnit"})
#: Classes of file and image field values (plone.namedfile), blob-backed or not.
_NAMED_FILES = frozenset({"plone.namedfile.file.NamedBlobFile", "plone.namedfile.file.NamedBlobImage",
                          "plone.namedfile.file.NamedFile", "plone.namedfile.file.NamedImage"})
#: The primary file field of the default types, looked at first (a News Item's lead image
#: is an ``image`` too, but a File's ``file`` is what it is about).
_PRIMARY_FILES = ("file", "image")
#: Classes whose portal_type is a class attribute (not in their state): the site root.
_CLASS_PORTAL_TYPES = {"Products.CMFPlone.Portal.PloneSite": "Plone Site"}
#: Keys of a workflow history entry kept in ``workflow_history`` (comments and custom
#: variables stay in ``state``).
_HISTORY_KEYS = ("action", "review_state", "actor", "time")


def _date(value: Any) -> str | None:
    """A converted date of any kind (Zope DateTime, naive or aware datetime, ISO text) as UTC text."""
    from esindexer.documents.dates import DATETIME_CLASSES, aware_datetime, date_string, zope_datetime

    if isinstance(value, str):
        return date_string(value)
    if isinstance(value, Mapping):
        marker = value.get("::")
        if marker in DATETIME_CLASSES:
            return zope_datetime(dict(value))
        if marker == "datetime":
            return aware_datetime(dict(value))
    return None


def _mapping_data(value: Any) -> Mapping[str, Any] | None:
    """The items of a folded mapping: a PersistentMapping's ``data`` (with or without its
    class marker), an OOBTree folded as a plain mapping, or an inline dict."""
    if not isinstance(value, Mapping):
        return None
    data = value.get("data")
    if isinstance(data, Mapping) and (len(value) == 1 or (len(value) == 2 and "::" in value)):
        return data
    if value.get("::") == "persistent":
        return None  # not folded (a shared record, or over the budget)
    return {k: v for k, v in value.items() if k != "::"}


def current_workflow(history: Any) -> tuple[str, list[Mapping[str, Any]]] | None:
    """The workflow a folded ``workflow_history`` says the item is in, and its entries.

    Plone appends each transition to the list of its workflow; an item whose workflow
    was changed keeps the old list. The current workflow is the one whose last entry is
    the newest (by its ``time``), and the current state is that entry's ``review_state``.
    """
    data = _mapping_data(history)
    if not data:
        return None
    best: tuple[tuple[int, Any], str, list[Mapping[str, Any]]] | None = None
    for workflow, entries in data.items():
        if not isinstance(entries, list):
            continue
        entries = [e for e in entries if isinstance(e, Mapping)]
        if not entries:
            continue
        key = _sort_key(entries[-1])
        if best is None or key > best[0]:
            best = (key, str(workflow), entries)
    return (best[1], best[2]) if best else None


def _history(workflow: str, entries: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The entries of the current workflow, compact: each has every key (``""`` for a missing
    action or actor: the first entry has no action), so that the typed document's parallel
    lists (``fields.workflow_history.review_state``, ``...action``) stay aligned."""
    out = []
    for entry in entries:
        item: dict[str, Any] = {"workflow": workflow}
        for key in _HISTORY_KEYS:
            value = entry.get(key)
            if key == "time":
                when = _date(value)
                if when is not None:
                    item[key] = when
            else:
                item[key] = value if isinstance(value, str) else ""
        out.append(item)
    return out


def _strings(value: Any) -> list[str]:
    """A tuple/list of strings (subject, creators) as a list; one string as a list of it."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


def _rich_text(value: Mapping[str, Any]) -> str | None:
    """The raw text of a folded RichTextValue (``_raw_holder.value``) or an Archetypes BaseUnit (``raw``)."""
    holder = value.get("_raw_holder")
    raw = holder.get("value") if isinstance(holder, Mapping) else value.get("raw")
    if isinstance(raw, Mapping) and isinstance(raw.get("::bytes"), str):
        return None  # undecodable bytes: nothing readable
    return raw if isinstance(raw, str) else None


def body_text(state: Mapping[str, Any]) -> str | None:
    """The plain text of every rich-text attribute of ``state`` (HTML removed), in attribute order."""
    from esindexer.transforms.html import html_to_text

    parts = []
    for value in state.values():
        if isinstance(value, Mapping) and value.get("::") in _RICH_TEXT:
            raw = _rich_text(value)
            if raw:
                mime = value.get("_mimeType")
                parts.append(html_to_text(raw) if mime in (None, "text/html", "text/x-html-safe")
                             else " ".join(raw.split()))
    text = " ".join(p for p in parts if p)
    return text or None


def file_metadata(state: Mapping[str, Any]) -> dict[str, Any]:
    """``file_name``, ``content_type`` (and for images ``width``/``height``, when stored) of
    the item's primary file: ``file``, else ``image``, else the first file-valued attribute.

    ``size`` is given only when the value itself says it (a non-blob ``NamedFile``'s data
    length): a blob file's size is the length of the blob, which lives in the blob storage,
    not in any record (blob bytes stay out of the index).
    """
    names = [n for n in _PRIMARY_FILES if n in state] + [n for n in state if n not in _PRIMARY_FILES]
    for name in names:
        value = state.get(name)
        if not (isinstance(value, Mapping) and value.get("::") in _NAMED_FILES):
            continue
        out: dict[str, Any] = {}
        if isinstance(value.get("filename"), str):
            out["file_name"] = value["filename"]
        if isinstance(value.get("contentType"), str):
            out["content_type"] = value["contentType"]
        for key, field in (("_width", "width"), ("_height", "height")):
            if type(value.get(key)) is int and value[key] >= 0:
                out[field] = value[key]
        size = value.get("size", value.get("_size"))
        if type(size) is int:
            out["size"] = size
        return out
    return {}


def _parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def object_transform(obj: ObjectRecord) -> dict[str, Any] | None:
    """The Plone profile's fields of a content item (a folded object document); None for anything else."""
    state = obj.state
    if not isinstance(state, dict):
        return None
    portal_type = state.get("portal_type", _CLASS_PORTAL_TYPES.get(obj.class_name))
    if not isinstance(portal_type, str):
        return None
    fields: dict[str, Any] = {"portal_type": portal_type}
    uid = state.get("_plone.uuid", state.get("_at_uid"))
    if isinstance(uid, str) and uid:
        fields["uid"] = uid
    path = getattr(obj, "path", None)
    if isinstance(path, str) and path:
        fields["path"] = path
        fields["parent"] = _parent(path)
    name = state.get("id", state.get("__name__"))
    if isinstance(name, str) and name:
        fields["id"] = name
    for key in ("title", "description"):
        if isinstance(state.get(key), str):
            fields[key] = state[key]
    fields["subject"] = _strings(state.get("subject"))
    fields["creators"] = _strings(state.get("creators"))
    language = state.get("language")
    if isinstance(language, str) and language:
        fields["language"] = language
    for field, (attributes, default) in _OBJECT_DATES.items():
        value = next((state[a] for a in attributes if state.get(a) is not None), None)
        when = _date(value) if value is not None else None
        if when is None and field == "modified":
            from esindexer.documents.builder import commit_time_iso

            when = commit_time_iso(obj.tid)  # Plone itself falls back to the object's _p_mtime
        fields[field] = when or default
    for field in ("start", "end"):  # plone.app.event's (an Event's dates; naive = UTC)
        when = _date(state.get(field))
        if when is not None:
            fields[field] = when
    current = current_workflow(state.get("workflow_history"))
    if current is not None:
        workflow, entries = current
        if isinstance(entries[-1].get("review_state"), str):
            fields["review_state"] = entries[-1]["review_state"]
        fields["workflow_history"] = _history(workflow, entries)
    fields["is_folderish"] = "_tree" in state or isinstance(state.get("_objects"), list)
    body = body_text(state)
    if body:
        fields["body"] = body
    fields.update(file_metadata(state))
    return fields


def _keyword(ignore_above: int = 1024) -> dict[str, Any]:
    return {"type": "keyword", "ignore_above": ignore_above}


def _words() -> dict[str, Any]:
    return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}


_DATE = {"type": "date", "format": "strict_date_optional_time", "ignore_malformed": True}
_LONG = {"type": "long", "ignore_malformed": True}

#: The explicit mapping of the profile's ``fields.*`` (esindexer/es/admin.py puts it in the
#: index template): exact keywords where Plone's catalog has FieldIndex/KeywordIndex/UUIDIndex
#: or ExtendedPathIndex, full text (with a ``.keyword``) for titles and descriptions, text for
#: the body, dates for the DateIndexes. Mapped when the index is created, so these fields
#: never depend on the index's remaining field budget.
FIELD_MAPPING: dict[str, dict[str, Any]] = {
    **{name: _keyword() for name in ("uid", "portal_type", "review_state", "subject", "language", "creators",
                                     "id", "path", "parent", "file_name", "content_type")},
    "title": _words(),
    "description": _words(),
    "body": {"type": "text"},
    **{name: dict(_DATE) for name in ("effective", "expires", "created", "modified", "start", "end")},
    "is_folderish": {"type": "boolean"},
    **{name: dict(_LONG) for name in ("size", "width", "height")},
    **{f"workflow_history.{name}": _keyword() for name in ("workflow", "action", "review_state", "actor")},
    "workflow_history.time": dict(_DATE),
}
