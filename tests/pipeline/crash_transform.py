"""Transforms that crash the process, the test-only trigger of the crash guard.

``ESINDEXER_TRANSFORM=tests.pipeline.crash_transform.abort_on_marker`` makes the converter call
``os.abort()`` (SIGABRT, as a failing C assertion would) for every object whose JSON holds
:data:`MARKER`, and leaves every other text as it is. The guard under test is the
production path; only the crash is staged.
"""

from __future__ import annotations

import os

MARKER = "crash-guard-poison-7f3a"

_seen = 0


def abort_on_marker(class_name: str, json_text: str) -> None:
    if MARKER in json_text:
        os.abort()
    return None


def abort_every_fifth(class_name: str, json_text: str) -> None:
    """Crash on the fifth record a process converts, whichever it is: a crash that no
    single record causes (memory growing over many records, say)."""
    global _seen
    _seen += 1
    if _seen % 5 == 0:
        os.abort()
    return None
