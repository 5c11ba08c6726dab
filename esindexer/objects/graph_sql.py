"""The set-based statements that keep the object graph's owners and tree exact.

The tables are :mod:`esindexer.source.graph`'s; these statements run inside the one
transaction :meth:`esindexer.objects.store.GraphStore.apply` applies a batch in, on
temporary tables dropped at its commit.
"""

from __future__ import annotations

from esindexer.source.graph import EDGES, NODES, STAGE_EDGES, STAGE_NODES

#: Attributes under which containers keep their items in a BTree: BTreeFolder2 (Plone's
#: Dexterity folders and Plone 6's site root) and zope.container. An item held there under
#: a key is a child even when no pickle shows its id (a Zope tool keeps it on its class).
ITEM_ATTRIBUTES = ("_tree", "_SampleContainer__data")
_ITEMS = ", ".join(f"'{name}'" for name in ITEM_ATTRIBUTES)

#: Whether BTree record ``b`` holds a container's items: held under an item attribute
#: itself, or a node or bucket below such a tree (walking up its structural references).
_IS_ITEMS = f"""EXISTS (
    WITH RECURSIVE up(zoid) AS (
        SELECT b.zoid
      UNION
        SELECT g.src FROM up JOIN {EDGES} g ON g.client_id = %(c)s AND g.dst = up.zoid AND g.key IS NULL)
    SELECT 1 FROM up JOIN {EDGES} f ON f.client_id = %(c)s AND f.dst = up.zoid AND f.key IN ({_ITEMS}))"""

#: The edges of those BTree records (or of every items tree, ``ITEMS_ALL``) marked *listed*
#: when they hold a container's items; returns the records whose holding changed.
ITEMS = f"""
UPDATE {EDGES} e SET listed = x.items
FROM (SELECT b.zoid, {_IS_ITEMS} AS items FROM {NODES} b
      WHERE b.client_id = %(c)s AND b.zoid = ANY(%(btrees)s) AND b.class_name LIKE 'BTrees.%%') x
WHERE e.client_id = %(c)s AND e.src = x.zoid AND e.key IS NOT NULL AND e.listed <> x.items
RETURNING e.dst
"""
ITEMS_ALL = f"""
WITH RECURSIVE items(zoid) AS (
    SELECT f.dst FROM {EDGES} f
    JOIN {NODES} b ON b.client_id = %(c)s AND b.zoid = f.dst AND b.class_name LIKE 'BTrees.%%'
    WHERE f.client_id = %(c)s AND f.key IN ({_ITEMS})
  UNION
    SELECT g.dst FROM items i JOIN {EDGES} g ON g.client_id = %(c)s AND g.src = i.zoid AND g.key IS NULL)
UPDATE {EDGES} e SET listed = true FROM items x
WHERE e.client_id = %(c)s AND e.src = x.zoid AND e.key IS NOT NULL AND NOT e.listed
"""

#: Unnamed records downstream of the seeds through unnamed records: whose owner may change.
DOWNSTREAM = f"""
CREATE TEMP TABLE obj_down ON COMMIT DROP AS
WITH RECURSIVE walk(zoid) AS (
    SELECT n.zoid FROM {NODES} n WHERE n.client_id = %(c)s AND n.zoid = ANY(%(seeds)s) AND (n.name IS NULL AND NOT n.listed)
  UNION
    SELECT n.zoid FROM walk w
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.src = w.zoid
    JOIN {NODES} n ON n.client_id = %(c)s AND n.zoid = e.dst AND (n.name IS NULL AND NOT n.listed))
SELECT zoid FROM walk;
CREATE UNIQUE INDEX ON obj_down (zoid);
ANALYZE obj_down;
"""

#: Their owners again: pairs (record, owner) reached from named records or from unnamed
#: records outside the set (whose owner stands), through the set; one owner: a part.
OWNERS = f"""
CREATE TEMP TABLE obj_owners ON COMMIT DROP AS
WITH RECURSIVE reach(zoid, own) AS (
    SELECT e.dst, CASE WHEN NOT (s.name IS NULL AND NOT s.listed) THEN s.zoid ELSE s.owner END
    FROM obj_down d
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.dst = d.zoid
    JOIN {NODES} s ON s.client_id = %(c)s AND s.zoid = e.src
    WHERE NOT (s.name IS NULL AND NOT s.listed)
       OR (s.owner IS NOT NULL AND NOT EXISTS (SELECT 1 FROM obj_down x WHERE x.zoid = s.zoid))
  UNION
    SELECT e.dst, r.own FROM reach r
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.src = r.zoid
    JOIN obj_down d ON d.zoid = e.dst)
SELECT d.zoid, n.owner AS old,
       CASE WHEN count(r.own) = 0 THEN NULL
            WHEN count(DISTINCT r.own) = 1 AND min(r.own) >= 0 THEN min(r.own)
            ELSE -1 END AS new
FROM obj_down d JOIN {NODES} n ON n.client_id = %(c)s AND n.zoid = d.zoid
LEFT JOIN reach r ON r.zoid = d.zoid
GROUP BY d.zoid, n.owner
"""

