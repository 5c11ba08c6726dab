"""``esindexer status``: where each client stands, read at the moment of asking.

From PostgreSQL: whether an indexer runs now (it holds its client id's advisory lock),
the saved progress (its tid, the commit time that tid encodes, and when it was saved),
the rows committed after it (exact up to :data:`~esindexer.source.backlog.DEFAULT_CAP`),
the lag, dead letters by kind, captured pack deletions not yet applied and the crash
guard. From Elasticsearch: the documents in the configured indices and where the alias
points, and whether the database went back in time behind the index (a restore: the
mark a service left, or this command's own look at the newest documents). "Caught up" is
said only when nothing committed is unapplied: no newer transaction *and* no captured
deletion (a pack writes no new tid, so tids alone cannot tell) *and* no database behind.
"""

from __future__ import annotations

from typing import Any

from esindexer.config import Settings
from esindexer.es.fields import unmapped
from esindexer.pipeline import crashguard, rewind
from esindexer.pipeline.objectreader import object_class_filter
from esindexer.source import backlog, deadletters, deletions, follow, graph, partitions, progress, runs
from esindexer.source.pg import has_relation
from esindexer.source.tid import tid_to_datetime, tid_to_epoch


class UnknownClient(LookupError):
    """No indexer of the client id asked about ever ran here: no saved progress, no crash
    guard row, and none runs now."""

    def __init__(self, client_id: str, known: list[str]):
        self.client_id = client_id
        self.known = known
        names = ", ".join(repr(name) for name in known)
        super().__init__(f"no indexer with client id {client_id!r} has run against this database; "
                         + (f"client ids that have: {names}" if known
                            else "no indexer has run against it yet")
                         + " (set ESINDEXER_CLIENT_ID, or use --all)")


def _when(tid: int) -> str | None:
    return tid_to_datetime(tid).isoformat() if tid > 0 else None


def saved_progress(conn: Any) -> dict[str, tuple[int, str]]:
    """``client_id -> (tid, saved at as ISO 8601)`` of every client with saved progress."""
    try:
        with conn.cursor() as cur:
            if not has_relation(cur, progress.PROGRESS_TABLE):
                return {}
            cur.execute(f"SELECT client_id, tid, updated_at FROM {progress.PROGRESS_TABLE} ORDER BY client_id")
            return {client: (int(tid), saved.isoformat()) for client, tid, saved in cur.fetchall()}
    finally:
        conn.rollback()


def clients_that_ran(conn: Any) -> set[str]:
    """Client ids that started an indexer in this database (the crash guard's rows), also
    those that never saved progress (a first batch that did not settle, a crash loop)."""
    try:
        with conn.cursor() as cur:
            if not has_relation(cur, runs.TABLE):
                return set()
            cur.execute(f"SELECT client_id FROM {runs.TABLE}")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.rollback()


#: How ``documents_error`` begins when Elasticsearch could not answer.
ES_FAILED = "Elasticsearch did not answer"


def index_figures(settings: Settings, es: Any, failures: list[Exception] | None = None) -> dict[str, Any]:
    """Documents per configured index (None: the index does not exist) and the alias's
    indices, from Elasticsearch; on failure, ``documents``, ``indices`` and ``alias`` are
    None (unknown: not "missing"), ``documents_error`` says why, and the exception is
    appended to ``failures`` (status still reports what PostgreSQL knows, then exits 5)."""
    indices = list(settings.routed_indices)
    alias = settings.alias_name
    figures: dict[str, Any] = {"documents": None, "indices": dict.fromkeys(indices),
                               "alias": {"name": alias, "indices": None}}
    try:
        lenient = es.options(ignore_status=404)
        # Count what has been written, not what the last scheduled refresh made visible
        # (right after a backfill those differ); a refresh is cheap and changes no document.
        lenient.indices.refresh(index=",".join(indices), ignore_unavailable=True)
        for name in indices:  # _count: what a search finds (nested documents not counted)
            answer = lenient.count(index=name)
            figures["indices"][name] = int(answer["count"]) if answer.meta.status == 200 else None
        figures["documents"] = sum(n for n in figures["indices"].values() if n is not None)
        held = lenient.indices.get_alias(name=alias)
        figures["alias"]["indices"] = sorted(held.body) if held.meta.status == 200 else []
        if warning := _alias_warning(es, settings, figures["alias"]["indices"]):
            figures["alias_warning"] = warning
        found = unmapped(es, indices)
        figures["unmapped_fields"] = {"documents": found.documents, "fields": found.fields,
                                      "per_index": found.per_index}
    except Exception as exc:  # Elasticsearch away or refusing: say so, do not fail the report
        from esindexer.es.client import describe_error

        figures.update(documents=None, indices=None, alias=None,
                       documents_error=f"{ES_FAILED}: {describe_error(exc)}")
        if failures is not None:
            failures.append(exc)
    return figures


