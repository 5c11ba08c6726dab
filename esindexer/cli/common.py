"""What the commands share: their declaration, and the connections a one-shot command opens."""

from __future__ import annotations

import argparse
import dataclasses
import gc
from collections.abc import Callable
from typing import Any

from esindexer.config import Settings
from esindexer.errors import Unreachable
from esindexer.redact import redact

#: Setting groups of :mod:`esindexer.config_table`, by what a command touches.
ALL_GROUPS = ("source", "elasticsearch", "documents", "flow", "observe")
#: Settings every command reads whatever its groups (it logs).
ALWAYS = ("log_format", "log_level")


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: how it is asked for, which settings it reads, and what it does.

    ``groups`` decides which setting flags its ``--help`` lists (environment variables
    and the config file are read whole either way: a flag a command does not list is
    one it would ignore).
    """

    name: str
    help: str
    description: str
    groups: tuple[str, ...]
    run: Callable[[Settings, argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    settings: tuple[str, ...] = ()  #: single settings of groups not listed, also shown
    #: Runs before the settings are loaded; a return value other than None is the exit code
    #: (``config --reference`` needs no configuration at all).
    early: Callable[[argparse.Namespace], int | None] = lambda args: None


def connect(settings: Settings) -> Any:
    """A PostgreSQL connection for a one-shot command; a failure is one line, not a traceback."""
    import psycopg2

    from esindexer.source import pg

    try:
        return pg.connect(settings, "cli")
    except psycopg2.OperationalError as exc:
        if (problem := pg.refused_for_good(exc)) is not None:
            raise problem from None
        raise Unreachable(f"cannot reach PostgreSQL: {redact(' '.join(str(exc).split()))}") from None


def one_shot_sink(settings: Settings) -> Any:
    """The sink for a one-shot command: a few retries, not the service's "for ever"."""
    from esindexer.es.sink import ElasticsearchSink

    return ElasticsearchSink(dataclasses.replace(settings, retry_attempts=settings.retry_attempts or 5))


def tune_gc() -> None:
    """Fewer cyclic garbage collections while a pipeline runs (``run``, ``reindex``'s build).

    Decoding a record makes dozens of short-lived containers, which reference counting
    frees; the cyclic collector still runs every 700 allocations by default and, every
    hundredth time, walks every object alive, the imported modules included. On a backfill
    of 10^5 records that was 0.29 CPU s, about 6 % of the process's CPU, for nearly no
    garbage (docs/performance.md, *Fixed costs*). What exists at start-up is frozen (never
    walked again; the few cycles it may hold are kept, a bounded cost), and a collection
    comes every 10,000 allocations.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