OWNERS_SET = f"""
ANALYZE obj_owners;
UPDATE {NODES} n SET owner = o.new FROM obj_owners o
WHERE n.client_id = %(c)s AND n.zoid = o.zoid AND n.owner IS DISTINCT FROM o.new
"""

#: Named records held under their name by the records whose owner changed.
OWNER_CHANGED_CHILDREN = f"""
SELECT DISTINCT e.dst FROM obj_owners o
JOIN {EDGES} e ON e.client_id = %(c)s AND e.src = o.zoid
JOIN {NODES} x ON x.client_id = %(c)s AND x.zoid = e.dst AND (e.key = x.name OR e.listed)
WHERE o.old IS DISTINCT FROM o.new
"""

#: The tree nodes to place again: the changed ones and every descendant, with their place
#: before (to tell what moved). A node's children are found through the edges that placed
#: them (from the node or from one of its parts), not by an index on ``parent``: placing
#: a record then changes no indexed column, so its row is updated in place. A child whose
#: holding edge or part changed in this batch is one of the changed ones itself.
SUBTREE = f"""
CREATE TEMP TABLE obj_replace ON COMMIT DROP AS
WITH RECURSIVE sub(zoid) AS (
    SELECT unnest(%(changed)s::bigint[])
  UNION
    SELECT n.zoid FROM sub
    CROSS JOIN LATERAL (SELECT sub.zoid AS src
                        UNION ALL
                        SELECT s.zoid FROM {NODES} s WHERE s.client_id = %(c)s AND s.owner = sub.zoid
                            AND s.name IS NULL AND NOT s.listed) holder
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.src = holder.src
    JOIN {NODES} n ON n.client_id = %(c)s AND n.zoid = e.dst AND n.parent = sub.zoid AND n.in_tree)
SELECT n.zoid, n.in_tree, n.parent, n.path FROM sub JOIN {NODES} n ON n.client_id = %(c)s AND n.zoid = sub.zoid
WHERE n.zoid <> 0;
CREATE UNIQUE INDEX ON obj_replace (zoid);
ANALYZE obj_replace;
UPDATE {NODES} n SET in_tree = false, parent = NULL, depth = NULL, path = NULL
FROM obj_replace r WHERE n.client_id = %(c)s AND n.zoid = r.zoid;
"""

#: The container of the record holding an edge: itself when named, else its owner.
_CONTAINER = "CASE WHEN s.name IS NOT NULL OR s.listed THEN s.zoid ELSE s.owner END"

#: Deepest tree node (outside the set) that holds one of the set under its name.
DEEPEST_CANDIDATE = f"""
SELECT max(t.depth) FROM obj_replace r
JOIN {NODES} x ON x.client_id = %(c)s AND x.zoid = r.zoid
JOIN {EDGES} e ON e.client_id = %(c)s AND e.dst = x.zoid AND (e.key = x.name OR e.listed)
JOIN {NODES} s ON s.client_id = %(c)s AND s.zoid = e.src
JOIN {NODES} t ON t.client_id = %(c)s AND t.zoid = {_CONTAINER} AND t.in_tree
"""

#: The tree nodes placed by the previous level (filled by :data:`PLACE_LEVEL` itself).
PLACED = """
CREATE TEMP TABLE obj_placed (zoid bigint PRIMARY KEY) ON COMMIT DROP;
CREATE TEMP TABLE obj_newly (zoid bigint PRIMARY KEY) ON COMMIT DROP;
"""

