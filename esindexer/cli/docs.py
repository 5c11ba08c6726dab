"""``esindexer docs``: the guides, readable where esindexer is installed (no checkout needed)."""

from __future__ import annotations

import argparse
import sys

from esindexer.cli.about import docs_dir
from esindexer.cli.common import Command
from esindexer.config import Settings
from esindexer.errors import ExitCode


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guide", nargs="?", metavar="GUIDE",
                        help="the guide to print, e.g. operations or configuration; without it, the list")


def _guides(args: argparse.Namespace) -> int:
    """Runs before settings are loaded: reading a guide needs no database."""
    root = docs_dir()
    if root is None:
        print("esindexer: the guides are not installed with this copy of esindexer", file=sys.stderr)
        return ExitCode.SETUP
    names = sorted(p.stem for p in root.glob("*.md"))
    if args.guide is None:
        print(f"guides in {root}:")
        for name in names:
            print(f"  esindexer docs {name}")
        return 0
    name = args.guide.removesuffix(".md")
    if name not in names:
        print(f"esindexer: no guide named {args.guide!r}; one of: {', '.join(names)}", file=sys.stderr)
        return ExitCode.SETUP
    print((root / f"{name}.md").read_text(), end="")
    return 0


def _unused(settings: Settings, args: argparse.Namespace) -> int:  # pragma: no cover - early always answers
    return _guides(args)


COMMAND = Command(
    name="docs",
    help="list the guides installed with esindexer, or print one",
    description="Print one of esindexer's guides (Markdown) as installed with the package: "
                "index, quickstart, configuration, operations, documents, metrics, deploy, ...",
    groups=(),
    run=_unused,
    add_arguments=_arguments,
    early=_guides,
)
