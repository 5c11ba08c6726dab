"""An object transform for Plone content (Dexterity and Archetypes): the fields editors search by.

Use it with ``ESINDEXER_TRANSFORM=esindexer.transforms.plone.transform``. Every object
whose state has a ``portal_type`` gets, under ``fields``:

- ``fields.portal_type``, ``fields.id``, ``fields.title`` (strings: full text and ``.keyword``);
- ``fields.review_state``: the ``review_state`` of the latest entry of each workflow in
  ``workflow_history`` (the entry with the latest ``time``), when the history is stored
  in the object's own record (a plain dict); a ``PersistentMapping`` history is a record
  of its own, which a transform of this object cannot read;
- ``fields.effective``, ``fields.expires``, ``fields.modified``, ``fields.created``: dates,
  from Dexterity's ``effective_date``/``expiration_date``/``modification_date``/
  ``creation_date`` or Archetypes' ``effectiveDate``/``expirationDate``/``modification_date``/
  ``creation_date`` (Zope ``DateTime`` values: the builder turns their pickled state into
  UTC dates, so the transform passes them on as they are).

Other objects are left alone. The state itself is not changed: ``state.*`` keeps every
attribute, ``fields.*`` gives the same facts under one name whatever the content type.
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
