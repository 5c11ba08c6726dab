"""Documents: what one ZODB record becomes in Elasticsearch (see :mod:`esindexer.documents.builder`).

- :mod:`~esindexer.documents.builder`: records → bulk actions, routing, the document;
- :mod:`~esindexer.documents.typed`: the typed model's shaping of a state;
- :mod:`~esindexer.documents.dates`: every date kind → one UTC form (Zope DateTime too);
- :mod:`~esindexer.documents.transform`: object transforms and what they see;
- :mod:`~esindexer.documents.walk`: text and references, shared by every mapping mode.
"""

from esindexer.documents.builder import TEXT_LIMIT, Action, DocumentBuilder, commit_time_iso
from esindexer.documents.transform import ObjectRecord

__all__ = ["TEXT_LIMIT", "Action", "DocumentBuilder", "ObjectRecord", "commit_time_iso"]
