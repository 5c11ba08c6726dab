"""The object graph's tables and the set-based statements that keep owners and the tree exact.

Kept in the database esindexer already writes to, per client id (a re-index generation
builds its own). ``nodes`` holds one row per record seen (its name, its owner when it is
unnamed, its place when it is in the tree), ``edges`` its references with their keys,
``dirty`` the objects whose documents must be rewritten (written in the transaction that
changed the graph, removed in the progress transaction once Elasticsearch accepted them:
a crash in between leaves them to be rebuilt at the next start), ``applied`` the last tid
the graph reflects.
"""

from __future__ import annotations

NODES = "esindexer_obj_nodes"
EDGES = "esindexer_obj_edges"
DIRTY = "esindexer_obj_dirty"
APPLIED = "esindexer_obj_applied"
TABLES = (NODES, EDGES, DIRTY, APPLIED)

CREATE = f"""
CREATE TABLE IF NOT EXISTS {NODES} (
    client_id text NOT NULL, zoid bigint NOT NULL, tid bigint NOT NULL, class_name text,
    name text,                 -- NULL: unnamed; '' only for the root
    owner bigint,              -- unnamed: the one named record reaching it; -1 shared; NULL none
    in_tree boolean NOT NULL DEFAULT false,
    parent bigint, depth integer, path text,
    PRIMARY KEY (client_id, zoid));
CREATE INDEX IF NOT EXISTS {NODES}_owner ON {NODES} (client_id, owner) WHERE owner >= 0;
CREATE INDEX IF NOT EXISTS {NODES}_parent ON {NODES} (client_id, parent) WHERE parent IS NOT NULL;
CREATE TABLE IF NOT EXISTS {EDGES} (
    client_id text NOT NULL, src bigint NOT NULL, dst bigint NOT NULL, key text);
CREATE INDEX IF NOT EXISTS {EDGES}_src ON {EDGES} (client_id, src);
CREATE INDEX IF NOT EXISTS {EDGES}_dst ON {EDGES} (client_id, dst);
CREATE TABLE IF NOT EXISTS {DIRTY} (
    client_id text NOT NULL, zoid bigint NOT NULL, as_of bigint NOT NULL, PRIMARY KEY (client_id, zoid));
CREATE TABLE IF NOT EXISTS {APPLIED} (client_id text PRIMARY KEY, tid bigint NOT NULL);
"""

#: Unnamed records downstream of the seeds through unnamed records: whose owner may change.
DOWNSTREAM = f"""
CREATE TEMP TABLE obj_down ON COMMIT DROP AS
WITH RECURSIVE walk(zoid) AS (
    SELECT n.zoid FROM {NODES} n WHERE n.client_id = %(c)s AND n.zoid = ANY(%(seeds)s) AND n.name IS NULL
  UNION
    SELECT n.zoid FROM walk w
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.src = w.zoid
    JOIN {NODES} n ON n.client_id = %(c)s AND n.zoid = e.dst AND n.name IS NULL)
SELECT zoid FROM walk;
CREATE UNIQUE INDEX ON obj_down (zoid);
"""

#: Their owners again: pairs (record, owner) reached from named records or from unnamed
#: records outside the set (whose owner stands), through the set; one owner: a part.
OWNERS = f"""
CREATE TEMP TABLE obj_owners ON COMMIT DROP AS
WITH RECURSIVE reach(zoid, own) AS (
    SELECT e.dst, CASE WHEN s.name IS NOT NULL THEN s.zoid ELSE s.owner END
    FROM obj_down d
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.dst = d.zoid
    JOIN {NODES} s ON s.client_id = %(c)s AND s.zoid = e.src
    WHERE s.name IS NOT NULL
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
GROUP BY d.zoid, n.owner;
UPDATE {NODES} n SET owner = o.new FROM obj_owners o
WHERE n.client_id = %(c)s AND n.zoid = o.zoid AND n.owner IS DISTINCT FROM o.new;
"""

#: Named records held under their name by the records whose owner changed.
OWNER_CHANGED_CHILDREN = f"""
SELECT DISTINCT e.dst FROM obj_owners o
JOIN {EDGES} e ON e.client_id = %(c)s AND e.src = o.zoid
JOIN {NODES} x ON x.client_id = %(c)s AND x.zoid = e.dst AND x.name = e.key
WHERE o.old IS DISTINCT FROM o.new
"""

