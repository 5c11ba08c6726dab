"""Where a new worker id starts: from the clients that indexed the same objects before it.

A partitioned process (``ESINDEXER_PARTITION=i/N``) keeps progress and a deletion cursor
under its own id, ``<client_id>.partition-<i>-of-<N>``
(:func:`esindexer.config.partition_worker_id`). Without a seed, scaling a running
indexer out to N partitions would index everything again from the start, and going
back to one process would do the same, and would also skip the pack deletions the
partitions had not applied yet (a new cursor starts at the end of the log).

So a worker id without saved progress starts where a **covering** set of clients with
the same ``client_id`` had all got to: the single process (``<client_id>``, which covers
every object), or all N partitions of one N. Its progress is the lowest of theirs and
its deletion cursor the lowest of theirs. That is safe: every change of its objects up
to that tid was indexed by the client that covered the object, and every deletion
before that cursor was passed by every member, so applied by the one owning the
object; what comes after is replayed (versioned writes and deletes make a replay
harmless). A set that does not cover every object (partition 1 of 2 alone) is never
used. Of several covering sets, the one furthest ahead wins.

The seed is a copy: the rows it was taken from stay (they may belong to processes
still running) and, like any client's cursor, keep the deletion log from being pruned
until they are removed (docs/operations.md, "Partitioned workers").
"""

from __future__ import annotations

import logging
import re
from typing import Any

from esindexer.config import PARTITION_INFIX
from esindexer.source.deletions import CURSOR_TABLE
from esindexer.source.pg import has_relation
from esindexer.source.progress import PROGRESS_TABLE, get_progress_tid

log = logging.getLogger(__name__)

_INFIX = PARTITION_INFIX


def covering_sets(client_id: str, known: dict[str, int]) -> list[list[str]]:
    """The sets of ids in ``known`` (id -> progress tid) that together cover every object:
    ``[client_id]`` if known, and every complete set of partitions of one N."""
    sets: list[list[str]] = [[client_id]] if client_id in known else []
    pattern = re.compile(re.escape(client_id + _INFIX) + r"(\d+)-of-(\d+)")
    by_count: dict[int, dict[int, str]] = {}
    for name in known:
        match = pattern.fullmatch(name)
        if match:
            by_count.setdefault(int(match.group(2)), {})[int(match.group(1))] = name
    for count, members in sorted(by_count.items()):
        if set(members) == set(range(count)):
            sets.append([members[i] for i in range(count)])
    return sets


def seed_source(conn: Any, client_id: str, worker_id: str) -> tuple[int, list[str]] | None:
    """Where ``worker_id`` would be seeded from: ``(tid, the covering set's ids)``, or None
    when it has progress of its own or no covering set exists. Only reads (the start-up
    estimate of the backlog uses it too, so that it counts from where the work starts)."""
    with conn.cursor() as cur:
        if not has_relation(cur, PROGRESS_TABLE):
            return None
        cur.execute(f"SELECT client_id, tid FROM {PROGRESS_TABLE} WHERE client_id = %s OR starts_with(client_id, %s)",
                    (client_id, client_id + _INFIX))
        known = {name: int(tid) for name, tid in cur.fetchall()}
    if worker_id in known:
        return None
    candidates = [s for s in covering_sets(client_id, known) if worker_id not in s]
    if not candidates:
        return None
    best = max(candidates, key=lambda members: min(known[m] for m in members))
    return min(known[m] for m in best), best


def start_tid(conn: Any, client_id: str, worker_id: str) -> int:
    """The tid ``worker_id``'s pipeline starts after: its saved progress, else the seed it
    would get (:func:`seed_source`), else -1 (from the start). Only reads."""
    source = seed_source(conn, client_id, worker_id)
    return source[0] if source is not None else get_progress_tid(conn, worker_id)


def seed(conn: Any, client_id: str, worker_id: str) -> int | None:
    """Give ``worker_id`` the progress and deletion cursor of the best covering set of its
    ``client_id``'s clients when it has none; returns the seeded tid (None: nothing done).
    The caller holds ``worker_id``'s lock and commits."""
    source = seed_source(conn, client_id, worker_id)
    if source is None:
        return None
    tid, best = source
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {PROGRESS_TABLE} (client_id, tid, updated_at) VALUES (%s, %s, clock_timestamp())",
                    (worker_id, tid))
        if has_relation(cur, CURSOR_TABLE):
            # The lowest cursor of the set, or none at all if a member has none (the
            # log did not exist for it: the worker then starts at the log's end as it would).
            cur.execute(f"SELECT count(*) FROM {CURSOR_TABLE} WHERE client_id = ANY(%s)", (best,))
            if cur.fetchone()[0] == len(best):
                cur.execute(f"INSERT INTO {CURSOR_TABLE} (client_id, last_xid, last_id) "
                            f"SELECT %s, last_xid, last_id FROM {CURSOR_TABLE} WHERE client_id = ANY(%s) "
                            "ORDER BY last_xid, last_id LIMIT 1 ON CONFLICT (client_id) DO NOTHING",
                            (worker_id, best))
    log.info("client %r starts where %s had all got to: tid %d", worker_id, ", ".join(map(repr, best)), tid,
             extra={"client_id": worker_id, "tid": tid, "seeded_from": best})
    return tid


def partition_progress(conn: Any, client_id: str) -> dict[str, int]:
    """Saved progress of every partition worker of ``client_id`` (derived id -> tid), by id."""
    with conn.cursor() as cur:
        if not has_relation(cur, PROGRESS_TABLE):
            return {}
        cur.execute(f"SELECT client_id, tid FROM {PROGRESS_TABLE} WHERE starts_with(client_id, %s) ORDER BY 1",
                    (client_id + _INFIX,))
        return {name: int(tid) for name, tid in cur.fetchall()}
