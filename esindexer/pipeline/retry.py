"""Set-up steps retried until they work or the service stops: PostgreSQL or Elasticsearch
away, RelStorage's tables not created yet. What retrying cannot fix (a wrong password, a
missing privilege) is raised at once, so that it ends the run with a clear line instead
of hiding behind a growing lag."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from esindexer.backoff import Backoff
from esindexer.errors import Abandoned, SchemaError
from esindexer.es.client import connection_hint, describe_error, retry_reason
from esindexer.observe.metrics import Metrics
from esindexer.source import pg

log = logging.getLogger("esindexer.pipeline.indexer")  # the service's own lines, as before
T = TypeVar("T")


def retry_forever(what: str, fn: Callable[[], T], *, stop: threading.Event, backoff: Backoff, metrics: Metrics,
                  reconnect: bool = False) -> T:
    """Run ``fn`` until it works or ``stop`` is set (then :class:`Abandoned`), backing off
    on transient errors. With ``reconnect``, a lost PostgreSQL connection propagates instead (``fn`` uses the
    pipeline's connection, which only a new pipeline life replaces)."""
    attempt = 0
    while True:
        try:
            return fn()
        except pg.CONNECTION_ERRORS as exc:
            if reconnect and not stop.is_set():
                raise
            if stop.is_set():
                raise Abandoned(what) from None  # cancelled by the stop (interrupt())
            if (problem := pg.refused_for_good(exc)) is not None:
                raise problem from None  # a wrong password: retrying cannot help
            reason, error = "pg_unreachable", exc
        except SchemaError as exc:  # started before the application created its tables?
            reason, error = "source_schema_missing", exc
        except Exception as exc:
            found = retry_reason(exc)
            if found is None:
                raise
            reason, error = found, exc
        attempt += 1
        delay = backoff.delay(attempt)
        metrics.record_retry(reason, f"{what}: {describe_error(error)}")
        hint = connection_hint(error)
        log.warning("%s failed (%s: %s); retrying in %.1fs%s", what, reason, describe_error(error), delay,
                    f"; {hint}" if hint else "",
                    extra={"reason": reason})
        if stop.wait(delay):
            raise Abandoned(what)