def _alias_warning(es: Any, settings: Settings, held: list[str]) -> str | None:
    """What is wrong with the alias seen from this generation: it serves another generation
    beside this one (every object found twice), or instead of it."""
    from esindexer.es.admin import other_generations

    others = other_generations(es, settings)
    if not others:
        return None
    ours = [index for index in held if index in settings.routed_indices]
    if ours:
        return (f"the alias serves two generations: {', '.join(ours)} (this one) and {', '.join(others)}; every "
                "search finds each object twice. Keep one: `esindexer alias` with the prefix and client id of the "
                "generation to serve points the alias at it alone")
    return (f"the alias serves {', '.join(others)}, not this generation's indices: searches do not see what this "
            "client id indexes (normal for the old generation after a re-index)")


def database_behind(conn: Any, settings: Settings, es: Any) -> dict[str, Any] | None:
    """Whether the database went back in time behind the index (``esindexer.pipeline.rewind``):
    the mark a service left on the indices, and this check's own comparison of the newest
    documents with the database (it finds a restore the service has not seen yet). ``{}``:
    nothing found; None: Elasticsearch could not be asked."""
    from esindexer.es.sink import ElasticsearchSink

    try:
        sink = ElasticsearchSink(settings, es=es)
        mark = sink.behind_mark()
        evidence = rewind.find(conn, sink)
    except Exception:  # Elasticsearch away: index_figures says why
        conn.rollback()
        return None
    if mark is None and evidence is None:
        return {}
    found: dict[str, Any] = {"marked": mark is not None, **(mark or {})}
    if evidence is not None:
        found.update(database_tid=evidence.database_tid, index_tid=evidence.index_tid, ahead=len(evidence.ahead),
                     ghosts=len(evidence.ghosts),
                     examples=sorted({z for z, *_ in evidence.ahead} | {z for z, _ in evidence.ghosts})[:5])
    return found


def client_report(conn: Any, settings: Settings, client_id: str, saved: tuple[int, str] | None,
                  latest: int, es: Any | None, failures: list[Exception] | None = None) -> dict[str, Any]:
    """The report of one client id (keys are the JSON keys of ``status --json``).

    ``es`` is None for a client id other than the configured one: its indices are
    named by its own settings, which this process does not have.
    """
    tid, saved_at = saved if saved is not None else (-1, None)
    try:
        running = runs.client_running(conn, client_id)
        behind = backlog.rows_after(conn, tid)
        by_kind = deadletters.count_by_kind(conn, client_id)
        pending = deletions.count_unapplied(conn, client_id)
        workers = [{"client_id": name, "progress_tid": tid,
                    "caught_up": tid >= latest and deletions.count_unapplied(conn, name) == 0}
                   for name, tid in partitions.partition_progress(conn, settings.client_id).items()]
    finally:
        conn.rollback()
    guard = crashguard.describe(conn, client_id, settings.crash_guard_after, tid)
    # Lag from tid timestamps (never by subtracting raw tids); unknown before the first batch.
    lag: float | None = None
    if tid > 0:
        lag = max(tid_to_epoch(latest) - tid_to_epoch(tid), 0.0) if latest > tid else 0.0
    report: dict[str, Any] = {
        "client_id": client_id,
        "running": running,
        "progress_tid": tid if tid > 0 else None,
        "progress_committed_at": _when(tid),
        "progress_saved_at": saved_at,
        "latest_tid": latest if latest > 0 else None,
        "latest_committed_at": _when(latest),
        "rows_behind": behind.rows,
        "rows_behind_exact": behind.exact,
        "lag_seconds": round(lag, 3) if lag is not None else None,
        "caught_up": tid >= latest and pending == 0,
        "dead_letters": sum(by_kind.values()),
        "dead_letters_by_kind": by_kind,
        "pending_pack_deletions": pending,
        "partition": settings.partition,
        "partitions": workers,
    }
    if settings.documents == "objects" and es is not None:
        report["object_graph"] = model = graph.summary(conn, client_id, object_class_filter(settings))
        # (the service refuses to start on such a graph: say why here too)
        report["object_graph_problem"] = problem = graph.coverage_problem(conn, client_id, tid)
        report["caught_up"] = report["caught_up"] and model is not None and model["complete"] \
            and not model["documents_to_write"] and problem is None
    if es is not None:
        report.update(index_figures(settings, es, failures))
        report["database_behind"] = rewound = database_behind(conn, settings, es)
        report["database_behind_index"] = None if rewound is None else bool(rewound)
        report["caught_up"] = report["caught_up"] and not rewound
    else:
        report.update({"documents": None, "indices": None, "alias": None,
                       "documents_error": "indices unknown: ask with this client id's settings "
                                          "(ESINDEXER_CLIENT_ID, ESINDEXER_INDEX_PREFIX)"})
    report["crash_guard"] = guard
    return report


