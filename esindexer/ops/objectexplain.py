"""``esindexer explain ZOID`` with documents=objects: what the object model makes of a record.

A record is an object (with its path, parent and parts), a part of one object (its
content is in that object's document), shared by several or reachable from none (not
indexed), or a named record outside the tree (removed, a version copy, held under a key
other than its name: not indexed). Read from the graph the service keeps, at the moment
of asking.
"""

from __future__ import annotations

from typing import Any

from esindexer.config import Settings
from esindexer.objects.store import GraphStore, Node
from esindexer.pipeline.objectreader import object_class_filter
from esindexer.source.graph import EDGES

#: Parts and holders listed at most (the totals are always given).
SHOWN = 20


def _holders(conn: Any, client_id: str, zoid: int) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {EDGES} WHERE client_id = %s AND dst = %s", (client_id, zoid))
        total = int(cur.fetchone()[0])
        cur.execute(f"SELECT src, key FROM {EDGES} WHERE client_id = %s AND dst = %s ORDER BY src LIMIT %s",
                    (client_id, zoid, SHOWN))
        shown = [{"zoid": int(src), "key": key} for src, key in cur.fetchall()]
    conn.rollback()
    return {"total": total, "shown": shown}


def _folded_in(es: Any, indices: tuple[str, ...], owner: int, part: int) -> bool | None:
    """Whether the owner's document lists ``part`` among its folded parts (None: no document)."""
    if es is None:
        return None
    hits = es.search(index=",".join(indices), size=1, query={"ids": {"values": [str(owner)]}},
                     source=["parts"], ignore_unavailable=True)["hits"]["hits"]
    return part in (hits[0]["_source"].get("parts") or []) if hits else None


def describe(conn: Any, settings: Settings, zoid: int, es: Any = None,
             indices: tuple[str, ...] = ()) -> dict[str, Any]:
    """The object model's view of ``zoid`` (the ``object_model`` part of ``explain --json``)."""
    store = GraphStore(conn, settings.client_id, object_class_filter(settings))
    node = store.nodes([zoid]).get(zoid)
    out: dict[str, Any] = {"graph_complete": store.complete(), "graph_tid": store.applied_tid() or None}
    if node is None:
        out.update(kind="unknown", why="not in the object graph (not read yet, or gone)")
        return out
    out.update(name=node.name, holders=_holders(conn, settings.client_id, zoid))
    if not out["graph_complete"] and not node.in_tree and node.owner is None:
        out.update(kind="unresolved", why="read into the object graph, which a backfill is still building: its "
                                          "owner and place are computed once the backlog is read")
    elif node.in_tree:
        parts = store.parts([zoid]).get(zoid, [])
        out.update(path=node.path, parent=node.parent, depth=node.depth,
                   parts={"total": len(parts), "shown": sorted(parts)[:SHOWN]})
        if store.is_object_class(node.class_name):
            out.update(kind="object", why=f"in the tree at {node.path}: one document, its parts folded in")
        else:
            out.update(kind="container", why=f"in the tree at {node.path}, but its class is not in "
                                             "ESINDEXER_OBJECT_CLASSES: no document (its children keep their place)")
    elif node.name is not None:
        out.update(kind="detached", why="named, but no object of the tree holds it under its name (removed, a "
                                        "version copy, or kept under another key): no document")
    elif node.owner is not None and node.owner >= 0:
        owner: Node | None = store.nodes([node.owner]).get(node.owner)
        where = f" at {owner.path}" if owner is not None and owner.in_tree else " (itself not in the tree)"
        folded = _folded_in(es, indices, node.owner, zoid)
        content = ("its content is in that object's document" if folded else
                   "left out of that object's document (beyond its budget of parts, or not written yet): a "
                   "reference there" if folded is False else "that object has no document")
        out.update(kind="part", owner=node.owner, owner_path=owner.path if owner is not None else None,
                   folded=folded, why=f"a part of object {node.owner}{where}: {content}")
    elif node.owner == -1:
        out.update(kind="shared", why="reached from several objects: folded into none, no document")
    else:
        out.update(kind="unreachable", why="no object reaches it (garbage until the next pack): no document")
    return out
