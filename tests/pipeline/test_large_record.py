"""One very large record: dead-lettered with its neighbours indexed, within a small
multiple of its size in memory, and that memory given back (issue 21).

A 150 MB record took the service to 1.56 GB and left it at 545 MB. This writes a
40 MB record with real ZODB + RelStorage between small pages, runs the real service
against the small test node (which refuses any request over 64 KiB with HTTP 413), and
reads the process's peak (``VmHWM``) and resident memory from /proc. (History-free only:
the pieces are read by ``(zoid, tid)`` from ``object_state`` in both modes, and the
follow tests cover both modes' paging.)
"""

from __future__ import annotations

from pathlib import Path

import psycopg2
import transaction

from tests.indexing import Page, docs, latest_tid, progress, zoid_of
from tests.pipeline.processes import Service, service_env
from tests.support import wait_for

RECORD_MB = 40


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def test_a_very_large_record_is_dead_lettered_in_bounded_memory_given_back(
        zodb, db_dsn, es_constrained, es_constrained_url, tmp_path):
    conn = zodb.open()
    root = conn.root()
    before = [Page(f"before {n}", body="small page " * 20) for n in range(50)]
    for n, page in enumerate(before):
        root[f"before{n}"] = page
    transaction.commit()
    words = "lorem ipsum dolor sit amet consectetur " * 1000
    huge = root["huge"] = Page("huge", body=(words * (RECORD_MB * 10**6 // len(words) + 1))[: RECORD_MB * 10**6])
    transaction.commit()
    after = [Page(f"after {n}", body="small page " * 20) for n in range(50)]
    for n, page in enumerate(after):
        root[f"after{n}"] = page
    transaction.commit()
    huge_zoid = zoid_of(huge)
    del words
    huge._p_deactivate()
    head = latest_tid(db_dsn)

    service = Service(service_env(db_dsn, es_constrained_url, "large", RETRY_MAX_SECONDS="0.2"),
                      tmp_path / "service.log")
    try:
        wait_for(lambda: service.proc.poll() is not None or progress(db_dsn) == head, timeout=180,
                 message="the service to index past the large record")
        assert service.proc.poll() is None, service.log()[-3000:]
        wait_for(lambda: "gave memory back" in service.log(), timeout=10, message="memory given back")
        peak = _status_mib(service.proc.pid, "VmHWM")
        resident = _status_mib(service.proc.pid, "VmRSS")
    finally:
        service.stop()
    print(f"record {RECORD_MB} MB: peak {peak:.0f} MiB, resident after {resident:.0f} MiB")
    record_mib = RECORD_MB * 10**6 / 2**20
    # Given back: what stays is the service's own size, not a copy of the record.
    assert resident < peak - 2 * record_mib, (peak, resident)
    # A small multiple of the record (it was 10x before: 1.56 GB for 150 MB).
    assert peak - resident < 6 * record_mib, (peak, resident)

    indexed = docs(es_constrained, "large")
    assert {zoid_of(p) for p in before + after} <= set(indexed)
    assert huge_zoid not in indexed
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("SELECT zoid, kind, reason, document IS NULL FROM esindexer_dead_letters")
        [(zoid, kind, reason, no_document)] = cur.fetchall()
    pg.close()
    assert (zoid, kind, no_document) == (huge_zoid, "rejected", True)
    assert "413" in reason and "document is not kept here" in reason
    conn.close()
