"""Partitioned workers on the real servers: ``ESINDEXER_PARTITION=i/N`` processes side by
side under a live writer (with packs) produce exactly the index one process produces
of the same database; a partition's progress passes commits without its objects; a new
worker id starts where a covering set of clients got to (scaling out and back)."""

from __future__ import annotations

import json
import time

import psycopg2
import transaction
from elasticsearch.helpers import scan

from esindexer.config import partition_worker_id
from tests.indexing import make_settings, running
from tests.pipeline.processes import LiveWriter, Service, caught_up, converge, service_env
from tests.support import run_esindexer, scalar, wait_for

P0, P1 = partition_worker_id("esindexer", 0, 2), partition_worker_id("esindexer", 1, 2)


def _index(es, alias: str) -> dict[str, tuple[int, dict]]:
    es.indices.refresh(index=alias)
    return {hit["_id"]: (hit["_version"], hit["_source"])
            for hit in scan(es, index=alias, query={"query": {"match_all": {}}}, version=True)}


def test_two_partitions_equal_one_process_under_a_live_writer(zodb, db_dsn, es_url, es, es_prefix, tmp_path):
    writer = LiveWriter(zodb, rate=20).start()
    parts_env = service_env(db_dsn, es_url, es_prefix)
    single_prefix = f"{es_prefix}one-"
    services = [
        Service(dict(parts_env, ESINDEXER_PARTITION="0/2"), tmp_path / "p0.log"),
        Service(dict(parts_env, ESINDEXER_PARTITION="1/2"), tmp_path / "p1.log"),
        Service(service_env(db_dsn, es_url, single_prefix, client_id="single"), tmp_path / "single.log"),
    ]
    try:
        time.sleep(4)
        writer.pack()
        time.sleep(4)
        writer.pack()
        time.sleep(2)
        writer.stop()
        assert writer.commits > 100 and writer.packs == 2
        report = converge(db_dsn, es_url, es_prefix, [P0, P1, "single"])
        assert report.clean, report.as_dict()
        single = converge(db_dsn, es_url, single_prefix, ["single"])
        assert single.clean, single.as_dict()
        parts, one = _index(es, es_prefix.rstrip("-")), _index(es, single_prefix.rstrip("-"))
        assert len(parts) == report.documents > 300
        assert parts == one  # the same documents, with the same versions (tids)
        # Each partition indexed its own objects only, and applied its own pack deletions.
        logs = [s.log() for s in services[:2]]
        assert all("applied" in text for text in logs), logs
        status = json.loads(run_esindexer("status", "--json", env=dict(parts_env, ESINDEXER_PARTITION="1/2")).stdout)
        assert status["client_id"] == P1 and status["partition"] == "1/2" and status["caught_up"]
        assert [(p["client_id"], p["caught_up"]) for p in status["partitions"]] == [(P0, True), (P1, True)]
    finally:
        writer.stop(check=False)
        codes = [service.stop() for service in services]  # every one, before any assertion
        assert codes == [0, 0, 0], "\n".join(s.log()[-3000:] for s in services)


def test_a_partition_saves_progress_past_commits_without_its_objects(zodb, db_dsn, es_url, es, es_prefix):
    LiveWriter(zodb, rate=1, remove_every=0)  # 200 pages
    settings = make_settings(db_dsn, es_url, es_prefix, partition="0/2")
    with running(settings):
        wait_for(lambda: caught_up(db_dsn, [P0]), timeout=30, interval=0.2)
        conn = zodb.open()
        pages = conn.root()["pages"]
        odd = next(p for p in pages.values() if int.from_bytes(p._p_oid, "big") % 2 == 1)
        for n in range(3):  # commits that touch only objects of partition 1
            odd.title = f"odd {n}"
            transaction.commit()
        conn.close()
        latest = scalar(db_dsn, "SELECT max(tid) FROM object_state")
        wait_for(lambda: scalar(db_dsn, "SELECT tid FROM esindexer_progress WHERE client_id = %s", (P0,)) == latest,
                 timeout=15, interval=0.1)


def test_scaling_out_and_back_starts_where_the_covering_clients_got_to(zodb, db_dsn, es_url, es, es_prefix):
    writer = LiveWriter(zodb, rate=20)
    single = make_settings(db_dsn, es_url, es_prefix)
    parts = [make_settings(db_dsn, es_url, es_prefix, partition=f"{i}/2") for i in range(2)]

    def rows() -> dict[str, int]:
        with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT client_id, tid FROM esindexer_progress")
            found = dict(cur.fetchall())
        conn.close()
        return found

    writer.start()
    with running(single):
        wait_for(lambda: caught_up(db_dsn, ["esindexer"]), timeout=60, interval=0.2)
    writer.stop()
    at_stop = rows()["esindexer"]
    # Scale out: both partitions start at the single process's progress (no second backfill).
    writer = LiveWriter(zodb, rate=20).start()
    with running(parts[0]), running(parts[1]):
        seeded = wait_for(lambda: {P0, P1} <= set(rows()), timeout=30) and rows()
        assert seeded[P0] >= at_stop and seeded[P1] >= at_stop
        writer.pack()
        time.sleep(2)
        writer.stop()
        wait_for(lambda: caught_up(db_dsn, [P0, P1]), timeout=60, interval=0.2)
    # Back to one: remove the single process's old rows; it starts at the partitions' lowest.
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM esindexer_progress WHERE client_id = 'esindexer'")
        cur.execute("DELETE FROM esindexer_deletion_cursor WHERE client_id = 'esindexer'")
    conn.close()
    lowest = min(rows()[P0], rows()[P1])
    writer = LiveWriter(zodb, rate=20).start()
    writer.pack()
    with running(single):
        time.sleep(2)
        writer.stop()
        wait_for(lambda: caught_up(db_dsn, ["esindexer"]), timeout=60, interval=0.2)
        assert rows()["esindexer"] >= lowest
    # The partitions are retired; their rows would hold the deletion log: remove them.
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM esindexer_deletion_cursor WHERE client_id LIKE 'esindexer.partition-%'")
    conn.close()
    report = converge(db_dsn, es_url, es_prefix, ["esindexer"])
    assert report.clean, report.as_dict()
