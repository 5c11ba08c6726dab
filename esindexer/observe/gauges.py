"""The help texts of the state gauges (:class:`esindexer.observe.metrics._StateCollector`),
one per gauge name without the ``esindexer_`` prefix: what an operator reads next to the
value on /metrics. docs/metrics.md says the same at more length."""

from __future__ import annotations

GAUGE_HELP: dict[str, str] = {
    "lag_seconds": "Commit time of the source's newest transaction minus commit time "
                   "of the last indexed one (0 when caught up).",
    "last_indexed_tid": "Tid of the last transaction whose documents Elasticsearch "
                        "accepted and whose progress was saved (float64: low bits lost).",
    "last_indexed_commit_timestamp_seconds": "Commit time encoded in the last indexed tid.",
    "last_progress_timestamp_seconds": "Wall-clock time of the last progress commit.",
    "source_latest_tid": "Newest tid in the source database's object_state "
                         "(-1 when empty; float64: low bits lost).",
    "source_latest_commit_timestamp_seconds": "Commit time encoded in the newest source tid.",
    "source_reachable": "1 if the source poller's last query succeeded, else 0.",
    "source_last_poll_timestamp_seconds": "Wall-clock time of the last successful "
                                          "source poll.",
    "dead_letters": "Documents currently held in the dead-letter table.",
    "error_budget_exhausted": "1 once the dead-letter error budget is exhausted.",
    "indices_vanished": "1 when none of the routed indices existed at start although saved "
                        "progress says they were filled (documents lost; see the log).",
    "documents_with_unmapped_fields": "Documents holding fields the index keeps but did not map "
                                      "(field limit reached, or a value the mapping refused): "
                                      "searches on those fields miss them.",
    "object_documents_to_write": "Object documents (documents=objects) left to send in one stretch: a "
                                 "backfill's whole tree once its graph is resolved, or what a restart found "
                                 "unwritten by the last run; 0 once all are sent.",
    "object_graph_resolution_started_timestamp_seconds": "When the running resolution of a backfill's "
        "object graph (documents=objects) began, Unix time; absent while none runs (it is PostgreSQL's "
        "work alone, 20 s at 10^6 objects, before the tree's documents are written).",

    "database_behind_index": "1 while the indices hold documents newer than the database (it went "
                             "back in time: restored from a backup) and the repair has not ended clean.",
    "live": "1 while the service is caught up and refreshes touched indices explicitly "
            "(live_refresh_interval); 0 while it works through a backlog (no explicit refresh).",
    "standby": "1 while this process waits as a hot standby because another esindexer holds "
               "the client id's lock (it takes over when that lock is freed); 0 while it indexes.",
    "crash_guard_active": "1 while records are converted in a child process because the "
                          "service kept dying at the same position (the crash guard).",
    "crash_guard_unclean_exits": "Deaths without a clean exit in a row at the saved progress, "
                                 "counted at this start.",
}
