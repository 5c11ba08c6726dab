"""``main()``: parse, load the settings once, run the command, map what went wrong to an exit code.

Every error a user can cause or meet ends as one line on stderr with the exit code of
:class:`esindexer.errors.ExitCode`; only a bug ends with a traceback (in the log).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from esindexer.cli import alias, config, docs, explain, letters, reindex, run, setup, status, triggers, verify
from esindexer.cli.common import Command
from esindexer.cli.parser import build_parser
from esindexer.config import Settings, load_settings
from esindexer.config_table import SETTINGS
from esindexer.errors import ConfigError, ExitCode, SchemaError, Unreachable
from esindexer.redact import redact

log = logging.getLogger("esindexer")

#: In the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (
    run.COMMAND, status.COMMAND, explain.COMMAND, verify.COMMAND, letters.COMMAND, reindex.COMMAND,
    alias.COMMAND, setup.COMMAND, triggers.COMMAND, config.COMMAND, docs.COMMAND,
)


def _load(args: argparse.Namespace) -> Settings:
    cli = {spec.name: getattr(args, spec.name, None) for spec in SETTINGS}
    return load_settings(cli=cli, config_file=args.config)


def _fail(message: str, code: ExitCode) -> int:
    print(f"esindexer: {redact(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _dispatch(argv)
        finally:
            # Output to a pipe is buffered: write its last bytes now, so that a reader gone
            # early shows here (and not as the interpreter's "Exception ignored" at exit).
            # Also after argparse's own exits (--version, --help), which raise SystemExit.
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader of our output went away (`esindexer --version | head -1`): not an error
        # of ours. Point stdout at /dev/null so the interpreter's final flush cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE


def _dispatch(argv: Sequence[str] | None) -> int:
    parser = build_parser(COMMANDS)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.SETUP
    command = next(c for c in COMMANDS if c.name == args.command)
    return _main(command, args)


def _main(command: Command, args: argparse.Namespace) -> int:
    if (early := command.early(args)) is not None:
        return early
    try:
        settings = _load(args)
    except ConfigError as exc:
        return _fail(str(exc), ExitCode.SETUP)
    from esindexer.observe.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    try:
        return command.run(settings, args)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        raise
    except Unreachable as exc:
        return _fail(str(exc), ExitCode.UNREACHABLE)
    except SchemaError as exc:  # reachable, but not a RelStorage database (yet)
        return _fail(f"{exc}; is ESINDEXER_PG_DSN the database RelStorage writes to?", ExitCode.SETUP)
    except Exception as exc:
        return _failure(settings, args.command, exc)


def _failure(settings: Settings, command: str, exc: Exception) -> int:
    """The exit code and one line for what ended ``command``; a traceback only for a bug."""
    import psycopg2
    import psycopg2.errors

    from esindexer.es.client import as_setup_error, connection_hint, describe_error, retry_reason
    from esindexer.source.pg import privilege_problem, refused_for_good

    if (problem := as_setup_error(exc) or refused_for_good(exc)) is not None:
        return _fail(str(problem), ExitCode.SETUP)
    if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
        return _fail(str(privilege_problem(exc)), ExitCode.SETUP)
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return _fail(f"lost PostgreSQL: {' '.join(str(exc).split())}", ExitCode.UNREACHABLE)
    if retry_reason(exc) is not None:  # unreachable, timed out, 429/5xx: after the command's retries
        hint = connection_hint(exc)
        engine = "OpenSearch" if settings.search_engine == "opensearch" else "Elasticsearch"
        return _fail(f"cannot reach {engine} at {', '.join(settings.es_url)}: {describe_error(exc)}"
                     + (f" ({hint})" if hint else ""), ExitCode.UNREACHABLE)
    log.exception("esindexer %s failed", command)
    return ExitCode.ERROR
