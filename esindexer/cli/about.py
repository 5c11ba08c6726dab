"""What is installed: versions, the C extension, and the guides shipped with the package."""

from __future__ import annotations

import pathlib
from importlib import metadata


def version_text() -> str:
    """``esindexer --version``: esindexer, its Elasticsearch client, and which pre-scan runs."""
    from esindexer.convert import scan

    try:
        client = metadata.version("elasticsearch")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency of the package
        client = "not installed"
    # scan._scan_c is None when the optional extension was not built (esindexer/convert/scan.py)
    native = "C extension" if getattr(scan, "_scan_c", None) is not None else "pure Python (the C extension is not built)"
    return (f"esindexer {metadata.version('esindexer')}\n"
            f"elasticsearch client {client}\n"
            f"pickle pre-scan: {native}")


def docs_dir() -> pathlib.Path | None:
    """Where the guides are: shipped inside the package (a wheel), or the checkout's docs/."""
    package = pathlib.Path(__file__).resolve().parent.parent
    for candidate in (package / "docs", package.parent / "docs"):
        if (candidate / "index.md").is_file():
            return candidate
    return None