def status_reports(conn: Any, settings: Settings, es: Any | None, every_client: bool = False,
                   failures: list[Exception] | None = None) -> list[dict[str, Any]]:
    """One report per client id: the configured one, or (``every_client``) each that has
    run here. Raises :class:`UnknownClient` when the configured client id never ran here
    (unless ``every_client``). What Elasticsearch failed with is appended to ``failures``."""
    known = saved_progress(conn)
    latest = follow.latest_tid(conn)
    conn.rollback()
    ran = clients_that_ran(conn)
    client_id = settings.worker_id  # the partition's own id with ESINDEXER_PARTITION
    exists = client_id in known or client_id in ran or runs.client_running(conn, client_id)
    if not every_client and not exists:
        raise UnknownClient(client_id, sorted(set(known) | ran))
    ids = sorted(set(known) | ran | ({client_id} if exists else set())) if every_client else [client_id]
    return [client_report(conn, settings, name, known.get(name), latest, es if name == client_id else None,
                          failures) for name in ids]


def status_lines(report: dict[str, Any]) -> list[str]:
    """One client's report as aligned ``key  value`` lines for a terminal."""
    text = dict(report)
    text.pop("rows_behind_exact", None)
    if not report["rows_behind_exact"]:
        text["rows_behind"] = f"more than {report['rows_behind']:,}"
    text["dead_letters_by_kind"] = ", ".join(f"{kind} {n}" for kind, n in report["dead_letters_by_kind"].items()) \
        or None
    if str(report.get("documents_error")).startswith(ES_FAILED):  # not "missing": not known
        text["indices"] = f"unknown ({report['documents_error']})"
        text.pop("documents_error")
    elif report.get("indices") is not None:
        text["indices"] = ", ".join(f"{name} ({'missing' if n is None else f'{n} docs'})"
                                    for name, n in report["indices"].items())
    alias = report.get("alias")
    if alias is not None:
        held = alias["indices"]
        text["alias"] = f"{alias['name']} -> " + (", ".join(held) if held else "nothing") if held is not None \
            else alias["name"]
    unmapped_fields = report.get("unmapped_fields")
    if unmapped_fields is not None:
        text["unmapped_fields"] = "none" if not unmapped_fields["documents"] else (
            f"WARNING: {unmapped_fields['documents']:,} documents hold fields not indexed (searches on them miss "
            "those documents): " + ", ".join(f"{name} ({n:,})" for name, n in unmapped_fields["fields"].items()))


    if "object_graph" in report:
        model, problem = report["object_graph"], text.pop("object_graph_problem", None)
        text["object_graph"] = f"NOT USABLE: {problem}" if problem else \
            "none yet (the service has not run with documents=objects)" if model is None else (
            (f"complete at tid {model['tid']}" if model["complete"] else
             f"being built (a backfill: read up to tid {model['tid']}, {model.get('staged_records', 0):,} records "
             "read into it; every document is written once it is read)")
            + f"; {model['in_tree']:,} records in the tree; {model['documents_to_write']:,} documents to write")
    behind = report.get("database_behind")
    if behind is not None:
        text["database_behind"] = (
            f"YES: {behind['ahead']} of the newest documents newer than their object, {behind['ghosts']} of "
            f"objects the database lacks (zoids {', '.join(map(str, behind['examples']))}); "
            + ("marked; repaired by the service once it has re-read the restored records "
               "(ESINDEXER_REPAIR_AFTER_RESTORE=auto), or by esindexer verify --repair after that"
               if behind["marked"] else "not marked yet: start the service") if behind else "no")
        text.pop("database_behind_index", None)
    guard = report["crash_guard"]
    text["crash_guard"] = (f"{guard['guard']}; last run {guard['last_run'] or '-'}; unclean exits in a row "
                           f"{guard['unclean_exits']} (guarded from {guard['threshold']})")
    text["partitions"] = "; ".join(f"{w['client_id']} {'caught up' if w['caught_up'] else 'behind'} "
                                   f"(tid {w['progress_tid']})" for w in report["partitions"]) or None
    width = max(map(len, text))
    return [f"{key.replace('_', ' '):<{width}}  {value if value is not None else '-'}" for key, value in text.items()]
