"""Giving the memory of a very large record back to the system once it is handled.

Why: a record of a hundred megabytes passes through several buffers on its way
(PostgreSQL's answer, the pickle, the JSON text, the document, the bulk body). Python
frees them, but glibc's allocator keeps freed heap pages of its arenas for reuse, so
the process stayed at several times the record's size long after it (issue 21: 545 MB
after one 150 MB record). Some of them are also kept alive by reference cycles
(an exception's traceback holds the frame that held the request body) until Python's
cycle collector runs. So after a batch that held a large record, :func:`give_back`
collects cycles and then calls ``malloc_trim(0)``; together they cost some
milliseconds, which is why it is not done after every batch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

#: A batch holding a record at least this large is followed by :func:`give_back`.
LARGE_RECORD_BYTES = 16 << 20


def _trimmer() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return None
    return trim


_TRIM = _trimmer()


def resident_bytes() -> int | None:
    """The process's resident memory (Linux), None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def give_back(largest: int) -> bool:
    """Return the allocator's free heap pages to the system (glibc only) after a batch
    whose largest record had ``largest`` bytes; True if it could."""
    if _TRIM is None:
        return False
    before = resident_bytes()
    # Exceptions raised on the way (an HTTP 413, say) sit in reference cycles with the
    # frames that held the request body: only the cycle collector frees those.
    gc.collect()
    _TRIM(0)
    after = resident_bytes()
    if before is not None and after is not None:
        log.info("gave memory back after a large record: resident %d MiB -> %d MiB",
                 before >> 20, after >> 20,
                 extra={"largest_record_bytes": largest, "resident_before": before, "resident_after": after})
    return True
