"""Smoke test: the real servers answer and real ZODB + RelStorage write what we read."""

from __future__ import annotations

import logging

import transaction
from persistent.mapping import PersistentMapping

from tests.support import both_history_modes, search_engine

log = logging.getLogger(__name__)


@both_history_modes
def test_zodb_rows_reach_elasticsearch(zodb, pg_conn, es, es_prefix, keep_history):
    conn = zodb.open()
    root = conn.root()
    root["greeting"] = PersistentMapping({"text": "hello from ZODB"})
    transaction.commit()
    conn.close()

    with pg_conn.cursor() as cur:
        cur.execute("select version()")
        log.warning("PostgreSQL: %s", cur.fetchone()[0])
        table = "object_state natural join current_object" if keep_history else "object_state"
        cur.execute(f"select zoid, tid, state from {table} order by zoid")
        rows = cur.fetchall()
    assert [zoid for zoid, _, _ in rows] == [0, 1]
    assert all(state is not None and len(state) > 0 for _, _, state in rows)

    index = f"{es_prefix}smoke"
    zoid, tid, _ = rows[1]
    es.index(index=index, id=str(zoid), document={"zoid": zoid, "tid": tid, "text": "hello from ZODB"},
             refresh="wait_for")
    hits = es.search(index=index, query={"match": {"text": "hello"}})["hits"]["hits"]
    assert [hit["_id"] for hit in hits] == [str(zoid)]

    node = next(iter(es.nodes.info(node_id="_local")["nodes"].values()))
    log.warning("Elasticsearch: %s (%s)", node["version"], node.get("build_flavor"))
    # Elasticsearch 8.19/9.x, or OpenSearch 2.x/3.x in the OpenSearch run (ESIT_SEARCH_ENGINE)
    assert node["version"].split(".")[0] in (("2", "3") if search_engine() == "opensearch" else ("8", "9"))
