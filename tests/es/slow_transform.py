"""A transform that only takes time: ``ESINDEXER_TRANSFORM=tests.es.slow_transform.pause``
makes a backfill last long enough for the cluster test to kill nodes in the middle of it.
The documents are unchanged (None keeps the text)."""

from __future__ import annotations

import os
import time

SECONDS = float(os.environ.get("ESIT_SLOW_TRANSFORM_SECONDS", "0.004"))


def pause(class_name: str, json_text: str) -> None:
    time.sleep(SECONDS)
    return None
