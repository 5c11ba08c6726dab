"""The field watch: documents whose fields the index could not map are said, not hidden.

An index keeps fields beyond its field limit in ``_source`` without indexing them, and a
value its mapping refuses likewise; the document is indexed and a search on that field
silently misses it (issue 22). This thread asks the sink every
``unmapped_check_interval`` seconds how many documents carry such fields, sets
``esindexer_documents_with_unmapped_fields``, and logs a warning naming the fields each
time the count grows (once, not at every check). ``esindexer status`` and ``esindexer
explain ZOID`` show the same from Elasticsearch.

While a backlog is worked through, it searches at most every :data:`BACKLOG_SEARCH_EVERY`
seconds (:func:`search_every`); so does the periodic check for a database gone back in
time (:mod:`esindexer.pipeline.rewind`). Why: an index nobody searched for 30 s is
*search-idle*, and Elasticsearch then skips its scheduled refreshes, so a backfill writes
few, large segments. Any search wakes it into a refresh every second for the next 30 s,
and each refresh leaves a small segment that every later versioned write looks its id up
in. In a 10^6-object backfill, two searches a minute kept the index refreshing for half
of the run (47-50 refreshes against the raw bulk's 21-22), and the node's indexing time
per document grew by a fifth (docs/performance.md, *The node's work at 10^6*). Once the
service is caught up (or was already at its start), a check searches every interval
again: a live index is searched by its users anyway.
"""

from __future__ import annotations

import logging
import threading
import time

from esindexer.observe.metrics import Metrics
from esindexer.sink import Sink

log = logging.getLogger(__name__)

#: Seconds between periodic searches (the field watch's and the database-rewind check's)
#: while the service works through a backlog (module docstring).
BACKLOG_SEARCH_EVERY = 600.0


def search_every(interval: float, backlog: bool) -> float:
    """The seconds a periodic search waits: at least :data:`BACKLOG_SEARCH_EVERY` while a
    backlog is worked through (:meth:`Metrics.working_through_backlog`), else ``interval``."""
    return max(interval, BACKLOG_SEARCH_EVERY) if backlog else interval


class FieldWatch:
    """One daemon thread checking the sink's unmapped fields at an interval."""

    def __init__(self, sink: Sink, interval: float, metrics: Metrics):
        self.sink = sink
        self.interval = interval
        self.metrics = metrics
        self._said = 0  # the count last warned about
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="esindexer-fieldwatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def check(self, refresh: bool = False) -> int | None:
        """Check once; the number of documents with unmapped fields (None: could not ask).
        ``refresh``: make every write visible first (a backfill does not refresh)."""
        try:
            if refresh:
                self.sink.refresh()
            found = self.sink.unmapped()
        except Exception as exc:  # the sink away: the next check will tell
            log.debug("could not count documents with unmapped fields: %s", exc)
            return None
        self.metrics.set_unmapped_documents(found.documents)
        if found.documents > self._said:
            fields = ", ".join(f"{name} ({count})" for name, count in found.fields.items())
            log.warning("%d documents hold fields the index did not map, so searches on those fields miss "
                        "them (field limit reached, or a value the mapping refused): %s; see `esindexer explain "
                        "ZOID` and docs/documents.md, *Fields not mapped*", found.documents, fields,
                        extra={"documents": found.documents, "fields": found.fields, "per_index": found.per_index})
        self._said = found.documents
        return found.documents

    def _run(self) -> None:
        last = time.monotonic()
        while not self._closed.wait(self.interval):
            if time.monotonic() - last >= search_every(self.interval, self.metrics.working_through_backlog()) - 0.01:
                last = time.monotonic()
                self.check()
