"""Every exception esindexer raises on purpose, and the exit codes they end a command with.

One place, so that the command line, the service and the docs agree on what each code
means (``esindexer --help`` prints the same table, and tests check the docs' copy).
Interpreting a *foreign* exception (an Elasticsearch or PostgreSQL error) as one of
these lives beside the client that raises it (:mod:`esindexer.es.client`,
:mod:`esindexer.source.pg`).
"""

from __future__ import annotations

import enum
from typing import Any


class ExitCode(enum.IntEnum):
    """What a command's exit status means."""

    OK = 0  #: done: stopped by a signal, or caught up with ``--until-caught-up``
    ERROR = 1  #: unexpected error; ``verify``: differences remain; ``--redeliver``: some still fail; ``alias``: refused
    SETUP = 2  #: bad usage or configuration, or a setup the servers refuse for good
    ERROR_BUDGET = 3  #: too many dead letters within the window
    LOCKED = 4  #: another indexer with the same client id holds the lock
    UNREACHABLE = 5  #: a server could not be reached (one-shot commands; ``run --deadline``)
    DEADLINE = 124  #: ``run --until-caught-up --deadline`` not done in time (as timeout(1) reports it)
    INTERRUPTED = 130  #: stopped by SIGINT before the work was done (128 + 2, as shells report it)
    BROKEN_PIPE = 141  #: the reader of the output went away, e.g. ``| head`` (128 + SIGPIPE)
    TERMINATED = 143  #: stopped by SIGTERM before the work was done (128 + 15)


EXIT_CODES_HELP = """\
  0 done   1 unexpected error   2 bad usage or configuration (including credentials,
  privileges, certificates or an ingest pipeline Elasticsearch refuses)
  3 error budget exhausted   4 same client id already running   5 server unreachable
  (one-shot commands and run --deadline; the service waits instead)
  124 run --until-caught-up --deadline not done in time
  130 / 143 interrupted by SIGINT / SIGTERM before the work was done (run --until-caught-up,
  one-shot commands; a service stopped by a signal exits 0)   141 output pipe closed early"""


class ConfigError(ValueError):
    """One or more settings are wrong; ``problems`` lists each one in plain words."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class SetupError(Exception):
    """A server is reachable but not set up as the configuration requires; no retry helps."""


class Unreachable(Exception):
    """A one-shot command could not reach a server (the service retries instead)."""


class SchemaError(RuntimeError):
    """The database does not hold a RelStorage schema where the follower looks for it."""


class ConnectionBusy(RuntimeError):
    """A connection handed to the follower has a transaction in progress."""


class UnsafePickle(ValueError):
    """The record is malformed or asks for resources far beyond its own size."""


class TooLarge(ValueError):
    """A record's JSON would be far larger than the record (shared structure repeated)."""


class ChildFailed(RuntimeError):
    """The conversion child process could not start, or raised a Python exception: not a
    record's crash (the crash guard's isolation, :mod:`esindexer.pipeline.isolate`)."""


class Abandoned(Exception):
    """Raised out of a wait or retry loop when the service is shutting down."""


class RetryableItems(Exception):
    """Some items of a bulk request must be sent again (per-item 429/5xx, or their index
    is unwritable); raised inside the sender's retry loop, never out of it."""

    def __init__(self, count: int, reason: str, hint: str = "", index_conditions_only: bool = False,
                 again: list[Any] | None = None):
        super().__init__(f"{count} item(s) to retry: {reason}" + (f"; {hint}" if hint else ""))
        self.reason = reason
        #: the actions to send again (documents.Action), in order
        self.again: list[Any] = again or []
        #: every item waits for its index (closed, blocked, missing), none for load:
        #: re-checked every few seconds, so writes resume soon after the block is lifted.
        self.index_conditions_only = index_conditions_only


class ErrorBudgetExhausted(RuntimeError):
    """More dead letters within the window than the budget allows: stop, do not drop everything."""


class AlreadyRunning(RuntimeError):
    """Another indexer with the same client id holds the advisory lock."""
