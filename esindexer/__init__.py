"""esindexer: keep Elasticsearch in step with a ZODB database stored by RelStorage.

The package reads as the data path, one step per module:

- :mod:`esindexer.follow` (with :mod:`esindexer.notify` and :mod:`esindexer.progress`)
  and :mod:`esindexer.tid` (source): batches of committed ``(tid, zoid, data)`` rows,
  the change-notification trigger, saved progress, and tid timestamps;
- :mod:`esindexer.jsonpickle` (convert): ZODB records to JSON, never running pickle code;
- :mod:`esindexer.documents` (shape): Elasticsearch documents, index routing, versions,
  the index template;
- :mod:`esindexer.sink` (write): bulk requests and per-item outcomes;
  :mod:`esindexer.deadletters` keeps what could not be written, and
  :mod:`esindexer.deletions` captures deletions made by packing;
- :mod:`esindexer.service` (loop): flow control, progress, reconnects, shutdown;
  :mod:`esindexer.verify` compares the index with the database and repairs drift;
- :mod:`esindexer.metrics`, :mod:`esindexer.lag`, :mod:`esindexer.health` (observe):
  Prometheus metrics, the independent source poller, ``/metrics`` ``/healthz`` ``/readyz``;
- :mod:`esindexer.config`, :mod:`esindexer.cli`, :mod:`esindexer.logs`: typed settings,
  the command line and log formats.

Importing the package does no work: no connections, no threads, no logging set-up.
"""

__version__ = "0.1.0"
