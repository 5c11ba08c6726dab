"""The converter as the settings configure it: which classes to skip, which transform."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from esindexer.config import Settings, load_dotted, transform_style
from esindexer.convert.jsonifier import Jsonifier

#: Classes never indexed: a BTree's content lives in its buckets' rows, and blobs are files.
ALWAYS_SKIPPED = ("BTrees.*", "ZODB.blob*")


def class_filter(settings: Settings) -> Callable[[str], bool]:
    """A predicate telling whether a class is NOT to be indexed (the Jsonifier's skip_class)."""
    include = tuple(settings.class_include)
    exclude = ALWAYS_SKIPPED + tuple(settings.class_exclude)

    def decide(class_name: str) -> bool:
        if any(fnmatch.fnmatchcase(class_name, p) for p in exclude):
            return True
        return not any(fnmatch.fnmatchcase(class_name, p) for p in include)

    # Asked once per record, of a few hundred class names at most: remembered (bounded).
    known: dict[str, bool] = {}

    def skip(class_name: str) -> bool:
        answer = known.get(class_name)
        if answer is None:
            answer = decide(class_name)
            if len(known) >= 10_000:
                known.clear()
            known[class_name] = answer
        return answer

    return skip


def _never(class_name: str) -> bool:
    return False


def build_jsonifier(settings: Settings) -> Jsonifier:
    """The converter for the service, ``verify`` and ``--redeliver`` alike."""
    transform = load_dotted(settings.transform) if settings.transform else None
    if transform is not None and transform_style(transform) == "object":
        transform = None  # an object transform runs in the document builder
    # Objects: every record is read, for the graph (a folder's items are in its BTrees);
    # which classes get documents is the object model's rule (ESINDEXER_OBJECT_CLASSES).
    skip = class_filter(settings) if settings.documents != "objects" else _never
    return Jsonifier(skip_class=skip, transform=transform,
                     prescan=not settings.trusted_pickles)
