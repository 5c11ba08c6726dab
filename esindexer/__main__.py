"""Entry point for ``python -m esindexer``."""

from esindexer.cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through subprocess tests
    raise SystemExit(main())
