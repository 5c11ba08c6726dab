"""``--version``, ``esindexer docs`` and the guides shipped in a wheel; a closed output pipe."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _esindexer(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esindexer", *argv], capture_output=True, text=True, **kwargs)


def test_version_names_the_client_and_the_pre_scan_in_use():
    from esindexer.convert import scan

    out = _esindexer("--version").stdout
    assert f"esindexer {metadata.version('esindexer')}" in out
    assert f"elasticsearch client {metadata.version('elasticsearch')}" in out
    expected = "C extension" if scan.scan is not scan.scan_py else "pure Python"
    assert f"pickle pre-scan: {expected}" in out
    from esindexer.convert import reader

    native = getattr(reader, "_reader_c", None) is not None
    assert f"pickle reader: {'C extension' if native else 'pure Python'}" in out


def test_docs_lists_and_prints_the_guides():
    listing = _esindexer("docs")
    assert listing.returncode == 0
    for guide in ("operations", "configuration", "quickstart"):
        assert f"esindexer docs {guide}" in listing.stdout
    printed = _esindexer("docs", "configuration")
    assert printed.stdout == (ROOT / "docs" / "configuration.md").read_text()
    missing = _esindexer("docs", "nope")
    assert missing.returncode == 2 and "no guide named 'nope'" in missing.stderr and not missing.stdout


def test_docs_needs_no_configuration(monkeypatch):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("ESINDEXER_")}
    assert _esindexer("docs", "index", env=env).returncode == 0


def test_a_wheel_ships_the_guides(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    str(ROOT), "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("esindexer-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for guide in (ROOT / "docs").glob("*.md"):
        assert f"esindexer/docs/{guide.name}" in names


@pytest.mark.parametrize("args", [("docs", "performance"), ("--version",), ("--help",), ("docs",)],
                         ids=["docs-performance", "version", "help", "docs-list"])
def test_a_reader_that_goes_away_is_not_an_error(args):
    # The read end is closed before the child writes: its first write meets EPIPE. Issue 26.3:
    # --version printed a traceback and exited 1 (argparse's print came before the handler).
    child = subprocess.Popen([sys.executable, "-m", "esindexer", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=30) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
