"""The one back-off policy: capped exponential growth, with or without jitter.

Every retry loop in esindexer waits the same way (the bulk sender, the service's
start-up and reconnect loop, the source poller), so an outage is retried at the same
pace everywhere and one setting (``retry_max_seconds``) caps it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``delay(n)`` is the wait before retry ``n`` (1-based): ``first * 2**(n-1)``, at
    most ``maximum``. With ``jitter`` it is drawn from ``[jitter_floor * d, d]`` so that
    many clients do not retry in step (``jitter_floor=0`` is "full jitter")."""

    first: float = 0.5
    maximum: float = 60.0
    jitter: bool = False
    jitter_floor: float = 0.0

    def delay(self, attempt: int) -> float:
        grown = self.first * 2.0 ** min(max(attempt, 1) - 1, 60)
        capped = min(self.maximum, grown)
        if self.jitter:
            return random.uniform(self.jitter_floor * capped, capped)
        return capped
