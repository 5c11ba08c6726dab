"""The error budget: how many dead letters may pile up before the service stops.

A few dead letters are normal (one odd object); a flood means something systematic (a
mapping that refuses a whole class, a converter bug) and dead-lettering everything
would leave the operator a table to replay instead of an alert to act on. Pure logic,
with an injectable clock, so its rules are tested without servers.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from esindexer.errors import ErrorBudgetExhausted
from esindexer.source.deadletters import TABLE


class ErrorBudget:
    """At most ``budget`` dead letters within any ``window`` seconds (``budget <= 0``: no limit)."""

    def __init__(self, budget: int, window: float, client_id: str,
                 clock: Callable[[], float] = time.monotonic):
        self.budget = budget
        self.window = window
        self.client_id = client_id
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()

    def spend(self, count: int) -> None:
        """Count ``count`` new dead letters; raise :class:`ErrorBudgetExhausted` past the budget."""
        if not count or self.budget <= 0:
            return
        now = self._clock()
        self._times.extend([now] * count)
        window_start = now - self.window
        while self._times and self._times[0] < window_start:
            self._times.popleft()
        if len(self._times) > self.budget:
            raise ErrorBudgetExhausted(
                f"error budget exhausted: {len(self._times)} dead letters within "
                f"{self.window:g}s (budget {self.budget}); stopping instead of dropping "
                f"everything. Inspect {TABLE} (client_id={self.client_id!r}), fix the "
                "cause, then restart.")