#: The tree nodes to place again: the changed ones and every descendant (by parent links),
#: with their place before (to tell what moved).
SUBTREE = f"""
CREATE TEMP TABLE obj_replace ON COMMIT DROP AS
WITH RECURSIVE sub(zoid) AS (
    SELECT unnest(%(changed)s::bigint[])
  UNION
    SELECT n.zoid FROM sub JOIN {NODES} n ON n.client_id = %(c)s AND n.parent = sub.zoid AND n.in_tree)
SELECT n.zoid, n.in_tree, n.parent, n.path FROM sub JOIN {NODES} n ON n.client_id = %(c)s AND n.zoid = sub.zoid
WHERE n.zoid <> 0;
CREATE UNIQUE INDEX ON obj_replace (zoid);
UPDATE {NODES} n SET in_tree = false, parent = NULL, depth = NULL, path = NULL
FROM obj_replace r WHERE n.client_id = %(c)s AND n.zoid = r.zoid;
"""

#: The container of the record holding an edge: itself when named, else its owner.
_CONTAINER = "CASE WHEN s.name IS NOT NULL THEN s.zoid ELSE s.owner END"

#: Deepest tree node (outside the set) that holds one of the set under its name.
DEEPEST_CANDIDATE = f"""
SELECT max(t.depth) FROM obj_replace r
JOIN {NODES} x ON x.client_id = %(c)s AND x.zoid = r.zoid
JOIN {EDGES} e ON e.client_id = %(c)s AND e.dst = x.zoid AND e.key = x.name
JOIN {NODES} s ON s.client_id = %(c)s AND s.zoid = e.src
JOIN {NODES} t ON t.client_id = %(c)s AND t.zoid = {_CONTAINER} AND t.in_tree
"""

#: One level of placement: records not in the tree that a tree node of depth d-1 holds
#: under their name (directly or through one of its parts). Among several holders: the
#: smallest zoid (the depth is the smallest already, levels go down one at a time).
PLACE_LEVEL = f"""
WITH candidates AS (
    SELECT x.zoid, t.zoid AS parent, t.path AS parent_path, x.name
    FROM obj_replace r
    JOIN {NODES} x ON x.client_id = %(c)s AND x.zoid = r.zoid AND NOT x.in_tree AND x.name <> ''
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.dst = x.zoid AND e.key = x.name
    JOIN {NODES} s ON s.client_id = %(c)s AND s.zoid = e.src
    JOIN {NODES} t ON t.client_id = %(c)s AND t.zoid = {_CONTAINER} AND t.in_tree AND t.depth = %(above)s
  UNION ALL
    SELECT x.zoid, t.zoid, t.path, x.name
    FROM {NODES} t
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.src = t.zoid
    JOIN {NODES} x ON x.client_id = %(c)s AND x.zoid = e.dst AND x.name = e.key AND NOT x.in_tree AND x.name <> ''
    WHERE t.client_id = %(c)s AND t.zoid = ANY(%(placed)s)
  UNION ALL
    SELECT x.zoid, t.zoid, t.path, x.name
    FROM {NODES} t
    JOIN {NODES} s ON s.client_id = %(c)s AND s.owner = t.zoid AND s.name IS NULL
    JOIN {EDGES} e ON e.client_id = %(c)s AND e.src = s.zoid
    JOIN {NODES} x ON x.client_id = %(c)s AND x.zoid = e.dst AND x.name = e.key AND NOT x.in_tree AND x.name <> ''
    WHERE t.client_id = %(c)s AND t.zoid = ANY(%(placed)s)
), chosen AS (
    SELECT DISTINCT ON (zoid) zoid, parent,
           CASE WHEN parent_path = '/' THEN '/' || name ELSE parent_path || '/' || name END AS path
    FROM candidates ORDER BY zoid, parent)
UPDATE {NODES} n SET in_tree = true, parent = c.parent, depth = %(depth)s, path = c.path
FROM chosen c WHERE n.client_id = %(c)s AND n.zoid = c.zoid AND NOT n.in_tree
RETURNING n.zoid
"""

#: What moved: placed again somewhere else, or no longer in the tree.
MOVED = f"""
SELECT r.zoid FROM obj_replace r JOIN {NODES} n ON n.client_id = %(c)s AND n.zoid = r.zoid
WHERE (r.in_tree, r.parent, r.path) IS DISTINCT FROM (n.in_tree, n.parent, n.path)
"""
