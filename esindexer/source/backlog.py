"""How much work lies ahead: the current rows committed after a tid, counted up to a cap.

The follower reads one row per current object whose tid is after the saved progress
(history-free: ``object_state``; history-preserving: ``current_object``), so that count
is exactly the rows left. Both tables have an index on ``tid`` and the count walks it
(213,442 rows: 16 ms on the test machine); a count stops at ``cap`` rows so that
``esindexer status`` on a database ten million rows behind still answers quickly. Beyond the cap the count is not exact, and :class:`Backlog` says so;
the planner's estimate (from the table statistics) stands in where a figure is wanted
anyway, such as the total of a progress bar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from esindexer.source.pg import keeps_history, reading

#: Rows counted at most.
DEFAULT_CAP = 1_000_000


@dataclass(frozen=True)
class Backlog:
    """Rows committed after a tid: ``rows`` exactly when ``exact``, else at least ``rows``
    (the cap) and about ``estimate`` (the planner's guess)."""

    rows: int
    exact: bool
    estimate: int

    @property
    def best_guess(self) -> int:
        """The exact count, or the larger of the cap and the planner's estimate."""
        return self.rows if self.exact else max(self.rows, self.estimate)


def rows_after(conn: Any, after_tid: int, up_to_tid: int | None = None, cap: int = DEFAULT_CAP) -> Backlog:
    """Current rows with ``after_tid < tid <= up_to_tid`` (no upper bound when None)."""
    with reading(conn) as cur:
        table = "current_object" if keeps_history(cur) else "object_state"
        where = "tid > %(after)s" + (" AND tid <= %(up_to)s" if up_to_tid is not None else "")
        args = {"after": after_tid, "up_to": up_to_tid, "limit": cap + 1}
        cur.execute(f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where} LIMIT %(limit)s) AS ahead", args)
        rows = int(cur.fetchone()[0])
        if rows <= cap:
            return Backlog(rows, True, rows)
        cur.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} WHERE {where}", args)
        plan = cur.fetchone()[0]
        plan = json.loads(plan) if isinstance(plan, str) else plan
        return Backlog(cap, False, int(plan[0]["Plan"]["Plan Rows"]))
