"""esindexer: keep Elasticsearch in step with a ZODB database stored by RelStorage.

The package reads as the data path, one step per module:

- :mod:`esindexer.follow` and :mod:`esindexer.tid` (source): batches of committed
  ``(tid, zoid, data)`` rows, saved progress, and tid timestamps;
- :mod:`esindexer.jsonpickle` (convert): ZODB records to JSON, never running pickle code;
- :mod:`esindexer.documents` (shape): Elasticsearch documents, index routing, versions;
- :mod:`esindexer.sink` (write): bulk requests, per-item outcomes, dead letters;
- :mod:`esindexer.service` (loop): flow control, retries, shutdown;
- :mod:`esindexer.metrics` (observe): Prometheus metrics and health endpoints;
- :mod:`esindexer.config` and :mod:`esindexer.cli`: typed settings and the command line.

Importing the package does no work: no connections, no threads, no logging set-up.
"""

__version__ = "0.1.0"
