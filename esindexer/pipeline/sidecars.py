"""The threads that run beside one life of the pipeline and end with it: the refresher
(live changes searchable at once, :mod:`esindexer.pipeline.refresher`) and the field
watch (unmapped fields said, :mod:`esindexer.pipeline.fieldwatch`). Started and closed
together here so that the loop in :mod:`esindexer.pipeline.indexer` stays the loop."""

from __future__ import annotations

from esindexer.config import Settings
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.fieldwatch import FieldWatch
from esindexer.pipeline.refresher import Refresher
from esindexer.sink import Sink


class Sidecars:
    """Start with :meth:`start`; :meth:`close` at the end of the pipeline's life."""

    def __init__(self, settings: Settings, sink: Sink, metrics: Metrics, until_caught_up: bool):
        self.until_caught_up = until_caught_up
        #: None for a backfill (``until_caught_up``), which never refreshes, or when turned off
        self.refresher = Refresher(sink, settings.live_refresh_interval, metrics) \
            if settings.live_refresh_interval > 0 and not until_caught_up else None
        self.watch = FieldWatch(sink, settings.unmapped_check_interval, metrics) \
            if settings.unmapped_check_interval > 0 else None

    def start(self) -> None:
        for thread in (self.refresher, self.watch):
            if thread is not None:
                thread.start()

    def close(self, caught_up: bool) -> None:
        """Stop the threads; a one-shot run that caught up says its unmapped fields once."""
        if self.refresher is not None:
            self.refresher.close()
        if self.watch is not None:
            self.watch.close()
            if self.until_caught_up and caught_up:
                self.watch.check(refresh=True)
