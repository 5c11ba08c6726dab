"""Transient Elasticsearch trouble at start is waited for, like any later trouble.

Issue 21, part 5: a search refused with 503 (the index's shards not active yet, e.g. while
another partition creates the index) ended ``esindexer run`` with exit 5. The repro: an
index whose primary cannot be allocated (``index.routing.allocation.require._name`` names
no node) and ``ESINDEXER_SWEEP_ON_START=always``; once the allocation is allowed, the run
goes on and indexes.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import transaction

from esindexer.errors import ExitCode
from esindexer.es.sink import ElasticsearchSink
from tests.indexing import Page, latest_tid, make_settings, progress
from tests.pipeline.processes import service_env
from tests.support import wait_for


def test_a_503_of_the_start_up_sweep_is_retried(zodb, db_dsn, es, es_url, es_prefix, tmp_path):
    conn = zodb.open()
    conn.root()["x"] = Page("x")
    transaction.commit()
    conn.close()
    settings = make_settings(db_dsn, es_url, es_prefix)
    (index,) = settings.routed_indices
    # esindexer's own index (mapping and all), recreated so that its primary cannot be allocated.
    ElasticsearchSink(settings).ensure_indices()
    mapping = es.indices.get_mapping(index=index)[index]["mappings"]
    es.indices.delete(index=index)
    es.indices.create(index=index, mappings=mapping, wait_for_active_shards="0", settings={
        "number_of_replicas": 0, "index.routing.allocation.require._name": "no-such-node"})
    log_path = tmp_path / "run.log"
    env = service_env(db_dsn, es_url, es_prefix, sweep_on_start="always", metrics_port="0")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "esindexer", "run"], env=env, stdout=subprocess.DEVNULL,
                                stderr=log)
    try:
        wait_for(lambda: "sweeping documents of deleted objects failed (es_503" in log_path.read_text(),
                 timeout=60, message="the sweep's 503 retried")
        assert proc.poll() is None, log_path.read_text()
        es.indices.put_settings(index=index, settings={"index.routing.allocation.require._name": None})
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), timeout=60, message="indexed once allocated")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == ExitCode.OK, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