#: One level of placement: records not in the tree that a tree node of depth d-1 holds
#: under their name (directly or through one of its parts). Among several holders: the
#: smallest zoid (the depth is the smallest already, levels go down one at a time). The
#: records looked at are those reset (``obj_replace``) and those the previous level's
#: placed nodes hold; the placed ones become the next level's ``obj_placed``.
PLACE_LEVEL = f"""
WITH candidates AS (
    SELECT x.zoid, t.zoid AS parent, t.path AS parent_path, e.key AS name
    FROM obj_replace r
    JOIN {NODES} x ON x.client_id = %(c)s AND x.zoid = r.zoid AND NOT x.in_tree AND x.zoid <> 0
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.dst = x.zoid AND (e.key = x.name OR e.listed)
    JOIN {NODES} s ON s.client_id = %(c)s AND s.zoid = e.src
    JOIN {NODES} t ON t.client_id = %(c)s AND t.zoid = {_CONTAINER} AND t.in_tree AND t.depth = %(above)s
  UNION ALL
    SELECT x.zoid, t.zoid, t.path, e.key
    FROM obj_placed p
    JOIN {NODES} t ON t.client_id = %(c)s AND t.zoid = p.zoid
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.src = t.zoid
    JOIN {NODES} x ON x.client_id = %(c)s AND x.zoid = e.dst AND (e.key = x.name OR e.listed) AND NOT x.in_tree AND x.zoid <> 0
  UNION ALL
    SELECT x.zoid, t.zoid, t.path, e.key
    FROM obj_placed p
    JOIN {NODES} t ON t.client_id = %(c)s AND t.zoid = p.zoid
    JOIN {NODES} s ON s.client_id = %(c)s AND s.owner = t.zoid AND (s.name IS NULL AND NOT s.listed)
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.src = s.zoid
    JOIN {NODES} x ON x.client_id = %(c)s AND x.zoid = e.dst AND (e.key = x.name OR e.listed) AND NOT x.in_tree AND x.zoid <> 0
), chosen AS (
    SELECT DISTINCT ON (zoid) zoid, parent,
           CASE WHEN parent_path = '/' THEN '/' || name ELSE parent_path || '/' || name END AS path
    FROM candidates ORDER BY zoid, parent
), placed AS (
    UPDATE {NODES} n SET in_tree = true, parent = c.parent, depth = %(depth)s, path = c.path
    FROM chosen c WHERE n.client_id = %(c)s AND n.zoid = c.zoid AND NOT n.in_tree
    RETURNING n.zoid
), cleared AS (
    DELETE FROM obj_placed
), newly AS (
    INSERT INTO obj_newly SELECT zoid FROM placed ON CONFLICT DO NOTHING
)
INSERT INTO obj_placed SELECT zoid FROM placed
"""
#: The same for a whole graph (:meth:`GraphStore.resolve_all`), where every placed record
#: is placed anew: no ``obj_newly`` to keep.
PLACE_LEVEL_ALL = PLACE_LEVEL.replace("""), newly AS (
    INSERT INTO obj_newly SELECT zoid FROM placed ON CONFLICT DO NOTHING
)""", ")")

#: Every unnamed record's owner at once (the end of a backfill: the graph was written
#: without being resolved, batch by batch). The edges into unnamed records are set apart
#: first, so that the walk joins two small tables by hashing: joined to the whole graph,
#: PostgreSQL probed the nodes' index once per edge (6.0 s of the statement's 10.7 under
#: EXPLAIN ANALYZE at 10^6 objects).
ALL_OWNERS = f"""
CREATE TEMP TABLE obj_unnamed ON COMMIT DROP AS
SELECT zoid FROM {NODES} WHERE client_id = %(c)s AND name IS NULL AND NOT listed;
ANALYZE obj_unnamed;
CREATE TEMP TABLE obj_inner ON COMMIT DROP AS
SELECT e.src, e.dst FROM {EDGES} e JOIN obj_unnamed u ON u.zoid = e.dst WHERE e.client_id = %(c)s;
ANALYZE obj_inner;
CREATE TEMP TABLE obj_all_owners ON COMMIT DROP AS
WITH RECURSIVE reach(zoid, own) AS (
    SELECT i.dst, i.src FROM obj_inner i
    JOIN {NODES} s ON s.client_id = %(c)s AND s.zoid = i.src AND NOT (s.name IS NULL AND NOT s.listed)
  UNION
    SELECT i.dst, r.own FROM reach r JOIN obj_inner i ON i.src = r.zoid)
SELECT zoid, CASE WHEN count(DISTINCT own) = 1 THEN min(own) ELSE -1 END AS owner FROM reach GROUP BY zoid;
UPDATE {NODES} n SET owner = NULL WHERE n.client_id = %(c)s AND n.owner IS NOT NULL;
UPDATE {NODES} n SET owner = o.owner FROM obj_all_owners o WHERE n.client_id = %(c)s AND n.zoid = o.zoid;
UPDATE {NODES} n SET in_tree = false, parent = NULL, depth = NULL, path = NULL
WHERE n.client_id = %(c)s AND n.in_tree;
CREATE TEMP TABLE obj_replace (zoid bigint PRIMARY KEY, in_tree boolean, parent bigint, path text) ON COMMIT DROP;
"""

