"""``main()``: parse, load the settings once, run the command, map what went wrong to an exit code.

Every error a user can cause or meet ends as one line on stderr with the exit code of
:class:`esindexer.errors.ExitCode`; only a bug ends with a traceback (in the log). The
mapping is :func:`esindexer.cli.exits.failed` (``run`` and ``reindex`` call it
themselves, to exit without joining a sender thread left waiting).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from esindexer.cli import alias, config, docs, explain, letters, reindex, run, setup, status, triggers, verify
from esindexer.cli.common import Command
from esindexer.cli.exits import fail, failed
from esindexer.cli.parser import build_parser
from esindexer.config import Settings, load_settings
from esindexer.config_table import SETTINGS
from esindexer.errors import ConfigError, ExitCode

log = logging.getLogger("esindexer")

#: In the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (
    run.COMMAND, status.COMMAND, explain.COMMAND, verify.COMMAND, letters.COMMAND, reindex.COMMAND,
    alias.COMMAND, setup.COMMAND, triggers.COMMAND, config.COMMAND, docs.COMMAND,
)


def _load(args: argparse.Namespace) -> Settings:
    cli = {spec.name: getattr(args, spec.name, None) for spec in SETTINGS}
    return load_settings(cli=cli, config_file=args.config)


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
        return fail(str(exc), ExitCode.SETUP)
    from esindexer.observe.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    try:
        return command.run(settings, args)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        raise
    except Exception as exc:
        return failed(settings, args.command, exc)
