"""Start-up steps of the service's pipeline that read or prepare the source and say
what they found: the triggers and cursors esindexer needs in the database, and the
warning when the indices were found gone although progress says they were filled.
(Kept apart from :mod:`esindexer.pipeline.indexer`, which runs the loop.)"""

from __future__ import annotations

import logging
from typing import Any

from esindexer.config import Settings
from esindexer.observe.metrics import Metrics
from esindexer.sink import Sink
from esindexer.source import deletions, notify, partitions, pg
from esindexer.source.tid import tid_to_datetime

log = logging.getLogger("esindexer.pipeline.indexer")  # the service's own lines, as before


def prepare_source(conn: Any, settings: Settings) -> bool:
    """Install triggers if allowed. Returns True when a sweep is due.

    A sweep is due when the deletion trigger was missing at start: packs may have
    run unseen before now (or, without the right to install it, at any time).
    """
    with pg.schema_lock(conn):  # processes starting at once must not race on CREATE
        had_trigger = deletions.capture_installed(conn)
        conn.rollback()
        if settings.install_triggers:
            notify.install_trigger(conn)
            conn.commit()
            deletions.install(conn)
        else:
            deletions.ensure_tables(conn)
    # A worker id without progress starts where the clients that covered its objects got to
    # (scaling out to partitions, or back to one process): esindexer.source.partitions.
    partitions.seed(conn, settings.client_id, settings.worker_id)
    deletions.start_cursor_at_end(conn, settings.worker_id)
    conn.commit()
    mode = settings.sweep_on_start
    return mode == "always" or (mode == "auto" and not had_trigger)


def warn_vanished(settings: Settings, sink: Sink, metrics: Metrics, start_tid: int) -> None:
    """None of the routed indices existed, yet progress says they were filled: they were
    deleted (or this is another cluster). Following on from the saved progress would
    index only what changes from now on, so say so, loudly, with the way back."""
    metrics.set_indices_vanished(True)
    log.error(
        "none of the indices %s existed at start, although client id %r has indexed up to %s: "
        "the documents written before were lost (indices deleted, or another Elasticsearch). Only "
        "changes from now on will be indexed. Rebuild the rest with `esindexer verify --repair` "
        "(writes every missing document) or build a new generation with `esindexer reindex`",
        ", ".join(sink.indices), settings.worker_id,
        tid_to_datetime(start_tid).isoformat(timespec="seconds"),
        extra={"indices": list(sink.indices), "progress_tid": start_tid})
