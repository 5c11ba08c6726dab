"""``esindexer config``: the effective settings, secrets redacted, or the settings reference."""

from __future__ import annotations

import argparse
import json

from esindexer.cli.common import ALL_GROUPS, Command
from esindexer.config import Settings
from esindexer.config_table import SETTINGS


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of KEY=VALUE lines")
    parser.add_argument("--reference", action="store_true",
                        help="print the reference of every setting (Markdown, as in docs/configuration.md)")


def _reference(args: argparse.Namespace) -> int | None:
    if not args.reference:
        return None
    from esindexer.config_table import render_reference

    print(render_reference())
    return 0


def _show(settings: Settings, args: argparse.Namespace) -> int:
    values = settings.redacted()
    if args.json:
        print(json.dumps(values, indent=2, default=list))
    else:
        for spec in SETTINGS:
            value = values[spec.name]
            if isinstance(value, tuple):
                value = ",".join("=".join(v) if isinstance(v, tuple) else v for v in value)
            print(f"{spec.env}={'' if value is None else value}")
    return 0


COMMAND = Command(
    name="config",
    help="print the effective configuration, secrets redacted",
    description="Print every setting as the commands would see it (flags, then ESINDEXER_* "
                "variables, then the --config file, then the defaults), with passwords and keys "
                "redacted. --reference prints what each setting means.",
    groups=ALL_GROUPS,
    run=_show,
    add_arguments=_arguments,
    early=_reference,
)
