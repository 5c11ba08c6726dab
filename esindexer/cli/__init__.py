"""Command line: ``esindexer`` / ``python -m esindexer``.

One module per command (``run``, ``status``, ...), each declaring its parser, the setting
groups it reads and the function that carries it out; :mod:`esindexer.cli.parser` builds
the parser from them and :mod:`esindexer.cli.main` maps errors to the exit codes of
:class:`esindexer.errors.ExitCode`.
"""

from esindexer.cli.main import main

__all__ = ["main"]
