"""``esindexer verify`` with documents=objects: the object documents against the database.

What should be indexed is every object of the tree whose class is an object class, each
at its record's current tid, at its path, with its parts' newest tid. The walk reads the
graph, the database's current tids and the index, and sorts differences into
``missing`` (an object without a document), ``orphan`` (a document of no object: removed,
moved out of the tree, not an object class), ``stale`` (older record, older part, or
another path) and, with ``deep``, ``changed`` (a body that is not what the object's
current records assemble to). ``deep`` also rebuilds the whole graph from the database's
current records under a scratch client id and compares every record's kind, owner and
path with the graph the service keeps (``graph``): the check of the incremental
maintenance itself.

Each difference is read again before it is reported; one explained by the service's
lag (records newer than the graph, documents still dirty, pack deletions not applied yet;
for ``graph``, also what changed while the rebuild read the database: :func:`_graph_lag`)
is reported as ``lagging``.
With ``repair``, differences are written again (documents assembled from the current
records, versioned with the graph's applied tid, like the service's) and read back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from esindexer.config import Settings
from esindexer.convert.jsonifier import Jsonifier, Kind
from esindexer.documents import Action, DocumentBuilder
from esindexer.es.repair import Write, send_writes
from esindexer.es.scan import Held, held_now
from esindexer.objects.assemble import assemble
from esindexer.objects.edges import RecordFacts, record_facts
from esindexer.objects.store import GraphStore
from esindexer.pipeline.objectreader import object_class_filter
from esindexer.source import deletions, graph, pg
from esindexer.source.graph import APPLIED, EDGES, NODES

KINDS = ("missing", "orphan", "stale", "changed", "graph")
EXAMPLES = 10
PAGE = 1000


@dataclass
class ObjectReport:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in KINDS})
    lagging: int = 0
    #: captured pack deletions the service has not applied to its graph and index yet
    pending_deletions: int = 0
    objects: int = 0
    documents: int = 0
    repaired: int = 0
    still_different: int = 0

    @property
    def still(self) -> int:
        return self.still_different

    @property
    def still_examples(self) -> dict[str, list[int]]:
        return {k: v for k, v in self.examples.items() if v}

    @property
    def remaining(self) -> int:
        return self.still_different if self.repaired or self.still_different else sum(self.counts.values())

    def note(self, kind: str, zoids: set[int]) -> None:
        self.counts[kind] += len(zoids)
        self.examples[kind] = sorted(set(self.examples[kind]) | zoids)[:EXAMPLES]

    def as_dict(self) -> dict[str, Any]:
        return {"documents": "objects", "objects": self.objects, "indexed": self.documents,
                "differences": self.counts, "examples": self.examples, "lagging": self.lagging,
                "pending_deletions": self.pending_deletions,
                "repaired": self.repaired, "still_different": self.still_different}


def _indexed(es: Any, indices: tuple[str, ...], deep: bool) -> dict[int, dict[str, Any]]:
    """``zoid -> source`` of every document (the whole body with ``deep``, else its place)."""
    out: dict[int, dict[str, Any]] = {}
    after: list[Any] | None = None
    includes = True if deep else ["tid", "path", "parts_tid"]
    while True:
        kwargs: dict[str, Any] = dict(index=",".join(indices), size=PAGE, sort=[{"zoid": "asc"}, {"_index": "asc"}],
                                      source=includes, ignore_unavailable=True, track_total_hits=False,
                                      query={"match_all": {}})
        if after is not None:
            kwargs["search_after"] = after
        hits = es.search(**kwargs)["hits"]["hits"]
        if not hits:
            return out
        for h in hits:
            out[int(h["_id"])] = h["_source"]
        after = hits[-1]["sort"]


def _expected(store: GraphStore) -> dict[int, tuple[int, str]]:
    """``zoid -> (record tid in the graph, path)`` of every object that should have a document."""
    with store.conn.cursor() as cur:
        cur.execute(f"SELECT zoid, tid, class_name, path FROM {NODES} WHERE client_id = %s AND in_tree",
                    (store.client_id,))
        rows = {int(z): (int(t), p) for z, t, c, p in cur.fetchall() if store.is_object_class(c)}
    store.conn.rollback()
    return rows


def _differences(conn: Any, store: GraphStore, es: Any, indices: tuple[str, ...], deep: bool,
                 builder: DocumentBuilder, jsonifier: Jsonifier) -> tuple[dict[str, set[int]], set[int], int, int]:
    expected = _expected(store)
    held = _indexed(es, indices, deep)
    found: dict[str, set[int]] = {k: set() for k in KINDS}
    found["missing"] = set(expected) - set(held)
    found["orphan"] = set(held) - set(expected)
    common = sorted(set(expected) & set(held))
    current = pg.current_tids(conn, common)
    parts = store.parts(common)
    part_tids = pg.current_tids(conn, sorted({p for ps in parts.values() for p in ps}))
    for zoid in common:
        doc = held[zoid]
        newest_part = max((part_tids.get(p, 0) for p in parts.get(zoid, ())), default=0)
        if doc.get("tid") != current.get(zoid) or doc.get("path") != expected[zoid][1] \
                or int(doc.get("parts_tid") or 0) < newest_part:
            found["stale"].add(zoid)
    if deep:
        for start in range(0, len(common), PAGE):
            page = common[start:start + PAGE]
            for action in _actions(store, conn, jsonifier, builder, page, 0):
                if action.source is not None and orjson.loads(action.source) != held[action.zoid]:
                    found["changed"].add(action.zoid)
        found["changed"] -= found["stale"]
    # lag: what the service has not applied yet (newer records than the graph, dirty rows)
    applied = store.applied_tid()
    lagging = set(store.dirty()) | {z for z, t in current.items() if t > applied}
    lagging |= deletions.unapplied_zoids(conn, store.client_id, sorted(set().union(*found.values())))
    return found, lagging, len(expected), len(held)


def _actions(store: GraphStore, conn: Any, jsonifier: Jsonifier, builder: DocumentBuilder, zoids: list[int],
             version: int) -> list[Action]:
    return builder.assembled_actions(assemble(zoids, store, pg.CurrentStates(conn), jsonifier), version)


def _repair_writes(actions: list[Action], held: dict[int, list[Held]]) -> list[Write]:
    """How each repair is written (the reasons are :mod:`esindexer.es.repair`'s): over a hand
    change (a version above the graph's), only if the document is still the revision read;
    a missing document is created; otherwise at the graph's version, which a newer write of
    the service beats."""
    writes: list[Write] = []
    for action in actions:
        there = {h.index: h for h in held.get(action.zoid, [])}.get(action.index)
        if there is None:
            if action.op == "index":
                writes.append(Write(action, "create_on_conflict"))
        elif there.version > action.version:
            writes.append(Write(action, "conditional", there.seq_no, there.primary_term))
        else:
            writes.append(Write(action))
    return writes


def _graph_differences(conn: Any, settings: Settings, jsonifier: Jsonifier,
                       store: GraphStore) -> tuple[set[int], set[int]]:
    """Records whose kind, owner or path differ between the service's graph and one rebuilt
    from the database's current records now, and which of them are the service's lag
    (:func:`_graph_lag`)."""
    scratch = GraphStore(conn, f"{settings.worker_id}.verify", store.is_object_class)
    graph.forget(conn, scratch.client_id)
    read_at = 0
    try:
        for rows in pg.current_pages(conn, 5000):
            facts: list[RecordFacts] = []
            for zoid, tid, data in rows:
                read_at = max(read_at, tid)
                conversion = jsonifier.convert((tid, zoid), data)
                if conversion.kind is Kind.OK and conversion.json_text is not None:
                    state = orjson.loads(conversion.json_text)
                    facts.append(record_facts(zoid, tid, conversion.class_name, state))
            scratch.apply(facts, [], read_at, resolve=False)
        scratch.resolve_all(read_at, quiet=True)
        with conn.cursor() as cur:
            cur.execute(f"""
                SELECT coalesce(a.zoid, b.zoid) FROM
                  (SELECT * FROM {NODES} WHERE client_id = %(live)s) a
                  FULL JOIN (SELECT * FROM {NODES} WHERE client_id = %(scratch)s) b ON a.zoid = b.zoid
                WHERE (a.in_tree, a.path, coalesce(a.owner, -2), a.name)
                      IS DISTINCT FROM (b.in_tree, b.path, coalesce(b.owner, -2), b.name)
                  AND coalesce(a.tid, 0) <= %(at)s AND coalesce(b.tid, 0) <= %(at)s""",
                        {"live": store.client_id, "scratch": scratch.client_id, "at": read_at})
            out = {int(r[0]) for r in cur.fetchall()}
        conn.rollback()
        return out, _graph_lag(conn, store.client_id, scratch.client_id, read_at, out)
    finally:
        graph.forget(conn, scratch.client_id)


def _graph_lag(conn: Any, live: str, scratch: str, read_at: int, differing: set[int]) -> set[int]:
    """Which of ``differing`` the two graphs may disagree on only because of changes the
    comparison cannot hold still, and every record those reach through either graph's
    references (a record's kind, owner and path depend only on the records that reach it,
    so a record none of them reaches differs for none of these reasons):

    - records whose captured deletion (a pack) the service has not applied yet;
    - records the two graphs hold at different tids (changed between the rebuild's reads
      of two pages, or applied by the service after the rebuild read them);
    - records only the service's graph holds that are newer than the rebuild's reads or
      still in the database (created behind the rebuild's scan);
    - records only the rebuilt graph holds that are gone from the database now (deleted
      after the rebuild read them) or newer than the service's graph (not applied yet).

    What stays a difference: a record the service's graph holds that the database lost
    with no deletion captured for it, a record it never applied although it read past its
    tid, or a record both hold at the same tid with another kind, owner or path."""
    if not differing:
        return set()
    seeds = deletions.unapplied_zoids(conn, live, None)
    with conn.cursor() as cur:
        source, key = pg.current_revisions(cur)
        cur.execute(f"SELECT tid FROM {APPLIED} WHERE client_id = %s", (live,))
        row = cur.fetchone()
        applied = int(row[0]) if row else 0
        cur.execute(f"""
            SELECT coalesce(a.zoid, b.zoid) FROM
              (SELECT zoid, tid FROM {NODES} WHERE client_id = %(live)s) a
              FULL JOIN (SELECT zoid, tid FROM {NODES} WHERE client_id = %(scratch)s) b ON a.zoid = b.zoid
            WHERE (a.zoid IS NOT NULL AND b.zoid IS NOT NULL AND a.tid <> b.tid)
               OR (b.zoid IS NULL AND (a.tid > %(at)s OR EXISTS (SELECT 1 FROM {source} WHERE {key} = a.zoid)))
               OR (a.zoid IS NULL AND (b.tid > %(applied)s
                                       OR NOT EXISTS (SELECT 1 FROM {source} WHERE {key} = b.zoid)))""",
                    {"live": live, "scratch": scratch, "at": read_at, "applied": applied})
        seeds |= {int(r[0]) for r in cur.fetchall()}
        if not seeds:
            conn.rollback()
            return set()
        cur.execute(f"""
            WITH RECURSIVE reach(zoid) AS (
              SELECT unnest(%(seeds)s::bigint[])
              UNION
              SELECT e.dst FROM reach r JOIN {EDGES} e ON e.client_id = ANY(%(clients)s) AND e.src = r.zoid)
            SELECT zoid FROM reach WHERE zoid = ANY(%(differing)s)""",
                    {"seeds": sorted(seeds), "clients": [live, scratch], "differing": sorted(differing)})
        lag = {int(r[0]) for r in cur.fetchall()}
    conn.rollback()
    return lag


def verify_objects(conn: Any, es: Any, builder: DocumentBuilder, jsonifier: Jsonifier,
                   settings: Settings, deep: bool = False, repair: bool = False) -> ObjectReport:
    """Compare (and with ``repair`` rewrite) the object documents; see the module docstring."""
    graph.require_coverage(conn, settings.worker_id)  # a lost graph is no truth to repair the index to
    store = GraphStore(conn, settings.worker_id, object_class_filter(settings))
    report = ObjectReport()
    indices = builder.indices
    es.indices.refresh(index=",".join(indices), ignore_unavailable=True)
    found, lagging, report.objects, report.documents = _differences(conn, store, es, indices, deep, builder, jsonifier)
    graph_lag: set[int] = set()
    if deep:
        found["graph"], graph_lag = _graph_differences(conn, settings, jsonifier, store)
    if any(found.values()):  # read again: what the service wrote meanwhile is no difference
        time.sleep(1.0)
        es.indices.refresh(index=",".join(indices), ignore_unavailable=True)
        again, lagging2, report.objects, report.documents = _differences(conn, store, es, indices, deep, builder,
                                                                         jsonifier)
        again["graph"] = found["graph"]
        lagging |= lagging2
        found = {k: found[k] & again[k] for k in KINDS}
    lagging |= graph_lag
    report.pending_deletions = deletions.count_unapplied(conn, store.client_id)
    conn.rollback()
    report.lagging = len(set().union(*found.values()) & lagging)
    for kind in KINDS:
        report.note(kind, found[kind] - lagging)
    if repair:
        to_write = sorted(set().union(*(found[k] - lagging for k in ("missing", "orphan", "stale", "changed"))))
        if to_write:
            version = store.applied_tid()
            orphans = found["orphan"] - lagging
            for start in range(0, len(to_write), PAGE):
                page = to_write[start:start + PAGE]
                live = [z for z in page if z not in orphans]
                actions = _actions(store, conn, jsonifier, builder, live, version) + \
                    [a for z in page if z in orphans for a in builder.delete_actions(version, z, version=version)]
                send_writes(es, _repair_writes(actions, held_now(es, indices, page)))
            es.indices.refresh(index=",".join(indices), ignore_unavailable=True)
            after, _lag, _o, _d = _differences(conn, store, es, indices, deep, builder, jsonifier)
            left = set().union(*(after[k] for k in ("missing", "orphan", "stale", "changed"))) & set(to_write)
            report.repaired = len(set(to_write) - left)
            report.still_different = len(left) + len(found["graph"] - lagging)
    return report
