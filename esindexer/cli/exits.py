"""How a command ends: the exit code of an error, and the exit of a command that ran an
indexer in-process (``run``, ``reindex``) without joining a sender left waiting.

Every error a user can cause or meet ends as one line on stderr with the exit code of
:class:`esindexer.errors.ExitCode`; only a bug ends with a traceback (in the log).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import NoReturn

from esindexer.config import Settings
from esindexer.errors import ExitCode, SchemaError, Unreachable
from esindexer.redact import redact

log = logging.getLogger("esindexer")

#: How long the exit waits for threads still running once the indexer stopped, before it
#: leaves them behind (:func:`exit_now`).
LINGER_SECONDS = 0.5


def fail(message: str, code: ExitCode) -> int:
    """``code``, after ``message`` on stderr as one line."""
    print(f"esindexer: {redact(message)}", file=sys.stderr)
    return code


def failed(settings: Settings, command: str, exc: Exception) -> int:
    """The exit code and one line for what ended ``command``; a traceback only for a bug."""
    import psycopg2
    import psycopg2.errors

    from esindexer.es.client import as_setup_error, connection_hint, describe_error, retry_reason
    from esindexer.source.pg import privilege_problem, refused_for_good

    if isinstance(exc, Unreachable):
        return fail(str(exc), ExitCode.UNREACHABLE)
    if isinstance(exc, SchemaError):  # reachable, but not a RelStorage database (yet)
        return fail(f"{exc}; is ESINDEXER_PG_DSN the database RelStorage writes to?", ExitCode.SETUP)
    if (problem := as_setup_error(exc) or refused_for_good(exc)) is not None:
        return fail(str(problem), ExitCode.SETUP)
    if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
        return fail(str(privilege_problem(exc)), ExitCode.SETUP)
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return fail(f"lost PostgreSQL: {' '.join(str(exc).split())}", ExitCode.UNREACHABLE)
    if retry_reason(exc) is not None:  # unreachable, timed out, 429/5xx: after the command's retries
        hint = connection_hint(exc)
        engine = "OpenSearch" if settings.search_engine == "opensearch" else "Elasticsearch"
        return fail(f"cannot reach {engine} at {', '.join(settings.es_url)}: {describe_error(exc)}"
                    + (f" ({hint})" if hint else ""), ExitCode.UNREACHABLE)
    log.exception("esindexer %s failed", command)
    return ExitCode.ERROR


def finish(code: int, signals: int) -> int:
    """``code``, for a command whose indexer has stopped, ``signals`` SIGINT/SIGTERM after
    its start: returned when every thread the interpreter would join at exit ended within
    :data:`LINGER_SECONDS` (idle senders need that); else the process exits now
    (:func:`exit_now`), and at once after a second signal.

    Call it while the :class:`~esindexer.pipeline.signals.SignalWatcher` is still
    installed: a signal meanwhile then abandons, and the process still ends with ``code``
    rather than killed by the signal (-15, not 143)."""
    left = still_running(0.0 if signals > 1 else LINGER_SECONDS)
    if left or signals > 1:
        exit_now(code, left)
    return code


def still_running(grace: float) -> list[str]:
    """The names of the threads the interpreter would wait for at exit that are still
    running after up to ``grace`` s (a sender pool's idle threads end within milliseconds)."""
    deadline = time.monotonic() + grace
    current = threading.current_thread()
    others = [thread for thread in threading.enumerate() if thread is not current and not thread.daemon]
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread.name for thread in others if thread.is_alive()]


def exit_now(code: int, left: list[str]) -> NoReturn:
    """Exit with ``code`` without joining the threads in ``left``.

    Once the indexer has stopped, such a thread can only be a bulk sender still waiting for
    Elasticsearch: a request of a batch the stop (or an error) cut short, which never
    counts, or one a second signal abandoned. Progress is saved at the last acknowledged
    batch, and a late write is versioned by its tid, so harmless; joining it would keep the
    process up to the request timeout, with the default signal handling again.
    """
    if left:
        log.info("exit %d without waiting for %s (still waiting for a request whose result no longer "
                 "counts: progress is saved at the last acknowledged batch)", int(code), ", ".join(left),
                 extra={"threads": left})
    else:
        log.info("exit %d at once (second signal)", int(code))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader gone away: nothing more to say to it
            pass
    os._exit(int(code))
