"""The refresh policy: live changes searchable almost at once, backfills left alone.

Elasticsearch makes a write searchable only at the next refresh of its index
(``refresh_interval``, 1 s by default), so with the default settings a commit becomes
searchable 0-1 s after esindexer wrote it, although esindexer's own part takes a few
milliseconds. Lowering the interval for everyone costs a backfill throughput and makes
segments nobody searches yet.

So the committer tells the :class:`Refresher` which indices a *live* batch touched (one
read while the follower was caught up), after the batch is settled; the refresher
thread refreshes them, at most once per ``live_refresh_interval`` seconds, coalescing
what arrives meanwhile into the next refresh. A change written while caught up is
therefore searchable within about one interval plus a refresh. Batches read while
behind (a backfill, a catch-up after an outage) never cause an explicit refresh: the
index's own interval applies, and a backfill pays nothing.

Cost bound: at most ``1 / live_refresh_interval`` refreshes a second (10 with the
default 0.1 s), each over the touched indices only; an index that takes one write a
second gets about one small segment a second, which Elasticsearch's merge policy folds
away (docs/performance.md has the segment counts measured after a live run).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from esindexer.observe.metrics import Metrics
from esindexer.sink import Sink

log = logging.getLogger(__name__)


class Refresher:
    """One thread that refreshes touched indices, rate-limited and coalesced."""

    def __init__(self, sink: Sink, interval: float, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic):
        self.sink = sink
        self.interval = interval
        self.metrics = metrics
        self._clock = clock
        self._pending: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._last = float("-inf")
        self._thread = threading.Thread(target=self._run, name="esindexer-refresher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def touched(self, indices: Iterable[str]) -> None:
        """Indices a settled live batch wrote to; they are refreshed soon."""
        with self._cond:
            before = len(self._pending)
            self._pending.update(indices)
            if len(self._pending) != before:
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(10)

    def _next(self) -> set[str] | None:
        """Wait for indices to refresh and for the interval since the last refresh; take them."""
        with self._cond:
            while not self._closed:
                if self._pending:
                    wait = self._last + self.interval - self._clock()
                    if wait <= 0:
                        taken, self._pending = self._pending, set()
                        return taken
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        while (indices := self._next()) is not None:
            self._last = self._clock()
            try:
                self.sink.refresh(indices)
                self.metrics.record_refresh()
            except Exception as exc:  # searchable a little later (the index's own refresh): not fatal
                log.warning("explicit refresh of %s failed (%s); the index's own refresh_interval applies",
                            ",".join(sorted(indices)), exc)
