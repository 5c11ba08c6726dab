"""``esindexer status``: where one client stands, from PostgreSQL alone.

Every figure is read from the database at the moment of asking; "caught up" is said
only when nothing committed is unapplied: no newer transaction *and* no captured
deletion (a pack writes no new tid, so tids alone cannot tell).
"""

from __future__ import annotations

from typing import Any

from esindexer.config import Settings
from esindexer.pipeline import crashguard
from esindexer.source import deadletters, deletions, follow, partitions, progress
from esindexer.source.tid import tid_to_datetime, tid_to_epoch


def _when(tid: int) -> str | None:
    return tid_to_datetime(tid).isoformat() if tid > 0 else None


def status_report(conn: Any, settings: Settings) -> dict[str, Any]:
    """The report as printed by ``esindexer status`` (keys are its JSON keys)."""
    client_id = settings.worker_id
    try:
        saved = progress.get_progress_tid(conn, client_id)
        latest = follow.latest_tid(conn)
        by_kind = deadletters.count_by_kind(conn, client_id)
        pending = deletions.count_unapplied(conn, client_id)
        workers = [{"client_id": name, "progress_tid": tid,
                    "caught_up": tid >= latest and deletions.count_unapplied(conn, name) == 0}
                   for name, tid in partitions.partition_progress(conn, settings.client_id).items()]
    finally:
        conn.rollback()
    guard = crashguard.describe(conn, client_id, settings.crash_guard_after, saved)
    # Lag from tid timestamps (never by subtracting raw tids); unknown before the first batch.
    lag: float | None = None
    if saved > 0:
        lag = max(tid_to_epoch(latest) - tid_to_epoch(saved), 0.0) if latest > saved else 0.0
    return {
        "client_id": client_id,
        "progress_tid": saved,
        "progress_committed_at": _when(saved),
        "latest_tid": latest,
        "latest_committed_at": _when(latest),
        "lag_seconds": round(lag, 3) if lag is not None else None,
        "caught_up": saved >= latest and pending == 0,
        "dead_letters": sum(by_kind.values()),
        "dead_letters_by_kind": by_kind,
        "pending_pack_deletions": pending,
        "crash_guard": guard,
        "partition": settings.partition,
        "partitions": workers,
    }


def status_lines(report: dict[str, Any]) -> list[str]:
    """The report as aligned ``key  value`` lines for a terminal."""
    text = dict(report)
    text["dead_letters_by_kind"] = ", ".join(f"{kind} {n}" for kind, n in report["dead_letters_by_kind"].items()) \
        or None
    guard = report["crash_guard"]
    text["crash_guard"] = (f"{guard['guard']}; last run {guard['last_run'] or '-'}; unclean exits in a row "
                           f"{guard['unclean_exits']} (guarded from {guard['threshold']})")
    text["partitions"] = "; ".join(f"{w['client_id']} {'caught up' if w['caught_up'] else 'behind'} "
                                   f"(tid {w['progress_tid']})" for w in report["partitions"]) or None
    width = max(map(len, text))
    return [f"{key.replace('_', ' '):<{width}}  {value if value is not None else '-'}" for key, value in text.items()]