#: What moved: placed again somewhere else, or no longer in the tree.
MOVED = f"""
SELECT r.zoid FROM obj_replace r JOIN {NODES} n ON n.client_id = %(c)s AND n.zoid = r.zoid
WHERE (r.in_tree, r.parent, r.path) IS DISTINCT FROM (n.in_tree, n.parent, n.path)
"""

#: A backfill's staged records (:meth:`GraphStore.resolve_all`): each record's latest
#: staged row, a deletion winning a tie (the staging transaction ``batch`` picks one of a
#: batch staged twice).
STAGED = f"""
CREATE TEMP TABLE obj_staged ON COMMIT DROP AS
SELECT DISTINCT ON (zoid) zoid, tid, batch, class_name, name, gone FROM {STAGE_NODES}
WHERE client_id = %(c)s ORDER BY zoid, tid DESC, gone DESC, batch DESC;
ANALYZE obj_staged;
"""

#: When the graph holds rows already: a node newer than the staged row stays, and so does
#: one as new as a staged record (a deletion wins a tie); a deletion removes its node; the
#: edges of the records written or deleted are replaced.
STAGED_REPLACE = f"""
DELETE FROM obj_staged s USING {NODES} n WHERE n.client_id = %(c)s AND n.zoid = s.zoid
    AND (n.tid > s.tid OR (n.tid = s.tid AND NOT s.gone));
DELETE FROM {NODES} n USING obj_staged s WHERE n.client_id = %(c)s AND n.zoid = s.zoid AND s.gone;
DELETE FROM {EDGES} e USING obj_staged s WHERE e.client_id = %(c)s AND e.src = s.zoid;
"""

#: The staged nodes and the edges staged with them (same batch; sorted: the indexes fill
#: in order); then no staging rows. ``_FRESH``: the graph has no rows yet, no conflict.
_STAGED_EDGES = f"""
INSERT INTO {EDGES} (client_id, src, dst, key, listed)
SELECT %(c)s, e.src, e.dst, e.key, e.listed FROM {STAGE_EDGES} e
JOIN obj_staged s ON s.zoid = e.src AND s.batch = e.batch AND NOT s.gone
WHERE e.client_id = %(c)s ORDER BY e.src;
DELETE FROM {STAGE_NODES} WHERE client_id = %(c)s;
DELETE FROM {STAGE_EDGES} WHERE client_id = %(c)s;
"""
STAGED_INSERT_FRESH = f"""
INSERT INTO {NODES} (client_id, zoid, tid, class_name, name)
SELECT %(c)s, zoid, tid, class_name, name FROM obj_staged WHERE NOT gone;
""" + _STAGED_EDGES
STAGED_INSERT = f"""
INSERT INTO {NODES} (client_id, zoid, tid, class_name, name)
SELECT %(c)s, zoid, tid, class_name, name FROM obj_staged WHERE NOT gone
ON CONFLICT (client_id, zoid) DO UPDATE SET tid = excluded.tid, class_name = excluded.class_name, name = excluded.name;
""" + _STAGED_EDGES

#: A backfill's batch whose records the graph may hold already (read again after a crash,
#: or changed during the backfill), from two temporary tables the batch is copied into
#: (:func:`esindexer.objects.unresolved.write` copies a batch of new records straight into
#: the graph's tables). A record already there at a tid as new stays; a newer one replaces
#: it, and says so (``xmax`` is set on a row an upsert updated, 0 on one it inserted), so
#: that its old edges go first.
BATCH_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS obj_batch_nodes (client_id text, zoid bigint, tid bigint, class_name text, name text)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS obj_batch_edges (client_id text, src bigint, dst bigint, key text, listed boolean)
    ON COMMIT DELETE ROWS;
"""
BATCH_NODES = f"""
INSERT INTO {NODES} AS n (client_id, zoid, tid, class_name, name)
SELECT %(c)s, zoid, tid, class_name, name FROM obj_batch_nodes
ON CONFLICT (client_id, zoid) DO UPDATE SET tid = excluded.tid, class_name = excluded.class_name, name = excluded.name
WHERE n.tid < excluded.tid
RETURNING n.zoid, n.xmax::text <> '0'
"""
BATCH_EDGES_OF = f"""
INSERT INTO {EDGES} (client_id, src, dst, key, listed)
SELECT %(c)s, src, dst, key, listed FROM obj_batch_edges WHERE src = ANY(%(written)s) ORDER BY src
"""
