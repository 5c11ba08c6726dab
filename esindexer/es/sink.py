"""Elasticsearch as the :class:`~esindexer.sink.Sink`: the one object the pipeline and the
operator commands hold, wiring the client, the bulk sender, index administration and
index scans together for one configuration."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from esindexer.config import Settings
from esindexer.documents import Action
from esindexer.es.admin import ensure_indices
from esindexer.es.bulk import BulkSender
from esindexer.es.client import make_es_client
from esindexer.es.fields import unmapped
from esindexer.es.marks import read_mark, write_mark
from esindexer.es.scan import indexed_zoids, newest_documents
from esindexer.sink import Indexed, SendResult, Unmapped

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch


class ElasticsearchSink:
    """Writes and reads the ``<prefix>-<route>`` indices of one configuration.

    ``stop`` is set on shutdown (back-off sleeps wake and the send is abandoned);
    ``on_retry(reason, exc)`` and ``on_request(outcome, seconds)`` feed the metrics.
    """

    def __init__(self, settings: Settings, *, es: Elasticsearch | None = None,
                 stop: threading.Event | None = None,
                 on_retry: Callable[[str, BaseException], None] | None = None,
                 on_request: Callable[[str, float], None] | None = None):
        self.settings = settings
        self.es = es if es is not None else make_es_client(settings)
        self.sender = BulkSender(self.es, retry_max_seconds=settings.retry_max_seconds,
                                 retry_attempts=settings.retry_attempts, stop=stop,
                                 on_retry=on_retry, on_request=on_request)
        self._indices = settings.routed_indices

    @property
    def indices(self) -> tuple[str, ...]:
        return self._indices

    def ensure_indices(self) -> tuple[str, ...]:
        return ensure_indices(self.es, self.settings)

    def missing_indices(self) -> tuple[str, ...]:
        return tuple(index for index in self._indices if not self.es.indices.exists(index=index))

    def send(self, actions: Sequence[Action]) -> SendResult:
        return self.sender.send(actions)

    def indexed(self, low: int | None = None, high: int | None = None) -> Iterator[list[Indexed]]:
        for page in indexed_zoids(self.es, self._indices, low=low, high=high):
            yield [Indexed(index, zoid, tid) for index, zoid, tid in page]

    def refresh(self, indices: Collection[str] | None = None) -> None:
        self.es.options(ignore_status=404).indices.refresh(index=",".join(sorted(indices or self._indices)),
                                                           ignore_unavailable=True)

    def unmapped(self) -> Unmapped:
        return unmapped(self.es, self._indices)

    def newest(self, count: int) -> list[Indexed]:
        return [Indexed(index, zoid, tid) for index, zoid, tid in newest_documents(self.es, self._indices, count)]

    def behind_mark(self) -> dict[str, Any] | None:
        return read_mark(self.es, self._indices)

    def set_behind_mark(self, mark: dict[str, Any] | None) -> None:
        write_mark(self.es, self._indices, mark)
