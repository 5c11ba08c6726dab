"""Walks over a converted state shared by every mapping mode: text and references, list harmony."""

from __future__ import annotations

from typing import Any

import orjson


def collect(value: Any, texts: list[str], refs: list[int], budget: list[int]) -> None:
    """Collect string leaves (for full-text search) and referenced zoids, iteratively-deep."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if budget[0] > 0:
                texts.append(item[: budget[0]])
                budget[0] -= len(item) + 1
        elif isinstance(item, dict):
            ref = item.get("::=>")
            if isinstance(ref, int):
                refs.append(ref)
                continue
            for key, child in item.items():
                if not key.startswith("::"):
                    stack.append(child)
        elif isinstance(item, list):
            stack.extend(reversed(item))


def harmonise_lists(value: Any) -> Any:
    """For the ``dynamic`` mapping: a list mixing strings with other scalars gets all-string items.

    Elasticsearch maps a field from the first value it sees, and one document whose
    array holds ``[7, "myapp.User"]`` (every persistent reference's ``id``) asks for two
    types at once, which it refuses. Strings are what both values can be.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            kinds = {type(v) for v in item if v is not None}
            if str in kinds and kinds - {str, dict, list}:
                for i, v in enumerate(item):
                    if isinstance(v, (int, float, bool)):
                        item[i] = orjson.dumps(v).decode()
            stack.extend(v for v in item if isinstance(v, (dict, list)))
    return value


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests dicts and lists more than ``limit`` levels (stops early)."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [child for item in level
                 for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, (dict, list))]
        if not level:
            return False
    return True
