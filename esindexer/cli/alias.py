"""``esindexer alias``: the switch of a re-index without downtime."""

from __future__ import annotations

import argparse
import dataclasses

from esindexer.cli.common import Command
from esindexer.config import Settings


def _alias(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.es.admin import ensure_indices, switch_alias
    from esindexer.es.client import make_es_client

    es = make_es_client(settings)
    try:
        ensure_indices(es, dataclasses.replace(settings, attach_alias=False))
        removed, added = switch_alias(es, settings)
    finally:
        es.close()
    print(f"alias {settings.alias_name}: now {', '.join(settings.index_for_route(r) for r in settings.route_names())}")
    if removed:
        print(f"  removed from {', '.join(removed)}")
    if added:
        print(f"  added to {', '.join(added)}")
    return 0


COMMAND = Command(
    name="alias",
    help="point the alias at this prefix's indices (the switch of a re-index)",
    description="Atomically make ESINDEXER_ALIAS (default: the prefix) point at exactly "
                "the indices of ESINDEXER_INDEX_PREFIX, removing it from any other index: "
                "the last step of a re-index without downtime (docs/operations.md).",
    groups=("elasticsearch", "documents"),
    run=_alias,
)
