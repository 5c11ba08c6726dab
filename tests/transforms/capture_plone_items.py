"""Regenerate plone_items.json: the Plone profile's transform input, captured from the real service.

Not a test. With the test services up, run from the repository root::

    createdb i23_items   # an empty database (any name)
    scripts/plone instance /tmp/items postgresql://.../i23_items false
    scripts/plone run /tmp/items build 4 28 23
    scripts/plone run /tmp/items brains | tail -1 > /tmp/items/brains.json
    PYTHONPATH=. ESINDEXER_PG_DSN=postgresql://.../i23_items ESINDEXER_ES_URL=... \\
      ESINDEXER_INDEX_PREFIX=capture ESINDEXER_PROFILE=plone \\
      ESINDEXER_TRANSFORM=tests.transforms.capture_plone_items.capture \\
      CAPTURE=/tmp/items/captured.jsonl esindexer run --until-caught-up
    python -m tests.transforms.capture_plone_items /tmp/items/captured.jsonl /tmp/items/brains.json

:func:`capture` is an object transform that writes what the service hands the profile's
transform (class, zoid, tid, path, parts and the folded state) to ``$CAPTURE``, then
returns the profile's fields; :func:`main` picks one item per type (and a private and a
published Document) and pairs each with the catalog's metadata.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from esindexer.transforms.plone import object_transform

TRIM = 2000


def capture(obj: Any) -> dict[str, Any] | None:
    with open(os.environ["CAPTURE"], "a") as out:
        out.write(json.dumps({"path": obj.path, "class": obj.class_name, "zoid": obj.zoid, "tid": obj.tid,
                              "parts": list(obj.parts), "state": obj.state}) + "\n")
    return object_transform(obj)


def main(captured: str, brains_file: str) -> None:
    by_path = {c["path"]: c for c in map(json.loads, Path(captured).read_text().splitlines())}
    chosen: dict[str, dict[str, Any]] = {}
    for brain in json.loads(Path(brains_file).read_text())["brains"]:
        kind = brain["portal_type"]
        chosen.setdefault(kind if kind != "Document" else f"Document-{brain['review_state']}", brain)
    out = []
    for _, brain in sorted(chosen.items()):
        item = by_path[brain["path"]]
        state, trimmed = item["state"], []
        for key in list(state):
            if len(json.dumps(state[key])) > TRIM:
                trimmed.append(key)
                state[key] = "(trimmed)"
        out.append({**item, "trimmed": trimmed, "state": state, "catalog": brain})
    (Path(__file__).parent / "plone_items.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
