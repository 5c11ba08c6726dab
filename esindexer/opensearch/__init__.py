"""OpenSearch (2.x and 3.x) as a search engine: what it takes for :mod:`esindexer.es` to drive it.

OpenSearch forked from Elasticsearch 7.10 and still answers its REST API the same way for
everything the sink does, so the sink, the bulk sender, the scans, the repairs and the
operator commands are the Elasticsearch ones (written once). This package holds only
what differs: the client (:mod:`.client`: opensearch-py's transport behind the
Elasticsearch client's interface, and the engine detection of
``ESINDEXER_SEARCH_ENGINE=auto``) and the mapping dialect (:mod:`.mapping`).
docs/opensearch.md lists every difference and what esindexer does about it.
"""
