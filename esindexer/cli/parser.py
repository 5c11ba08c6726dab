"""The argument parser: one subcommand per :class:`~esindexer.cli.common.Command`.

Each subcommand lists only the setting flags of the groups it reads, so ``esindexer
status --help`` is a page, not the 40-odd flags of ``run``. Booleans are
``--name/--no-name`` switches; every flag defaults to "not given" so that the
environment and the config file still apply underneath it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from esindexer.cli.common import ALWAYS, Command
from esindexer.config_table import describe_settings
from esindexer.errors import EXIT_CODES_HELP

_EPILOG = """\
configuration:
  Each setting is a flag, an environment variable ESINDEXER_<NAME> or a key in the
  TOML file given with --config (or ESINDEXER_CONFIG_FILE); flags win, then the
  environment, then the file. Only ESINDEXER_PG_DSN is required.

examples:
  export ESINDEXER_PG_DSN=postgresql://zodb:secret@db/zodb
  export ESINDEXER_ES_URL=http://localhost:9200
  esindexer run                       # follow for ever; metrics on 127.0.0.1:9650
  esindexer run --until-caught-up     # index what is committed now, then exit
  esindexer status                    # running?, rows behind, lag, documents, dead letters
  esindexer explain 0x2a              # one object: record, conversion, index, document, why
  esindexer verify --repair           # compare index and database object by object, fix drift
  esindexer dead-letters              # what could not be indexed, grouped by cause
  esindexer dead-letters --redeliver  # after fixing the cause: index those objects again
  esindexer alias                     # switch the alias to this prefix (re-index without downtime)
  esindexer config                    # the effective settings, secrets redacted

exit codes:
{exit_codes}

documentation: `esindexer docs` lists the guides installed with esindexer and prints one
(`esindexer docs configuration` is the reference of every setting).
"""


class _VersionAction(argparse.Action):
    """``--version``: computed when asked, since it imports the client and the extension."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from esindexer.cli.about import version_text

        print(version_text())
        parser.exit()


def _settings_parent(command: Command) -> argparse.ArgumentParser:
    """A parent parser holding the flags of the settings ``command`` reads."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="FILE", help="TOML file with settings (ESINDEXER_CONFIG_FILE)")
    groups: dict[str, Any] = {}
    for row in describe_settings():
        if row["group"] not in command.groups and row["name"] not in ALWAYS + command.settings:
            continue
        group = groups.get(row["group"])
        if group is None:
            group = groups[row["group"]] = parent.add_argument_group(f"{row['group']} settings")
        default = "(required)" if row["required"] else f"default: {row['default']}"
        choices = f" one of: {', '.join(row['choices'])};" if row["choices"] else ""
        # argparse %-formats help texts: a literal % must be doubled
        text = f"{row['help']}{choices} [{row['env']}; {default}]".replace("%", "%%")
        if row["boolean"]:
            group.add_argument(row["flag"], dest=row["name"], default=None,
                               action=argparse.BooleanOptionalAction, help=text)
        else:
            group.add_argument(row["flag"], dest=row["name"], default=None, metavar="VALUE", help=text)
    return parent


class _Parser(argparse.ArgumentParser):
    """argparse's parser, except that a write error of ``--help`` or a usage message is not
    swallowed: ``esindexer --help | head -1`` exits 141 like every other command whose
    reader went away (argparse ignores OSError there and would exit 0 with half a text)."""

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            (file or sys.stderr).write(message)


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="esindexer",
        description=(
            "Keep Elasticsearch in step with a ZODB database stored by RelStorage in "
            "PostgreSQL: follow committed transactions, convert each object to JSON, "
            "write versioned bulk upserts and deletes, save progress only after "
            "Elasticsearch accepted them, and export lag metrics for Prometheus."
        ),
        epilog=_EPILOG.format(exit_codes=EXIT_CODES_HELP),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="show the versions of esindexer and its Elasticsearch client, and whether "
                             "the C pre-scan extension is in use")
    sub: Any = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands:
        child = sub.add_parser(command.name, parents=[_settings_parent(command)], help=command.help,
                               description=command.description)
        command.add_arguments(child)
    return parser
