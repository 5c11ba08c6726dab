"""Dead-letter redelivery with documents=objects: a mended record goes through the graph.

A dead-lettered record never reached the graph (its name and references were unknown).
Redelivered, its current state is applied to the graph like a batch of the service's
(under the graph's lock, so the running service and this command take turns), and the
documents that change with it are written: its own object's, or its owner's when it is
a part, and any whose place it changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from esindexer.config import Settings
from esindexer.convert.jsonifier import Conversion, Jsonifier, Kind
from esindexer.documents import Action, DocumentBuilder
from esindexer.objects.assemble import assemble
from esindexer.objects.edges import record_facts
from esindexer.objects.store import GraphStore
from esindexer.pipeline.objectreader import object_class_filter
from esindexer.source import graph, pg

#: ``(tid, zoid, conversion)`` of the redelivered records -> the actions to send.
ObjectsHook = Callable[[list[tuple[int, int, Conversion]]], list[Action]]


def objects_hook(conn: Any, settings: Settings, builder: DocumentBuilder, jsonifier: Jsonifier) -> ObjectsHook:
    graph.require_coverage(conn, settings.worker_id)  # written into a lost graph, letters would hide the loss
    store = GraphStore(conn, settings.worker_id, object_class_filter(settings))

    def actions(records: list[tuple[int, int, Conversion]]) -> list[Action]:
        facts, deleted = [], []
        for tid, zoid, conversion in records:
            if conversion.kind is Kind.OK and conversion.json_text is not None:
                state = orjson.loads(conversion.json_text)
                facts.append(record_facts(zoid, tid, conversion.class_name, state))
            elif conversion.kind is Kind.DELETED:
                deleted.append(zoid)
        if not facts and not deleted:
            return []
        complete = store.complete()
        dirty, version = store.apply(facts, deleted, max(t for t, _z, _c in records), resolve=complete)
        return builder.assembled_actions(assemble(dirty, store, pg.CurrentStates(conn), jsonifier), version)

    return actions
