"""Publishing a generation: the alias switch, refused when it would hide data from searches.

An alias that points at an empty index, at indices that do not exist (a mistyped
prefix) or at a generation still behind the database makes every search through it
wrong, silently. :func:`readiness` names each such problem, reading the real state
(Elasticsearch's indices and counts, PostgreSQL's progress of the generation's client
id); :func:`switch` moves the alias in one request and then re-reads it, so what the
command prints is what the cluster holds.

"Caught up" means: the generation's saved progress reached the newest tid read when the
check began, a moment before the switch. Under an application that commits all the
time the newest tid moves every few hundred milliseconds, so only a generation that is
being followed live can pass (``esindexer reindex`` follows it itself,
:mod:`esindexer.ops.handover`); commits after that tid are the follower's to write, before
and after the switch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from esindexer.config import Settings
from esindexer.source import deletions, follow, progress
from esindexer.source.tid import tid_to_datetime

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

#: How long a generation that is followed live may take to reach the commit that was
#: newest when the switch was asked for (a running service is a second behind at most).
CATCH_UP_WAIT = 15.0


@dataclass
class Readiness:
    """What the switch would do, and every reason it should not."""

    alias: str
    target: list[str]
    current: list[str]
    documents: int = 0
    observed: int = 0  #: the newest tid when the check began: the generation must have reached it
    problems: list[str] = field(default_factory=list)

    @property
    def removed(self) -> list[str]:
        return [index for index in self.current if index not in self.target]

    @property
    def added(self) -> list[str]:
        return [index for index in self.target if index not in self.current]


def _alias_indices(es: Elasticsearch, alias: str) -> list[str]:
    return sorted(es.indices.get_alias(name=alias)) if es.indices.exists_alias(name=alias) else []


def _when(tid: int) -> str:
    return tid_to_datetime(tid).isoformat(timespec="seconds") if tid > 0 else "never"


def _workers(conn: Any, client_id: str) -> list[str]:
    """The ids whose progress together covers every object of ``client_id``'s generation:
    the client id itself, or (partitioned workers) the complete set of partitions that
    got furthest; the client id alone when none has progress yet."""
    from esindexer.source.partitions import covering_sets, partition_progress

    known = partition_progress(conn, client_id)
    own = progress.get_progress_tid(conn, client_id)
    if own > 0:
        known[client_id] = own
    conn.rollback()
    sets = covering_sets(client_id, known)
    return max(sets, key=lambda ids: min(known[i] for i in ids)) if sets else [client_id]


def readiness(es: Elasticsearch, conn: Any, settings: Settings, wait: float = CATCH_UP_WAIT) -> Readiness:
    """Check the generation of ``settings`` (its prefix and client id) before a switch."""
    target = list(settings.routed_indices)
    report = Readiness(settings.alias_name, target, _alias_indices(es, settings.alias_name))
    missing = [index for index in target if not es.indices.exists(index=index)]
    if missing:
        report.problems.append(
            f"{', '.join(missing)} do{'es' if len(missing) == 1 else ''} not exist: is ESINDEXER_INDEX_PREFIX "
            f"({settings.index_prefix!r}) right? Build a generation first (esindexer reindex, or esindexer run "
            "--until-caught-up with ESINDEXER_ATTACH_ALIAS=false)")
        return report
    es.indices.refresh(index=",".join(target))
    report.documents = int(es.count(index=",".join(target))["count"])
    if report.documents == 0:
        report.problems.append(f"{', '.join(target)} hold no document: switching would make every search "
                               "through the alias return nothing")
    try:
        newest = report.observed = follow.latest_tid(conn)
        workers = _workers(conn, settings.client_id)
        deadline = time.monotonic() + wait
        while True:
            # the generation is as far as its slowest worker (the one process, or a partition)
            saved = min(progress.get_progress_tid(conn, worker) for worker in workers)
            pending = sum(deletions.count_unapplied(conn, worker) for worker in workers)
            conn.rollback()
            if (saved >= newest and pending == 0) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)  # a generation followed live reaches it within a second or two
    finally:
        conn.rollback()
    if saved <= 0:
        report.problems.append(f"client id {settings.client_id!r} has no saved progress: nothing was indexed "
                               "under it (is ESINDEXER_CLIENT_ID the generation's?)")
    elif saved < newest or pending:
        behind = [f"progress at {_when(saved)}, newest commit {_when(newest)}"] if saved < newest else []
        behind += [f"{pending} pack deletion(s) not applied"] if pending else []
        report.problems.append(f"client id {settings.client_id!r} is behind the database ({'; '.join(behind)}): "
                               "a generation keeps up with a writing application only while it is followed live: "
                               "follow it while switching "
                               "(esindexer run with its prefix and client id and ESINDEXER_ATTACH_ALIAS=false), or "
                               "let esindexer reindex follow, switch and hand over")
    return report


def switch(es: Elasticsearch, settings: Settings) -> list[str]:
    """Point the alias at exactly the generation's indices in one request; returns what it
    points at afterwards, read back from the cluster."""
    from esindexer.es.admin import switch_alias

    switch_alias(es, settings)
    return _alias_indices(es, settings.alias_name)
