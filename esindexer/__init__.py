"""esindexer: keep Elasticsearch in step with a ZODB database stored by RelStorage.

The package reads as the data path, one folder per step, data flowing one way::

    source/    PostgreSQL: follow committed rows, notifications, progress, captured
               deletions, dead letters, tid times
    convert/   a ZODB record -> JSON, never running pickle code
    documents  converted records -> versioned, routed actions (sink-neutral)
    sink       the protocol the pipeline writes through
    es/        Elasticsearch as the sink: client, bulk requests, indices, scans
    pipeline/  the service: reader, committer, sweep, error budget
    ops/       operator commands: status, verify, redeliver
    observe/   metrics, the source poller, the HTTP endpoints, log formats
    config, errors, backoff, cli   settings, exceptions and exit codes, the retry
               policy, the command line

The names below are the public library API; everything else may change between
releases. Importing the package does no work: no connections, no threads, no logging
set-up (the names are loaded on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_PUBLIC = {
    "updates": "esindexer.source.follow",
    "latest_tid": "esindexer.source.follow",
    "get_progress_tid": "esindexer.source.progress",
    "set_progress_tid": "esindexer.source.progress",
    "install_trigger": "esindexer.source.notify",
    "uninstall_trigger": "esindexer.source.notify",
    "Jsonifier": "esindexer.convert.jsonifier",
    "Conversion": "esindexer.convert.jsonifier",
    "Kind": "esindexer.convert.jsonifier",
    "Settings": "esindexer.config",
    "load_settings": "esindexer.config",
    "Indexer": "esindexer.pipeline.indexer",
    "ExitCode": "esindexer.errors",
}

__all__ = [
    "Conversion", "ExitCode", "Indexer", "Jsonifier", "Kind", "Settings", "__version__",
    "get_progress_tid", "install_trigger", "latest_tid", "load_settings", "set_progress_tid",
    "uninstall_trigger", "updates",
]

if TYPE_CHECKING:
    from esindexer.config import Settings, load_settings
    from esindexer.convert.jsonifier import Conversion, Jsonifier, Kind
    from esindexer.errors import ExitCode
    from esindexer.pipeline.indexer import Indexer
    from esindexer.source.follow import latest_tid, updates
    from esindexer.source.notify import install_trigger, uninstall_trigger
    from esindexer.source.progress import get_progress_tid, set_progress_tid


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'esindexer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
